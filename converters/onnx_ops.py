"""ONNX op handlers for the ``--from onnx`` reader: one small function per ONNX op type,
registered with ``@handles("Type")`` in ``HANDLERS``, turning a node (its inputs computed at run
time) into canonical nodes through a ``Context``. ``onnx_source`` drives them; a node whose
inputs are all constants never gets here (``onnx_fold`` folds it).

ONNX op -> canonical op:

- Conv -> conv; BatchNormalization (inference) -> batch_norm; Relu, Sigmoid, Softmax (axis 1),
  Concat, GlobalAveragePool, Flatten (axis 1), Reshape (constant target) -> the same;
  ReduceMean over H, W -> global_avg_pool; Identity / Dropout on a tensor -> dropout (identity);
  Squeeze / Unsqueeze -> reshape (or a view of the same data);
- MaxPool / AveragePool -> max_pool / avg_pool. ``ceil_mode = 1`` is ops.pool_out's clip rule
  (a last window starting in the end padding is dropped): that is what the ONNX spec says since
  MaxPool-22, and what onnxruntime, ``onnx.reference`` and PyTorch compute; ONNX shape
  inference alone does not clip (so its shapes are ignored). With dynamic H, W such a pool's
  size depends on the input: ``--input-shape`` is asked for;
- Mul of an N x C x H x W tensor by an N x C x 1 x 1 (or N x C) gate -> channel_scale, or with
  its Add one axpy (``onnx_patterns``); Add of two tensors of one shape -> add;
  ``org.senet-hub::Axpy`` -> axpy;
- Gemm (transA 0) and MatMul [+ Add of a constant bias] on a 2-D input -> linear;
- Gather, and Sub / Div / Mul / Add by a constant, on a run-time tensor: refused, except in a
  constant per-channel prefix on the graph input, which ``onnx_prefix.input_stage`` takes as one
  input_norm before the pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from senet_hub.errors import FormatError, ModelError

from .onnx_context import AXPY_DOMAIN, Context, Tensor, float_attr
from .onnx_fold import Derived, Sym, syms
from .onnx_patterns import fuse_axpy, gate_pair, hold_for_add, matmul_bias

# ONNX op types a graph may hold (default domain) besides FOLDABLE, in the order an error lists them;
# each has its handler below (checked at the end of this module)
LAYER_OPS = (
    "Conv", "BatchNormalization", "Relu", "Sigmoid", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean",
    "Mul", "Add", "Gemm", "MatMul", "Flatten", "Reshape", "Softmax", "Concat", "Identity", "Dropout", "Gather",
    "Squeeze", "Unsqueeze",
)  # fmt: skip

Handler = Callable[[Context, Any, dict[str, Any]], None]
# (domain, op type) -> handler; the default domain is "" (a node's "ai.onnx" is looked up as "")
HANDLERS: dict[tuple[str, str], Handler] = {}


def handles(*types: str, domain: str = "") -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for t in types:
            HANDLERS[(domain, t)] = fn
        return fn

    return register


def handler_for(node: Any) -> Handler | None:
    """The handler of a node (None for an op outside the vocabulary)."""
    return HANDLERS.get((AXPY_DOMAIN, "Axpy") if node.domain == AXPY_DOMAIN else ("", node.op_type))


# ------------------------------------------------------------------------------ shared helpers


def _pads(ctx: Context, n: Any, at: dict[str, Any], x: Tensor, k: list[int], s: list[int], d: list[int]) -> list[int]:
    """A conv's or pool's pads [top, left, bottom, right], from ``pads`` or ``auto_pad``."""
    auto = str(at.get("auto_pad", "NOTSET"))
    if auto in ("NOTSET", ""):
        pads = [int(v) for v in at.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4 or min(pads) < 0:
            raise ctx.err(n, f"pads {pads} are not four non-negative ints", FormatError)
        return pads
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.err(n, f"auto_pad '{auto}' is not an ONNX value", FormatError)
    if x.dep:
        raise ctx.need_size(n, f"pads by auto_pad {auto}, which follows the input size")
    begin, end = [], []
    for i in range(2):
        size = x.shape[2 + i]
        out = -(-size // s[i])
        total = max((out - 1) * s[i] + (k[i] - 1) * d[i] + 1 - size, 0)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        begin.append(lo)
        end.append(total - lo)
    return begin + end


def _unary(ctx: Context, n: Any, op: str, attrs: dict[str, Any] | None = None) -> Tensor:
    x = ctx.plain(ctx.tensor(n, n.input[0]), n.name)
    out = ctx.emit(op, [x.name], attrs or {}, ctx.name_for(n, op), n.name)
    t = Tensor(out, x.shape, x.dep)
    ctx.bind(n, t)
    return t


def _linear(
    ctx: Context, n: Any, x: Tensor, w: np.ndarray, b: np.ndarray | None, base: str, out_name: str, src: str
) -> None:
    if x.dep:
        raise ctx.need_size(n, "feeds a classifier whose input size follows the input's H, W")
    feat = math.prod(x.view[1:] if x.view else x.shape[1:])
    if w.ndim != 2 or w.shape[1] != feat:
        raise ctx.err(n, f"weight {list(w.shape)} for {feat} input features", ModelError)
    o = int(w.shape[0])
    if b is not None:
        b = np.asarray(b).reshape(-1)
        if b.shape != (o,):
            raise ctx.err(n, f"bias of {b.size} values for {o} outputs (only a per-output bias is canonical)")
    out = ctx.emit("linear", [x.name], {"out_features": o, "bias": b is not None}, base, src, weight=w, bias=b)
    ctx.values[out_name] = Tensor(out, (x.shape[0], o))


def _reshape_to(ctx: Context, n: Any, x: Tensor, target: list[int], as_flatten: bool) -> None:
    if x.dep:
        raise ctx.need_size(n, "reshapes a tensor whose size follows the input's H, W")
    shape = x.view or x.shape
    if as_flatten:
        out = ctx.emit("flatten", [x.name], {}, ctx.name_for(n, "flatten"), n.name)
        ctx.bind(n, Tensor(out, (shape[0], math.prod(shape[1:]))))
        return
    from senet_hub.ops import reshape_target

    got = reshape_target(x.shape, target)
    if math.prod(got) != math.prod(x.shape) or any(d <= 0 for d in got):
        raise ctx.err(n, f"cannot reshape {list(x.shape)} to {target}", ModelError)
    if x.view is not None and x.view == got:  # back to the canonical value's own shape
        ctx.bind(n, Tensor(x.name, got, gate_of=x.gate_of))
        return
    # an N x C gate given the N x C x 1 x 1 shape a Mul broadcasts: a view (canonical gates take N x C)
    users = ctx.consumer_ops.get(n.output[0], [])
    if len(x.shape) == 2 and got == (*x.shape, 1, 1) and users and all(u in ("Mul", "Axpy") for u in users):
        ctx.bind(n, Tensor(x.name, got, view=x.view or x.shape, gate_of=x.gate_of))
        return
    x = ctx.plain(x, n.name)
    out = ctx.emit("reshape", [x.name], {"shape": [int(v) for v in target]}, ctx.name_for(n, "reshape"), n.name)
    ctx.bind(n, Tensor(out, got))


# ------------------------------------------------------------------------------------ handlers


@handles("Conv")
def _conv(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.plain(ctx.tensor(n, n.input[0]), n.name)
    w = ctx.const(n.input[1]) if len(n.input) > 1 else None
    b = ctx.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if w is None or w.ndim != 4:
        raise ctx.err(n, "needs a constant 4-D weight (2-D convolution with initializer weights)")
    if len(n.input) > 2 and n.input[2] and b is None:
        raise ctx.err(n, "needs a constant bias")
    if len(x.shape) != 4:
        raise ctx.err(n, f"input of rank {len(x.shape)}; senet-hub reads 2-D convolutions (N x C x H x W)")
    o, cg, kh, kw = (int(v) for v in w.shape)
    groups = int(at.get("group", 1))
    if groups < 1 or x.shape[1] != cg * groups or o % groups:
        raise ctx.err(
            n, f"weight {list(w.shape)} with group {groups} does not fit input channels {x.shape[1]}", ModelError
        )
    if list(at.get("kernel_shape", [kh, kw])) != [kh, kw]:
        raise ctx.err(n, f"kernel_shape {at['kernel_shape']} disagrees with weight {list(w.shape)}", ModelError)
    if b is not None and b.shape != (o,):
        raise ctx.err(n, f"bias of shape {list(b.shape)} for {o} output channels", ModelError)
    stride = [int(v) for v in at.get("strides", [1, 1])]
    dil = [int(v) for v in at.get("dilations", [1, 1])]
    pads = _pads(ctx, n, at, x, [kh, kw], stride, dil)
    if len(stride) != 2 or len(dil) != 2 or min(stride + dil) < 1:
        raise ctx.err(n, f"strides {stride} / dilations {dil} are not two positive ints", FormatError)
    attrs = {"out_channels": o, "kernel": (kh, kw), "stride": tuple(stride), "pad": tuple(pads),
             "dilation": tuple(dil), "groups": groups, "bias": b is not None}  # fmt: skip
    base = ctx.params_base(n, [i for i in n.input[1:] if i], "conv")
    out = ctx.emit("conv", [x.name], attrs, base, n.name, weight=w, bias=b)
    from senet_hub.ops import conv_out

    hw = tuple(conv_out(x.shape[2 + i], (kh, kw)[i], stride[i], pads[i], pads[2 + i], dil[i]) for i in range(2))
    ctx.bind(n, Tensor(out, (x.shape[0], o, *hw), x.dep))


@handles("BatchNormalization")
def _batch_norm(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.plain(ctx.tensor(n, n.input[0]), n.name)
    if int(at.get("training_mode", 0)):
        raise ctx.err(n, "training_mode=1: export the model in eval mode")
    found = [ctx.const(i) for i in n.input[1:5]]
    ps = [p for p in found if p is not None]
    if len(ps) != 4:
        raise ctx.err(n, "needs constant scale, bias, mean and variance")
    c = x.shape[1] if len(x.shape) > 1 else 0
    if len(x.shape) != 4 or any(p.shape != (c,) for p in ps):
        raise ctx.err(n, f"parameters {[list(p.shape) for p in ps]} for input {list(x.shape)} (per-channel, 4-D)")
    base = ctx.params_base(n, list(n.input[1:5]), "batch_norm")
    weights = dict(zip(("weight", "bias", "running_mean", "running_var"), ps))
    out = ctx.emit("batch_norm", [x.name], {"eps": float_attr(at.get("epsilon", 1e-5))}, base, n.name, **weights)
    ctx.bind(n, Tensor(out, x.shape, x.dep))


@handles("Relu")
def _relu(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    _unary(ctx, n, "relu")


@handles("Sigmoid")
def _sigmoid(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    t = _unary(ctx, n, "sigmoid")
    t.gate_of = t.name


@handles("MaxPool", "AveragePool")
def _pool(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    is_max = n.op_type == "MaxPool"
    x = ctx.plain(ctx.tensor(n, n.input[0]), n.name)
    if len(x.shape) != 4:
        raise ctx.err(n, f"input of rank {len(x.shape)}; senet-hub reads 2-D pooling")
    k = [int(v) for v in at.get("kernel_shape", [])]
    s = [int(v) for v in at.get("strides", [1, 1])]
    d = [int(v) for v in at.get("dilations", [1, 1])]
    if len(k) != 2 or len(s) != 2 or min(k + s) < 1:
        raise ctx.err(n, f"kernel_shape {k} / strides {s} are not two positive ints", FormatError)
    if d != [1, 1]:
        raise ctx.err(n, f"dilations {d}: the canonical pools have none")
    pads = _pads(ctx, n, at, x, k, s, [1, 1])
    ceil = bool(int(at.get("ceil_mode", 0)))
    if ceil and x.dep:
        raise ctx.need_size(n, "uses ceil_mode, whose last window (Caffe's clip rule) depends on the input size")
    if any(pads[i] >= k[i % 2] for i in range(4)):
        raise ctx.err(n, f"pads {pads} not smaller than kernel {k} (a window of padding only)")
    include = bool(int(at.get("count_include_pad", 0))) if not is_max else True
    kernel, stride, pad4 = (k[0], k[1]), (s[0], s[1]), (pads[0], pads[1], pads[2], pads[3])
    attrs = {"kernel": kernel, "stride": stride, "pad": pad4, "ceil": ceil, "count_include_pad": include}
    kind = "max_pool" if is_max else "avg_pool"
    from senet_hub.ops import PoolAttrs

    ho, wo = PoolAttrs(kernel, stride, pad4, ceil, include).out_hw(x.shape[2], x.shape[3])
    if ho < 1 or wo < 1:
        raise ctx.err(n, f"pools a {x.shape[2]} x {x.shape[3]} input to nothing (input too small?)", ModelError)
    out = ctx.emit(kind, [x.name], attrs, ctx.name_for(n, kind), n.name)
    ctx.bind(n, Tensor(out, (x.shape[0], x.shape[1], ho, wo), x.dep))


@handles("GlobalAveragePool")
def _global_avg_pool(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.plain(ctx.tensor(n, n.input[0]), n.name)
    if len(x.shape) != 4:
        raise ctx.err(n, f"input of rank {len(x.shape)}; senet-hub reads N x C x H x W")
    out = ctx.emit("global_avg_pool", [x.name], {}, ctx.name_for(n, "global_avg_pool"), n.name)
    ctx.bind(n, Tensor(out, (x.shape[0], x.shape[1], 1, 1)))


@handles("ReduceMean")
def _reduce_mean(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.plain(ctx.tensor(n, n.input[0]), n.name)
    axes = at.get("axes")
    if len(n.input) > 1 and n.input[1]:
        c = ctx.const(n.input[1])
        if c is None:
            raise ctx.err(n, "axes are not a constant")
        axes = [int(v) for v in np.asarray(c).ravel()]
    rank = len(x.shape)
    if axes is None or rank != 4 or sorted(int(a) % rank for a in axes) != [2, 3]:
        raise ctx.err(n, f"mean over axes {axes} of a rank-{rank} tensor; only the mean over H, W is canonical")
    out = ctx.emit("global_avg_pool", [x.name], {}, ctx.name_for(n, "global_avg_pool"), n.name)
    keep = int(at.get("keepdims", 1))
    nc11 = (x.shape[0], x.shape[1], 1, 1)
    ctx.bind(n, Tensor(out, nc11 if keep else nc11[:2], view=None if keep else nc11))


@handles("Mul")
def _mul(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    if any(i in ctx.consts for i in n.input):
        raise ctx.err(
            n, "multiplies by a constant; the canonical ops scale only by a computed per-channel gate "
            "(or, on the graph input, by a constant per-channel input stage)",
        )  # fmt: skip
    a, b = (ctx.tensor(n, i) for i in n.input[:2])
    pair = gate_pair(a, b)
    if pair is None:
        raise ctx.err(
            n, f"elementwise product of {list(a.shape)} and {list(b.shape)}; only a per-channel gate is canonical"
        )
    gate, x = pair
    x = ctx.plain(x, n.name)
    if gate.view is not None:  # canonical gates take N x C or N x C x 1 x 1: the data as it is
        gate = Tensor(gate.name, gate.view, gate.dep)
    if hold_for_add(ctx, n, gate, x):
        return
    out = ctx.emit("channel_scale", [x.name, gate.name], {}, ctx.name_for(n, "channel_scale"), n.name)
    ctx.bind(n, Tensor(out, x.shape, x.dep))


@handles("Add")
def _add(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    if len(n.input) != 2:
        raise ctx.err(n, "needs two inputs", FormatError)
    if any(i in ctx.consts for i in n.input):
        raise ctx.err(
            n,
            "adds a constant; only a bias after MatMul or a per-channel input stage (on the graph input) is canonical",
        )
    if fuse_axpy(ctx, n):
        return
    a, b = (ctx.plain(ctx.tensor(n, i), n.name) for i in n.input)
    if a.shape != b.shape:
        raise ctx.err(n, f"adds {list(a.shape)} and {list(b.shape)}; the canonical add needs one shape (no broadcast)")
    out = ctx.emit("add", [a.name, b.name], {}, ctx.name_for(n, "add"), n.name)
    ctx.bind(n, Tensor(out, a.shape, a.dep or b.dep))


@handles("Axpy", domain=AXPY_DOMAIN)
def _axpy(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    if len(n.input) != 3:
        raise ctx.err(n, "Axpy takes (a, x, y)", FormatError)
    a, x, y = (ctx.tensor(n, i) for i in n.input)
    if a.view is not None:
        a = Tensor(a.name, a.view, a.dep)
    x, y = ctx.plain(x, n.name), ctx.plain(y, n.name)
    if x.shape != y.shape or len(x.shape) != 4 or tuple(a.shape[:2]) != x.shape[:2] or math.prod(a.shape[2:]) != 1:
        raise ctx.err(n, f"Axpy of a {list(a.shape)}, x {list(x.shape)}, y {list(y.shape)}", ModelError)
    out = ctx.emit("axpy", [a.name, x.name, y.name], {}, ctx.name_for(n, "axpy"), n.name)
    ctx.bind(n, Tensor(out, x.shape, x.dep))


@handles("Gemm")
def _gemm(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.tensor(n, n.input[0])
    w = ctx.const(n.input[1]) if len(n.input) > 1 else None
    c = ctx.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    if w is None or (len(n.input) > 2 and n.input[2] and c is None):
        raise ctx.err(n, "needs constant B (and C): a classifier with initializer weights")
    if int(at.get("transA", 0)) or len(x.shape) != 2:
        raise ctx.err(n, "transA or an input of rank other than 2 (Gemm is a classifier here)")
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise ctx.err(n, f"B of rank {w.ndim}", FormatError)
    w = w if int(at.get("transB", 0)) else w.T
    alpha, beta = float(at.get("alpha", 1.0)), float(at.get("beta", 1.0))
    if alpha != 1.0:  # scaling the weight: the same products up to float32 rounding
        w = w * np.float32(alpha)
        ctx.notes.append(f"{n.name or n.output[0]}: Gemm alpha {alpha} folded into the weight")
    if c is not None and beta != 1.0:
        c = np.asarray(c, np.float32) * np.float32(beta)
        ctx.notes.append(f"{n.name or n.output[0]}: Gemm beta {beta} folded into the bias")
    names = [i for i in n.input[1:] if i]
    _linear(ctx, n, x, w, c, ctx.params_base(n, names, "linear"), n.output[0], n.name)


@handles("MatMul")
def _matmul(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.tensor(n, n.input[0])
    w = ctx.const(n.input[1])
    if w is None or w.ndim != 2 or len(x.shape) != 2:
        raise ctx.err(n, "only an N x K input times a constant K x M weight (a classifier) is canonical")
    b, out_name, src = matmul_bias(ctx, n, w.shape[1])
    names = [n.input[1]]
    _linear(ctx, n, x, np.asarray(w, np.float32).T, b, ctx.params_base(n, names, "linear"), out_name, src)


@handles("Flatten")
def _flatten(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.tensor(n, n.input[0])
    if int(at.get("axis", 1)) % max(len(x.shape), 1) != 1:
        raise ctx.err(n, f"Flatten axis {at.get('axis', 1)}; only axis 1 (N x rest) is canonical")
    users = ctx.consumer_ops.get(n.output[0], [])
    if users and all(u in ("Gemm", "MatMul") for u in users):
        # the canonical linear flattens its input itself (senet-hub writes Flatten + Gemm for it)
        if x.dep:
            raise ctx.need_size(n, "feeds a classifier whose input size follows the input's H, W")
        canon = x.view or x.shape
        ctx.bind(n, Tensor(x.name, (x.shape[0], math.prod(x.shape[1:])), view=canon))
        return
    _reshape_to(ctx, n, x, [], True)


@handles("Reshape")
def _reshape(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.tensor(n, n.input[0])
    spec = ctx.const(n.input[1]) if len(n.input) > 1 else None
    if spec is None:
        raise ctx.err(n, "its target shape is computed at run time from values other than shapes")
    names = syms(np.asarray(spec))
    flat = list(np.asarray(spec).ravel())
    if "HW" in names:
        raise ctx.need_size(n, "computes its target shape from the input's H, W")
    target: list[int] = []
    for i, v in enumerate(flat):
        if isinstance(v, Sym) and v.name == "N" and i == 0:
            target.append(0)  # the batch dim copied: canonical reshape's 0
        elif isinstance(v, (Sym, Derived)):
            raise ctx.err(
                n,
                f"target shape uses the dynamic batch size at position {i} (only copying it to position 0 is canonical)",
            )
        else:
            target.append(int(v))
    if int(at.get("allowzero", 0)) and 0 in target:
        raise ctx.err(n, "allowzero with a 0 in the target (an empty tensor)")
    # a constant batch in the target (torch.onnx.export with a fixed batch): copied, so the model
    # keeps running at any batch size like every canonical graph
    if target and target[0] == x.shape[0] and not isinstance(flat[0], Sym):
        target[0] = 0
    _reshape_to(ctx, n, x, target, False)


@handles("Softmax")
def _softmax(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.tensor(n, n.input[0])
    axis = int(at.get("axis", -1))
    rank = len(x.shape)
    if rank < 2 or axis % rank != 1:
        raise ctx.err(n, f"softmax along axis {axis} of a rank-{rank} tensor; the canonical softmax is along axis 1")
    _unary(ctx, n, "softmax")


@handles("Concat")
def _concat(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    xs = [ctx.plain(ctx.tensor(n, i), n.name) for i in n.input if i]
    rank = len(xs[0].shape)
    axis = int(at.get("axis", 1)) % max(rank, 1)
    if axis == 0 or any(len(t.shape) != rank for t in xs):
        raise ctx.err(n, f"concatenates along axis {axis}; the batch axis cannot be joined")
    for t in xs:
        if t.shape[:axis] + t.shape[axis + 1 :] != xs[0].shape[:axis] + xs[0].shape[axis + 1 :]:
            raise ctx.err(n, f"joins {[list(t.shape) for t in xs]} along axis {axis}", ModelError)
    out = ctx.emit("concat", [t.name for t in xs], {"axis": axis}, ctx.name_for(n, "concat"), n.name)
    shape = list(xs[0].shape)
    shape[axis] = sum(t.shape[axis] for t in xs)
    ctx.bind(n, Tensor(out, tuple(shape), any(t.dep for t in xs)))


@handles("Identity")
def _identity(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    # a node of its own: senet-hub writes a canonical dropout as Identity (SENet-154)
    _unary(ctx, n, "dropout", {"ratio": 0.0})


@handles("Dropout")
def _dropout(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    ratio = at.get("ratio", 0.5)
    if len(n.input) > 1 and n.input[1]:
        r = ctx.const(n.input[1])
        if r is None:
            raise ctx.err(n, "ratio is not a constant")
        ratio = float(np.asarray(r).ravel()[0])
    if len(n.input) > 2 and n.input[2]:
        tm = ctx.const(n.input[2])
        if tm is None or bool(np.asarray(tm).ravel()[0]):
            raise ctx.err(n, "training_mode is on: export the model in eval mode")
    _unary(ctx, n, "dropout", {"ratio": float(float_attr(ratio))})


@handles("Gather")
def _gather(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    raise ctx.err(n, "gathers from a run-time tensor; only a channel permutation on the graph input is canonical")


@handles("Squeeze")
def _squeeze(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.tensor(n, n.input[0])
    axes = ctx.const(n.input[1]) if len(n.input) > 1 and n.input[1] else at.get("axes")
    rank = len(x.shape)
    axes_l = (
        sorted({int(a) % rank for a in np.asarray(axes).ravel()})
        if axes is not None
        else [i for i, d in enumerate(x.shape) if d == 1 and i > 0]
    )
    if 0 in axes_l or any(x.shape[a] != 1 for a in axes_l):
        raise ctx.err(n, f"squeezes axes {axes_l} of {list(x.shape)}")
    _reshape_to(ctx, n, x, [0] + [d for i, d in enumerate(x.shape) if i > 0 and i not in axes_l], False)


@handles("Unsqueeze")
def _unsqueeze(ctx: Context, n: Any, at: dict[str, Any]) -> None:
    x = ctx.tensor(n, n.input[0])
    axes = ctx.const(n.input[1]) if len(n.input) > 1 and n.input[1] else at.get("axes")
    if axes is None:
        raise ctx.err(n, "Unsqueeze without axes", FormatError)
    rank = len(x.shape) + np.asarray(axes).size
    shape = list(x.shape)
    for a in sorted(int(v) % rank for v in np.asarray(axes).ravel()):
        if a == 0:
            raise ctx.err(n, "inserts an axis before the batch")
        shape.insert(a, 1)
    _reshape_to(ctx, n, x, [0, *shape[1:]], False)


# every op check_ops admits has its handler, and no handler is unreachable
assert {op for d, op in HANDLERS if not d} == set(LAYER_OPS), "LAYER_OPS and the registered handlers disagree"
