"""Caffe layer handlers: one small function per Caffe layer type, registered with ``@handles("Type")``
in ``HANDLERS``, turning a layer into canonical nodes through a ``Context`` (the nodes so far, which
node produces each blob, value shapes). Also the readers of the layer parameters' values, each a
FormatError naming the field for a bad token. ``caffe.build_graph`` drives them."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from senet_hub.errors import FormatError, ModelError, UnsupportedError
from senet_hub.graph import Node, output_shape

from .caffe_format import Quoted


@dataclass
class Layer:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    p: dict[str, list[Any]]  # the whole layer message from the prototxt
    blobs: list[np.ndarray] | None = None

    def param(self, msg: str) -> dict[str, list[Any]]:
        v = self.p.get(msg)
        return v[0] if v and isinstance(v[0], dict) else {}


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:40] + "..."


def _get(d: dict, key: str, default: Any = None, conv: Callable = str) -> Any:
    v = d.get(key)
    if not v:
        return default
    try:
        return conv(v[0])
    except (TypeError, ValueError):
        raise FormatError(f"bad value {_short(v[0])} for '{key}'") from None


# Fuzzing fixes: values the handlers convert themselves go through these, so a bad token
# (`dim: x`, `dim: 1.5`, `dim { }`, 5000 digits) is a FormatError naming the field.
def _int(v: Any, key: str) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        raise FormatError(f"bad integer {_short(v)} for '{key}'") from None


def _float(v: Any, key: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise FormatError(f"bad number {_short(v)} for '{key}'") from None


def _dims(msgs: list[Any], key: str) -> list[int]:
    """The dims of the first `shape { dim: ... }` message in msgs ([] when there is none)."""
    if not msgs:
        return []
    if not isinstance(msgs[0], dict):
        raise FormatError(f"'{key}' must be a message {{ dim: ... }}, got {_short(msgs[0])}")
    return [_int(d, "dim") for d in msgs[0].get("dim", [])]


# protobuf's text parser takes exactly these for a bool (TextFormat ParserImpl), or an unsigned
# integer 0 or 1; anything else is an error in Caffe, so here too (`bias_term: flase` meant false).
_BOOLS = {"true": True, "True": True, "t": True, "false": False, "False": False, "f": False}


def _bool(d: dict, key: str, default: bool) -> bool:
    vals = d.get(key)
    if not vals:
        return default
    v = vals[0]  # not through _get: str() would lose Quoted
    if not isinstance(v, Quoted) and str(v) in _BOOLS:
        return _BOOLS[str(v)]
    n = None if str(v).startswith("-") else _pb_int(v)
    if n not in (0, 1):
        raise FormatError(f"bad value {_short(v)} for '{key}': Caffe expects true or false")
    return bool(n)


_PB_INT = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")  # protobuf text-format integer


def _pb_int(v: Any) -> int | None:
    """An integer token as protobuf's text parser reads it (decimal, 0x hex, 0 octal), else None."""
    s = str(v)
    # (25 characters hold any int64; longer would reach Python's int-from-str digit limit)
    if isinstance(v, Quoted) or len(s) > 25 or not _PB_INT.fullmatch(s):
        return None
    body = s.lstrip("-")
    n = int(body, 16) if body[:2] in ("0x", "0X") else int(body, 8) if len(body) > 1 and body[0] == "0" else int(body)
    return -n if s.startswith("-") else n


def _hw(d: dict, name: str, default: int) -> tuple[int, int]:
    """kernel/stride/pad/dilation as (h, w) from name_h/name_w or a repeated field."""
    key = "kernel_size" if name == "kernel" else name
    if f"{name}_h" in d or f"{name}_w" in d:
        return _get(d, f"{name}_h", default, int), _get(d, f"{name}_w", default, int)
    vals = [_int(v, key) for v in d.get(key, [])]
    return (vals[0], vals[-1]) if vals else (default, default)


@dataclass
class Context:
    """What handlers build on: the nodes so far, blob -> producing node, value shapes."""

    path: str
    nodes: list[Node] = field(default_factory=list)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    producer: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    uses: Counter = field(default_factory=Counter)
    input_name: str = ""
    placeholder_channels: int = 0  # see caffe._placeholder_blobs

    def src(self, layer: Layer, i: int = 0) -> str:
        if i >= len(layer.bottoms):  # fuzzing fix: was an IndexError
            raise ModelError(
                f"{self.path}: layer '{layer.name}' ({layer.type}) needs {i + 1} bottom(s), has {len(layer.bottoms)}"
            )
        blob = layer.bottoms[i]
        if blob not in self.producer:
            raise ModelError(f"{self.path}: layer '{layer.name}': bottom '{blob}' is not produced by any earlier layer")
        return self.producer[blob]

    def shape(self, value: str) -> tuple[int, ...]:
        return self.shapes[value]

    def emit(
        self,
        layer: Layer,
        op: str,
        inputs: list[str],
        attrs: dict | None = None,
        params: dict | None = None,
        name: str | None = None,
    ) -> Node:
        node = Node(name or layer.name, op, inputs, attrs or {}, [layer.name])
        if node.name in self.shapes:
            node.name = f"{node.name}#{len(self.nodes)}"  # Caffe allows a layer name twice; we do not
        for p, arr in (params or {}).items():
            self.weights[f"{node.name}.{p}"] = arr
        try:
            self.shapes[node.name] = output_shape(node, [self.shapes[i] for i in inputs])
        except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError) as e:
            raise ModelError(f"{self.path}: layer '{layer.name}' ({layer.type}): {e}") from None
        if any(d <= 0 for d in self.shapes[node.name]):  # fuzzing fix: as infer_shapes, but before handlers use it
            raise ModelError(
                f"{self.path}: layer '{layer.name}' ({layer.type}): output shape {self.shapes[node.name]} is empty"
            )
        for i in inputs:
            self.uses[i] += 1
        self.nodes.append(node)
        for t in layer.tops:
            self.producer[t] = node.name
        return node

    def alias(self, layer: Layer, node_name: str) -> None:
        for t in layer.tops:
            self.producer[t] = node_name


Handler = Callable[[Context, Layer], None]
HANDLERS: dict[str, Handler] = {}
PARAM_LAYERS = {"Convolution", "InnerProduct", "BatchNorm"}  # always own blobs (see expected_blobs)


def handles(*types: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for t in types:
            HANDLERS[t] = fn
        return fn

    return register


def _blobs(ctx: Context, layer: Layer, n_min: int) -> list[np.ndarray]:
    b = layer.blobs or []
    if len(b) < n_min:
        raise ModelError(
            f"{ctx.path}: layer '{layer.name}' ({layer.type}) has {len(b)} weight blobs, needs {n_min}: "
            "the caffemodel does not match the prototxt"
        )
    return b


def _shaped(ctx: Context, layer: Layer, arr: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    """Caffe stores legacy 4-D (num, channels, height, width) blobs: accept any shape of the right size."""
    if tuple(arr.shape) == shape:
        return arr
    if arr.size != int(np.prod(shape)):
        raise ModelError(
            f"{ctx.path}: layer '{layer.name}': {what} blob has shape {tuple(arr.shape)}, expected {shape}: "
            "the caffemodel does not match the prototxt"
        )
    return arr.reshape(shape)


@handles("Input")
def _input(ctx: Context, layer: Layer) -> None:
    shape = _dims(layer.param("input_param").get("shape", []), "input_param.shape")
    if not layer.tops:
        raise FormatError(f"{ctx.path}: input layer '{layer.name}' has no top")
    if len(shape) != 4:
        raise UnsupportedError(
            f"{ctx.path}: input '{layer.tops[0]}' has shape {shape}: only N x C x H x W inputs are supported"
        )
    if ctx.input_name:
        raise UnsupportedError(f"{ctx.path}: layer '{layer.name}': more than one network input is not supported")
    ctx.input_name = layer.tops[0]
    ctx.producer[layer.tops[0]] = layer.tops[0]
    ctx.shapes[layer.tops[0]] = tuple(shape)


@handles("Convolution")
def _conv(ctx: Context, layer: Layer) -> None:
    p = layer.param("convolution_param")
    x = ctx.src(layer)
    c = ctx.shape(x)[1]
    out, groups = _get(p, "num_output", None, int), _get(p, "group", 1, int)
    if out is None:
        raise FormatError(f"{ctx.path}: layer '{layer.name}': convolution_param.num_output missing")
    kernel, stride = _hw(p, "kernel", 1), _hw(p, "stride", 1)
    (ph, pw), dil = _hw(p, "pad", 0), _hw(p, "dilation", 1)
    bias = _bool(p, "bias_term", True)
    if groups <= 0 or c % groups or out % groups:
        raise ModelError(f"{ctx.path}: layer '{layer.name}': {c} -> {out} channels not divisible by group {groups}")
    b = _blobs(ctx, layer, 2 if bias else 1)
    params = {"weight": _shaped(ctx, layer, b[0], (out, c // groups, *kernel), "weight")}
    if bias:
        params["bias"] = _shaped(ctx, layer, b[1], (out,), "bias")
    attrs = {
        "out_channels": out,
        "kernel": kernel,
        "stride": stride,
        "pad": (ph, pw, ph, pw),
        "dilation": dil,
        "groups": groups,
        "bias": bias,
    }
    ctx.emit(layer, "conv", [x], attrs, params)


@handles("BatchNorm")
def _batch_norm(ctx: Context, layer: Layer) -> None:
    bn = layer.param("batch_norm_param")
    # Caffe's BatchNormLayer: use_global_stats defaults to (phase == TEST), true in a deploy net;
    # set false, even a TEST net normalises each batch with its own mean and variance.
    if not _bool(bn, "use_global_stats", True):
        raise UnsupportedError(
            f"{ctx.path}: layer '{layer.name}' (BatchNorm) sets use_global_stats: false, so Caffe normalises with "
            "each batch's own statistics even at test time, not the stored mean and variance; set "
            "use_global_stats: true if the stored statistics are meant"
        )
    x = ctx.src(layer)
    c = ctx.shape(x)[1]
    b = _blobs(ctx, layer, 3)  # mean, variance, moving-average factor (BatchNormLayer::LayerSetUp)
    # Caffe keeps running sums scaled by a moving-average factor s (third blob): divide it out,
    # 0 meaning 0 as in BatchNormLayer::Forward_cpu.
    s = float(_shaped(ctx, layer, b[2], (1,), "moving-average factor")[0])
    inv = 0.0 if s == 0 else 1.0 / s
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite results are reported by name later
        mean = _shaped(ctx, layer, b[0], (c,), "mean").astype(np.float32) * np.float32(inv)
        var = _shaped(ctx, layer, b[1], (c,), "variance").astype(np.float32) * np.float32(inv)
    eps = _get(bn, "eps", 1e-5, float)
    params = {
        "weight": np.ones(c, np.float32),
        "bias": np.zeros(c, np.float32),
        "running_mean": mean,
        "running_var": var,
    }
    node = ctx.emit(layer, "batch_norm", [x], {"eps": eps}, params)
    node.attrs["_affine_pending"] = True  # a following Scale may fold in (removed at the end)


@handles("Scale")
def _scale(ctx: Context, layer: Layer) -> None:
    p = layer.param("scale_param")
    bias = _bool(p, "bias_term", False)
    x = ctx.src(layer)
    shape = ctx.shape(x)
    axis = _get(p, "axis", 1, int) % len(shape)
    if len(layer.bottoms) == 2:  # scale factors come from the second bottom (SE gating)
        s = ctx.src(layer, 1)
        s_shape = ctx.shape(s)
        if (
            bias
            or not (axis == 0 and tuple(s_shape) == tuple(shape[:2]))
            and not (axis == 0 and len(s_shape) == 4 and s_shape[2:] == (1, 1))
        ):
            raise UnsupportedError(
                f"{ctx.path}: layer '{layer.name}': two-bottom Scale is supported only as per-sample, per-channel "
                f"gating (axis 0, scale N x C, no bias); got axis {axis}, scale {s_shape}, bias_term {bias}"
            )
        ctx.emit(layer, "channel_scale", [x, s])
        return
    if axis != 1 or _get(p, "num_axes", 1, int) != 1:
        raise UnsupportedError(
            f"{ctx.path}: layer '{layer.name}': Scale is supported per channel only (axis 1, num_axes 1)"
        )
    c = shape[1]
    b = _blobs(ctx, layer, 2 if bias else 1)
    gamma = _shaped(ctx, layer, b[0], (c,), "scale")
    beta = _shaped(ctx, layer, b[1], (c,), "bias") if bias else np.zeros(c, np.float32)
    prev = ctx.nodes[-1] if ctx.nodes else None
    if prev is not None and prev.name == x and prev.attrs.get("_affine_pending") and ctx.uses[x] == 0:
        # BatchNorm + Scale = one inference batch norm
        del prev.attrs["_affine_pending"]
        ctx.weights[f"{x}.weight"], ctx.weights[f"{x}.bias"] = gamma, beta
        prev.source.append(layer.name)
        ctx.alias(layer, x)
        return
    # A lone Scale is an exact batch norm with mean 0, variance 1, eps 0.
    params = {
        "weight": gamma,
        "bias": beta,
        "running_mean": np.zeros(c, np.float32),
        "running_var": np.ones(c, np.float32),
    }
    ctx.emit(layer, "batch_norm", [x], {"eps": 0.0}, params)


@handles("ReLU")
def _relu(ctx: Context, layer: Layer) -> None:
    if _get(layer.param("relu_param"), "negative_slope", 0.0, float) != 0.0:
        raise UnsupportedError(f"{ctx.path}: layer '{layer.name}': leaky ReLU (negative_slope != 0) is not supported")
    ctx.emit(layer, "relu", [ctx.src(layer)])


@handles("Sigmoid")
def _sigmoid(ctx: Context, layer: Layer) -> None:
    ctx.emit(layer, "sigmoid", [ctx.src(layer)])


@handles("Pooling")
def _pooling(ctx: Context, layer: Layer) -> None:
    p = layer.param("pooling_param")
    x = ctx.src(layer)
    method = str(_get(p, "pool", "MAX")).upper()
    method = {"0": "MAX", "1": "AVE"}.get(method, method)
    if method not in ("MAX", "AVE"):
        raise UnsupportedError(f"{ctx.path}: layer '{layer.name}': {method} pooling is not supported (MAX, AVE are)")
    if _bool(p, "global_pooling", False):
        if method == "AVE":
            ctx.emit(layer, "global_avg_pool", [x])
            return
        kernel, stride, pad = ctx.shape(x)[2:], (1, 1), (0, 0)
    else:
        kernel, stride, pad = _hw(p, "kernel", 1), _hw(p, "stride", 1), _hw(p, "pad", 0)
    ceil = str(_get(p, "round_mode", "CEIL")).upper() in ("CEIL", "0")
    attrs = {
        "kernel": tuple(kernel),
        "stride": stride,
        "pad": (pad[0], pad[1], pad[0], pad[1]),
        "ceil": ceil,
        "count_include_pad": True,
    }
    ctx.emit(layer, "max_pool" if method == "MAX" else "avg_pool", [x], attrs)


@handles("Axpy")
def _axpy(ctx: Context, layer: Layer) -> None:
    if len(layer.bottoms) != 3:
        raise ModelError(f"{ctx.path}: layer '{layer.name}': Axpy needs 3 bottoms (a, x, y), has {len(layer.bottoms)}")
    ctx.emit(layer, "axpy", [ctx.src(layer, i) for i in range(3)])


@handles("Eltwise")
def _eltwise(ctx: Context, layer: Layer) -> None:
    p = layer.param("eltwise_param")
    op = str(_get(p, "operation", "SUM")).upper()
    coeff = [_float(c, "coeff") for c in p.get("coeff", [])]
    if op not in ("SUM", "1") or len(layer.bottoms) != 2 or any(c != 1.0 for c in coeff):
        raise UnsupportedError(
            f"{ctx.path}: layer '{layer.name}': only Eltwise SUM of two inputs with unit coefficients is supported"
        )
    ctx.emit(layer, "add", [ctx.src(layer, 0), ctx.src(layer, 1)])


@handles("Concat")
def _concat(ctx: Context, layer: Layer) -> None:
    p = layer.param("concat_param")
    axis = _get(p, "axis", _get(p, "concat_dim", 1, int), int)
    ctx.emit(layer, "concat", [ctx.src(layer, i) for i in range(len(layer.bottoms))], {"axis": axis})


@handles("Reshape")
def _reshape(ctx: Context, layer: Layer) -> None:
    p = layer.param("reshape_param")
    if _get(p, "axis", 0, int) != 0 or _get(p, "num_axes", -1, int) != -1:
        raise UnsupportedError(f"{ctx.path}: layer '{layer.name}': Reshape with axis/num_axes is not supported")
    dims = _dims(p.get("shape", []), "reshape_param.shape")
    ctx.emit(layer, "reshape", [ctx.src(layer)], {"shape": dims})


@handles("Flatten")
def _flatten(ctx: Context, layer: Layer) -> None:
    p = layer.param("flatten_param")
    if _get(p, "axis", 1, int) != 1 or _get(p, "end_axis", -1, int) != -1:
        raise UnsupportedError(f"{ctx.path}: layer '{layer.name}': Flatten is supported from axis 1 to the end only")
    ctx.emit(layer, "flatten", [ctx.src(layer)])


@handles("InnerProduct")
def _inner_product(ctx: Context, layer: Layer) -> None:
    p = layer.param("inner_product_param")
    x = ctx.src(layer)
    if _get(p, "axis", 1, int) != 1:
        raise UnsupportedError(f"{ctx.path}: layer '{layer.name}': InnerProduct with axis != 1 is not supported")
    out, bias = _get(p, "num_output", None, int), _bool(p, "bias_term", True)
    if out is None:
        raise FormatError(f"{ctx.path}: layer '{layer.name}': inner_product_param.num_output missing")
    n_in = int(np.prod(ctx.shape(x)[1:]))
    b = _blobs(ctx, layer, 2 if bias else 1)
    if _bool(p, "transpose", False):
        w = _shaped(ctx, layer, b[0], (n_in, out), "weight").T.copy()
    else:
        w = _shaped(ctx, layer, b[0], (out, n_in), "weight")
    params = {"weight": w}
    if bias:
        params["bias"] = _shaped(ctx, layer, b[1], (out,), "bias")
    ctx.emit(layer, "linear", [x], {"out_features": out, "bias": bias}, params)


@handles("Softmax")
def _softmax(ctx: Context, layer: Layer) -> None:
    if _get(layer.param("softmax_param"), "axis", 1, int) != 1:
        raise UnsupportedError(f"{ctx.path}: layer '{layer.name}': Softmax over an axis other than 1 is not supported")
    ctx.emit(layer, "softmax", [ctx.src(layer)])


@handles("Dropout")
def _dropout(ctx: Context, layer: Layer) -> None:
    ratio = _get(layer.param("dropout_param"), "dropout_ratio", 0.5, float)
    ctx.emit(layer, "dropout", [ctx.src(layer)], {"ratio": ratio})


@handles("Split")
def _split(ctx: Context, layer: Layer) -> None:
    ctx.alias(layer, ctx.src(layer))


@handles("Silence")
def _silence(ctx: Context, layer: Layer) -> None:
    pass
