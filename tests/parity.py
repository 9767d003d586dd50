"""Parity checks shared by the test modules (a helper, not a test file): one node-by-node
comparison against real Caffe's per-layer outputs, used by tests/test_parity_matrix.py and by the
backend files that hold their own real-Caffe cells (test_onnx.py, test_mxnet_chainer.py,
test_tensorflow_builder.py)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

RTOL = 1e-3  # of each layer's max |value| in real Caffe's output; never loosened


def check_against_caffe(model: Any, outs: dict, ref: dict, label: str, rtol: float = RTOL) -> int:
    """Each node's output against the output of its last Caffe layer (first values, sum, abs-sum);
    returns the number of nodes checked (the caller asserts it is every node)."""
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
        tol = rtol * scale
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
