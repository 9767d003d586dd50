"""The `openvino` verify backend and run_onnx_file (senet_hub.builders.openvino).

Guards issue 10 item 4 (the backend came in ff79307 without tests): per-node parity of OpenVINO's
CPU plugin against the float64 numpy reference on released architectures, a written --inline file
run as OpenVINO users run it, and the one-line errors: a default (function) file names --inline
(UnsupportedError, exit 6), a file that is not this model's names the missing value (ModelError,
exit 5), a file that is not ONNX (FormatError, exit 4), a missing file (InputFileError, exit 3),
OpenVINO not installed names the extra `senet-hub[openvino]` (MissingFrameworkError, exit 8).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from senet_hub import builders, verify, zoo
from senet_hub.builders import numpy_ref
from senet_hub.errors import (
    EXIT_CODES,
    FormatError,
    InputFileError,
    MissingFrameworkError,
    ModelError,
    UnsupportedError,
)

pytest.importorskip("onnx")
pytest.importorskip("openvino", reason="openvino not installed (pip install 'senet-hub[openvino]')")
ovb = builders.get("openvino")
ox = builders.get("onnxruntime")


@pytest.fixture(scope="module")
def r50():
    return zoo.synthetic_model("SE-ResNet-50", seed=0)


@pytest.fixture(scope="module")
def r50_files(r50, tmp_path_factory):
    d = tmp_path_factory.mktemp("ov")
    files = {"function": d / "r50.onnx", "inline": d / "r50.inline.onnx"}
    ox.save(r50, files["function"])
    ox.save(r50, files["inline"], inline=True)
    return files


def _x(model, batch=1):
    return verify.default_input(model, batch=batch)


@pytest.mark.parametrize("arch", ["SE-ResNet-50", "SE-BN-Inception"])
def test_verify_every_node_against_numpy(arch, r50):
    """`verify --backends numpy,openvino`: every canonical node tapped from OpenVINO at rtol 1e-3."""
    model = r50 if arch == "SE-ResNet-50" else zoo.synthetic_model(arch, seed=0)
    report = verify.verify(model, ["numpy", "ov"], _x(model), rtol=1e-3)
    assert not report.errors, report.errors
    assert report.passed, report.to_text(max_rows=20)
    assert all("openvino" in r["results"] for r in report.rows)  # a tap for every node
    assert len(report.rows) == len(model.graph.nodes)
    worst = max(r["results"]["openvino"].rel for r in report.rows)
    assert worst < 1e-4, f"{arch}: OpenVINO f32 is further from float64 than float32 error: {worst:.3g}"
    assert report.topk["openvino"]["top1"] == 1.0
    assert report.versions["openvino"] == ovb.available() and ovb.available()[:4].isdigit()


def test_f32_is_asked_for(r50):
    """build() compiles with the f32 hint (the CPU plugin defaults to bf16 where the CPU has it)."""
    native = ovb.build(r50, {"INFERENCE_NUM_THREADS": 1})
    assert native.config == {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    compiled = native.compiled(taps=False)
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")) in ("f32", "<Type: 'float32'>")
    out = ovb.run(native, _x(r50, batch=3), taps=False)  # dynamic batch on the plain model
    assert list(out) == [r50.graph.output] and out[r50.graph.output].shape == (3, 1000)


def test_run_onnx_file_inline(r50, r50_files):
    """An --inline FILE as OpenVINO users run it: final output and requested taps vs float64 numpy."""
    x = _x(r50, batch=2)
    ref = numpy_ref.run(numpy_ref.build(r50, np.float64), x)
    taps = ["layer1.0.se_module.sigmoid", "layer4.2.relu", "last_linear"]
    got = ovb.run_onnx_file(r50_files["inline"], x, outputs=taps)
    assert set(got) == {r50.graph.output, *taps}
    for name, y in got.items():
        assert y.shape == ref[name].shape
        err, scale = np.abs(y - ref[name]).max(), np.abs(ref[name]).max()
        assert err <= 1e-3 * scale, f"{name}: max|d| {err:.3g} > 1e-3 * {scale:.3g}"
    assert (got["last_linear"].argmax(1) == ref["last_linear"].argmax(1)).all()


def _one_line(e: pytest.ExceptionInfo, exit_code: int) -> str:
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == exit_code and exit_code in EXIT_CODES
    return msg


def test_function_file_names_inline(r50_files):
    """The default file (custom-domain Axpy + function): one line naming the op and --inline, exit 6,
    not OpenVINO's multi-line report that first blames a Conv ("input rank has to be known")."""
    with pytest.raises(UnsupportedError) as e:
        ovb.run_onnx_file(r50_files["function"], np.zeros((1, 3, 224, 224), np.float32))
    msg = _one_line(e, 6)
    assert str(r50_files["function"]) in msg and "org.senet-hub::Axpy" in msg and "--inline" in msg


def test_file_of_another_model(r50_files):
    with pytest.raises(ModelError) as e:
        ovb.run_onnx_file(r50_files["inline"], np.zeros((1, 3, 224, 224), np.float32), outputs=["conv1_7x7_s2"])
    assert "'conv1_7x7_s2'" in _one_line(e, 5)


def test_not_an_onnx_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a ModelProto \xff\xfe")
    with pytest.raises(FormatError) as e:
        ovb.run_onnx_file(bad, np.zeros((1, 3, 8, 8), np.float32))
    assert str(bad) in _one_line(e, 4)
    with pytest.raises(InputFileError) as e:
        ovb.run_onnx_file(tmp_path / "missing.onnx", np.zeros((1, 3, 8, 8), np.float32))
    assert "missing.onnx" in _one_line(e, 3)
    with pytest.raises(InputFileError):  # a directory is not a regular file (and must not hang)
        ovb.run_onnx_file(tmp_path, np.zeros((1, 3, 8, 8), np.float32))


def test_missing_openvino_names_the_extra(r50, r50_files, monkeypatch):
    """Without openvino: MissingFrameworkError naming senet-hub[openvino] (exit 8), not ImportError."""
    for name in [m for m in sys.modules if m == "openvino" or m.startswith("openvino.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    for call in (
        lambda: builders.get("openvino"),
        lambda: ovb.build(r50),
        lambda: ovb.run_onnx_file(r50_files["inline"], np.zeros((1, 3, 224, 224), np.float32)),
    ):
        with pytest.raises(MissingFrameworkError) as e:
            call()
        assert "senet-hub[openvino]" in _one_line(e, 8)
    assert ovb.available() is None


def test_registered():
    assert builders.get("ov") is ovb and ovb.NAME == "openvino" and ovb.EXTRA == "openvino"
    assert builders.BACKENDS["openvino"][1] == "openvino"
