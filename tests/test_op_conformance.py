"""Op conformance: every op of the canonical vocabulary x every backend, on the one shared fixture.

Two claims:

* Every backend's lowering table covers the vocabulary: an op declared in senet_hub.ops with
  neither a lowering nor a declared refusal is listed, per backend, in one failure message (so
  adding an op tells you exactly which lowerings are missing).
* Every op case of tests/all_ops.py (each op's corner cases: ceil pooling and the Caffe clip
  rule, asymmetric pads, padding-excluding average pools, grouped/dilated convs, 4-D reshapes ...)
  computes, in every installed backend, what the op's float64 reference (senet_hub.ops, run by
  the numpy builder) computes: every node tapped (a backend that returns fewer taps fails), each
  within 1e-4 of the node's max |ref| (tighter than verify's 1e-3: these graphs are a few nodes
  deep, so float32 rounding has nowhere to accumulate).

Caffe has no form for some cases (asymmetric conv pads, padding-excluding average pools,
input_norm): the writer must refuse them with an UnsupportedError naming the node, listed in
all_ops.CAFFE_REFUSES; what it writes is read back by senet-hub's Caffe reader and, independently,
by OpenCV DNN, and both must compute the reference.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
from all_ops import CAFFE_REFUSES, OPS_WITH_CASES, all_cases, all_ops_models, input_for

from senet_hub import ops
from senet_hub.builders import numpy_ref
from senet_hub.errors import UnsupportedError
from senet_hub.graph import Model

RTOL = 1e-4

# table name -> the module attribute holding it (every backend and the Caffe writer is a table)
TABLES = {
    "numpy": "senet_hub.builders.numpy_ref:LOWER",
    "torch": "senet_hub.builders.torch:LOWER",
    "onnx": "senet_hub.builders.onnx:LOWER",
    "mxnet": "senet_hub.builders.mxnet:LOWER",
    "tensorflow": "senet_hub.builders.tensorflow:LOWER",
    "chainer": "senet_hub.builders.chainer:LOWER",
    "caffe": "senet_hub.converters.caffe_writer:LOWER",
}

# backend -> the python module whose presence means "installed" (third-party: may skip)
RUNTIMES = {
    "torch": "torch",
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "tensorflow": "tensorflow",
    "mxnet": "mxnet",
    "chainer": "chainer",
    "opencv": "cv2",
}

CASES = dict(all_cases())


def test_every_op_has_a_case():
    assert sorted(OPS_WITH_CASES) == sorted(ops.ATTRS), "tests/all_ops.py needs a case for every op"


def test_every_backend_lowers_every_op():
    missing = {}
    for backend, module in TABLES.items():
        if module is None:
            continue
        mod, attr = module.split(":")
        table = getattr(importlib.import_module(mod), attr)  # no framework is imported by this
        assert isinstance(table, ops.Lowerings) and table.backend == backend.split("-")[0]
        if table.missing():
            missing[backend] = table.missing()
    assert not missing, "missing lowerings: " + "; ".join(f"{b}: {', '.join(m)}" for b, m in missing.items())


def test_a_missing_lowering_is_one_exception_naming_op_and_backend(monkeypatch):
    table = ops.Lowerings("toy")
    with pytest.raises(ops.MissingLowering, match=r"backend 'toy' cannot express op 'relu' \(node 'r'\)"):
        ops.plan(CASES["relu:plain"].graph, table)
    assert table.missing() == list(ops.ATTRS)
    table.unsupported("relu", "no such thing")
    assert "relu" not in table.missing()
    with pytest.raises(ops.MissingLowering, match="no such thing"):
        table.get("relu", "r")


def _exports(backend: str, model, tmp_path) -> list:
    """Every entry point of a table backend that turns a Model into something (each must plan first)."""
    if backend == "numpy":
        return [lambda: numpy_ref.build(model)]
    if backend == "torch":
        from senet_hub.builders import torch as tb

        return [lambda: tb.build(model), lambda: tb.SENetModule(model.graph)]
    if backend == "onnx":
        from senet_hub.builders import onnx as ox

        return [lambda: ox.to_onnx(model), lambda: ox.build(model), lambda: ox.to_bytes(model, inline=True)]
    if backend == "chainer":
        from senet_hub.builders import chainer as cb

        return [lambda: cb.build(model), lambda: cb.save(model, tmp_path / "net.npz")]
    if backend == "caffe":
        from senet_hub.converters import caffe_writer as cw

        return [lambda: cw.to_caffe(model), lambda: cw.save(model, tmp_path / "net")]
    if backend == "tensorflow":
        from senet_hub.builders import tensorflow as tfb

        return [lambda: tfb.build(model), lambda: tfb.save(model, tmp_path / "net.keras")]
    from senet_hub.builders import mxnet as mxb

    return [lambda: mxb.build(model), lambda: mxb.save(model, tmp_path / "net")]


@pytest.mark.parametrize("refusal", ["", "no such kernel"])
@pytest.mark.parametrize("backend", ["numpy", "torch", "onnx", "mxnet", "tensorflow", "chainer", "caffe"])
def test_missing_lowering_names_op_and_backend(backend, refusal, monkeypatch, tmp_path):
    mod, attr = TABLES[backend].split(":")
    table = getattr(importlib.import_module(mod), attr)
    _runtime({"onnx": "onnxruntime"}.get(backend, backend))
    # as if "sigmoid" had just been declared in ops.py and this backend had no lowering for it yet
    monkeypatch.delitem(table._fns, "sigmoid")
    if refusal:
        monkeypatch.setitem(table.refused, "sigmoid", refusal)
    assert "sigmoid" in table.missing() or refusal
    # Caffe refuses the every-op model's input_norm first: its probe is a Caffe-expressible SE gate
    model = CASES["axpy:a_nc11"] if backend == "caffe" else dict(all_ops_models())["senet_112"]
    for export in _exports(backend, model, tmp_path):
        with pytest.raises(
            ops.MissingLowering, match=rf"backend '{backend}' cannot express op 'sigmoid' \(node '"
        ) as e:
            export()
        assert e.value.backend == backend and e.value.op == "sigmoid"
        assert refusal in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.iterdir()), "a refused model leaves no file behind"


def _reference(model) -> dict[str, np.ndarray]:
    return numpy_ref.run(numpy_ref.build(model, np.float64), input_for(model), taps=True)


def _check(label: str, model, outs: dict[str, np.ndarray], names: list[str] | None = None) -> None:
    ref = _reference(model)
    names = names if names is not None else [n.name for n in model.graph.nodes]
    missing = [n for n in names if n not in outs]
    assert not missing, f"{label}: no tap for {missing}"
    for name in names:
        y, r = np.asarray(outs[name], np.float64), ref[name]
        assert y.shape == r.shape, f"{label}: {name} shape {y.shape} vs reference {r.shape}"
        scale = max(float(np.abs(r).max()), 1e-12)
        err = float(np.abs(y - r).max())
        assert err <= RTOL * scale, f"{label}: {name} max|d| {err:.3g} > {RTOL:g} x max|ref| {scale:.3g}"


def _runtime(backend: str) -> None:
    probe = RUNTIMES.get(backend)
    if probe is not None and importlib.util.find_spec(probe) is None:
        pytest.skip(f"{probe} is not installed")  # third-party framework: may skip


BUILDERS = ["numpy", "torch", "onnxruntime", "openvino", "tensorflow", "mxnet", "chainer"]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", BUILDERS)
def test_op_case_matches_the_reference(backend, case):
    from senet_hub import builders

    _runtime(backend)
    model = CASES[case]
    mod = builders.get(backend)
    x = input_for(model)
    outs = mod.run(mod.build(model), x, taps=True)
    _check(f"{backend} {case}", model, outs)
    final = mod.run(mod.build(model), x, taps=False)
    assert list(final) == [model.graph.output], f"{backend} {case}: taps=False returns only the output"
    _check(f"{backend} {case} (no taps)", model, final, [model.graph.output])


@pytest.mark.parametrize("case", list(CASES))
def test_op_case_through_caffe_files(case, tmp_path):
    """The Caffe writer's files, read back by senet-hub's reader and by OpenCV DNN."""
    from senet_hub.converters import caffe, caffe_writer

    model = CASES[case]
    prefix = tmp_path / "m"
    if case in CAFFE_REFUSES:
        node_names = [n.name for n in model.graph.nodes]
        with pytest.raises(UnsupportedError) as e:
            caffe_writer.save(model, prefix)
        assert any(f"'{n}'" in str(e.value) for n in node_names), f"the refusal names no node: {e.value}"
        assert not list(tmp_path.iterdir()), "a refused model leaves no file behind"
        return
    files = caffe_writer.save(model, prefix)
    proto = next(f for f in files if str(f).endswith(".prototxt"))
    weights = next(f for f in files if str(f).endswith(".caffemodel"))
    if model.weights:
        back = caffe.load(proto, weights, canonical=False)
    else:  # a weightless net's caffemodel holds no layer (the reader refuses those as not a caffemodel)
        back = Model(caffe.load_prototxt(proto), {}, {})
    x = input_for(model)
    y = numpy_ref.run(numpy_ref.build(back), x, taps=False)[back.graph.output]
    _check(f"caffe files {case}", model, {model.graph.output: y}, [model.graph.output])

    _runtime("opencv")
    from senet_hub.builders import opencv

    _check(f"opencv {case}", model, opencv.run(opencv.build(model), x, taps=True))


def test_caffe_refusals_are_only_the_listed_cases():
    assert CAFFE_REFUSES <= set(CASES), "CAFFE_REFUSES names a case that does not exist"
