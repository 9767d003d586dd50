"""ONNX export (senet_hub.builders.onnx): every op against the numpy reference, node by node."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from all_ops import senet_112
from conftest import PROTOTXT_DIR, RELEASED, WITH_CAFFE_REFERENCE, load_caffe_reference, needs_shared

from senet_hub.builders import numpy_ref
from senet_hub.errors import OutputError, UnsupportedError
from senet_hub.graph import Graph, Model, Node, pool_out, validate

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from senet_hub.builders import onnx as ox  # noqa: E402  (ours: a broken module fails, never skips)

RTOL = 1e-5


META = {
    "arch": "test-all-ops",
    "input_convention": {
        "channel_order": "BGR",
        "range": [0, 255],
        "mean": [104.0, 117.0, 123.0],
        "std": [1, 1, 1],
        "size": 112,
    },
    "class_order": "test",
    "source_sha256": {"prototxt": "0" * 64},
}


@pytest.fixture(scope="module")
def model() -> Model:
    """The shared every-op fixture (tests/all_ops.py), with a Caffe source's meta."""
    m = senet_112()
    m.meta = dict(META)
    validate(m)
    return m


def _x(m: Model, batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, *m.graph.input_shape[1:])).astype(np.float32)


def _compare(ref: dict, got: dict, nodes) -> None:
    bad = []
    for n in nodes:
        r, g = ref[n], got[n]
        assert g.shape == r.shape, f"{n}: shape {g.shape} != {r.shape}"
        err, scale = float(np.max(np.abs(g - r))), float(np.max(np.abs(r)))
        if err > RTOL * max(scale, 1e-30):
            bad.append(f"{n}: max|d| {err:.3g} > {RTOL} * {scale:.3g}")
    assert not bad, "; ".join(bad)


def _nodes(m: Model) -> list[str]:
    return [n.name for n in m.graph.nodes]


@pytest.mark.parametrize("opset", [13, 17, 21])
@pytest.mark.parametrize("inline", [False, True])
def test_every_node_matches_reference(model, opset, inline):
    proto = ox.to_onnx(model, opset=opset, inline=inline)
    onnx.checker.check_model(proto, full_check=True)
    domains = {n.domain for n in proto.graph.node}
    if inline:
        assert domains == {""} and not proto.functions
        assert [o.domain for o in proto.opset_import] == [""]
    else:
        axpys = [n for n in proto.graph.node if n.op_type == "Axpy"]
        assert [n.name for n in axpys] == ["layer1.0.axpy", "layer2.axpy"]
        assert {n.domain for n in axpys} == {ox.DOMAIN}
        assert {(o.domain, o.version) for o in proto.opset_import} == {("", opset), (ox.DOMAIN, 1)}
        assert [(f.domain, f.name, [n.op_type for n in f.node]) for f in proto.functions] == [
            (ox.DOMAIN, "Axpy", ["Mul", "Add"])
        ]
    native = ox.build(model, inline=inline, opset=opset)
    for batch in (1, 3):  # one exported model, dynamic batch
        x = _x(model, batch)
        ref = numpy_ref.run(numpy_ref.build(model, np.float64), x)
        got = ox.run(native, x, taps=True)
        assert set(got) == set(_nodes(model))
        _compare(ref, got, _nodes(model))
        out = ox.run(native, x, taps=False)  # the optimized session
        assert list(out) == ["prob"]
        _compare(ref, out, ["prob"])


def test_inline_is_the_onnx_inliner_result(model):
    """inline=True is the function export with the function inlined (as onnx.inliner does it)."""
    import collections

    from onnx.inliner import inline_local_functions

    by_inliner = inline_local_functions(ox.to_onnx(model))
    ours = ox.to_onnx(model, inline=True)
    assert collections.Counter(n.op_type for n in by_inliner.graph.node) == collections.Counter(
        n.op_type for n in ours.graph.node
    )
    x = _x(model, 2)
    a = ort.InferenceSession(by_inliner.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    b = ort.InferenceSession(ours.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"data": x})
    np.testing.assert_array_equal(a[0], b[0])


def test_fixed_batch(model):
    proto = ox.to_onnx(model, batch=2)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_graph_io_and_metadata(model):
    proto = ox.to_onnx(model)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "data" and out.name == "prob"
    for v, dims in ((inp, ["N", 3, 112, 112]), (out, ["N", 10])):
        assert v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] == dims
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    assert meta["arch"] == "test-all-ops"
    assert meta["input_convention"]["channel_order"] == "BGR" and meta["input_convention"]["size"] == 112
    assert meta["class_order"] == "test"
    assert meta["source_sha256"] == {"prototxt": "0" * 64}
    bare = Model(model.graph, model.weights, {})
    meta = {p.key: json.loads(p.value) for p in ox.to_onnx(bare).metadata_props}
    assert meta["arch"] == meta["input_convention"] == meta["class_order"] == "unknown"
    assert meta["source_sha256"] == {}


def test_ops_mapping(model):
    proto = ox.to_onnx(model)
    nodes = {n.name: n for n in proto.graph.node}
    attrs = {name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for name, n in nodes.items()}
    assert attrs["layer1.0.conv1"]["pads"] == [0, 0, 1, 1] and attrs["layer1.0.conv1"]["group"] == 4
    assert attrs["layer0.bn1"]["epsilon"] == pytest.approx(1e-5) and attrs["layer1.0.bn1"]["epsilon"] == pytest.approx(
        1e-3
    )
    assert attrs["layer0.pool"]["ceil_mode"] == 1  # 112 k3 s2 p0 -> 56
    assert attrs["layer1.0.avg"]["count_include_pad"] == 1
    assert attrs["layer2.pool"].get("ceil_mode", 0) == 0 and attrs["layer2.pool"]["pads"] == [0, 0, 1, 1]
    # clip rule in H, ceil in W: floor mode with the W end pad grown to reach the ceil size
    assert attrs["layer3.clip"].get("ceil_mode", 0) == 0 and attrs["layer3.clip"]["pads"] == [2, 1, 2, 2]
    assert attrs["layer3.avg_ceil"]["ceil_mode"] == 1
    assert nodes["layer4.dropout"].op_type == "Identity"
    assert nodes["last_linear"].op_type == "Gemm" and attrs["last_linear"]["transB"] == 1
    assert nodes["layer2.gate.scale"].op_type == "Mul" and nodes["prob"].op_type == "Softmax"
    assert [n.op_type for n in proto.graph.node[:3]] == ["Gather", "Mul", "Add"]
    # ONNX shape inference agrees with the canonical shapes on every value
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    dims = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in inferred.graph.value_info
    }
    shapes = validate(model)
    for n in _nodes(model)[:-1]:
        assert dims[n] == ["N", *shapes[n][1:]], n


@pytest.mark.parametrize(
    "size,k,s,p0,p1",
    [
        (112, 3, 2, 0, 0),
        (14, 3, 2, 2, 2),
        (14, 3, 2, 1, 1),
        (3, 2, 2, 1, 1),
        (9, 3, 2, 1, 0),
        (10, 3, 3, 0, 2),
        (28, 3, 2, 0, 1),
    ],
)
@pytest.mark.parametrize("op,include", [("max_pool", True), ("avg_pool", True), ("avg_pool", False)])
@pytest.mark.parametrize("ceil", [True, False])
def test_pool_sizes_follow_caffe(size, k, s, p0, p1, op, include, ceil):
    """onnxruntime's pool output (size and values) equals graph.pool_out incl. Caffe's clip rule."""
    node = Node(
        "pool",
        op,
        ["data"],
        dict(kernel=(k, 1), stride=(s, 1), pad=(p0, 0, p1, 0), ceil=ceil, count_include_pad=include),
    )
    m = Model(Graph([node], "data", (1, 2, size, 3)), {}, {})
    x = _x(m, 2)
    got = ox.run(ox.build(m), x)["pool"]
    assert got.shape[2] == pool_out(size, k, s, p0, p1, ceil)
    _compare(numpy_ref.run(numpy_ref.build(m), x), {"pool": got}, ["pool"])


def test_reference_evaluator_runs_the_function(model):
    from onnx.reference import ReferenceEvaluator

    x = _x(model, 2)
    ref = numpy_ref.run(numpy_ref.build(model), x)
    # opset 17: onnx.reference's BatchNormalization-9 (opsets 9-13) wrongly runs in training mode
    proto = ox.to_onnx(model, opset=17)
    assert proto.functions
    (out,) = ReferenceEvaluator(proto).run(None, {"data": x})
    _compare(ref, {"prob": out}, ["prob"])


def test_deterministic_bytes_and_save(model, tmp_path):
    a = ox.to_bytes(model)
    assert a == ox.to_bytes(model.copy())
    assert ox.to_bytes(model, inline=True) != a
    path = tmp_path / "m.onnx"
    assert ox.save(model, path) == [str(path)]
    assert path.read_bytes() == a
    ox.save(model, path, opset=21, inline=True)  # replaces the file
    assert path.read_bytes() == ox.to_bytes(model, opset=21, inline=True)
    assert os.listdir(tmp_path) == ["m.onnx"]
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded, full_check=True)


def test_unwritable_output_leaves_nothing(model, tmp_path):
    with pytest.raises(OutputError) as e:
        ox.save(model, tmp_path / "missing" / "m.onnx")
    assert "\n" not in str(e.value)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: directory permissions are not enforced")
        with pytest.raises(OutputError):
            ox.save(model, ro / "m.onnx")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o700)


def test_write_error_removes_temp(model, tmp_path, monkeypatch):
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(28, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if "w" in mode and str(tmp_path) in str(path) else f

    monkeypatch.setattr(builtins, "open", fake_open)
    with pytest.raises(OutputError):
        ox.save(model, tmp_path / "m.onnx")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_opset_out_of_range(model):
    with pytest.raises(UnsupportedError):
        ox.to_onnx(model, opset=11)


def test_registered_backend():
    from senet_hub import builders

    mod = builders.get("onnxruntime")
    assert mod is ox and mod.NAME == "onnxruntime" and mod.EXTRA == "onnx" and mod.available()


# test_missing_lowering_names_op_and_backend: tests/test_op_conformance.py (every table backend)


def test_every_op_has_an_onnx_lowering():
    assert ox.LOWER.missing() == [] and not ox.LOWER.refused


# ------------------------------------------------------------------ released architectures


def released_model(arch: str, seed: int = 0) -> Model:
    """zoo.synthetic_model(arch): the released architecture with deterministic synthetic weights."""
    from senet_hub import zoo

    return zoo.synthetic_model(arch, seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize("arch", RELEASED)
def test_released_arch_matches_numpy(arch):
    """Every released architecture: exported (function and inlined), every node and the final
    output vs float64 numpy."""
    from senet_hub import verify

    model = released_model(arch)
    x = verify.default_input(model, batch=1)
    ref = numpy_ref.run(numpy_ref.build(model, np.float64), x, taps=False)[model.graph.output]
    for inline in (False, True):
        report = verify.verify(
            model,
            ["numpy", "onnxruntime"],
            x,
            rtol=2e-3 if arch == "SENet-154" else 1e-3,
            onnxruntime={"inline": inline},
        )
        assert report.passed, report.to_text()
        assert all("onnxruntime" in r["results"] for r in report.rows)
        proto = ox.to_onnx(model, inline=inline)
        onnx.checker.check_model(proto, full_check=True)
        has_axpy = any(n.op == "axpy" for n in model.graph.nodes)  # SE-BN-Inception gates with channel_scale
        assert ("Axpy" in {n.op_type for n in proto.graph.node}) == (has_axpy and not inline)
        out = ox.run(ox.build(model, inline=inline), x, taps=False)[model.graph.output]
        assert out.shape == ref.shape
        err = np.abs(out - ref).max()
        assert err <= 1e-3 * np.abs(ref).max(), f"{arch} inline={inline}: max|d| {err:.3g}"
        assert (out.argmax(1) == ref.argmax(1)).all()


@needs_shared
@pytest.mark.parametrize("inline", [False, True])
@pytest.mark.parametrize(
    "arch", [a if a == "SE-ResNet-50" else pytest.param(a, marks=pytest.mark.slow) for a in WITH_CAFFE_REFERENCE]
)
def test_matches_real_caffe(arch, inline, caffemodel):
    """Every node of the exported model in onnxruntime against real Caffe's outputs (shared refs)."""
    from test_caffe_reference import check_against_caffe

    from senet_hub.converters import caffe

    ref = load_caffe_reference(arch)
    model = caffe.load(PROTOTXT_DIR / f"{arch}.prototxt", caffemodel(arch), canonical=True)
    outs = ox.run(ox.build(model, inline=inline), ref["input"], taps=True)
    assert check_against_caffe(model, outs, ref, f"{arch}/onnxruntime inline={inline}") == len(model.graph.nodes)
    logits = outs[[n.name for n in model.graph.nodes if n.op == "linear"][-1]]
    assert (logits.argmax(1) == ref["logits"].argmax(1)).all()
