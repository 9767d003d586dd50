"""verify in chunks: the same report as one pass, memory bounded by one chunk, and the first
divergent node named when one node is perturbed (issue: verify at scale, item 1)."""

from __future__ import annotations

import tracemalloc
import types

import numpy as np
import pytest

from senet_hub import builders, verify, zoo
from senet_hub.builders import numpy_ref


@pytest.fixture(scope="module")
def model():
    return zoo.synthetic_model("SE-BN-Inception", seed=3)


def _fake_backend(perturb: str | None = None, scale: float = 1.0):
    """A backend that is numpy float32 on a copy of the model with one node's weights scaled."""

    def build(m):
        m = m.copy()
        if perturb:
            for k in [k for k in m.weights if k.startswith(perturb + ".")]:
                m.weights[k] = np.asarray(m.weights[k]) * scale
        return numpy_ref.build(m, np.float32)

    return types.SimpleNamespace(build=build, run=numpy_ref.run, available=lambda: "test")


def test_chunks_give_the_same_report(model, monkeypatch):
    monkeypatch.setattr(builders, "get", lambda name: _fake_backend())
    x = verify.default_input(model, batch=3, seed=1)
    whole = verify.verify(model, ["numpy", "fake"], x, chunk=3)
    parts = verify.verify(model, ["numpy", "fake"], x, chunk=2)
    assert whole.passed and parts.passed
    assert [r["node"] for r in whole.rows] == [r["node"] for r in parts.rows]
    for a, b in zip(whole.rows, parts.rows):
        ra, rb = a["results"]["fake"], b["results"]["fake"]
        # BLAS blocks by batch size, so the float32 values themselves differ in the last bits
        assert ra.max_abs == pytest.approx(rb.max_abs, rel=1e-3, abs=1e-9)
        assert ra.cos == pytest.approx(rb.cos, abs=1e-9)
    np.testing.assert_allclose(whole.outputs["fake"], parts.outputs["fake"], rtol=1e-5, atol=1e-7)
    assert whole.topk == parts.topk


def test_perturbed_node_is_named_first(model, monkeypatch):
    target = next(n.name for n in model.graph.nodes[len(model.graph.nodes) // 2 :] if n.op == "conv")
    monkeypatch.setattr(builders, "get", lambda name: _fake_backend(target, 1.01))
    report = verify.verify(model, ["numpy", "fake"], verify.default_input(model, 2, 7), chunk=1)
    assert not report.passed
    assert report.first_divergent["fake"] == target


@pytest.mark.slow
def test_memory_is_bounded_by_the_chunk(model, monkeypatch):
    monkeypatch.setattr(builders, "get", lambda name: _fake_backend())
    x = verify.default_input(model, batch=4, seed=2)
    peaks = {}
    for chunk in (4, 1):
        tracemalloc.start()
        verify.verify(model, ["numpy", "fake"], x, chunk=chunk)
        peaks[chunk] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[1] < 0.5 * peaks[4], peaks  # ~1/4 of the taps, plus fixed costs (weights)


def test_default_chunk_fits_the_budget(model):
    shapes = verify.infer_shapes(model, (1, *model.graph.input_shape[1:]))
    c = verify.default_chunk(model, shapes)
    per_image = sum(int(np.prod(s[1:])) for s in shapes.values()) * 12
    assert c >= 1 and (c == 1 or c * per_image <= verify.TAP_BUDGET)


def test_a_backend_with_fewer_taps_fails(model, monkeypatch):
    """A backend that silently skips a node used to pass (the row showed '-'): now an error."""
    fake = _fake_backend()
    run_all = fake.run
    dropped = model.graph.nodes[5].name

    def run(native, x, taps=True):
        out = run_all(native, x, taps=taps)
        out.pop(dropped)
        return out

    fake.run = run
    monkeypatch.setattr(builders, "get", lambda name: fake)
    report = verify.verify(model, ["numpy", "fake"], verify.default_input(model, 1, 7))
    assert not report.passed and dropped in report.errors["fake"]
    fake.PARTIAL_TAPS = "declared: this backend cannot expose every node"
    assert verify.verify(model, ["numpy", "fake"], verify.default_input(model, 1, 7)).passed
