"""TensorFlow / Keras 3: the canonical graph as a functional ``keras.Model`` of native layers.

``build(model, layout="nhwc")`` walks the graph (no per-architecture code): ``LOWER`` is this
backend's ``ops.Lowerings`` table, one small function per op, ``fn(ctx, step, inputs) ->
KerasTensor``, driven by the shared ``ops.walk``; ``ops.plan`` raises ``ops.MissingLowering``
(naming the op, the node and "tensorflow") before any layer is made. Values are NHWC
inside (TF's native layout): every 4-D canonical value is an N x H x W x C tensor, values of any
other rank keep the canonical layout. With ``layout="nchw"`` the model takes N x C x H x W input
and a ``Permute`` turns it into NHWC first. The batch size is free; the spatial size is fixed
(the graph's ``input_shape``), because Caffe's pooling clip rule depends on it; ``run`` rebuilds
for other sizes.

Naming: the layer that produces node ``n``'s value is named ``n`` (Keras names cannot contain
``/``: characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``, duplicates get
a suffix; ``layer_names(native)`` gives the exact mapping). Helper layers a node needs are named
``<n>__<what>`` (``__pad``, ``__flatten``, ``__mul`` ...).

Op mapping (every setting whose Keras default differs is passed explicitly; every layer is
``channels_last`` and ``float32`` whatever the user's Keras config says):

- conv -> ``ZeroPadding2D(((t, b), (l, r)))`` when padded + ``Conv2D(padding="valid", groups,
  dilation_rate, use_bias)``; kernel OIHW -> HWIO (grouped convs stay grouped). Stride and
  dilation together (Keras refuses them) -> stride-1 ``Conv2D`` + ``MaxPooling2D(1, stride)``.
- batch_norm -> ``BatchNormalization(axis=-1, epsilon=eps)`` with gamma, beta, moving mean, var.
- relu -> ``ReLU``; sigmoid -> ``Activation("sigmoid")``; softmax -> ``Softmax`` on the
  channel axis; dropout -> ``Dropout(ratio)`` (identity at inference).
- max_pool / avg_pool with ``ops.PoolAttrs.out_hw`` (ceil with Caffe's clip rule, 4-sided pads):
  the input is zero-padded / cropped to exactly the ``(out - 1) * stride + kernel`` rows and
  columns the windows read, then ``MaxPooling2D`` / ``AveragePooling2D`` with ``"valid"``.
  Max pooling: two ``Rescaling(scale=1, offset=mask)`` layers put the most negative float32 on
  padded rows and columns (x * 1 + 0 = x exactly), so padding never wins. Average pooling:
  where a window's divisor (``ops.pool_counts`` per axis) is not kh * kw, two ``Rescaling`` layers
  multiply rows by kh / count_h and columns by kw / count_w. Keras' ``"same"`` pooling matches
  neither rule and is never used.
- global_avg_pool -> ``GlobalAveragePooling2D(keepdims=True)``.
- axpy -> ``Multiply([a, x])`` + ``Add``; channel_scale -> ``Multiply`` (an N x C gate is first
  ``Reshape``d to N x 1 x 1 x C); add -> ``Add``; concat -> ``Concatenate`` (NCHW axis 1 -> -1).
- reshape / flatten (Caffe's C-order semantics): ``Permute`` to NCHW first where the order
  differs (not for 1 x 1 or single-channel maps), then ``Reshape`` / ``Flatten``; a 4-D result is
  permuted back to NHWC.
- linear -> ``Dense``; on a 4-D input it follows a ``Flatten`` of the NHWC tensor and its weight
  rows are permuted at build time from the canonical C, H, W order to H, W, C (exact).
- input_norm -> ``Rescaling(scale, shift)`` when the channel order is kept, else a 1 x 1
  ``Conv2D`` whose kernel holds the permutation times the scale and whose bias is the shift.

Only native Keras layers are used (no Lambda, no custom classes), so a ``.keras`` file loads
with ``keras.models.load_model(path)`` alone.

``run(native, x, taps=True)``: x is float32 NCHW; returns ``{node: ndarray}`` for every node (4-D
values transposed back to NCHW), or only the graph output.

``save(model, path, layout="nhwc")``: ``*.keras`` -> Keras file; any other path -> a SavedModel
directory whose ``serving_default`` signature takes ``data``: float32 ``[None, H, W, C]`` (or
``[None, C, H, W]`` with ``layout="nchw"``) and returns ``{<output node>: output}``. Both are
written under a temporary name in the target directory and renamed when complete, with
senet-hub's record (graph, meta, ``weight_layers``) as the zip member ``senet_hub.json`` or
``assets.extra/senet_hub.json``, which ``--from tensorflow`` reads back (converters.tensorflow_source).

Why this module is long: Keras has no pooling with 4-sided pads, Caffe's clip rule or its
divisors, and no NCHW reshape semantics, so several lowerings are a few layers each; they sit
next to the one table they belong to, with the save/load code that shares their layer naming.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO/WARNING lines; users can override


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Silence file descriptor 2 while TensorFlow loads: its oneDNN notice is logged by absl before
    logging is initialised, so TF_CPP_MIN_LOG_LEVEL cannot hide it. Kept when the user asked for
    TensorFlow's logs (TF_CPP_MIN_LOG_LEVEL=0) or TensorFlow is already loaded."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("", "0"):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no usable fd 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


with _quiet_fd2():
    import keras
    import tensorflow as tf

from ..errors import ModelError, OutputError, UnsupportedError  # noqa: E402
from ..graph import Model, infer_shapes  # noqa: E402
from ..ops import (  # noqa: E402
    BatchNormAttrs,
    ConcatAttrs,
    ConvAttrs,
    DropoutAttrs,
    InputNormAttrs,
    LinearAttrs,
    Lowerings,
    PoolAttrs,
    Step,
    plan,
    pool_counts,
    walk,
)

NAME = "tensorflow"
EXTRA = "tensorflow"
LAYOUTS = ("nhwc", "nchw")
SIGNATURE_INPUT = "data"
_NEG = float(np.finfo(np.float32).min) / 2  # "minus infinity" for max-pool padding (twice is still finite)
_L = keras.layers
_COMMON = {"dtype": "float32"}
_CL = {"data_format": "channels_last", "dtype": "float32"}


def available() -> str | None:
    return str(tf.__version__)


# ------------------------------------------------------------------------------------- naming


def keras_name(name: str) -> str:
    """A canonical name as a valid Keras layer name (before de-duplication)."""
    s = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return s if s[:1].isalnum() else f"n_{s}"


def signature_output_key(model: Model) -> str:
    """The key of the SavedModel serving signature's output: the graph output node's name."""
    return keras_name(model.graph.output)


@dataclass
class _Info:
    """What run() and save() need to know about a model built here (kept outside the Keras object)."""

    model: Model
    layout: str
    size: tuple[int, int]
    tensors: dict[str, Any]  # canonical node -> KerasTensor of its value
    layers: dict[str, str]  # canonical node -> name of the layer producing its value
    ranks: dict[str, int]
    fns: dict[str, Any] = field(default_factory=dict)  # run(): cached tf.functions
    resized: dict[tuple[int, int], Any] = field(default_factory=dict)


_INFO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def layer_names(native: keras.Model) -> dict[str, str]:
    """Canonical node name -> name of the Keras layer whose output is that node's value."""
    return dict(_info(native).layers)


def _info(native: Any) -> _Info:
    try:
        return _INFO[native]
    except (KeyError, TypeError):
        raise TypeError("expected a keras.Model returned by senet_hub.builders.tensorflow.build") from None


# ------------------------------------------------------------------------------------ builder


def _f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


@dataclass
class _Ctx:
    """What a lowering needs besides its inputs: the model (weights), every value's canonical
    shape, and the Keras layer names taken so far (canonical nodes first, helpers as they come)."""

    model: Model
    shapes: dict[str, tuple[int, ...]]
    steps: list[Step]
    taken: set[str] = field(default_factory=set)
    layers: dict[str, str] = field(default_factory=dict)  # canonical node -> Keras layer name
    done: int = 0  # steps whose value has been made and checked (the walk's position)

    def __post_init__(self) -> None:
        # canonical nodes get their names first, in graph order; helpers never take a node's name
        for s in self.steps:
            self.layers[s.name] = self.unique(keras_name(s.name))

    def unique(self, base: str) -> str:
        name, i = base, 2
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def name(self, s: Step) -> str:
        """The Keras name of the layer that produces the node's value."""
        return self.layers[s.name]

    def aux(self, s: Step, what: str) -> str:
        """A helper layer's name: ``<node>__<what>``."""
        return self.unique(f"{self.layers[s.name]}__{what}")

    def in_shape(self, s: Step, i: int = 0) -> tuple[int, ...]:
        """The canonical (NCHW) shape of the step's i-th input."""
        return self.shapes[s.inputs[i]]

    def params(self, s: Step) -> dict[str, np.ndarray]:
        return {p: _f32(self.model.weights[f"{s.name}.{p}"]) for p in s.node.param_names()}

    def check(self, name: str, y: Any) -> None:
        """``walk``'s on_value: the Keras value must have the canonical shape (in NHWC for 4-D)."""
        s = self.steps[self.done]
        want, got = _native_shape(self.shapes[name]), tuple(y.shape[1:])
        if got != want:
            raise ModelError(f"node '{name}' ({s.op}): TensorFlow shape {got} != expected {want}")
        self.done += 1


def _native_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A canonical shape as Keras sees it, without the batch: N x C x H x W -> (H, W, C)."""
    if len(shape) == 4:
        return (shape[2], shape[3], shape[1])
    return tuple(shape[1:])


LowerFn = Callable[[_Ctx, Step, list[Any]], Any]
# ``fn(ctx, step, inputs) -> KerasTensor``: the node's value, made by a layer named ``ctx.name(step)``
LOWER: Lowerings[LowerFn] = Lowerings("tensorflow")


@LOWER.register("conv")
def _conv(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: ConvAttrs = s.attrs
    x, name = ins[0], c.name(s)
    (pt, pl, pb, pr), (sh, sw), (dh, dw) = a.pad, a.stride, a.dilation
    if pt or pl or pb or pr:
        x = _L.ZeroPadding2D(((pt, pb), (pl, pr)), name=c.aux(s, "pad"), **_CL)(x)
    split = max(sh, sw) > 1 and max(dh, dw) > 1  # Keras refuses stride and dilation together
    layer = _L.Conv2D(
        a.out_channels,
        a.kernel,
        strides=(1, 1) if split else (sh, sw),
        padding="valid",
        dilation_rate=(dh, dw),
        groups=a.groups,
        use_bias=a.bias,
        name=c.aux(s, "conv") if split else name,
        **_CL,
    )
    y = layer(x)
    p = c.params(s)
    kernel = p["weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO (I per group)
    layer.set_weights([kernel, p["bias"]] if a.bias else [kernel])
    if split:  # the stride as a 1 x 1 max pool: picks every sh-th row and sw-th column exactly
        y = _L.MaxPooling2D((1, 1), strides=(sh, sw), padding="valid", name=name, **_CL)(y)
    return y


@LOWER.register("batch_norm")
def _batch_norm(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: BatchNormAttrs = s.attrs
    rank = len(c.in_shape(s))
    if rank not in (2, 4):  # axis=-1 is the canonical channel axis only for N x C and NHWC values
        raise UnsupportedError(f"node '{s.name}': batch_norm on a rank-{rank} value")
    layer = _L.BatchNormalization(axis=-1, epsilon=a.eps, name=c.name(s), **_COMMON)
    y = layer(ins[0])
    p = c.params(s)
    layer.set_weights([p["weight"], p["bias"], p["running_mean"], p["running_var"]])
    return y


@LOWER.register("relu")
def _relu(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return _L.ReLU(name=c.name(s), **_COMMON)(ins[0])


@LOWER.register("sigmoid")
def _sigmoid(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return _L.Activation("sigmoid", name=c.name(s), **_COMMON)(ins[0])


def _pool_window(c: _Ctx, s: Step, x: Any, is_max: bool) -> Any:
    """Zero-pad / crop x to exactly the rows and columns the windows read (see the module doc)."""
    a: PoolAttrs = s.attrs
    _, _, h, w = c.in_shape(s)
    (kh, kw), (pt, pl, _, _) = a.kernel, a.pad
    eh, ew = a.extent_hw(h, w)
    bottom, right = eh - pt - h, ew - pl - w  # negative: rows / columns at the end no window reads
    if is_max and (pt >= kh or pl >= kw or bottom >= kh or right >= kw):
        raise UnsupportedError(f"node '{s.name}': a max-pool window lies entirely in the padding")
    if pt or pl or bottom > 0 or right > 0:
        pads = ((pt, max(bottom, 0)), (pl, max(right, 0)))
        x = _L.ZeroPadding2D(pads, name=c.aux(s, "pad"), **_CL)(x)
    if bottom < 0 or right < 0:
        crop = ((0, max(-bottom, 0)), (0, max(-right, 0)))
        x = _L.Cropping2D(crop, name=c.aux(s, "crop"), **_CL)(x)
    return x


@LOWER.register("max_pool")
def _max_pool(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: PoolAttrs = s.attrs
    _, _, h, w = c.in_shape(s)
    (pt, pl, _, _) = a.pad
    eh, ew = a.extent_hw(h, w)
    x = _pool_window(c, s, ins[0], True)
    # padding never wins: padded rows / columns get the most negative float32 (x * 1 + 0 = x exactly)
    rows = (np.arange(eh) < pt) | (np.arange(eh) >= pt + h)
    cols = (np.arange(ew) < pl) | (np.arange(ew) >= pl + w)
    if rows.any():
        off = np.where(rows, _NEG, 0.0).astype(np.float32).reshape(eh, 1, 1)
        x = _L.Rescaling(1.0, off, name=c.aux(s, "pad_rows"), **_COMMON)(x)
    if cols.any():
        off = np.where(cols, _NEG, 0.0).astype(np.float32).reshape(1, ew, 1)
        x = _L.Rescaling(1.0, off, name=c.aux(s, "pad_cols"), **_COMMON)(x)
    return _L.MaxPooling2D(a.kernel, strides=a.stride, padding="valid", name=c.name(s), **_CL)(x)


@LOWER.register("avg_pool")
def _avg_pool(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: PoolAttrs = s.attrs
    _, _, h, w = c.in_shape(s)
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a.kernel, a.stride, a.pad
    ho, wo = a.out_hw(h, w)
    name = c.name(s)
    x = _pool_window(c, s, ins[0], False)
    # AveragePooling2D divides by kh * kw; the divisor is separable (count_h x count_w), so rows
    # and columns are rescaled by kh / count_h and kw / count_w where they differ
    inc = a.count_include_pad
    fh = kh / pool_counts(h, kh, sh, pt, pb, ho, inc)
    fw = kw / pool_counts(w, kw, sw, pl, pr, wo, inc)
    fix_h, fix_w = bool((fh != 1).any()), bool((fw != 1).any())
    pool_name = c.aux(s, "avg") if fix_h or fix_w else name
    y = _L.AveragePooling2D(a.kernel, strides=a.stride, padding="valid", name=pool_name, **_CL)(x)
    if fix_h:
        row_name = c.aux(s, "div_rows") if fix_w else name
        y = _L.Rescaling(fh.astype(np.float32).reshape(ho, 1, 1), name=row_name, **_COMMON)(y)
    if fix_w:
        y = _L.Rescaling(fw.astype(np.float32).reshape(1, wo, 1), name=name, **_COMMON)(y)
    return y


@LOWER.register("global_avg_pool")
def _global_avg_pool(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return _L.GlobalAveragePooling2D(keepdims=True, name=c.name(s), **_CL)(ins[0])


def _gate(c: _Ctx, s: Step, i: int, t: Any, target_rank: int) -> Any:
    """Input i, an N x C (x 1 x 1) gate, as a tensor that broadcasts over the target's channels."""
    shape = c.in_shape(s, i)
    ch = shape[1]
    if target_rank == 4 and len(shape) != 4:
        return _L.Reshape((1, 1, ch), name=c.aux(s, "gate"), **_COMMON)(t)
    if target_rank != 4 and len(shape) != target_rank:
        return _L.Reshape((ch,) + (1,) * (target_rank - 2), name=c.aux(s, "gate"), **_COMMON)(t)
    return t


@LOWER.register("axpy")
def _axpy(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    gate = _gate(c, s, 0, ins[0], len(c.shapes[s.name]))
    ax = _L.Multiply(name=c.aux(s, "mul"), **_COMMON)([gate, ins[1]])
    return _L.Add(name=c.name(s), **_COMMON)([ax, ins[2]])


@LOWER.register("channel_scale")
def _channel_scale(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    gate = _gate(c, s, 1, ins[1], len(c.in_shape(s)))
    return _L.Multiply(name=c.name(s), **_COMMON)([ins[0], gate])


@LOWER.register("add")
def _add(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return _L.Add(name=c.name(s), **_COMMON)(ins)


@LOWER.register("concat")
def _concat(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: ConcatAttrs = s.attrs
    rank = len(c.in_shape(s))
    axis = a.axis % rank
    if axis == 0:
        raise UnsupportedError(f"node '{s.name}': concat along the batch axis")
    if rank == 4:  # NCHW axis -> NHWC axis
        axis = {1: 3, 2: 1, 3: 2}[axis]
    return _L.Concatenate(axis=axis, name=c.name(s), **_COMMON)(ins)


def _c_order(c: _Ctx, s: Step, x: Any) -> Any:
    """A 4-D NHWC input as NCHW, when the two orders differ in memory (Caffe's C-order semantics)."""
    shape = c.in_shape(s)
    if len(shape) == 4 and shape[1] > 1 and shape[2] * shape[3] > 1:
        return _L.Permute((3, 1, 2), name=c.aux(s, "nchw"), **_COMMON)(x)
    return x


@LOWER.register("reshape")
def _reshape(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    in_shape, out_shape, name = c.in_shape(s), c.shapes[s.name], c.name(s)
    if out_shape[0] != in_shape[0]:
        raise UnsupportedError(f"node '{s.name}': reshape changes the batch size ({in_shape} -> {out_shape})")
    x = _c_order(c, s, ins[0])
    if len(out_shape) != 4:
        return _L.Reshape(tuple(out_shape[1:]), name=name, **_COMMON)(x)
    _, ch, h, w = out_shape
    if ch > 1 and h * w > 1:  # a 4-D result in C-order, back to NHWC
        x = _L.Reshape((ch, h, w), name=c.aux(s, "reshape"), **_COMMON)(x)
        return _L.Permute((2, 3, 1), name=name, **_COMMON)(x)
    return _L.Reshape((h, w, ch), name=name, **_COMMON)(x)


@LOWER.register("flatten")
def _flatten(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return _L.Flatten(name=c.name(s), **_CL)(_c_order(c, s, ins[0]))


@LOWER.register("linear")
def _linear(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: LinearAttrs = s.attrs
    x, in_shape = ins[0], c.in_shape(s)
    p = c.params(s)
    wt = p["weight"]  # (O, I), I in the canonical C-order of the input
    if len(in_shape) == 4:  # the Flatten below reads NHWC: rows permuted to H, W, C order (exact)
        _, ch, h, w = in_shape
        wt = wt.reshape(-1, ch, h, w).transpose(0, 2, 3, 1).reshape(wt.shape[0], -1)
    if len(in_shape) != 2:
        x = _L.Flatten(name=c.aux(s, "flatten"), **_CL)(x)
    layer = _L.Dense(a.out_features, use_bias=a.bias, name=c.name(s), **_COMMON)
    y = layer(x)
    layer.set_weights([_f32(wt.T), p["bias"]] if a.bias else [_f32(wt.T)])
    return y


@LOWER.register("softmax")
def _softmax(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    axis = -1 if len(c.in_shape(s)) == 4 else 1  # the canonical channel axis
    return _L.Softmax(axis=axis, name=c.name(s), **_COMMON)(ins[0])


@LOWER.register("dropout")
def _dropout(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: DropoutAttrs = s.attrs
    return _L.Dropout(rate=a.ratio, name=c.name(s), **_COMMON)(ins[0])  # the identity at inference


@LOWER.register("input_norm")
def _input_norm(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a: InputNormAttrs = s.attrs
    x, in_shape, name = ins[0], c.in_shape(s), c.name(s)
    if len(in_shape) != 4:
        raise UnsupportedError(f"node '{s.name}': input_norm on a rank-{len(in_shape)} value")
    perm, scale, shift = list(a.perm), _f32(a.scale), _f32(a.shift)
    ch = len(perm)
    if perm == list(range(ch)):
        return _L.Rescaling(scale, shift, name=name, **_COMMON)(x)
    layer = _L.Conv2D(ch, (1, 1), padding="valid", use_bias=True, name=name, **_CL)
    y = layer(x)
    kernel = np.zeros((1, 1, ch, ch), np.float32)
    kernel[0, 0, perm, np.arange(ch)] = scale  # out[c] = x[perm[c]] * scale[c] + shift[c]
    layer.set_weights([kernel, shift])
    return y


# --------------------------------------------------------------------------------- interface


def build(model: Model, layout: str = "nhwc") -> keras.Model:
    """The model as a functional ``keras.Model`` (float32 weights, NHWC inside; see the module doc)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    g = model.graph
    steps = plan(g, LOWER)  # a missing lowering fails here, before any layer is made
    shapes = infer_shapes(model)
    if len(shapes[g.input_name]) != 4:
        raise UnsupportedError(f"input '{g.input_name}' must be N x C x H x W, got {shapes[g.input_name]}")
    c = _Ctx(model, shapes, steps)
    _, ch, h, w = shapes[g.input_name]
    in_name = keras_name(g.input_name)
    if in_name in c.taken:
        in_name = c.unique(in_name)
    c.taken.add(in_name)
    if layout == "nchw":
        inp = keras.Input(shape=(ch, h, w), name=in_name, dtype="float32")
        x = _L.Permute((2, 3, 1), name=c.unique(f"{in_name}__nhwc"), **_COMMON)(inp)
    else:
        inp = keras.Input(shape=(h, w, ch), name=in_name, dtype="float32")
        x = inp
    try:
        tensors = walk(g, steps, c, x, taps=True, on_value=c.check)
    except (ValueError, TypeError) as e:  # Keras refusing a configuration; c.done is the failing step
        s = steps[c.done]
        raise UnsupportedError(f"node '{s.name}' ({s.op}): no TensorFlow mapping: {e}") from None
    native = keras.Model(inp, tensors[g.output], name=keras_name(model.arch))
    _INFO[native] = _Info(
        model=model,
        layout=layout,
        size=(int(h), int(w)),
        tensors=tensors,
        layers=c.layers,
        ranks={k: len(v) for k, v in shapes.items()},
    )
    return native


def _with_size(model: Model, h: int, w: int) -> Model:
    m = model.copy()
    m.graph.input_shape = (*tuple(m.graph.input_shape)[:2], h, w)
    return m


def _resolve(native: keras.Model, size: tuple[int, int]) -> keras.Model:
    """The same model for another spatial size (pool padding and clip rules depend on it)."""
    info = _info(native)
    if tuple(size) == info.size:
        return native
    if size not in info.resized:
        info.resized[size] = build(_with_size(info.model, *size), info.layout)
    return info.resized[size]


class _Infer:
    """model(t, training=False) as a callable object: tf.function keys its retracing statistics on
    the code object, so one lambda shared by many models would warn about retracing."""

    def __init__(self, model: keras.Model) -> None:
        self.model = model

    def __call__(self, t: Any) -> Any:
        return self.model(t, training=False)


def run(native: keras.Model, x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    """Run on float32 NCHW input; every node's output (NCHW for 4-D values) or only the graph output."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected an N x C x H x W input, got shape {x.shape}")
    native = _resolve(native, (int(x.shape[2]), int(x.shape[3])))
    info = _info(native)
    feed = x if info.layout == "nchw" else x.transpose(0, 2, 3, 1)
    key = "taps" if taps else "output"
    if key not in info.fns:
        names = list(info.tensors) if taps else [info.model.graph.output]
        keras_model = keras.Model(native.input, [info.tensors[k] for k in names]) if taps else native
        spec = tf.TensorSpec((None, *feed.shape[1:]), tf.float32)
        # one graph per model: no per-call retracing of Keras' XLA-compiled grouped convs, fast repeats
        fn = tf.function(_Infer(keras_model), input_signature=[spec])
        info.fns[key] = (names, fn)
    names, fn = info.fns[key]
    ys = fn(tf.constant(feed))
    if not isinstance(ys, (list, tuple)):
        ys = [ys]
    out = {}
    for k, y in zip(names, ys):
        v = np.asarray(y)
        out[k] = v.transpose(0, 3, 1, 2) if info.ranks[k] == 4 else v
    return out


def _as_native(model: Model | keras.Model, layout: str) -> tuple[keras.Model, Model]:
    if isinstance(model, Model):
        return build(model, layout), model
    info = _info(model)
    if info.layout != layout:
        return build(info.model, layout), info.model
    return model, info.model


def _savedmodel(native: keras.Model, model: Model, layout: str, path: str) -> None:
    _, c, h, w = tuple(model.graph.input_shape)
    shape = [None, c, h, w] if layout == "nchw" else [None, h, w, c]
    key = signature_output_key(model)

    def serve(data: Any) -> dict[str, Any]:
        return {key: native(data, training=False)}

    # no archive.track(native): the variables the endpoint uses are saved once; tracking the model
    # too would store every weight a second time (Keras' variables and their tf.Variables)
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        name="serving_default",
        fn=serve,
        input_signature=[tf.TensorSpec(shape, tf.float32, name=SIGNATURE_INPUT)],
    )
    archive.write_out(path, verbose=False)


def weight_layers(native: keras.Model) -> dict[str, str]:
    """Canonical node -> name of the Keras layer holding its weights: the node's own layer, except a
    conv split into a stride-1 Conv2D + 1 x 1 MaxPooling2D (stride with dilation), whose weights are
    in the Conv2D feeding that pool. A permuting input stage's Conv2D is listed too (no canonical
    weights: the reader checks its constants against the graph)."""
    info = _info(native)
    producer = {id(layer.output): layer for layer in native.layers}
    out = {}
    for n in info.model.graph.nodes:
        if not n.param_names() and n.op != "input_norm":
            continue
        layer = native.get_layer(info.layers[n.name])
        if n.op == "conv" and not layer.weights:
            layer = producer[id(layer.input)]
        if layer.weights:
            out[n.name] = layer.name
    return out


def save(model: Model | keras.Model, path: str | os.PathLike, layout: str = "nhwc", **_: Any) -> list[str]:
    """Write ``path``: ``*.keras`` = Keras file, anything else = SavedModel directory (atomically).

    Both carry senet-hub's record (graph, meta, the layer of each node's weights) so that
    ``--from tensorflow`` reads them back exactly: converters.tensorflow_source."""
    from ..atomic import atomic_outputs, check_writable
    from ..converters import tensorflow_source

    if layout not in LAYOUTS:
        raise OutputError(f"{path}: unknown TensorFlow layout '{layout}'; use one of {', '.join(LAYOUTS)}")
    path = os.fspath(path)
    if len(path) > 1:
        path = path.rstrip("/" + os.sep) or path
    check_writable(path)
    native, canon = _as_native(model, layout)
    is_keras = path.lower().endswith(".keras")
    record = tensorflow_source.record(canon, layout, "keras" if is_keras else "savedmodel", weight_layers(native))
    with atomic_outputs([path]) as (tmp,):
        try:
            if is_keras:
                inner = tmp + ".keras"  # Keras insists on the suffix
                try:
                    native.save(inner)
                    tensorflow_source.add_record(inner, record)  # before the rename: never a file without it
                    os.replace(inner, tmp)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(inner)
            else:
                _savedmodel(native, canon, layout, tmp)
                tensorflow_source.add_record(tmp, record)
        except tf.errors.OpError as e:  # TensorFlow's file system errors are not OSErrors
            msg = (e.message or str(e)).strip().splitlines()[0].replace(tmp, path)
            raise OutputError(
                f"{path}: cannot write the TensorFlow model: {msg}; check the path and free space"
            ) from None
    return [path]


def load(path: str | os.PathLike) -> Any:
    """Load an artifact written by ``save`` (needs TensorFlow only): a ``keras.Model`` for ``.keras``,
    else the SavedModel's ``serving_default`` signature function."""
    path = os.fspath(path)
    if path.lower().endswith(".keras"):
        return keras.models.load_model(path)
    return tf.saved_model.load(path).signatures["serving_default"]
