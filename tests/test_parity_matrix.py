"""The parity matrix: architecture x backend x reference, one cell per test id
(`SE-ResNet-50-torch-vs-caffe`), all from the one `cell` fixture.

References:

* caffe: real BVLC Caffe + Axpy outputs (../shared/reference/caffe/outputs, 4 released models).
  Each canonical node's output against the output of its last Caffe layer right after that layer
  ran (first 64 values, sum and abs-sum; tolerance 1e-3 of the layer's max |value|), then the
  logits and prob in full, and the same top-1.
* opencv: OpenCV DNN reads the same .prototxt/.caffemodel itself; `verify` holds numpy, OpenCV and
  torch to each other on every layer (1e-3, 2e-3 for SENet-154).
* numpy: the float64 reference. A released architecture's .pth loads strict into senet-hub's torch
  module built from the architecture alone, and its output matches (1e-3 of max |ref|).

Cells that live with their backend's other tests (same fixture data, same `parity` helper):
real Caffe vs onnxruntime in test_onnx.py::test_matches_real_caffe, vs MXNet and Chainer in
test_mxnet_chainer.py::test_matches_real_caffe, vs TensorFlow in
test_tensorflow_builder.py::test_matches_real_caffe; the MindSpore family against MindCV's own
outputs (numpy and torch) in test_mindspore.py::test_reader_matches_mindcv.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import PROTOTXT_DIR, RELEASED, WITH_CAFFE_REFERENCE, load_caffe_reference, needs_shared
from parity import RTOL, check_against_caffe

from senet_hub import builders, verify, zoo
from senet_hub.builders import numpy_ref
from senet_hub.converters import caffe
from senet_hub.converters.pth import save_model as save_pth

BIG = {"SE-ResNet-152", "SE-ResNeXt-101", "SENet-154"}
# the Caffe release and MindCV: the timm family is proven against timm's own forward instead
# (tests/test_timm_zoo.py), a reference no one here wrote, rather than torch vs numpy
MATRIX_ARCHS = zoo.list_archs("caffe") + zoo.list_archs("mindcv")


@dataclass(frozen=True)
class Cell:
    arch: str
    backend: str
    reference: str

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.backend}-vs-{self.reference}"


def _run_caffe_backend(backend: str, model, x) -> dict:
    """All node outputs (taps) of one backend; numpy64/numpy32 are the reference at either precision."""
    precision = {"numpy64": np.float64, "numpy32": np.float32}
    if backend in precision:
        return numpy_ref.run(numpy_ref.build(model, precision[backend]), x)
    mod = builders.get(backend)
    return mod.run(mod.build(model), x, taps=True)


def _vs_caffe(cell: Cell, caffemodel) -> None:
    ref = load_caffe_reference(cell.arch)
    model = caffe.load(PROTOTXT_DIR / f"{cell.arch}.prototxt", caffemodel(cell.arch))
    assert model.arch == cell.arch, f"{cell.arch} was not recognised as a released architecture"
    x = ref["input"]
    outs = _run_caffe_backend(cell.backend, model, x)
    checked = check_against_caffe(model, outs, ref, f"{cell.arch}/{cell.backend}")
    assert checked == len(model.graph.nodes)
    logits = outs["last_linear"]
    scale = np.abs(ref["logits"]).max()
    assert np.abs(logits - ref["logits"]).max() <= RTOL * scale
    assert np.abs(outs[model.graph.output] - ref["prob"]).max() <= RTOL * max(1.0, ref["prob"].max())
    assert (logits.argmax(1) == ref["logits"].argmax(1)).all()


def _opencv_vs_numpy(cell: Cell, caffemodel) -> None:
    pytest.importorskip("cv2", reason="opencv-python-headless not installed (pip install 'senet-hub[opencv]')")
    path = caffemodel(cell.arch)
    model = caffe.load(PROTOTXT_DIR / f"{cell.arch}.prototxt", path)
    model.meta["source_paths"] = {"prototxt": str(PROTOTXT_DIR / f"{cell.arch}.prototxt"), "caffemodel": str(path)}
    x = verify.default_input(model, batch=2)
    rtol = 2e-3 if cell.arch == "SENet-154" else RTOL
    report = verify.verify(model, ["numpy", "opencv", "torch"], x, rtol=rtol)
    assert report.passed, report.to_text()
    assert all("opencv" in r["results"] for r in report.rows)


def _torch_pth_vs_numpy(cell: Cell, tmp_path) -> None:
    pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
    from senet_hub.builders import torch as tb

    model = zoo.synthetic_model(cell.arch, seed=1)
    path = tmp_path / "m.pth"
    save_pth(model, str(path))
    module = tb.load_state_dict(zoo.expand(cell.arch), path)  # built from the architecture alone, strict=True
    x = np.random.default_rng(0).normal(0, 1, (1, *model.graph.input_shape[1:])).astype(np.float32)
    got = tb.run(module, x, taps=False)[model.graph.output]
    ref = numpy_ref.forward(model, x)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


def _param(cell: Cell, slow: bool):
    marks = [needs_shared] if cell.reference in ("caffe", "opencv") else []
    return pytest.param(cell, id=cell.id, marks=[*marks, pytest.mark.slow] if slow else marks)


CELLS = [
    *(_param(Cell(a, b, "caffe"), False) for a in WITH_CAFFE_REFERENCE for b in ("numpy64", "numpy32", "torch")),
    *(_param(Cell(a, "opencv", "numpy"), a not in ("SE-BN-Inception", "SE-ResNet-50")) for a in RELEASED),
    *(_param(Cell(a, "torch", "numpy"), a in BIG) for a in MATRIX_ARCHS),
]

# reference (and backend where it decides) -> the check; one entry per kind of cell
CHECKS: dict[tuple[str, str], Callable[..., None]] = {
    ("caffe", "*"): lambda cell, caffemodel, tmp_path: _vs_caffe(cell, caffemodel),
    ("numpy", "opencv"): lambda cell, caffemodel, tmp_path: _opencv_vs_numpy(cell, caffemodel),
    ("numpy", "torch"): lambda cell, caffemodel, tmp_path: _torch_pth_vs_numpy(cell, tmp_path),
}


@pytest.fixture(params=CELLS)
def cell(request) -> Cell:
    return request.param


def test_parity(cell: Cell, caffemodel, tmp_path):
    check = CHECKS.get((cell.reference, cell.backend)) or CHECKS[(cell.reference, "*")]
    check(cell, caffemodel, tmp_path)


def test_matrix_is_complete():
    """Every cell the old per-framework files checked is in the matrix (none dropped in the merge)."""
    ids = {p.values[0].id for p in CELLS}
    want = {f"{a}-{b}-vs-caffe" for a in WITH_CAFFE_REFERENCE for b in ("numpy64", "numpy32", "torch")}
    want |= {f"{a}-opencv-vs-numpy" for a in RELEASED} | {f"{a}-torch-vs-numpy" for a in MATRIX_ARCHS}
    assert ids == want
    assert len(ids) == len(CELLS)
