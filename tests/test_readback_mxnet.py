"""Read back the MXNet prefixes senet-hub writes, input stage and meta included (issue 14 item 3).

builders.mxnet.save puts senet-hub's record (graph, meta, input convention, class order) on the
symbol's input variable as the attribute ``__senet_hub__``; converters.mxnet_params reads the graph
and meta from it and the weights from the params by name. Here: a model whose meta is not its
zoo architecture's (another class order; another input convention, as an input stage) and a
non-zoo graph of every op come back with the same graph, bit-identical weights and the same meta;
a second conversion through the CLI computes what the source computes; MXNet itself still loads
the symbol (mx.sym.load, gluon SymbolBlock, Module) and computes what the record-less symbol did;
a record that does not describe the files, or a damaged one, is one line with its exit code; and
a prefix without the record keeps the old behaviour (zoo recognition; an input stage refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from all_ops import mixed_14
from helpers import assert_same_model as _same
from helpers import cli, have, one_line

from senet_hub import transforms, zoo
from senet_hub.builders import mxnet as mxnet_builder
from senet_hub.builders import numpy_ref
from senet_hub.converters import mxnet_params
from senet_hub.errors import FormatError, ModelError, UnsupportedError
from senet_hub.graph import Model, validate

mb = pytest.importorskip("senet_hub.builders.mxnet")
pytestmark = pytest.mark.skipif(mb.available() is None, reason="mxnet not installed (pip install 'senet-hub[mxnet]')")

META = ("arch", "input_convention", "class_order", "num_classes", "input_stage_from")
ARCH = "legacy_seresnet18"  # the cheapest zoo architecture, at 64 x 64 (its 1000-way head kept)
SIZE = 64


def _small(seed: int = 4) -> Model:
    """ARCH's synthetic weights on its graph for SIZE x SIZE inputs, classes in SENet order (not the
    zoo's ilsvrc2012 order: recognising the architecture alone would get the meta wrong)."""
    full = zoo.synthetic_model(ARCH, seed=seed)
    model = Model(zoo.expand(ARCH, None, input_size=SIZE), full.weights, dict(full.meta))
    validate(model)
    return transforms.set_class_order(model, "senet")


def _files(prefix: Path) -> tuple[Path, Path]:
    return Path(f"{prefix}-symbol.json"), Path(f"{prefix}-0000.params")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{kind: (model, symbol, params)}: 'plain' (class order changed), 'staged' (and an input stage
    for Caffe's BGR 0-255 input), 'ops' (a non-zoo graph of every op, Caffe-style names with '/')."""
    d = tmp_path_factory.mktemp("mxrec")
    plain = _small()
    staged = transforms.set_input_convention(plain, "caffe", fold=False)
    assert staged.graph.nodes[0].op == "input_norm" and staged.meta["input_convention"]["channel_order"] == "BGR"
    out = {}
    for kind, model in (("plain", plain), ("staged", staged), ("ops", mixed_14())):
        mb.save(model, d / kind)
        out[kind] = (model, *_files(d / kind))
    return out


def _rewrite_record(src: Path, dst: Path, edit) -> None:
    """dst: src's symbol with the input variable's record replaced by edit(record text) (None: removed)."""
    doc = json.loads(src.read_text())
    for n in doc["nodes"]:
        if mxnet_params.RECORD_ATTR in n.get("attrs", {}):
            text = edit(n["attrs"][mxnet_params.RECORD_ATTR])
            if text is None:
                del n["attrs"][mxnet_params.RECORD_ATTR]
                if not n["attrs"]:
                    del n["attrs"]
            else:
                n["attrs"][mxnet_params.RECORD_ATTR] = text
    dst.write_text(json.dumps(doc, indent=2))


# ------------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("kind", ["plain", "staged", "ops"])
def test_round_trip_is_exact_with_the_record(written, kind):
    model, sym, params = written[kind]
    got = mxnet_params.load(sym, params)
    _same(got, model, META)
    assert got.meta["source_format"] == "mxnet" and got.meta["source_container"] == "prefix (senet-hub record)"
    assert got.meta["source_files"] == {"params": params.name, "symbol": sym.name}
    # the CLI's reader finds the record in the -symbol.json beside the params
    _same(mxnet_params.load_prefix(params), model, META)
    if kind != "ops":
        assert got.meta["class_order"] == "senet" != zoo.meta(ARCH)["class_order"]


def test_without_the_record_the_old_behaviour_stays(written, tmp_path):
    """A record-less prefix (someone else's, or senet-hub's before the record): the zoo architecture
    its names and shapes fit, with the zoo's meta; an input stage is refused (its convention is unknown)."""
    model, sym, params = written["plain"]
    got = mxnet_params.load(None, params)
    assert [n.name for n in got.graph.nodes] == [n.name for n in model.graph.nodes]
    assert got.meta["arch"] == ARCH and got.meta["class_order"] == zoo.meta(ARCH)["class_order"]
    assert "source_container" not in got.meta
    _, ssym, sparams = written["staged"]
    with pytest.raises(UnsupportedError, match="input stage.*no --symbol"):
        mxnet_params.load(None, sparams)
    _rewrite_record(ssym, tmp_path / "bare-symbol.json", lambda text: None)
    r = cli("convert", "--params", sparams, "--symbol", tmp_path / "bare-symbol.json", "--to", "onnx",
            "-o", tmp_path / "x.onnx")  # fmt: skip
    one_line(r, UnsupportedError.exit_code, "input stage", "no senet-hub record", "--symbol")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.skipif(not have("onnx"), reason="needs onnx")
def test_cli_second_hop_from_a_staged_prefix_computes_the_source(written, tmp_path):
    """mxnet prefix with an input stage -> ONNX through the CLI (--params only: the record comes from
    the symbol beside it): the ONNX read back computes what the source model computes."""
    from senet_hub.converters import onnx_source

    model, _, params = written["staged"]
    r = cli("convert", "--params", params, "--to", "onnx", "-o", tmp_path / "s.onnx")
    assert r.exit_code == 0, r.output
    x = np.random.default_rng(5).uniform(0, 255, (2, 3, SIZE, SIZE)).astype(np.float32)  # BGR, 0-255
    want = numpy_ref.forward(model, x)
    got = numpy_ref.forward(onnx_source.load(tmp_path / "s.onnx"), x)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    assert int(got.argmax()) == int(want.argmax())


# ------------------------------------------------------------------------ MXNet still loads it
def test_mxnet_loads_the_recorded_symbol_and_computes_as_before(written, tmp_path):
    """The record is the only change: without it the JSON is the record-less writer's, and
    mx.sym.load, gluon SymbolBlock.imports and mx.mod.Module give the same output for both."""
    from senet_hub.builders.compat import import_mxnet

    mx = import_mxnet()
    model, sym, params = written["staged"]
    _rewrite_record(sym, tmp_path / "bare-symbol.json", lambda text: None)
    loaded = mx.sym.load(str(sym))
    assert loaded.get_internals()[model.graph.input_name].attr(mxnet_params.RECORD_ATTR) == mxnet_builder.record(model)
    bare, _ = mb.to_symbol(model)
    assert json.loads((tmp_path / "bare-symbol.json").read_text()) == json.loads(bare.tojson())
    (tmp_path / "bare-0000.params").write_bytes(params.read_bytes())
    x = np.random.default_rng(6).uniform(0, 255, (2, 3, SIZE, SIZE)).astype(np.float32)
    outs = {}
    for name, prefix in (("recorded", str(sym)[: -len("-symbol.json")]), ("bare", str(tmp_path / "bare"))):
        net = mx.gluon.SymbolBlock.imports(f"{prefix}-symbol.json", ["data"], f"{prefix}-0000.params")
        outs[f"{name}/gluon"] = net(mx.nd.array(x)).asnumpy()
        s, arg, aux = mx.model.load_checkpoint(prefix, 0)
        mod = mx.mod.Module(s, data_names=["data"], label_names=None, context=mx.cpu())
        mod.bind(data_shapes=[("data", x.shape)], for_training=False)
        mod.set_params(arg, aux)
        mod.forward(mx.io.DataBatch([mx.nd.array(x)]), is_train=False)
        outs[f"{name}/module"] = mod.get_outputs()[0].asnumpy()
    ref = numpy_ref.forward(model, x)
    for k, v in outs.items():  # gluon and Module bind differently (MKLDNN fusion): each against itself
        assert np.array_equal(v, outs["bare/" + k.split("/")[1]]), k
        assert np.abs(v - ref).max() <= 1e-4 * np.abs(ref).max(), k


# ---------------------------------------------------------------------------------- bad input
def test_a_record_that_does_not_describe_the_files_is_exit_5(written, tmp_path):
    _, psym, pparams = written["plain"]
    _, ssym, sparams = written["staged"]
    # the staged model's record with the plain model's params: the stage's constants are missing
    r = cli("convert", "--params", pparams, "--symbol", ssym, "--to", "onnx", "-o", tmp_path / "x.onnx")
    one_line(r, ModelError.exit_code, pparams.name, "not the params of the model recorded", "input_norm_scale")
    # the plain record pasted into the staged symbol: the symbol is not the recorded graph
    plain_record = json.loads(psym.read_text())["nodes"][0]["attrs"][mxnet_params.RECORD_ATTR]
    _rewrite_record(ssym, tmp_path / "other-symbol.json", lambda text: plain_record)
    with pytest.raises(ModelError, match="symbol is not the graph its senet-hub record describes"):
        mxnet_params.load(tmp_path / "other-symbol.json", sparams)
    # the stage's constants changed in the params: not the recorded convention
    arrays = mxnet_params.read_params(sparams)
    arrays["arg:input_norm_shift"] = arrays["arg:input_norm_shift"] + np.float32(1)
    from senet_hub.builders.compat import import_mxnet

    mx = import_mxnet()
    mx.nd.save(str(tmp_path / "moved-0000.params"), {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
    with pytest.raises(ModelError, match="arg:input_norm_shift is not the input stage recorded"):
        mxnet_params.load(ssym, tmp_path / "moved-0000.params")
    # the record says another architecture than --arch
    r = cli("convert", "--params", sparams, "--arch", "seresnet18", "--to", "onnx", "-o", tmp_path / "x.onnx")
    one_line(r, ModelError.exit_code, f"holds {ARCH}, not seresnet18", "leave out --arch")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda text: text[: len(text) // 2], "is damaged"),  # cut JSON
        (lambda text: json.dumps({**json.loads(text), "format": "other"}), "not a senet-hub record"),
        (
            lambda text: json.dumps({**json.loads(text), "graph": {"nodes": 3}}),
            "graph is not a readable senet-hub graph",
        ),
    ],
    ids=["cut", "foreign", "no-graph"],
)
def test_a_damaged_record_is_exit_4(written, tmp_path, edit, fragment):
    _, sym, params = written["staged"]
    _rewrite_record(sym, tmp_path / "bad-symbol.json", edit)
    r = cli("convert", "--params", params, "--symbol", tmp_path / "bad-symbol.json", "--to", "onnx",
            "-o", tmp_path / "x.onnx")  # fmt: skip
    one_line(r, FormatError.exit_code, "bad-symbol.json", fragment, "write the prefix again")
    assert not (tmp_path / "x.onnx").exists()
