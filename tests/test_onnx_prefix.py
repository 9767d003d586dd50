"""``--from onnx`` of graphs whose input first goes through a constant per-channel affine prefix
(converters/onnx_prefix.py): ``(x - mean) / std``, ``x * scale + shift``, ``x / 255``, a BGR <-> RGB
swap as Gather, Slice (step -1 or per channel + Concat), Split + Concat, and the dynamo exporter's
Transpose + GatherND + Transpose.

- each prefix becomes one ``input_norm``; the model converted back to ONNX (``convert --to onnx``,
  which writes the stage exactly) computes what onnxruntime computes on the ORIGINAL file within
  1e-5 * max|ref|, and so does the float64 reference of what was read;
- meta names the input convention where the prefix maps raw pixels (or a convention) onto a known
  convention, and the convention behind the stage (``input_stage_from``); otherwise a plain stage;
- a real ``torch.onnx.export`` of timm's seresnet18 wrapped with a BGR flip and ImageNet mean/std;
- refusals, one line, exit 6, naming the node and why it is no input stage: a non-constant
  operand, a spatially varying constant, a constant op after the first Conv, a division of a
  constant by the input, a stage read in two places.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import cli, one_line

from senet_hub import transforms
from senet_hub.builders import numpy_ref
from senet_hub.errors import UnsupportedError
from senet_hub.graph import Graph, Model, Node

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'senet-hub[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'senet-hub[onnx]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from senet_hub.builders import onnx as onnx_builder  # noqa: E402
from senet_hub.converters import onnx_source  # noqa: E402

MEAN = np.array(transforms.IMAGENET_MEAN, np.float32)
STD = np.array(transforms.IMAGENET_STD, np.float32)
CAFFE_MEAN = np.array([104.0, 117.0, 123.0], np.float32)
RNG = np.random.default_rng(0)
W = (RNG.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)
INT_MAX, INT_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def _i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def _model(prefix: list, inits: dict, last: str, opset: int = 17, shape: list | None = None) -> onnx.ModelProto:
    """x -> prefix nodes -> Conv(3 -> 4, 3 x 3, pad 1) -> Relu -> y."""
    nodes = [*prefix, helper.make_node("Conv", [last, "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]  # fmt: skip
    inits = {"w": W, "b": B, **inits}
    g = helper.make_graph(
        nodes,
        "prefix",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape or ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(
        g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8
    )  # onnxruntime reads IR <= 13


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    """A Constant node, as TorchScript's exporter writes scalars and slice bounds."""
    return helper.make_node("Constant", [], [name], name=f"{name}_const", value=numpy_helper.from_array(value))


def _node(op: str, ins: list[str], out: str, **attrs) -> onnx.NodeProto:
    return helper.make_node(op, ins, [out], name=out, **attrs)


def _ort(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


def _raw(order: str, top: int) -> dict:
    return {"channel_order": order, "range": [0, top], "mean": [0.0] * 3, "std": [1.0] * 3}


RAW_BGR1 = _raw("BGR", 1)
RAW_RGB1 = _raw("RGB", 1)
# name -> (prefix nodes, initializers, the prefix's last value, the input it takes, input convention, behind the stage)
CASES = {
    "sub_div": (
        [_node("Sub", ["x", "mean"], "s"), _node("Div", ["s", "std"], "d")],
        {"mean": MEAN.reshape(1, 3, 1, 1), "std": STD.reshape(1, 3, 1, 1)},
        "d", 1.0, RAW_RGB1, "rgb01",
    ),
    "mul_add_chw": (
        [_node("Mul", ["x", "k"], "m"), _node("Add", ["m", "t"], "a")],
        {"k": np.array([0.5, -2.0, 3.0], np.float32).reshape(3, 1, 1), "t": np.array([1, 2, 3], np.float32).reshape(3, 1, 1)},
        "a", 1.0, None, None,
    ),
    "div255_scalar_constant_node": (
        [_const("k255", np.array(255.0, np.float32)), _node("Div", ["x", "k255"], "d")],
        {}, "d", 255.0, None, None,
    ),
    "gather_scale_sub_caffe": (
        [_const("idx", _i64(2, 1, 0)), _node("Gather", ["x", "idx"], "g", axis=1),
         _node("Mul", ["k", "g"], "m"), _node("Sub", ["m", "mean"], "s")],
        {"k": np.array(255.0, np.float32), "mean": CAFFE_MEAN.reshape(3, 1, 1)},
        "s", 1.0, RAW_RGB1, "caffe",
    ),
    "constant_minus_x_then_add": (  # k - x and k * x with the constant first: the operand order matters
        [_node("Sub", ["k", "x"], "s"), _node("Mul", ["f", "s"], "m"), _node("Add", ["m", "t"], "a")],
        {"k": np.float32([1, 2, 3]).reshape(1, 3, 1, 1), "f": np.float32([2.0]), "t": np.float32([[[0.5]]])},
        "a", 1.0, None, None,
    ),
    "flip_slice_then_normalise": (
        [_node("Slice", ["x", "st", "en", "ax", "sp"], "f"), _node("Sub", ["f", "mean"], "s"), _node("Div", ["s", "std"], "d")],
        {"st": _i64(-1), "en": _i64(INT_MIN), "ax": _i64(1), "sp": _i64(-1),
         "mean": MEAN.reshape(1, 3, 1, 1), "std": STD.reshape(1, 3, 1, 1)},
        "d", 1.0, RAW_BGR1, "rgb01",
    ),
    "slice_concat": (  # torch.cat([x[:, 2:3], x[:, 1:2], x[:, 0:1]], 1), bounds as Constant nodes
        [_const("s2", _i64(2)), _const("e2", _i64(3)), _const("s1", _i64(1)), _const("e1", _i64(2)),
         _const("s0", _i64(0)), _const("a1", _i64(1)),
         _node("Slice", ["x", "s2", "e2", "a1"], "c2"), _node("Slice", ["x", "s1", "e1", "a1"], "c1"),
         _node("Slice", ["x", "s0", "s1", "a1"], "c0"), _node("Concat", ["c2", "c1", "c0"], "cat", axis=1),
         _node("Sub", ["cat", "mean"], "s"), _node("Div", ["s", "std"], "d")],
        {"mean": MEAN.reshape(1, 3, 1, 1) * 255, "std": STD.reshape(1, 3, 1, 1) * 255},
        "d", 255.0, _raw("BGR", 255), "rgb01",
    ),
    "split_squeeze_unsqueeze_concat": (  # r, g, b = x.unbind(1); torch.stack([b, g, r], 1)
        [helper.make_node("Split", ["x"], ["r", "g", "b_"], name="split", axis=1, num_outputs=3),
         *[_node("Squeeze", [v, "one"], f"{v}s") for v in ("r", "g", "b_")],
         *[_node("Unsqueeze", [f"{v}s", "one"], f"{v}u") for v in ("b_", "g", "r")],
         _node("Concat", ["b_u", "gu", "ru"], "cat", axis=1), _node("Mul", ["cat", "k"], "m")],
        {"one": _i64(1), "k": np.float32(1 / 255)},
        "m", 255.0, None, None,
    ),
    "transpose_gathernd_dynamo": (  # torch.onnx.export(dynamo=True) of x[:, [2, 1, 0]]
        [_node("Transpose", ["x"], "t0", perm=[1, 0, 2, 3]), _node("GatherND", ["t0", "idx"], "gn", batch_dims=0),
         _node("Transpose", ["gn"], "t1", perm=[1, 0, 2, 3]), _node("Sub", ["t1", "mean"], "s"),
         _node("Div", ["s", "std"], "d")],
        {"idx": _i64(2, 1, 0).reshape(3, 1), "mean": MEAN.reshape(1, 3, 1, 1), "std": STD.reshape(1, 3, 1, 1)},
        "d", 1.0, RAW_BGR1, "rgb01",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_prefix_is_one_input_norm_and_converts_exactly(tmp_path, case):
    prefix, inits, last, top, conv, behind = CASES[case]
    opset = 18 if any(n.op_type == "Split" for n in prefix) else 17  # Split's num_outputs is opset 18
    src = tmp_path / f"{case}.onnx"
    onnx.save(_model(prefix, inits, last, opset), str(src))
    model = onnx_source.load(src)
    assert [n.op for n in model.graph.nodes] == ["input_norm", "conv", "relu"]
    x = (RNG.random((2, 3, 8, 8)) * top).astype(np.float32)
    ref = _ort(src, x)  # onnxruntime on the original file
    assert _rel(numpy_ref.run(numpy_ref.build(model), x, taps=False)[model.graph.output], ref) < 1e-5
    if conv is None:
        assert model.meta["input_convention"] is None and "input_stage_from" not in model.meta
    else:
        assert model.meta["input_convention"] == {**conv, "size": 8}
        assert model.meta["input_stage_from"] == {**transforms.CONVENTIONS[behind], "size": 8}
    out = tmp_path / "back.onnx"
    r = cli("convert", "--from", "onnx", "--onnx", src, "--to", "onnx", "-o", out)
    assert r.exit_code == 0, r.output
    assert _rel(_ort(out, x), ref) < 1e-5


def test_own_export_without_metadata_recovers_the_convention(tmp_path):
    """senet-hub's own Gather + Mul + Add stage, its metadata stripped: the convention is found from
    the stage alone (rgb01 input mapped onto the Caffe convention)."""
    nodes = [Node("conv1", "conv", ["data"], {"out_channels": 4, "kernel": (3, 3), "pad": (1, 1, 1, 1), "bias": True}),
             Node("relu1", "relu", ["conv1"])]  # fmt: skip
    conv = {**transforms.CONVENTIONS["caffe"], "size": 8}
    m = Model(Graph(nodes, "data", (1, 3, 8, 8)), {"conv1.weight": W, "conv1.bias": B}, {"input_convention": conv})
    m = transforms.set_input_convention(m, "rgb01", fold=False)
    path = tmp_path / "own.onnx"
    onnx_builder.save(m, path)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save(proto, str(path))
    back = onnx_source.load(path)
    assert back.graph.nodes[0].op == "input_norm"
    assert back.meta["input_convention"] == {**transforms.CONVENTIONS["rgb01"], "size": 8}
    assert back.meta["input_stage_from"] == conv


def test_identity_prefix_and_mul_add_after_conv_unchanged(tmp_path):
    """x * 1 (Gather 0, 1, 2) makes no node; a per-channel gate Mul + Add later is still axpy."""
    prefix = [_node("Gather", ["x", "idx"], "g", axis=1), _node("Mul", ["g", "one"], "m")]
    model_proto = _model(prefix, {"idx": _i64(0, 1, 2), "one": np.float32([1.0])}, "m")
    g = model_proto.graph
    g.node.extend([
        _node("GlobalAveragePool", ["y"], "p"), _node("Sigmoid", ["p"], "gate"),
        _node("Mul", ["gate", "y"], "scaled"), _node("Add", ["scaled", "y"], "z"),
    ])  # fmt: skip
    g.output[0].name = "z"
    path = tmp_path / "axpy.onnx"
    onnx.save(model_proto, str(path))
    model = onnx_source.load(path)
    assert [n.op for n in model.graph.nodes] == ["conv", "relu", "global_avg_pool", "sigmoid", "axpy"]
    x = RNG.random((1, 3, 8, 8)).astype(np.float32)
    assert _rel(numpy_ref.run(numpy_ref.build(model), x, taps=False)[model.graph.output], _ort(path, x)) < 1e-5


# ------------------------------------------------------------------------------------ refusals

REFUSED = {
    "non_constant_operand": (
        [_node("Relu", ["x"], "r"), _node("Sub", ["x", "r"], "s")], {}, "s",
        ["'s' (Sub)", "other operand is computed at run time"],
    ),
    "spatially_varying_constant": (
        [_node("Mul", ["x", "k"], "m")], {"k": RNG.random((1, 3, 8, 8)).astype(np.float32)}, "m",
        ["'m' (Mul)", "varies over H, W"],
    ),
    "per_sample_constant": (
        [_node("Add", ["x", "k"], "a")], {"k": RNG.random((2, 3, 1, 1)).astype(np.float32)}, "a",
        ["'a' (Add)", "differs per sample"],
    ),
    "constant_divided_by_input": (
        [_node("Div", ["k", "x"], "d")], {"k": np.float32([1.0])}, "d",
        ["'d' (Div)", "divides a constant by the input"],
    ),
    "stage_read_twice": (  # x - mean feeds the conv and a second scaled branch: no single input_norm
        [_node("Sub", ["x", "k"], "s"), _node("Mul", ["s", "k"], "m"), _node("Add", ["s", "m"], "a")],
        {"k": np.float32([2.0])}, "a",
        ["'s' (Sub)", "read in 2 places"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_inexpressible_prefix_refused_one_line_exit_6(tmp_path, case):
    prefix, inits, last, fragments = REFUSED[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(_model(prefix, inits, last, shape=[1, 3, 8, 8]), str(path))
    r = cli("convert", "--from", "onnx", "--onnx", path, "--to", "onnx", "-o", tmp_path / "o.onnx")
    one_line(r, UnsupportedError.exit_code, *fragments)
    assert not (tmp_path / "o.onnx").exists()


def test_constant_arithmetic_after_the_first_conv_refused(tmp_path):
    """A per-channel Sub after the Conv is no input stage: refused as before, naming the node."""
    p = _model([_node("Sub", ["x", "k"], "s")], {"k": MEAN.reshape(3, 1, 1)}, "s")
    p.graph.node.append(_node("Sub", ["y", "k4"], "late"))
    p.graph.initializer.append(numpy_helper.from_array(np.float32([1, 2, 3, 4]).reshape(4, 1, 1), "k4"))
    p.graph.output[0].name = "late"
    path = tmp_path / "late.onnx"
    onnx.save(p, str(path))
    r = cli("convert", "--from", "onnx", "--onnx", path, "--to", "onnx", "-o", tmp_path / "o.onnx")
    one_line(r, 6, "'late' (Sub)", "computes on a run-time tensor")


# ------------------------------------------------------------------- a real torch.onnx.export


def test_torch_export_of_timm_wrapped_with_its_preprocessing(tmp_path):
    """seresnet18 behind x[:, [2, 1, 0]] and ImageNet mean/std (a BGR-in-[0, 1] wrapper), exported by
    TorchScript's exporter: one input_norm, convention BGR [0, 1] -> rgb01, exact through ONNX again."""
    # imported here: the graphs above need neither torch nor timm
    torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
    timm = pytest.importorskip("timm", reason="timm not installed (the test extra installs it --no-deps)")

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = timm.create_model("seresnet18", pretrained=False, num_classes=10).eval()
            self.register_buffer("mean", torch.tensor(transforms.IMAGENET_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(transforms.IMAGENET_STD).view(1, 3, 1, 1))

        def forward(self, x):
            return self.net((x[:, [2, 1, 0]] - self.mean) / self.std)

    torch.manual_seed(0)
    src = tmp_path / "wrapped.onnx"
    torch.onnx.export(Wrapped().eval(), (torch.zeros(1, 3, 32, 32),), str(src), input_names=["x"],
                      output_names=["logits"], opset_version=17, dynamo=False)  # fmt: skip
    model = onnx_source.load(src)
    assert model.graph.nodes[0].op == "input_norm" and [n.op for n in model.graph.nodes].count("input_norm") == 1
    assert model.meta["input_convention"] == {**RAW_BGR1, "size": 32}
    assert model.meta["input_stage_from"]["mean"] == transforms.IMAGENET_MEAN
    x = RNG.random((1, 3, 32, 32)).astype(np.float32)
    ref = _ort(src, x)
    out = tmp_path / "back.onnx"
    r = cli("convert", "--from", "onnx", "--onnx", src, "--to", "onnx", "-o", out)
    assert r.exit_code == 0, r.output
    assert _rel(_ort(out, x), ref) < 1e-5
