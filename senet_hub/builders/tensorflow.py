"""TensorFlow / Keras 3: the canonical graph as a functional ``keras.Model`` of native layers.

``build(model, layout="nhwc")`` walks the graph (no per-architecture code). Values are NHWC
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
- max_pool / avg_pool with graph.py's output size (ceil with Caffe's clip rule, 4-sided pads):
  the input is zero-padded / cropped to exactly the ``(out - 1) * stride + kernel`` rows and
  columns the windows read, then ``MaxPooling2D`` / ``AveragePooling2D`` with ``"valid"``.
  Max pooling: two ``Rescaling(scale=1, offset=mask)`` layers put the most negative float32 on
  padded rows and columns (x * 1 + 0 = x exactly), so padding never wins. Average pooling:
  where a window's divisor (graph.py's count rule) is not kh * kw, two ``Rescaling`` layers
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
written under a temporary name in the target directory and renamed when complete.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import weakref
from collections.abc import Iterator
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
from ..graph import Model, infer_shapes, pool_out  # noqa: E402
from ..ops import pool_counts  # noqa: E402

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


class _Walker:
    def __init__(self, model: Model, shapes: dict[str, tuple[int, ...]], layout: str) -> None:
        self.model, self.shapes, self.layout = model, shapes, layout
        self.taken: set[str] = set()
        self.layers: dict[str, str] = {}
        # canonical nodes get their names first; helpers never take a node's name
        for n in model.graph.nodes:
            self.layers[n.name] = self._unique(keras_name(n.name))

    def _unique(self, base: str) -> str:
        name, i = base, 2
        while name in self.taken:
            name, i = f"{base}_{i}", i + 1
        self.taken.add(name)
        return name

    def aux(self, node: str, what: str) -> str:
        return self._unique(f"{self.layers[node]}__{what}")

    # ------------------------------------------------------------------------------ the walk

    def walk(self) -> tuple[Any, dict[str, Any]]:
        g = self.model.graph
        n_, c, h, w = self.shapes[g.input_name]
        in_name = keras_name(g.input_name)
        if in_name in self.taken:
            in_name = self._unique(in_name)
        self.taken.add(in_name)
        if self.layout == "nchw":
            inp = keras.Input(shape=(c, h, w), name=in_name, dtype="float32")
            x = _L.Permute((2, 3, 1), name=self._unique(f"{in_name}__nhwc"), **_COMMON)(inp)
        else:
            inp = keras.Input(shape=(h, w, c), name=in_name, dtype="float32")
            x = inp
        vals: dict[str, Any] = {g.input_name: x}
        for n in g.nodes:
            ins = [vals[i] for i in n.inputs]
            try:
                y = self.node(n, ins)
            except (ValueError, TypeError) as e:  # Keras refusing a configuration
                raise UnsupportedError(f"node '{n.name}' ({n.op}): no TensorFlow mapping: {e}") from None
            want = self._native_shape(self.shapes[n.name])
            got = tuple(y.shape[1:])
            if got != want:
                raise ModelError(f"node '{n.name}' ({n.op}): TensorFlow shape {got} != expected {want}")
            vals[n.name] = y
        return inp, {n.name: vals[n.name] for n in g.nodes}

    @staticmethod
    def _native_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(shape) == 4:
            return (shape[2], shape[3], shape[1])
        return tuple(shape[1:])

    def node(self, n: Any, ins: list[Any]) -> Any:
        op, a, name = n.op, n.attrs, self.layers[n.name]
        in_shape = self.shapes[n.inputs[0]] if n.inputs else ()
        x = ins[0] if ins else None
        if op == "conv":
            return self._conv(n, x, in_shape)
        if op == "batch_norm":
            if len(in_shape) not in (2, 4):
                raise UnsupportedError(f"node '{n.name}': batch_norm on a rank-{len(in_shape)} value")
            layer = _L.BatchNormalization(axis=-1, epsilon=float(a["eps"]), name=name, **_COMMON)
            y = layer(x)
            p = self._params(n)
            layer.set_weights([p["weight"], p["bias"], p["running_mean"], p["running_var"]])
            return y
        if op == "relu":
            return _L.ReLU(name=name, **_COMMON)(x)
        if op == "sigmoid":
            return _L.Activation("sigmoid", name=name, **_COMMON)(x)
        if op in ("max_pool", "avg_pool"):
            return self._pool(n, x, in_shape, op == "max_pool")
        if op == "global_avg_pool":
            return _L.GlobalAveragePooling2D(keepdims=True, name=name, **_CL)(x)
        if op == "axpy":
            out_rank = len(self.shapes[n.name])
            gate = self._gate(n, ins[0], self.shapes[n.inputs[0]], out_rank)
            ax = _L.Multiply(name=self.aux(n.name, "mul"), **_COMMON)([gate, ins[1]])
            return _L.Add(name=name, **_COMMON)([ax, ins[2]])
        if op == "channel_scale":
            gate = self._gate(n, ins[1], self.shapes[n.inputs[1]], len(in_shape))
            return _L.Multiply(name=name, **_COMMON)([x, gate])
        if op == "add":
            return _L.Add(name=name, **_COMMON)(ins)
        if op == "concat":
            rank = len(in_shape)
            axis = int(a.get("axis", 1)) % rank
            if axis == 0:
                raise UnsupportedError(f"node '{n.name}': concat along the batch axis")
            if rank == 4:
                axis = {1: 3, 2: 1, 3: 2}[axis]
            return _L.Concatenate(axis=axis, name=name, **_COMMON)(ins)
        if op == "reshape":
            return self._reshape(n, x, in_shape, self.shapes[n.name])
        if op == "flatten":
            return _L.Flatten(name=name, **_CL)(self._c_order(n, x, in_shape))
        if op == "linear":
            return self._linear(n, x, in_shape)
        if op == "softmax":
            return _L.Softmax(axis=-1 if len(in_shape) == 4 else 1, name=name, **_COMMON)(x)
        if op == "dropout":
            return _L.Dropout(rate=float(a.get("ratio", 0.0)), name=name, **_COMMON)(x)
        if op == "input_norm":
            return self._input_norm(n, x, in_shape)
        raise UnsupportedError(f"node '{n.name}': op '{op}' has no TensorFlow mapping")

    def _params(self, n: Any) -> dict[str, np.ndarray]:
        return {p: _f32(self.model.weights[f"{n.name}.{p}"]) for p in n.param_names()}

    # ------------------------------------------------------------------------------- ops

    def _conv(self, n: Any, x: Any, in_shape: tuple[int, ...]) -> Any:
        a, name = n.attrs, self.layers[n.name]
        pt, pl, pb, pr = (int(p) for p in a["pad"])
        kh, kw = (int(k) for k in a["kernel"])
        sh, sw = (int(s) for s in a["stride"])
        dh, dw = (int(d) for d in a.get("dilation", (1, 1)))
        groups, bias = int(a.get("groups", 1)), bool(a.get("bias", True))
        if pt or pl or pb or pr:
            x = _L.ZeroPadding2D(((pt, pb), (pl, pr)), name=self.aux(n.name, "pad"), **_CL)(x)
        split = max(sh, sw) > 1 and max(dh, dw) > 1  # Keras refuses stride and dilation together
        layer = _L.Conv2D(
            int(a["out_channels"]),
            (kh, kw),
            strides=(1, 1) if split else (sh, sw),
            padding="valid",
            dilation_rate=(dh, dw),
            groups=groups,
            use_bias=bias,
            name=self.aux(n.name, "conv") if split else name,
            **_CL,
        )
        y = layer(x)
        p = self._params(n)
        kernel = p["weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO (I per group)
        layer.set_weights([kernel, p["bias"]] if bias else [kernel])
        if split:
            y = _L.MaxPooling2D((1, 1), strides=(sh, sw), padding="valid", name=name, **_CL)(y)
        return y

    def _pool(self, n: Any, x: Any, in_shape: tuple[int, ...], is_max: bool) -> Any:
        a, name = n.attrs, self.layers[n.name]
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = (
            tuple(int(v) for v in a["kernel"]),
            tuple(int(v) for v in a["stride"]),
            tuple(int(v) for v in a["pad"]),
        )
        ceil = bool(a.get("ceil", False))
        h, w = in_shape[2], in_shape[3]
        ho, wo = pool_out(h, kh, sh, pt, pb, ceil), pool_out(w, kw, sw, pl, pr, ceil)
        eh, ew = (ho - 1) * sh + kh, (wo - 1) * sw + kw  # exactly the rows/columns the windows read
        if is_max and (pt >= kh or pl >= kw or eh - pt - h >= kh or ew - pl - w >= kw):
            raise UnsupportedError(f"node '{n.name}': a max-pool window lies entirely in the padding")
        bottom, right = eh - pt - h, ew - pl - w
        if pt or pl or bottom > 0 or right > 0:
            pads = ((pt, max(bottom, 0)), (pl, max(right, 0)))
            x = _L.ZeroPadding2D(pads, name=self.aux(n.name, "pad"), **_CL)(x)
        if bottom < 0 or right < 0:  # rows/columns no window reads
            crop = ((0, max(-bottom, 0)), (0, max(-right, 0)))
            x = _L.Cropping2D(crop, name=self.aux(n.name, "crop"), **_CL)(x)
        if is_max:
            rows = (np.arange(eh) < pt) | (np.arange(eh) >= pt + h)
            cols = (np.arange(ew) < pl) | (np.arange(ew) >= pl + w)
            if rows.any():
                off = np.where(rows, _NEG, 0.0).astype(np.float32).reshape(eh, 1, 1)
                x = _L.Rescaling(1.0, off, name=self.aux(n.name, "pad_rows"), **_COMMON)(x)
            if cols.any():
                off = np.where(cols, _NEG, 0.0).astype(np.float32).reshape(1, ew, 1)
                x = _L.Rescaling(1.0, off, name=self.aux(n.name, "pad_cols"), **_COMMON)(x)
            return _L.MaxPooling2D((kh, kw), strides=(sh, sw), padding="valid", name=name, **_CL)(x)
        inc = bool(a.get("count_include_pad", True))
        fh = kh / pool_counts(h, kh, sh, pt, pb, ho, inc)  # AveragePooling2D divides by kh * kw
        fw = kw / pool_counts(w, kw, sw, pl, pr, wo, inc)
        fix_h, fix_w = bool((fh != 1).any()), bool((fw != 1).any())
        last = not (fix_h or fix_w)
        pool_name = name if last else self.aux(n.name, "avg")
        y = _L.AveragePooling2D((kh, kw), strides=(sh, sw), padding="valid", name=pool_name, **_CL)(x)
        if fix_h:
            y = _L.Rescaling(
                fh.astype(np.float32).reshape(ho, 1, 1),
                name=name if not fix_w else self.aux(n.name, "div_rows"),
                **_COMMON,
            )(y)
        if fix_w:
            y = _L.Rescaling(fw.astype(np.float32).reshape(1, wo, 1), name=name, **_COMMON)(y)
        return y

    def _gate(self, n: Any, t: Any, shape: tuple[int, ...], target_rank: int) -> Any:
        """An N x C (x 1 x 1) gate as a tensor that broadcasts over the target's channels."""
        c = shape[1]
        if target_rank == 4 and len(shape) != 4:
            return _L.Reshape((1, 1, c), name=self.aux(n.name, "gate"), **_COMMON)(t)
        if target_rank != 4 and len(shape) != target_rank:
            return _L.Reshape((c,) + (1,) * (target_rank - 2), name=self.aux(n.name, "gate"), **_COMMON)(t)
        return t

    def _c_order(self, n: Any, x: Any, shape: tuple[int, ...]) -> Any:
        """A 4-D NHWC value as NCHW, when the two orders differ in memory."""
        if len(shape) == 4 and shape[1] > 1 and shape[2] * shape[3] > 1:
            return _L.Permute((3, 1, 2), name=self.aux(n.name, "nchw"), **_COMMON)(x)
        return x

    def _reshape(self, n: Any, x: Any, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> Any:
        name = self.layers[n.name]
        if out_shape[0] != in_shape[0]:
            raise UnsupportedError(f"node '{n.name}': reshape changes the batch size ({in_shape} -> {out_shape})")
        x = self._c_order(n, x, in_shape)
        if len(out_shape) != 4:
            return _L.Reshape(tuple(out_shape[1:]), name=name, **_COMMON)(x)
        _, c, h, w = out_shape
        if c > 1 and h * w > 1:
            x = _L.Reshape((c, h, w), name=self.aux(n.name, "reshape"), **_COMMON)(x)
            return _L.Permute((2, 3, 1), name=name, **_COMMON)(x)
        return _L.Reshape((h, w, c), name=name, **_COMMON)(x)

    def _linear(self, n: Any, x: Any, in_shape: tuple[int, ...]) -> Any:
        a, name = n.attrs, self.layers[n.name]
        p = self._params(n)
        wt = p["weight"]  # (O, I), I in the canonical C-order of the input
        if len(in_shape) == 4:
            _, c, h, w = in_shape
            wt = wt.reshape(-1, c, h, w).transpose(0, 2, 3, 1).reshape(wt.shape[0], -1)  # rows in H, W, C order
        if len(in_shape) != 2:
            x = _L.Flatten(name=self.aux(n.name, "flatten"), **_CL)(x)
        bias = bool(a.get("bias", True))
        layer = _L.Dense(int(a["out_features"]), use_bias=bias, name=name, **_COMMON)
        y = layer(x)
        layer.set_weights([_f32(wt.T), p["bias"]] if bias else [_f32(wt.T)])
        return y

    def _input_norm(self, n: Any, x: Any, in_shape: tuple[int, ...]) -> Any:
        a, name = n.attrs, self.layers[n.name]
        if len(in_shape) != 4:
            raise UnsupportedError(f"node '{n.name}': input_norm on a rank-{len(in_shape)} value")
        perm = [int(i) for i in a["perm"]]
        scale, shift = _f32(a["scale"]), _f32(a["shift"])
        c = len(perm)
        if perm == list(range(c)):
            return _L.Rescaling(scale, shift, name=name, **_COMMON)(x)
        layer = _L.Conv2D(c, (1, 1), padding="valid", use_bias=True, name=name, **_CL)
        y = layer(x)
        kernel = np.zeros((1, 1, c, c), np.float32)
        kernel[0, 0, perm, np.arange(c)] = scale  # out[c] = x[perm[c]] * scale[c] + shift[c]
        layer.set_weights([kernel, shift])
        return y


# --------------------------------------------------------------------------------- interface


def build(model: Model, layout: str = "nhwc") -> keras.Model:
    """The model as a functional ``keras.Model`` (float32 weights, NHWC inside; see the module doc)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    shapes = infer_shapes(model)
    g = model.graph
    if len(shapes[g.input_name]) != 4:
        raise UnsupportedError(f"input '{g.input_name}' must be N x C x H x W, got {shapes[g.input_name]}")
    walker = _Walker(model, shapes, layout)
    inp, tensors = walker.walk()
    native = keras.Model(inp, tensors[g.output], name=keras_name(model.arch))
    _INFO[native] = _Info(
        model=model,
        layout=layout,
        size=(int(shapes[g.input_name][2]), int(shapes[g.input_name][3])),
        tensors=tensors,
        layers=walker.layers,
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


def save(model: Model | keras.Model, path: str | os.PathLike, layout: str = "nhwc", **_: Any) -> list[str]:
    """Write ``path``: ``*.keras`` = Keras file, anything else = SavedModel directory (atomically)."""
    from ..atomic import atomic_outputs, check_writable

    if layout not in LAYOUTS:
        raise OutputError(f"{path}: unknown TensorFlow layout '{layout}'; use one of {', '.join(LAYOUTS)}")
    path = os.fspath(path)
    if len(path) > 1:
        path = path.rstrip("/" + os.sep) or path
    check_writable(path)
    native, canon = _as_native(model, layout)
    is_keras = path.lower().endswith(".keras")
    with atomic_outputs([path]) as (tmp,):
        try:
            if is_keras:
                inner = tmp + ".keras"  # Keras insists on the suffix
                try:
                    native.save(inner)
                    os.replace(inner, tmp)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(inner)
            else:
                _savedmodel(native, canon, layout, tmp)
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
