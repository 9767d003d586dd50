"""Artifact verification (senet_hub.consumers): each file senet-hub writes, loaded by its consumer's
own loader (timm, Cadene pretrainedmodels, torch.export, TorchScript, onnxruntime, OpenVINO,
onnx2torch, onnx.reference, TensorFlow SavedModel, Keras, MXNet gluon, Chainer, OpenCV DNN,
MindCV), must compute the source model; a wrong file must fail, and bad requests get one line and
their documented exit code. Guards issue 10 item 1: before it, nothing loaded the written file.

timm, pretrainedmodels and onnx2torch import torchvision. PyPI's torchvision 0.28 (the release for
torch 2.13) is CUDA-linked and fails to import beside the pinned CPU torch, so these tests run
them with the test-only torchvision stub that tests/conftest.py appends to sys.path
(tests/stubs/torchvision).

Models: synthetic SE-ResNet-50 (224, batch 1) where a Caffe layout is needed (timm legacy_*,
Cadene, OpenCV), MindCV's seresnet18 at 64 x 64 (batch 2) elsewhere; each file is written once.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from helpers import needs

from senet_hub import consumers, transforms, verify, zoo
from senet_hub.errors import FormatError, InputFileError, MissingFrameworkError, ModelError, UnsupportedError
from senet_hub.sources import save_model


@pytest.fixture(scope="module")
def r50():
    return zoo.synthetic_model("SE-ResNet-50", seed=0)


@pytest.fixture(scope="module")
def r50rgb(r50):
    """The timm / Cadene convention: RGB in [0, 1], ImageNet mean/std, sorted-synset classes."""
    return transforms.set_class_order(transforms.set_input_convention(r50, "rgb01"), "ilsvrc2012")


def _small(seed: int = 0, num_classes: int | None = None):
    from senet_hub import zoo

    m = zoo.synthetic_model("seresnet18", seed=seed, num_classes=num_classes)
    m.graph.input_shape = (1, 3, 64, 64)  # MindCV's "same" stem pool pads (0, 0, 1, 1) at 64 too
    return m


@pytest.fixture(scope="module")
def r18():
    return _small()


@pytest.fixture(scope="module")
def x18(r18):
    return verify.default_input(r18, 2, 7)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Factory: write (model, target, name, opts) once per module, return the path."""
    root = tmp_path_factory.mktemp("artifacts")
    done: dict[str, str] = {}

    def write(model, target: str, name: str, **opts) -> str:
        if name not in done:
            path = str(root / name)
            save_model(model, target, path, **opts)
            done[name] = path
        return done[name]

    return write


def _x(model, batch: int = 1):
    return verify.default_input(model, batch, 7)


def _check_pass(report, consumer: str, min_rows: int = 1) -> None:
    line = consumers.summary_line(report)
    assert report.passed, report.to_text(5)
    assert report.backends == [consumer]
    assert len(report.rows) >= min_rows
    assert line.startswith(f"consumer {consumer} loaded ") and line.endswith("— PASS"), line


# --------------------------------------------------------------------------------- torch files


@needs("torch")
def test_senet_hub_pth_per_node(r18, x18, written):
    """The default .pth consumer (senet-hub's module via load_state_dict) compares every node."""
    path = written(r18, "pytorch", "r18.pth")
    assert consumers.default_consumer(path) == "senet-hub"
    rep = consumers.verify_artifact(r18, path, x=x18)
    _check_pass(rep, "senet-hub", min_rows=len(r18.graph.nodes))
    assert rep.exact_rel is None and "vs the source model" in consumers.summary_line(rep)
    assert rep.to_json()["artifact"]["consumer"] == "senet-hub"


@pytest.mark.slow
@needs("torch", "timm", "pretrainedmodels")
def test_timm_and_cadene_load_the_rgb01_pth(r50rgb, written):
    """Issue 10: the rgb01/ilsvrc2012 .pth loaded strict into timm legacy_seresnet50 and Cadene
    se_resnet50 computes the (Cadene-style folded) source model; the deviation from the exact model
    (the fold's zero-padding border) is reported, and the logits are what is compared."""
    path = written(r50rgb, "pytorch", "r50rgb.pth")
    x = _x(r50rgb)
    rep = consumers.verify_artifact(r50rgb, path, "timm", x=x)  # timm alone: model from the arch
    _check_pass(rep, "timm:legacy_seresnet50", min_rows=100)  # hooks on the conv / bn / linear modules
    assert rep.final == "last_linear" and rep.exact_fold is False
    assert 0 < rep.exact_rel < 1e-2
    assert "vs the exact model: inexact fold" in consumers.summary_line(rep)
    assert "inexact fold of the input stage" in rep.to_text()
    rep = consumers.verify_artifact(r50rgb, path, "cadene:se_resnet50", x=x)
    _check_pass(rep, "cadene:se_resnet50", min_rows=100)
    assert rep.exact_rel is not None


@needs("torch")
def test_perturbed_pth_fails_at_the_node(r18, x18, tmp_path):
    """A .pth whose weights differ from the source model fails (ParityError semantics), naming the node."""
    bad = r18.copy()
    bad.weights["layer3.0.conv2.weight"] = bad.weights["layer3.0.conv2.weight"] * np.float32(1.5)
    path = str(tmp_path / "bad.pth")
    save_model(bad, "pytorch", path)
    rep = consumers.verify_artifact(r18, path, x=x18)
    assert not rep.passed
    assert rep.first_divergent["senet-hub"] == "layer3.0.conv2"
    assert consumers.summary_line(rep).endswith("— FAIL")


@needs("torch", "timm")
def test_mindcv_pth_in_timm_seresnet_fails_on_pooling(r18, x18, written):
    """A MindCV state_dict loads by name into timm's seresnet18, but timm pools with padding=1: the
    file does not compute the source model there, and the note says why."""
    rep = consumers.verify_artifact(r18, written(r18, "pytorch", "r18.pth"), "timm:seresnet18", x=x18)
    assert not rep.passed
    assert any("padding=1" in n for n in rep.hints) and "padding=1" in consumers.summary_line(rep)


@needs("torch")
def test_pth_of_another_input_convention_fails_with_the_hint(r18, x18, written):
    """A .pth written with --input-convention caffe, checked against the source-convention model:
    FAIL, and the line says the file's record names another convention."""
    path = written(transforms.set_input_convention(r18, "caffe"), "pytorch", "r18_caffe.pth")
    rep = consumers.verify_artifact(r18, path, x=x18)
    assert not rep.passed
    assert "the file records input convention BGR" in consumers.summary_line(rep)


@pytest.mark.slow
@needs("torch")
def test_torch_export_and_torchscript(r18, x18, written):
    """.pt2 via torch.export.load(...).module() and .pt via torch.jit.load (final output)."""
    for name, cons in (("r18.pt2", "torch.export"), ("r18.pt", "torchscript")):
        path = written(r18, "pytorch", name)
        assert consumers.default_consumer(path) == cons
        _check_pass(consumers.verify_artifact(r18, path, x=x18), cons)


# ---------------------------------------------------------------------------------- ONNX files


@needs("onnx", "onnxruntime")
def test_onnxruntime_function_file_per_node(r18, x18, written):
    """The default export (Axpy custom op + model-local function) in onnxruntime, every node."""
    path = written(r18, "onnx", "r18.onnx")
    assert consumers.default_consumer(path) == "onnxruntime"
    _check_pass(consumers.verify_artifact(r18, path, x=x18), "onnxruntime", min_rows=len(r18.graph.nodes))


@needs("onnx")
def test_onnx_reference_function_file(r18, x18, written):
    """onnx.reference expands the model-local Axpy function; intermediate values per node."""
    path = written(r18, "onnx", "r18.onnx")
    _check_pass(consumers.verify_artifact(r18, path, "onnx.reference", x=x18), "onnx.reference", min_rows=50)


@needs("onnx", "onnxruntime", "openvino", "onnx2torch", "torch")
def test_inline_file_in_onnxruntime_openvino_onnx2torch(r18, x18, written):
    """The --inline file runs in onnxruntime, OpenVINO (per node) and onnx2torch (final output)."""
    path = written(r18, "onnx", "r18i.onnx", inline=True)
    for cons, rows in (("onnxruntime", 50), ("openvino", 50), ("onnx2torch", 1)):
        _check_pass(consumers.verify_artifact(r18, path, cons, x=x18), cons, min_rows=rows)


@needs("onnx", "openvino", "onnx2torch", "torch")
def test_function_file_refused_by_openvino_and_onnx2torch(r18, x18, written):
    """OpenVINO and onnx2torch do not expand model-local functions: one line naming --inline."""
    path = written(r18, "onnx", "r18.onnx")
    for cons in ("openvino", "onnx2torch"):
        with pytest.raises(UnsupportedError, match="--inline") as e:
            consumers.verify_artifact(r18, path, cons, x=x18)
        assert e.value.exit_code == 6


@needs("onnx", "onnxruntime")
def test_onnx_of_another_seed_fails(r18, x18, written):
    """An .onnx written from the same architecture with other weights fails parity."""
    path = written(_small(seed=1), "onnx", "r18_seed1.onnx", inline=True)
    rep = consumers.verify_artifact(r18, path, x=x18)
    assert not rep.passed and rep.first_divergent["onnxruntime"] is not None


# ------------------------------------------------------------------------- other frameworks


@pytest.mark.slow
@needs("tensorflow")
def test_tensorflow_savedmodel_and_keras(r18, x18, written):
    """SavedModel (NHWC serving signature) and .keras (NCHW layout, per-node layers)."""
    sm = written(r18, "tensorflow", "r18_savedmodel")
    assert consumers.default_consumer(sm) == "tensorflow"
    _check_pass(consumers.verify_artifact(r18, sm, x=x18), "tensorflow")
    kf = written(r18, "tensorflow", "r18.keras", layout="nchw")
    assert consumers.default_consumer(kf) == "keras"
    _check_pass(consumers.verify_artifact(r18, kf, x=x18), "keras", min_rows=50)


@needs("mxnet")
def test_mxnet_symbolblock(r18, x18, written):
    """gluon SymbolBlock.imports on the written prefix; per node from the symbol's internals."""
    prefix = written(r18, "mxnet", "r18mx")
    assert consumers.default_consumer(prefix) == "mxnet"
    _check_pass(consumers.verify_artifact(r18, prefix, x=x18), "mxnet", min_rows=50)


@needs("chainer")
def test_chainer_npz(r18, x18, written):
    """builders.chainer.load(None, file): the graph stored in the file, per node."""
    path = written(r18, "chainer", "r18.npz")
    _check_pass(consumers.verify_artifact(r18, path, x=x18), "chainer", min_rows=50)


@needs("cv2")
def test_opencv_reads_the_written_caffe_prefix(r50, written):
    """OpenCV DNN on the written prototxt + caffemodel, with its wrong built-in Axpy rewritten."""
    prefix = written(r50, "caffe", "r50caffe")
    assert consumers.default_consumer(prefix) == consumers.default_consumer(prefix + ".prototxt") == "opencv"
    rep = consumers.verify_artifact(r50, prefix, x=_x(r50))
    _check_pass(rep, "opencv", min_rows=100)
    assert any("patch_for_opencv" in n for n in rep.notes)


@needs("mindspore", "mindcv")
def test_mindcv_ckpt(r18, x18, written):
    """mindcv.create_model + load_checkpoint / load_param_into_net strict on the written .ckpt."""
    path = written(r18, "mindspore", "r18.ckpt")
    assert consumers.default_consumer(path) == "mindcv"
    _check_pass(consumers.verify_artifact(r18, path, x=x18), "mindcv", min_rows=50)


# --------------------------------------------------------------------------------- bad requests


def test_unknown_consumer_lists_the_known_ones(r18, written):
    with pytest.raises(UnsupportedError) as e:
        consumers.verify_artifact(r18, "whatever.onnx", "tflite")
    assert e.value.exit_code == 6
    assert "onnxruntime" in str(e.value) and "timm:legacy_seresnet50" in str(e.value)


def test_missing_artifact_is_exit_3(r18, tmp_path):
    with pytest.raises(InputFileError) as e:
        consumers.verify_artifact(r18, str(tmp_path / "absent.onnx"))
    assert e.value.exit_code == 3 and "absent.onnx" in str(e.value)


def test_consumer_not_installed_names_the_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    with pytest.raises(MissingFrameworkError) as e:
        consumers.check_available("openvino", "model.onnx")
    assert e.value.exit_code == 8 and "senet-hub[openvino]" in str(e.value)


def test_broken_torchvision_is_named(monkeypatch):
    """`import timm` failing inside torchvision: one line naming torchvision as the cause."""
    real = consumers.importlib.import_module

    def fake(name, *a):
        if name == "timm":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real(name, *a)

    monkeypatch.setattr(consumers.importlib, "import_module", fake)
    with pytest.raises(MissingFrameworkError, match="torchvision.*CUDA-linked") as e:
        consumers._import_torchvision_user("timm")
    assert e.value.exit_code == 8


def test_consumer_that_cannot_load_the_format(r18, written):
    path = written(r18, "pytorch", "r18.pth")
    with pytest.raises(UnsupportedError, match="senet-hub, timm:<model>, cadene:<model>") as e:
        consumers.verify_artifact(r18, path, "openvino")
    assert e.value.exit_code == 6
    consumers.check_available("openvino", "not-yet-written.onnx")  # convert checks before writing
    with pytest.raises(UnsupportedError):
        consumers.check_available("openvino", "not-yet-written.pth")


@needs("torch")
def test_pth_of_another_model_names_the_tensor(r50, r18, written):
    """A .pth of another architecture, or with another class count: exit 5 naming the first tensor."""
    with pytest.raises(ModelError, match="'layer0.conv1.weight'") as e:
        consumers.verify_artifact(r50, written(r18, "pytorch", "r18.pth"))
    assert e.value.exit_code == 5
    ten = written(_small(num_classes=10), "pytorch", "r18_10.pth")
    with pytest.raises(ModelError, match=r"'fc.weight' has shape \(10, 512\)"):
        consumers.verify_artifact(r18, ten)


@needs("onnx", "onnxruntime")
def test_onnx_of_another_model_names_the_tensor(r18, x18, written):
    ten = written(_small(num_classes=10), "onnx", "r18_10.onnx")
    with pytest.raises(ModelError, match="'fc.weight'") as e:
        consumers.verify_artifact(r18, ten, x=x18)
    assert e.value.exit_code == 5


def test_default_consumer_per_format(tmp_path):
    (tmp_path / "m-symbol.json").write_text("{}")
    (tmp_path / "c.prototxt").write_text("")
    sm = tmp_path / "sm"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"")
    table = {
        "a.pth": "senet-hub", "a.pt2": "torch.export", "a.pt": "torchscript", "a.onnx": "onnxruntime",
        "a.keras": "keras", "a.npz": "chainer", "a.ckpt": "mindcv", "a.prototxt": "opencv",
        str(tmp_path / "m"): "mxnet", str(tmp_path / "c"): "opencv", str(sm): "tensorflow",
    }  # fmt: skip
    for path, cons in table.items():
        assert consumers.default_consumer(path) == cons, path
    with pytest.raises(UnsupportedError):
        consumers.default_consumer(str(tmp_path / "unknown.bin"))
    # before convert writes them, prefixes and directories take their format from --to
    for target, cons in (("caffe", "opencv"), ("mxnet", "mxnet"), ("tensorflow", "tensorflow")):
        assert consumers.default_consumer(str(tmp_path / "not_yet"), target) == cons
    assert consumers.default_consumer(str(tmp_path / "not_yet.keras"), "tensorflow") == "keras"


@needs("chainer")
def test_chainer_npz_of_another_class_count_names_the_node(r18, x18, written):
    """The graph stored in a Chainer .npz is compared with the source model's: exit 5 naming the setting."""
    ten = written(_small(num_classes=10), "chainer", "r18_10.npz")
    with pytest.raises(ModelError, match="node 'fc' .* out_features=10, the source model's has out_features=1000"):
        consumers.verify_artifact(r18, ten, x=x18)


def test_missing_torchvision_is_named(monkeypatch):
    """torchvision absent (timm imports it): one line saying to install a CPU build, exit 8."""
    real = consumers.importlib.import_module

    def fake(name, *a):
        if name == "onnx2torch":
            raise ModuleNotFoundError("No module named 'torchvision'", name="torchvision")
        return real(name, *a)

    monkeypatch.setattr(consumers.importlib, "import_module", fake)
    with pytest.raises(MissingFrameworkError, match="onnx2torch needs torchvision, which is not installed"):
        consumers._import_torchvision_user("onnx2torch")


class _Marker:
    """Unpickling this creates the marker file: a .pth holding it must never be unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@needs("torch")
def test_pth_with_a_pickled_object_is_refused_unrun(r18, x18, tmp_path):
    """The artifact is a user file: torch.load(weights_only=True) only; the payload never runs."""
    import torch

    marker = tmp_path / "marker"
    path = str(tmp_path / "evil.pth")
    torch.save({"conv1.weight": _Marker(str(marker))}, path)
    with pytest.raises(FormatError, match="weights_only") as e:
        consumers.verify_artifact(r18, path, x=x18)
    assert e.value.exit_code == 4 and not marker.exists()


@needs("torch", "onnx")
def test_garbage_artifacts_are_format_errors(r18, x18, tmp_path):
    for name in ("junk.pth", "junk.pt2", "junk.pt", "junk.onnx"):
        path = tmp_path / name
        path.write_bytes(b"not a model " * 10)
        with pytest.raises(FormatError) as e:
            consumers.verify_artifact(r18, str(path), x=x18)
        assert e.value.exit_code == 4 and name in str(e.value) and "\n" not in str(e.value)
