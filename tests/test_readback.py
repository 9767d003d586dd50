"""Read back what senet-hub writes (issue 14 item 3): Chainer .npz and MXNet symbol + params.

Each format: a zoo model written by senet-hub's own writer, then read by the framework-free reader,
gives the same graph (structure and names), bit-identical float32 weights by canonical name and the
same meta (architecture, input convention, class order); a CLI chain through the format works;
a damaged or foreign file is one line with its documented exit code. (.pth/.safetensors, ONNX,
Caffe and MindSpore read-backs are tested in their own modules.)
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_model as _same
from helpers import cli, one_line

from senet_hub import zoo
from senet_hub.converters import chainer_npz, mxnet_params
from senet_hub.errors import FormatError, ModelError

META = ("arch", "input_convention", "class_order", "num_classes")  # no input_fold: the zoo meta of MXNet


# ------------------------------------------------------------------------------------ Chainer .npz
chainer_builder = pytest.importorskip("senet_hub.builders.chainer")


@pytest.fixture(scope="module")
def s18_npz(tmp_path_factory):
    if chainer_builder.available() is None:
        pytest.skip("chainer not installed (pip install 'senet-hub[chainer]')")
    model = zoo.synthetic_model("seresnet18", seed=3, num_classes=10)
    path = tmp_path_factory.mktemp("npz") / "s18.npz"
    chainer_builder.save(model, path)
    return model, path


def test_chainer_npz_round_trip_is_exact(s18_npz):
    model, path = s18_npz
    got = chainer_npz.load(path)
    _same(got, model, META)
    assert got.meta["source_format"] == "chainer"


def _without_graph(src: Path, dst: Path) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename != chainer_builder.GRAPH_KEY + ".npy":
                zout.writestr(info.filename, zin.read(info.filename))
    return dst


def test_chainer_npz_without_graph_is_recognised_from_keys(s18_npz, tmp_path):
    """A save_npz of a zoo architecture (no senet-hub graph): the arch from keys and shapes, head width included."""
    model, path = s18_npz
    got = chainer_npz.load(_without_graph(path, tmp_path / "plain.npz"))
    _same(got, model, META)
    assert "recognised" in got.meta["source_container"]


def test_link_paths_suffix_rule_matches_the_writer(tmp_path):
    """Names that shadow Chain attributes, a leaf beside a nested Chain of the same name, '/' in names:
    the reader names every key as the Chain wrote it (the same link_paths, answered from the file)."""
    if chainer_builder.available() is None:
        pytest.skip("chainer not installed")
    from senet_hub.graph import Graph, Model, Node

    names = ["params.c", "a", "a.b", "forward", "graph.x", "name.y", "a.b.c", "x/y.conv", ".q", "a_"]
    nodes, prev = [], "data"
    for i, nm in enumerate(names):
        nodes.append(Node(nm, "conv", [prev], {"out_channels": 3, "kernel": (1, 1), "bias": i % 2 == 0}))
        prev = nm
    nodes += [Node("bn.gamma", "batch_norm", [prev]), Node("fc", "linear", ["bn.gamma"], {"out_features": 4})]
    g = Graph(nodes, input_shape=(1, 3, 4, 4))
    rng = np.random.default_rng(0)
    w = {k: rng.standard_normal(s).astype(np.float32) for k, s in zoo.graph_param_shapes(g).items()}
    w["bn.gamma.running_var"] = np.abs(w["bn.gamma.running_var"]) + 0.5
    model = Model(g, w, {"arch": "custom"})
    chainer_builder.save(model, tmp_path / "odd.npz")
    keys = set(np.load(tmp_path / "odd.npz").files)
    assert {"params_/c/W", "a/W", "a_/b/W", "a_/b_/c/W", "a__/W", "forward_/W", "x_y/conv/W", "_/q/W"} <= keys
    got = chainer_npz.load(tmp_path / "odd.npz")
    assert all(np.array_equal(got.weights[k], w[k]) for k in w)


@pytest.mark.slow
def test_chainer_cli_chain_to_onnx_and_back(s18_npz, tmp_path):
    pytest.importorskip("onnx")
    model, path = s18_npz
    r = cli("convert", "--from", "chainer", "--npz", path, "--to", "onnx", "-o", tmp_path / "s18.onnx")
    assert r.exit_code == 0, r.output
    from senet_hub.converters import onnx_source

    back = onnx_source.load(tmp_path / "s18.onnx")
    assert set(back.weights) == set(model.weights)
    for k, v in model.weights.items():  # ONNX may fold nothing here: weights travel unchanged
        np.testing.assert_array_equal(back.weights[k], np.asarray(v, np.float32))


def test_chainer_bad_files_are_one_line(s18_npz, tmp_path):
    _, path = s18_npz
    data = Path(path).read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 3])
    r = cli("convert", "--from", "chainer", "--npz", tmp_path / "cut.npz", "--to", "onnx", "-o", tmp_path / "x.onnx")
    one_line(r, FormatError.exit_code, "cut.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    r = cli("convert", "--npz", tmp_path / "text.npz", "--to", "onnx", "-o", tmp_path / "x.onnx")
    one_line(r, FormatError.exit_code, "not a Chainer .npz")
    # a Chainer file of no zoo architecture: exit 5, naming what is missing
    np.savez(tmp_path / "foreign.npz", **{"predictor/conv1/W": np.zeros((4, 3, 3, 3), np.float32)})
    r = cli("convert", "--npz", tmp_path / "foreign.npz", "--to", "onnx", "-o", tmp_path / "x.onnx")
    one_line(r, ModelError.exit_code, "no '_senet_hub_graph' entry", "closest is")
    # a pickled object array is refused by name, never unpickled
    np.savez(tmp_path / "obj.npz", **{"conv1/W": np.array([1, None], dtype=object)})
    with pytest.raises((FormatError, ModelError), match="foreign|pickled|closest|not a readable"):
        chainer_npz.load(tmp_path / "obj.npz")
    with pytest.raises(ModelError, match="not seresnet34"):
        chainer_npz.load(path, arch="seresnet34")


# ---------------------------------------------------------------------------------- MXNet prefix
mxnet_builder = pytest.importorskip("senet_hub.builders.mxnet")


def _need_mxnet() -> None:
    if mxnet_builder.available() is None:
        pytest.skip("mxnet not installed (pip install 'senet-hub[mxnet]')")


@pytest.fixture(scope="module")
def mx_s18(tmp_path_factory):
    _need_mxnet()
    model = zoo.synthetic_model("seresnet18", seed=2, num_classes=10)
    prefix = tmp_path_factory.mktemp("mx18") / "s18"
    mxnet_builder.save(model, prefix)
    return model, Path(f"{prefix}-symbol.json"), Path(f"{prefix}-0000.params")


def test_mxnet_round_trip_is_exact(mx_s18):
    model, sym, params = mx_s18
    got = mxnet_params.load(sym, params)
    _same(got, model, META)
    assert got.meta["source_format"] == "mxnet"
    _same(mxnet_params.load(None, params), model, META)  # one architecture fits: no symbol needed


@pytest.fixture(scope="module")
def mx_prefixes(tmp_path_factory):
    """MindCV seresnet50 and timm/seresnet50: the same parameter names and shapes, different stem pooling."""
    _need_mxnet()
    d = tmp_path_factory.mktemp("mx")
    out = {}
    for arch in ("seresnet50", "timm/seresnet50"):
        model = zoo.synthetic_model(arch, seed=1, num_classes=10)
        prefix = d / arch.replace("/", "_")
        mxnet_builder.save(model, prefix)
        out[arch] = (model, Path(f"{prefix}-symbol.json"), Path(f"{prefix}-0000.params"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["seresnet50", "timm/seresnet50"])
def test_mxnet_round_trip_tells_pooling_variants_apart(mx_prefixes, arch):
    model, sym, params = mx_prefixes[arch]
    got = mxnet_params.load(sym, params)
    _same(got, model, META)
    assert got.meta["source_format"] == "mxnet"


@pytest.mark.slow
def test_mxnet_params_alone_is_ambiguous_between_pooling_variants(mx_prefixes):
    """Names and shapes cannot tell the stem pooling apart: the symbol (or --arch) must, never a guess."""
    model, _, params = mx_prefixes["seresnet50"]
    with pytest.raises(ModelError, match="fits several architectures.*pass --symbol"):
        mxnet_params.load(None, params)
    _same(mxnet_params.load(None, params, arch="seresnet50"), model, META)
    # the same names and shapes with the other architecture's symbol: the symbol decides
    _, other_sym, _ = mx_prefixes["timm/seresnet50"]
    got = mxnet_params.load(other_sym, params)  # same params bytes-layout: the symbol decides
    assert got.meta["arch"] == "timm/seresnet50"


def test_mxnet_reader_equals_mx_nd_load(tmp_path):
    """The framework-free NDArray-list reader against MXNet's own writer, several dtypes and ranks."""
    _need_mxnet()
    from senet_hub.builders.compat import import_mxnet

    mx = import_mxnet()
    rng = np.random.default_rng(2)
    arrays = {"arg:a": rng.standard_normal((2, 3, 1, 5)).astype(np.float32),
              "aux:b": rng.standard_normal(7).astype(np.float64), "arg:c": np.arange(4, dtype=np.float16),
              "arg:d": np.arange(6, dtype=np.int32).reshape(2, 3)}  # fmt: skip
    mx.nd.save(str(tmp_path / "x.params"), {k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()})
    got = mxnet_params.read_params(tmp_path / "x.params")
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and np.array_equal(got[k], v), k


@pytest.mark.slow
def test_mxnet_cli_chain_to_chainer(mx_prefixes, tmp_path):
    model, sym, params = mx_prefixes["timm/seresnet50"]
    if chainer_builder.available() is None:
        pytest.skip("chainer not installed")
    r = cli("convert", "--from", "mxnet", "--params", params, "--symbol", sym, "--to", "chainer",
             "-o", tmp_path / "m.npz")  # fmt: skip
    assert r.exit_code == 0, r.output
    _same(chainer_npz.load(tmp_path / "m.npz"), model, META)


def test_mxnet_bad_files_are_one_line(mx_s18, tmp_path):
    _, sym, params = mx_s18
    data = params.read_bytes()
    (tmp_path / "cut.params").write_bytes(data[: len(data) // 2])
    r = cli(
        "convert", "--from", "mxnet", "--params", tmp_path / "cut.params", "--to", "onnx", "-o", tmp_path / "x.onnx"
    )
    one_line(r, FormatError.exit_code, "cut.params", "remain")
    (tmp_path / "huge.params").write_bytes(struct.pack("<QQQ", 0x112, 0, 2**62))
    with pytest.raises(FormatError, match="declares"):
        mxnet_params.read_params(tmp_path / "huge.params")
    (tmp_path / "bad-symbol.json").write_text('{"nodes": 3}')
    r = cli("convert", "--from", "mxnet", "--params", params, "--symbol", tmp_path / "bad-symbol.json",
             "--to", "onnx", "-o", tmp_path / "x.onnx")  # fmt: skip
    one_line(r, FormatError.exit_code, "not an MXNet symbol JSON")
    # params of no zoo architecture: exit 5 with the closest one
    tiny = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<IiIq", 0xF993FAC9, 0, 1, 2) + struct.pack("<iii", 1, 0, 0)
    tiny += np.zeros(2, "<f4").tobytes() + struct.pack("<QQ", 1, 7) + b"arg:x_w"
    (tmp_path / "tiny.params").write_bytes(tiny)
    r = cli(
        "convert", "--from", "mxnet", "--params", tmp_path / "tiny.params", "--to", "onnx", "-o", tmp_path / "x.onnx"
    )
    one_line(r, ModelError.exit_code, "not the params of any zoo architecture", "closest is")


def test_mxnet_input_stage_is_read_back_with_its_record(tmp_path):
    """An MXNet prefix with an input stage: the record says which convention it implements
    (without the record it is refused: tests/test_readback_mxnet.py)."""
    _need_mxnet()
    from senet_hub import transforms

    model = transforms.set_input_convention(zoo.synthetic_model("seresnet18", num_classes=10), "caffe",
                                            fold=False)  # fmt: skip
    assert model.graph.nodes[0].op == "input_norm"
    mxnet_builder.save(model, tmp_path / "staged")
    back = mxnet_params.load(tmp_path / "staged-symbol.json", tmp_path / "staged-0000.params")
    assert back.graph.nodes[0].op == "input_norm" and back.meta["input_convention"] == model.meta["input_convention"]
    assert all(np.array_equal(back.weights[k], v) for k, v in model.weights.items())
