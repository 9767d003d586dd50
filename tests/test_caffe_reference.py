"""The Caffe path held to the truth: real BVLC Caffe + Axpy outputs for 4 released models.

Each canonical node's output is compared with the output of its last Caffe layer right after that
layer ran (first 64 values, sum and abs-sum), and the logits/prob in full.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import PROTOTXT_DIR, RELEASED, WITH_CAFFE_REFERENCE, load_caffe_reference, needs_shared

from senet_hub import builders
from senet_hub.converters import caffe

RTOL = 1e-3


def _run(backend: str, model, x):
    if backend == "numpy64":
        from senet_hub.builders import numpy_ref

        return numpy_ref.run(numpy_ref.build(model, np.float64), x)
    if backend == "numpy32":
        from senet_hub.builders import numpy_ref

        return numpy_ref.run(numpy_ref.build(model, np.float32), x)
    mod = builders.get(backend)
    return mod.run(mod.build(model), x, taps=True)


def check_against_caffe(model, outs: dict, ref: dict, label: str) -> int:
    checked = 0
    for node in model.graph.nodes:
        layer = node.source[-1]
        key = f"layer/{layer}"
        assert f"{key}/maxabs" in ref, f"{label}: Caffe reference has no layer {layer} (node {node.name})"
        y = np.asarray(outs[node.name], np.float64)
        assert tuple(y.shape) == tuple(ref[f"{key}/shape"]), (
            f"{label}: {node.name} shape {y.shape} vs Caffe {ref[key + '/shape']}"
        )
        scale = float(ref[f"{key}/maxabs"])
        tol = RTOL * scale
        head = ref[f"{key}/head"]
        err = np.abs(y.reshape(-1)[: head.size] - head).max()
        assert err <= tol, f"{label}: node {node.name} (Caffe {layer}): head max|d| {err:.3g} > {tol:.3g}"
        # Sums of N values: element errors are independent, so allow sqrt(N) times the element tolerance.
        n = y.size
        for what, ours in (("sum", y.sum()), ("abssum", np.abs(y).sum())):
            d = abs(ours - float(ref[f"{key}/{what}"]))
            assert d <= tol * math.sqrt(n), (
                f"{label}: node {node.name} (Caffe {layer}): {what} off by {d:.3g} (> {tol * math.sqrt(n):.3g})"
            )
        checked += 1
    return checked


@needs_shared
@pytest.mark.parametrize("arch", WITH_CAFFE_REFERENCE)
@pytest.mark.parametrize("backend", ["numpy64", "numpy32", "torch"])
def test_matches_real_caffe(arch, backend, caffemodel):
    ref = load_caffe_reference(arch)
    model = caffe.load(PROTOTXT_DIR / f"{arch}.prototxt", caffemodel(arch))
    assert model.arch == arch, f"{arch} was not recognised as a released architecture"
    x = ref["input"]
    outs = _run(backend, model, x)
    checked = check_against_caffe(model, outs, ref, f"{arch}/{backend}")
    assert checked == len(model.graph.nodes)
    logits = outs["last_linear"]
    scale = np.abs(ref["logits"]).max()
    assert np.abs(logits - ref["logits"]).max() <= RTOL * scale
    assert np.abs(outs[model.graph.output] - ref["prob"]).max() <= RTOL * max(1.0, ref["prob"].max())
    assert (logits.argmax(1) == ref["logits"].argmax(1)).all()


@needs_shared
@pytest.mark.parametrize(
    "arch",
    [a if a in ("SE-BN-Inception", "SE-ResNet-50") else pytest.param(a, marks=pytest.mark.slow) for a in RELEASED],
)
def test_opencv_cross_check(arch, caffemodel):
    """OpenCV DNN reads the same files itself and must agree with the numpy reference on every layer."""
    pytest.importorskip("cv2", reason="opencv-python-headless not installed (pip install 'senet-hub[opencv]')")
    from senet_hub import verify

    path = caffemodel(arch)
    model = caffe.load(PROTOTXT_DIR / f"{arch}.prototxt", path)
    model.meta["source_paths"] = {"prototxt": str(PROTOTXT_DIR / f"{arch}.prototxt"), "caffemodel": str(path)}
    x = verify.default_input(model, batch=2)
    report = verify.verify(model, ["numpy", "opencv", "torch"], x, rtol=2e-3 if arch == "SENet-154" else RTOL)
    assert report.passed, report.to_text()
    assert all("opencv" in r["results"] for r in report.rows)
