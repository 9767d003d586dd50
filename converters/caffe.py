"""Caffe deploy prototxt + caffemodel -> canonical Model.

Each Caffe layer type has one handler in ``HANDLERS`` (``@handles("Type")``) that turns a layer
into canonical nodes. Handlers see the layer's params, its blobs and the shapes of its bottoms;
in-place layers (top == bottom) are resolved by tracking which node currently produces each blob.
The result is a generic graph named after the Caffe layers; recognising a released architecture
and renaming to canonical names is a separate step (``senet_hub.zoo.canonicalize``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from senet_hub.errors import FormatError, ModelError, UnsupportedError
from senet_hub.graph import Graph, Model, Node, output_shape, validate

from .caffe_format import V1_TYPE_NAMES, read_caffemodel, read_prototxt

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


def _get(d: dict, key: str, default: Any = None, conv: Callable = str) -> Any:
    v = d.get(key)
    if not v:
        return default
    try:
        return conv(v[0])
    except (TypeError, ValueError):
        raise FormatError(f"bad value {v[0]!r} for '{key}'") from None


def _bool(d: dict, key: str, default: bool) -> bool:
    v = _get(d, key)
    return default if v is None else str(v).lower() in ("true", "1", "t")


def _hw(d: dict, name: str, default: int) -> tuple[int, int]:
    """kernel/stride/pad/dilation as (h, w) from name_h/name_w or a repeated field."""
    key = "kernel_size" if name == "kernel" else name
    if f"{name}_h" in d or f"{name}_w" in d:
        return _get(d, f"{name}_h", default, int), _get(d, f"{name}_w", default, int)
    vals = [int(v) for v in d.get(key, [])]
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

    def src(self, layer: Layer, i: int = 0) -> str:
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
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelError(f"{self.path}: layer '{layer.name}' ({layer.type}): {e}") from None
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
PARAM_LAYERS = {"Convolution", "InnerProduct", "BatchNorm"}  # must find blobs in the caffemodel


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
    shape = [int(d) for d in layer.param("input_param").get("shape", [{}])[0].get("dim", [])]
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
    x = ctx.src(layer)
    c = ctx.shape(x)[1]
    b = _blobs(ctx, layer, 2)
    # Caffe keeps running sums scaled by a moving-average factor s (third blob): divide it out.
    s = float(b[2].reshape(-1)[0]) if len(b) > 2 and b[2].size else 1.0
    inv = 0.0 if s == 0 else 1.0 / s
    mean = _shaped(ctx, layer, b[0], (c,), "mean").astype(np.float32) * np.float32(inv)
    var = _shaped(ctx, layer, b[1], (c,), "variance").astype(np.float32) * np.float32(inv)
    eps = _get(layer.param("batch_norm_param"), "eps", 1e-5, float)
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
    coeff = [float(c) for c in p.get("coeff", [])]
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
    dims = [int(d) for d in (p.get("shape") or [{}])[0].get("dim", [])]
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


# ------------------------------------------------------------------------------------ driver
def net_layers(net: dict[str, list[Any]], path: str) -> list[Layer]:
    """TEST-phase layers in order, V1 `layers` and the legacy `input:` header included."""
    layers: list[Layer] = []
    if "input" in net:
        dims = [int(d) for d in net.get("input_dim", [])]
        shapes = [[int(d) for d in s.get("dim", [])] for s in net.get("input_shape", [])]
        for j, name in enumerate(net["input"]):
            shape = shapes[j] if j < len(shapes) else dims[4 * j : 4 * j + 4]
            layers.append(Layer(name, "Input", [], [name], {"input_param": [{"shape": [{"dim": shape}]}]}))
    for key, v1 in (("layer", False), ("layers", True)):
        for raw in net.get(key, []):
            if not isinstance(raw, dict):
                raise FormatError(f"{path}: '{key}' must be a message")
            phases = [str(_get(r, "phase", "")) for r in raw.get("include", []) if isinstance(r, dict)]
            if phases and "TEST" not in phases:
                continue
            name, ltype = _get(raw, "name", None), str(_get(raw, "type", ""))
            if v1:
                ltype = V1_TYPE_NAMES.get(ltype.upper().replace("_", ""), ltype)
            if not name or not ltype:
                raise FormatError(f"{path}: a layer without a name or type (layer #{len(layers) + 1})")
            layers.append(
                Layer(
                    str(name), ltype, [str(b) for b in raw.get("bottom", [])], [str(t) for t in raw.get("top", [])], raw
                )
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


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def build_graph(
    net: dict[str, list[Any]], path: str, blobs: dict[str, tuple[str, list[np.ndarray]]] | None = None
) -> tuple[Graph, dict[str, np.ndarray]]:
    layers = net_layers(net, path)
    _check_supported(layers, path)
    if not any(layer.type == "Input" for layer in layers):
        raise UnsupportedError(f"{path}: no input declared (Input layer or input/input_shape): pass a deploy prototxt")
    ctx = Context(path)
    for layer in layers:
        if blobs is None:
            layer.blobs = _placeholder_blobs(ctx, layer)
        else:
            layer.blobs = blobs[layer.name][1] if layer.name in blobs else None
        try:
            HANDLERS[layer.type](ctx, layer)
        except FormatError as e:
            if str(e).startswith(path):
                raise
            raise FormatError(f"{path}: layer '{layer.name}': {e}") from None
    for n in ctx.nodes:
        n.attrs.pop("_affine_pending", None)
    if not ctx.nodes:
        raise ModelError(f"{path}: the network has no computing layers")
    graph = Graph(ctx.nodes, ctx.input_name, ctx.shapes[ctx.input_name], ctx.nodes[-1].name)
    return graph, ctx.weights


def _placeholder_blobs(ctx: Context, layer: Layer) -> list[np.ndarray] | None:
    """Zero blobs of the right shapes, for reading a prototxt without weights."""
    if layer.type not in PARAM_LAYERS and not (layer.type == "Scale" and len(layer.bottoms) == 1):
        return None
    shape = ctx.shape(ctx.src(layer)) if layer.bottoms else ()
    c = shape[1] if len(shape) > 1 else 0
    if layer.type == "Convolution":
        p = layer.param("convolution_param")
        out, g = _get(p, "num_output", 0, int), _get(p, "group", 1, int)
        return [np.zeros((out, c // max(g, 1), *_hw(p, "kernel", 1)), np.float32), np.zeros(out, np.float32)]
    if layer.type == "InnerProduct":
        out = _get(layer.param("inner_product_param"), "num_output", 0, int)
        return [np.zeros((out, int(np.prod(shape[1:]))), np.float32), np.zeros(out, np.float32)]
    if layer.type == "BatchNorm":
        return [np.zeros(c, np.float32), np.ones(c, np.float32), np.ones(1, np.float32)]
    return [np.ones(c, np.float32), np.zeros(c, np.float32)]


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
    graph, weights = build_graph(net, str(prototxt), blobs)
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
    if canonical:
        from senet_hub import zoo

        model = zoo.canonicalize(model)
        if model.arch != "custom":
            model.meta["class_order"] = "senet"
    return model
