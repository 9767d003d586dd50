"""Read back senet-hub's .pt2 (torch.export) and TorchScript .pt files (issue 14 item 3).

builders.torch.save puts senet-hub's record and canonical graph into the archive as extra files;
converters.pytorch_program reads them and the weights without torch and without running any pickle
beyond the restricted one. A zoo model with an input stage and one without, written as .pt2 and .pt:
the same graph, bit-identical weights and the same meta come back; the read-back model computes what
torch.export.load / torch.jit.load compute from the file; a second hop through the CLI (-> ONNX,
-> .pth) computes the source model. Someone else's program file, a truncated file, a record that does
not describe the weights and a pickle payload are one line with their documented exit code, and
the payload never runs.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_same_model, cli, one_line

from senet_hub import transforms, zoo
from senet_hub.builders import numpy_ref
from senet_hub.converters import pytorch, pytorch_program
from senet_hub.errors import FormatError, ModelError
from senet_hub.graph import Model

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
from senet_hub.builders import torch as tb  # noqa: E402  (needs torch: after the skip)

GRAPH = f"archive/{pytorch_program.EXTRA_DIR}{pytorch_program.GRAPH_NAME}"


def _models() -> dict[str, object]:
    plain = zoo.synthetic_model("seresnet18", seed=3, num_classes=10)
    # MindCV's seresnet18 takes RGB 0-255; Caffe's BGR convention puts a real input_norm stage in front
    # (conv1 pads, so the stage is not folded away)
    staged = transforms.set_input_convention(plain, "caffe")
    assert staged.graph.nodes[0].op == "input_norm"
    return {"plain": plain, "staged": staged}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """files(model name, suffix) -> (model, the file builders.torch.save wrote), written on first use
    (a .pt2 export takes seconds: test-fast writes only the ones its tests use)."""
    d = tmp_path_factory.mktemp("pt2")
    models = _models()
    written: dict[tuple[str, str], tuple[object, Path]] = {}

    def get(name: str, suffix: str) -> tuple[object, Path]:
        if (name, suffix) not in written:
            p = d / f"{name}.{suffix}"
            tb.save(models[name], p)
            written[(name, suffix)] = (models[name], p)
        return written[(name, suffix)]

    return get


def _ref(model, x: np.ndarray) -> np.ndarray:
    return numpy_ref.run(numpy_ref.build(model), x, taps=False)[model.graph.output]


def _x(model, seed: int = 0) -> np.ndarray:
    scale = 60.0 if model.graph.nodes[0].op == "input_norm" else 1.0  # pixel-scale input for the BGR stage
    return (np.random.default_rng(seed).standard_normal((1, 3, 224, 224)) * scale).astype(np.float32)


@pytest.mark.parametrize("suffix", ["pt2", "pt"])
@pytest.mark.parametrize("name", ["plain", "staged"])
def test_round_trip_is_exact(files, name, suffix):
    model, path = files(name, suffix)
    got = pytorch.load(path)
    assert_same_model(got, model)
    assert got.meta["source_container"] == {"pt2": "pt2", "pt": "torchscript"}[suffix]
    assert got.meta["source_format"] == "pytorch" and got.meta["source_dtype"] == ["float32"]
    assert got.meta["ignored_entries"] == sum(n.op == "batch_norm" for n in model.graph.nodes)  # num_batches_tracked
    # the record is the .pth one, readable by torch's own loader too
    extra = {pytorch_program.RECORD_NAME: ""}
    if suffix == "pt2":
        torch.export.load(str(path), extra_files=extra)
    else:
        torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra[pytorch_program.RECORD_NAME])["arch"] == "seresnet18"


@pytest.mark.parametrize("suffix", ["pt2", "pt"])
def test_read_back_computes_what_torch_loads(files, suffix):
    """The model read without torch computes (float64 reference) what the file computes in torch."""
    model, path = files("staged", suffix)
    x = _x(model)
    loaded = torch.export.load(str(path)).module() if suffix == "pt2" else torch.jit.load(str(path))
    with torch.no_grad():
        want = loaded(torch.from_numpy(x)).double().numpy()
    got = _ref(pytorch.load(path), x)
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).all()


def test_second_hop_through_the_cli(files, tmp_path):
    """.pt2 (input stage) -> ONNX computes the source model; .pt -> .pth is exact, weights and meta."""
    onnx_source = pytest.importorskip("senet_hub.converters.onnx_source")
    pytest.importorskip("onnx")
    model, path = files("staged", "pt2")
    r = cli("convert", "--from", "pytorch", "--weights", path, "--to", "onnx", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    x = _x(model, seed=1)
    want, got = _ref(model, x), _ref(onnx_source.load(tmp_path / "m.onnx"), x)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()  # float64 both: only float32 weights, identical
    model, path = files("plain", "pt")
    r = cli("convert", "--from", "pytorch", "--weights", path, "--to", "pytorch", "-o", tmp_path / "m.pth")
    assert r.exit_code == 0, r.output
    assert_same_model(pytorch.load(tmp_path / "m.pth"), model)


def test_wrong_arch_is_one_line(files):
    _, path = files("plain", "pt")
    r = cli("convert", "--weights", path, "--arch", "seresnet34", "--to", "onnx", "-o", path.with_suffix(".onnx"))
    one_line(r, ModelError.exit_code, "holds seresnet18, not seresnet34", "leave out --arch")
    assert not path.with_suffix(".onnx").exists()


# ------------------------------------------------------------------------------------- bad files


def test_program_without_record_is_refused(tmp_path):
    """torch.export.save / torch.jit.save of someone's module: its graph is not recovered (exit 4)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval()
    x = torch.zeros(1, 3, 8, 8)
    torch.export.save(torch.export.export(net, (x,)), tmp_path / "theirs.pt2")
    r = cli("convert", "--weights", tmp_path / "theirs.pt2", "--to", "onnx", "-o", tmp_path / "x.onnx")
    one_line(r, FormatError.exit_code, "theirs.pt2", "without senet-hub's record", "not recovered", "state_dict()")
    torch.jit.save(torch.jit.trace(net, (x,)), tmp_path / "theirs.pt")
    r = cli("convert", "--weights", tmp_path / "theirs.pt", "--to", "onnx", "-o", tmp_path / "x.onnx")
    one_line(r, FormatError.exit_code, "theirs.pt", "TorchScript", "without senet-hub's record", "state_dict()")
    assert not (tmp_path / "x.onnx").exists()


def test_truncated_file_is_one_line(files, tmp_path):
    for suffix in ("pt2", "pt"):
        data = files("staged", suffix)[1].read_bytes()
        (tmp_path / f"cut.{suffix}").write_bytes(data[: len(data) // 2])
        r = cli("convert", "--weights", tmp_path / f"cut.{suffix}", "--to", "onnx", "-o", tmp_path / "x.onnx")
        one_line(r, FormatError.exit_code, f"cut.{suffix}", "truncated or corrupt")


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    """`src` with the members named in `replace` given new contents (stored, like torch writes)."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            out.writestr(info, replace.get(info.filename, z.read(info)))
    return dst


def _graph_of(model) -> bytes:
    return pytorch_program.extra_files(model)[pytorch_program.GRAPH_NAME].encode()


@pytest.mark.parametrize("suffix", ["pt2", "pt"])
def test_record_that_does_not_describe_the_weights(files, tmp_path, suffix):
    """Another architecture's graph, another head width, another input stage: exit 5, one line each."""
    model, path = files("staged", suffix)
    other = Model(zoo.expand("seresnet34", 10), {}, zoo.meta("seresnet34", 10))  # a graph is all a record needs
    bad = _rewrite(path, tmp_path / f"a.{suffix}", {GRAPH: _graph_of(other)})
    one_line(cli("convert", "--weights", bad, "--to", "onnx", "-o", tmp_path / "x.onnx"), 5, "its record does not")
    wide = model.copy()
    wide.graph.nodes[-1].attrs["out_features"] = 11
    bad = _rewrite(path, tmp_path / f"b.{suffix}", {GRAPH: _graph_of(wide)})
    with pytest.raises(ModelError, match=r"fc\.weight has shape \[10, 512\] in the program, the recorded graph needs"):
        pytorch.load(bad)
    rgb = transforms.set_input_convention(model, "rgb01")  # the same weights behind another stage
    bad = _rewrite(path, tmp_path / f"c.{suffix}", {GRAPH: _graph_of(rgb)})
    with pytest.raises(ModelError, match=r"input stage input_norm\.(perm|scale|shift) holds other constants"):
        pytorch.load(bad)
    bad = _rewrite(path, tmp_path / f"d.{suffix}", {GRAPH: _graph_of(model)[:-9]})
    with pytest.raises(FormatError, match="senet_hub_graph.json is not a readable senet-hub graph"):
        pytorch.load(bad)
    assert not (tmp_path / "x.onnx").exists()


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ScriptModule:
    """Pickles as a __torch__ class made with arguments (REDUCE): the stand-in refuses them."""

    def __reduce__(self):
        return (_torch_class, ("evil",))


def _torch_class(*args):  # pragma: no cover - never called: pickled by reference, renamed below
    raise AssertionError


def test_torchscript_pickle_payload_refused_and_never_run(files, tmp_path):
    marker = tmp_path / "pwned"
    _, path = files("plain", "pt")
    payload = pickle.dumps({"conv1": _System(marker)}, protocol=2)
    # the payload works: unpickled by Python it creates the marker (in a child, and removed again)
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.loads({payload!r})"], check=True)
    assert marker.exists()
    marker.unlink()
    evil = _rewrite(path, tmp_path / "evil.pt", {"archive/data.pkl": payload})
    r = cli("convert", "--weights", evil, "--to", "onnx", "-o", tmp_path / "x.onnx")
    one_line(r, FormatError.exit_code, "evil.pt", "system", "refused, nothing was run")
    # the payload inside a module's state, below a real __torch__ object
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        pkl = z.read("archive/data.pkl")
    inner = pickle.dumps(_System(marker), protocol=2)[2:-1]  # without PROTO and STOP
    at = pkl.index(b"X\x05\x00\x00\x00conv1")
    nested = _rewrite(
        path, tmp_path / "nested.pt", {"archive/data.pkl": pkl[:at] + b"X\x01\x00\x00\x00z" + inner + pkl[at:]}
    )
    with pytest.raises(FormatError, match=r"posix\.system|nt\.system|os\.system"):
        pytorch.load(nested)
    # a __torch__ class called with arguments (REDUCE) instead of made empty (NEWOBJ)
    reduce = pickle.dumps(_ScriptModule(), protocol=2).replace(f"{__name__}\n_torch_class".encode(), b"__torch__.m\nM")
    with pytest.raises(FormatError, match="made with arguments"):
        pytorch.load(_rewrite(path, tmp_path / "args.pt", {"archive/data.pkl": reduce}))
    assert not marker.exists() and not (tmp_path / "x.onnx").exists() and data == path.read_bytes()
