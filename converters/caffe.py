"""Caffe deploy prototxt + caffemodel -> canonical Model.

Each Caffe layer type has one handler in ``HANDLERS`` (``@handles("Type")``) that turns a layer
into canonical nodes. Handlers see the layer's params, its blobs and the shapes of its bottoms;
in-place layers (top == bottom) are resolved by tracking which node currently produces each blob.
The result is a generic graph named after the Caffe layers; recognising a released architecture
and renaming to canonical names is a separate step (``senet_hub.zoo.canonicalize``).
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from senet_hub.errors import FormatError, ModelError, UnsupportedError
from senet_hub.graph import Graph, Model, Node, output_shape, validate

from .caffe_format import V1_TYPE_NAMES, Quoted, read_caffemodel, read_prototxt, show

CAFFE_INPUT_CONVENTION = {
    "channel_order": "BGR",
    "range": [0, 255],
    "mean": [104.0, 117.0, 123.0],
    "std": [1.0, 1.0, 1.0],
    "size": 224,
}


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
    placeholder_channels: int = 0  # see _placeholder_blobs

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


# ------------------------------------------------------------------------ NetState rules
# Caffe's own layer filtering (src/caffe/net.cpp FilterNet / StateMeetsRule; caffe.proto NetState,
# NetStateRule) for the net a deploy prototxt becomes in Net(prototxt, TEST): since 2016 (BVLC
# d167e61, "Add level and stages to Net constructor") that constructor sets phase TEST and level 0
# and keeps the file's `state { stage: ... }`; before it the file's level was kept as well.
PHASES = {"TRAIN": 0, "TEST": 1}  # caffe.proto: enum Phase { TRAIN = 0; TEST = 1; }
TEST = PHASES["TEST"]
_INT32 = (-(1 << 31), (1 << 31) - 1)
_PB_INT = re.compile(r"-?(?:0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")  # protobuf text-format integer
_RULE_FIELDS = ("phase", "min_level", "max_level", "stage", "not_stage")
_STATE_FIELDS = ("phase", "level", "stage")


@dataclass(frozen=True)
class NetState:
    phase: int = TEST
    level: int = 0
    stages: tuple[str, ...] = ()


@dataclass(frozen=True)
class NetStateRule:
    phase: int | None = None
    min_level: int | None = None
    max_level: int | None = None
    stage: tuple[str, ...] = ()
    not_stage: tuple[str, ...] = ()


def state_meets_rule(state: NetState, rule: NetStateRule) -> bool:
    """Caffe's Net::StateMeetsRule: every condition the rule sets holds in the state."""
    if rule.phase is not None and rule.phase != state.phase:
        return False
    if rule.min_level is not None and state.level < rule.min_level:
        return False
    if rule.max_level is not None and state.level > rule.max_level:
        return False
    if any(s not in state.stages for s in rule.stage):  # the state must have ALL the rule's stages
        return False
    return not any(s in state.stages for s in rule.not_stage)  # and NONE of its not_stages


def layer_included(state: NetState, include: list[NetStateRule], exclude: list[NetStateRule]) -> bool:
    """Caffe's Net::FilterNet for one layer: kept when any include rule is met or, without include
    rules, when no exclude rule is met (a layer with both kinds is refused before this)."""
    if include:
        return any(state_meets_rule(state, r) for r in include)
    return not any(state_meets_rule(state, r) for r in exclude)


def _pb_int(v: Any) -> int | None:
    """An integer token as protobuf's text parser reads it (decimal, 0x hex, 0 octal), else None."""
    s = str(v)
    # (25 characters hold any int64; longer would reach Python's int-from-str digit limit)
    if isinstance(v, Quoted) or len(s) > 25 or not _PB_INT.fullmatch(s):
        return None
    body = s.lstrip("-")
    n = int(body, 16) if body[:2] in ("0x", "0X") else int(body, 8) if len(body) > 1 and body[0] == "0" else int(body)
    return -n if s.startswith("-") else n


def _int32(v: Any, where: str, key: str) -> int:
    n = _pb_int(v)
    if n is None or not _INT32[0] <= n <= _INT32[1]:
        raise FormatError(f"{where}: bad value {_short(v)} for '{key}': Caffe expects an int32")
    return n


def _phase(v: Any, where: str) -> int:
    """TRAIN/TEST or their numbers 0/1: an enum, written unquoted, as protobuf's text parser takes it."""
    if not isinstance(v, Quoted) and str(v) in PHASES:
        return PHASES[str(v)]
    n = _pb_int(v)
    if n not in (0, 1):
        raise FormatError(f"{where}: bad phase {_short(v)}: Caffe's Phase is TRAIN or TEST (or 0 or 1)")
    return n


def _strings(raw: dict, key: str, where: str) -> tuple[str, ...]:
    vals = raw.get(key, [])
    for v in vals:
        if not isinstance(v, Quoted):
            raise FormatError(f'{where}: {key} {_short(v)} must be a quoted string ({key}: "name")')
    return tuple(str(v) for v in vals)


def _message_fields(raw: Any, fields: tuple[str, ...], singular: tuple[str, ...], where: str) -> dict:
    """A state/rule message checked as Caffe's parser checks it: known fields, singular ones once."""
    if not isinstance(raw, dict):
        raise FormatError(f"{where} must be a message {{ ... }}, got {_short(raw)}")
    for key, vals in raw.items():
        if key not in fields:
            raise FormatError(f"{where}: unknown field '{show(key)}' (Caffe's fields: {', '.join(fields)})")
        if key in singular and len(vals) > 1:
            raise FormatError(f"{where}: '{key}' is given {len(vals)} times; Caffe's parser allows it once")
        if key not in ("stage", "not_stage") and any(isinstance(v, dict) for v in vals):
            raise FormatError(f"{where}: '{key}' must be a value, not a message")
    return raw


def _rule(raw: Any, where: str) -> NetStateRule:
    raw = _message_fields(raw, _RULE_FIELDS, ("phase", "min_level", "max_level"), where)
    return NetStateRule(
        phase=_phase(raw["phase"][0], where) if "phase" in raw else None,
        min_level=_int32(raw["min_level"][0], where, "min_level") if "min_level" in raw else None,
        max_level=_int32(raw["max_level"][0], where, "max_level") if "max_level" in raw else None,
        stage=_strings(raw, "stage", where),
        not_stage=_strings(raw, "not_stage", where),
    )


def net_state(net: dict[str, list[Any]], path: str) -> tuple[NetState, int]:
    """The state Net(prototxt, TEST) filters with, and the level the file itself sets.

    The file's `state { phase: ... }` is overridden by TEST (as Caffe does); its stages are kept.
    """
    msgs = net.get("state", [])
    if not msgs:
        return NetState(), 0
    where = f"{path}: net state"
    if len(msgs) > 1:
        raise FormatError(f"{where}: 'state' is given {len(msgs)} times; Caffe's parser allows it once")
    raw = _message_fields(msgs[0], _STATE_FIELDS, ("phase", "level"), where)
    if "phase" in raw:
        _phase(raw["phase"][0], where)  # checked as Caffe's parser would, then replaced by TEST
    level = _int32(raw["level"][0], where, "level") if "level" in raw else 0
    return NetState(TEST, 0, _strings(raw, "stage", where)), level


# ------------------------------------------------------------------------------------ driver
def net_layers(net: dict[str, list[Any]], path: str) -> list[Layer]:
    """TEST-phase layers in order (Caffe's NetState rules), V1 `layers` and the legacy `input:` header included."""
    layers: list[Layer] = []
    if "input" in net:
        try:
            dims = [_int(d, "input_dim") for d in net.get("input_dim", [])]
            shapes = [_dims([s], "input_shape") for s in net.get("input_shape", [])]
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from None
        for j, name in enumerate(net["input"]):
            shape = shapes[j] if j < len(shapes) else dims[4 * j : 4 * j + 4]
            layers.append(Layer(name, "Input", [], [name], {"input_param": [{"shape": [{"dim": shape}]}]}))
    if net.get("layer") and net.get("layers"):
        # upgrade_proto.cpp: "Refusing to upgrade inconsistent NetParameter input"
        raise FormatError(
            f"{path}: uses both 'layer' and V1 'layers' fields, which Caffe refuses to read; keep one of the two"
        )
    state, file_level = net_state(net, path)
    changed_by_level: list[str] = []
    for key, v1 in (("layer", False), ("layers", True)):
        for i, raw in enumerate(net.get(key, [])):
            if not isinstance(raw, dict):
                raise FormatError(f"{path}: '{key}' must be a message")
            name, ltype = _get(raw, "name", None), str(_get(raw, "type", ""))
            where = f"{path}: layer '{show(str(name))}'" if name else f"{path}: layer #{i + 1}"
            include = [_rule(r, f"{where}: include rule") for r in raw.get("include", [])]
            exclude = [_rule(r, f"{where}: exclude rule") for r in raw.get("exclude", [])]
            if include and exclude:
                # net.cpp FilterNet: CHECK(include_size() == 0 || exclude_size() == 0)
                raise FormatError(
                    f"{where} has both include and exclude rules, which Caffe refuses ('Specify either include "
                    "rules or exclude rules; not both'); keep one kind"
                )
            kept = layer_included(state, include, exclude)
            if file_level and kept != layer_included(NetState(TEST, file_level, state.stages), include, exclude):
                changed_by_level.append(str(name or f"#{i + 1}"))
            if not kept:
                continue
            if v1:
                ltype = V1_TYPE_NAMES.get(ltype.upper().replace("_", ""), ltype)
            if not name or not ltype:
                raise FormatError(f"{path}: a layer without a name or type (layer #{len(layers) + 1})")
            layers.append(
                Layer(
                    str(name), ltype, [str(b) for b in raw.get("bottom", [])], [str(t) for t in raw.get("top", [])], raw
                )
            )
    if changed_by_level:
        raise UnsupportedError(
            f"{path}: state {{ level: {file_level} }} decides which layers Caffe keeps ({_names(changed_by_level)}), "
            "and Caffe versions disagree on it (since 2016 Net(prototxt, TEST) uses level 0, older ones the file's "
            "level): remove the level from the state or the min_level/max_level rules that depend on it"
        )
    return layers


def _check_supported(layers: list[Layer], path: str) -> None:
    missing: dict[str, list[str]] = {}
    for layer in layers:
        if layer.type not in HANDLERS:
            missing.setdefault(layer.type, []).append(layer.name)
    if missing:
        parts = []
        for t, names in sorted(missing.items()):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{t} x{len(names)} ({shown})")
        raise UnsupportedError(
            f"{path}: unsupported layer types: {'; '.join(parts)}. Supported: {', '.join(sorted(HANDLERS))}"
        )


def _mean_comment(text: str) -> list[float] | None:
    m = re.search(r"#\s*mean_value\s*:\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)", text)
    return [float(v) for v in m.groups()] if m else None


def expected_blobs(layer: Layer) -> tuple[int, str]:
    """How many blobs Caffe's layer owns in a TEST net (what CopyTrainedLayersFrom requires of the
    caffemodel's layer of that name), and the parameters that decide it, for messages."""
    if layer.type in ("Convolution", "InnerProduct"):
        param = "convolution_param" if layer.type == "Convolution" else "inner_product_param"
        bias = _bool(layer.param(param), "bias_term", True)
        return 1 + bias, f"{layer.type}, bias_term: {str(bias).lower()}"
    if layer.type == "BatchNorm":
        return 3, "BatchNorm"
    if layer.type == "Scale":  # ScaleLayer: a scale blob unless it comes from a second bottom, then the bias
        bias = _bool(layer.param("scale_param"), "bias_term", False)
        n_bottoms = "" if len(layer.bottoms) == 1 else f", {len(layer.bottoms)} bottoms"
        return (len(layer.bottoms) == 1) + bias, f"Scale, bias_term: {str(bias).lower()}{n_bottoms}"
    return 0, layer.type


def _names(names: list[str], cap: int = 5) -> str:
    shown = ", ".join(f"'{show(n)}'" for n in names[:cap])
    return shown + (f" and {len(names) - cap} more" if len(names) > cap else "")


def _layer_blobs(
    layer: Layer, blobs: dict[str, tuple[str, list[np.ndarray]]], unmatched: list[str], seen: set[str], wpath: str
) -> list[np.ndarray] | None:
    """The caffemodel's blobs for a layer, with Caffe's rule (Net::CopyTrainedLayersFrom): matched by
    name, exactly as many as the layer owns ("Incompatible number of blobs for layer ...")."""
    need, what = expected_blobs(layer)
    found = blobs.get(layer.name)
    if need and layer.name in seen:
        # Caffe copies a source layer into the first layer of that name; a second one keeps its
        # random initialisation
        raise ModelError(
            f"{wpath}: layer name '{show(layer.name)}' ({what}) is used twice in the prototxt: Caffe loads the "
            "caffemodel's weights into the first one only; rename one of them"
        )
    if found is None:
        if not need:
            return None
        if unmatched:
            raise ModelError(
                f"{wpath}: prototxt layer '{show(layer.name)}' ({what}) has no weights; the caffemodel has unmatched "
                f"weighted layers: {_names(unmatched)} (renamed? the caffemodel does not match the prototxt)"
            )
        raise ModelError(
            f"{wpath}: prototxt layer '{show(layer.name)}' ({what}) has no weights in the caffemodel, which has no "
            "other weighted layers: the caffemodel does not match the prototxt"
        )
    if len(found[1]) != need:
        raise ModelError(
            f"{wpath}: layer '{show(layer.name)}' ({what}) has {len(found[1])} blobs in the caffemodel; Caffe requires "
            f"exactly {need} (Incompatible number of blobs)"
        )
    return found[1]


def build_graph(
    net: dict[str, list[Any]],
    path: str,
    blobs: dict[str, tuple[str, list[np.ndarray]]] | None = None,
    weights_path: str | None = None,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """The generic graph and weights of a parsed prototxt; blobs=None reads it without weights
    (placeholders of the right shapes). weights_path names the caffemodel in messages."""
    layers = net_layers(net, path)
    _check_supported(layers, path)
    if not any(layer.type == "Input" for layer in layers):
        raise UnsupportedError(f"{path}: no input declared (Input layer or input/input_shape): pass a deploy prototxt")
    ctx = Context(path)
    kept = {layer.name for layer in layers}
    unmatched = [n for n in blobs if n not in kept] if blobs is not None else []  # the caffemodel's order
    seen: set[str] = set()
    for layer in layers:
        try:
            if blobs is None:
                layer.blobs = _placeholder_blobs(ctx, layer)
            else:
                layer.blobs = _layer_blobs(layer, blobs, unmatched, seen, weights_path or path)
            seen.add(layer.name)
            HANDLERS[layer.type](ctx, layer)
        except FormatError as e:
            if str(e).startswith(path):
                raise
            raise FormatError(f"{path}: layer '{layer.name}': {e}") from None
        except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, OverflowError, AttributeError) as e:
            # Fuzzing safety net: handlers interpret untrusted parameters; what they still trip over
            # (a zero stride, an axis out of range, an impossible shape) is a bad model, said as one.
            raise ModelError(
                f"{path}: layer '{layer.name}' ({layer.type}): cannot use its parameters ({type(e).__name__}: {e})"
            ) from None
    for n in ctx.nodes:
        n.attrs.pop("_affine_pending", None)
    if not ctx.nodes:
        raise ModelError(f"{path}: the network has no computing layers")
    graph = Graph(ctx.nodes, ctx.input_name, ctx.shapes[ctx.input_name], ctx.nodes[-1].name)
    return graph, ctx.weights


# Per-channel vectors a prototxt read without weights materialises (BatchNorm/Scale), in all:
# SENet-154 needs about 0.3 M. Fuzzing fix: declared sizes alone used to allocate any amount.
MAX_PLACEHOLDER_CHANNELS = 1 << 22


def _placeholder_blobs(ctx: Context, layer: Layer) -> list[np.ndarray] | None:
    """Blobs of the right shapes, for reading a prototxt without weights.

    They are read-only zero-stride views (no memory whatever the declared shape); only the
    per-channel vectors of BatchNorm/Scale get real arrays, within MAX_PLACEHOLDER_CHANNELS.
    """
    if layer.type not in PARAM_LAYERS and not (layer.type == "Scale" and len(layer.bottoms) == 1):
        return None
    shape = ctx.shape(ctx.src(layer)) if layer.bottoms else ()
    c = shape[1] if len(shape) > 1 else 0

    def const(value: float, *dims: int) -> np.ndarray:
        return np.broadcast_to(np.float32(value), dims)

    if layer.type == "Convolution":
        p = layer.param("convolution_param")
        out, g = _get(p, "num_output", 0, int), _get(p, "group", 1, int)
        return [const(0, out, c // max(g, 1), *_hw(p, "kernel", 1)), const(0, out)]
    if layer.type == "InnerProduct":
        out = _get(layer.param("inner_product_param"), "num_output", 0, int)
        return [const(0, out, math.prod(shape[1:])), const(0, out)]
    ctx.placeholder_channels += c
    if ctx.placeholder_channels > MAX_PLACEHOLDER_CHANNELS:
        raise ModelError(
            f"{ctx.path}: layer '{layer.name}': more than {MAX_PLACEHOLDER_CHANNELS} channels in normalisation "
            "layers: not a SENet deploy prototxt"
        )
    if layer.type == "BatchNorm":
        return [const(0, c), const(1, c), const(1, 1)]
    return [const(1, c), const(0, c)]


def load_prototxt(path: str | os.PathLike) -> Graph:
    """The generic graph of a prototxt (node names = Caffe layer names), no weights needed."""
    net, _ = read_prototxt(path)
    graph, _ = build_graph(net, str(path), None)
    return graph


def load(prototxt: str | os.PathLike, caffemodel: str | os.PathLike, canonical: bool = True) -> Model:
    """Read a Caffe model into a validated canonical Model.

    With canonical=True a released architecture is recognised and renamed to canonical names.
    """
    net, text = read_prototxt(prototxt)
    blobs = read_caffemodel(caffemodel)
    graph, weights = build_graph(net, str(prototxt), blobs, str(caffemodel))
    conv = dict(CAFFE_INPUT_CONVENTION, size=graph.input_shape[-1])
    mean = _mean_comment(text)
    if mean:
        conv["mean"] = mean
    meta = {
        "arch": "custom",
        "source_format": "caffe",
        "source_files": {"prototxt": os.path.basename(prototxt), "caffemodel": os.path.basename(caffemodel)},
        # hashing 460 MB costs more than converting it: sources.ensure_hashes() fills
        # "source_sha256" from these paths when an output records it
        "source_paths": {"prototxt": os.path.abspath(prototxt), "caffemodel": os.path.abspath(caffemodel)},
        "input_convention": conv,
        "class_order": "unknown",
    }
    model = Model(graph, weights, meta)
    try:
        validate(model)
    except ModelError as e:
        raise ModelError(f"{caffemodel}: {e} (does the caffemodel belong to {os.path.basename(prototxt)}?)") from None
    written = _senet_hub_comments(text)  # metadata a senet-hub writer left in the prototxt
    if "input_convention" in written:
        model.meta["input_convention"] = written["input_convention"]
    if canonical:
        from senet_hub import zoo

        model = zoo.canonicalize(model)
        if model.arch != "custom":
            model.meta["class_order"] = "senet"
    model.meta["class_order"] = written.get("class_order", model.meta["class_order"])
    if model.arch == "custom" and written.get("arch"):
        model.meta["written_from_arch"] = written["arch"]
    return model


def _senet_hub_comments(text: str) -> dict:
    import json

    out: dict = {}
    for m in re.finditer(r"^#\s*senet-hub (input_convention|class_order|arch):\s*(.+)$", text, re.M):
        key, val = m.group(1), m.group(2).strip()
        if key == "input_convention":
            try:
                val = json.loads(val)
            except ValueError:
                continue
            if not isinstance(val, dict) or not {"channel_order", "range", "mean", "std"} <= set(val):
                continue
        out[key] = val
    return out
