"""The canonical op vocabulary, declared once: typed attributes, shared arithmetic, lowering tables.

Every builder (numpy reference, PyTorch, TensorFlow, ONNX, MXNet, Chainer, the Caffe writer) is a
``Lowerings`` table: one small function per op, driven by the one graph walker ``walk``. A
missing lowering is always ``MissingLowering`` (an ``UnsupportedError``) naming the op and the
backend, and ``tests/test_op_conformance.py`` runs every op on every backend and lists the
lowerings that are missing.

``Node.attrs`` stays a plain dict (it is what readers produce and what the IR serialises);
``attrs_of(node)`` turns it into the op's frozen, typed ``*Attrs`` dataclass with the defaults
filled in, so no builder re-states a default (they drifted before: dropout ratio 0.5 in one
builder, 0.0 in another).

The shared arithmetic lives here and nowhere else: Caffe's clip-rule pooling output size
(``pool_out``), the pooling divisors (``pool_counts``), convolution output size (``conv_out``),
Caffe's reshape rule (``reshape_target``), values' last use (``last_uses``) and a weight-free
shape walk (``graph_shapes``).

Why this module is long: it is the vocabulary, one declaration per op (attributes, arity,
parameters, shape rule, float64 reference) next to the arithmetic those declarations share; the
point of the registry is that an op is read and changed in one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from .errors import ModelError, UnsupportedError

if TYPE_CHECKING:
    from .graph import Graph, Node

Shape = tuple[int, ...]
Pair = tuple[int, int]
Pads = tuple[int, int, int, int]  # top, left, bottom, right


# ----------------------------------------------------------------------------- typed attributes


@dataclass(frozen=True)
class NoAttrs:
    """Ops without attributes (relu, sigmoid, global_avg_pool, axpy, channel_scale, add, ...)."""


@dataclass(frozen=True)
class ConvAttrs:
    out_channels: int
    kernel: Pair
    stride: Pair = (1, 1)
    pad: Pads = (0, 0, 0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    bias: bool = True


@dataclass(frozen=True)
class BatchNormAttrs:
    eps: float = 1e-5


@dataclass(frozen=True)
class PoolAttrs:
    kernel: Pair
    stride: Pair = (1, 1)
    pad: Pads = (0, 0, 0, 0)
    ceil: bool = False
    count_include_pad: bool = True  # average pooling only

    @property
    def symmetric(self) -> bool:
        """Symmetric pads of at most half the kernel: what most frameworks' own pooling accepts."""
        (kh, kw), (pt, pl, pb, pr) = self.kernel, self.pad
        return pt == pb and pl == pr and 2 * pt <= kh and 2 * pl <= kw

    def out_hw(self, h: int, w: int) -> Pair:
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.kernel, self.stride, self.pad
        return pool_out(h, kh, sh, pt, pb, self.ceil), pool_out(w, kw, sw, pl, pr, self.ceil)

    def extent_hw(self, h: int, w: int) -> Pair:
        """Rows and columns the windows read, padding included: (out - 1) * stride + kernel."""
        ho, wo = self.out_hw(h, w)
        return (ho - 1) * self.stride[0] + self.kernel[0], (wo - 1) * self.stride[1] + self.kernel[1]

    def divisor(self, h: int, w: int) -> np.ndarray:
        """Average pooling's per-window divisor (ho x wo, float64), graph.py's two rules."""
        ho, wo = self.out_hw(h, w)
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.kernel, self.stride, self.pad
        inc = self.count_include_pad
        return np.outer(pool_counts(h, kh, sh, pt, pb, ho, inc), pool_counts(w, kw, sw, pl, pr, wo, inc)).astype(
            np.float64
        )


@dataclass(frozen=True)
class ConcatAttrs:
    axis: int = 1


@dataclass(frozen=True)
class ReshapeAttrs:
    shape: tuple[int, ...]


@dataclass(frozen=True)
class LinearAttrs:
    out_features: int
    bias: bool = True


@dataclass(frozen=True)
class DropoutAttrs:
    ratio: float = 0.5  # Caffe's default; informational: dropout is the identity at inference


@dataclass(frozen=True)
class InputNormAttrs:
    perm: tuple[int, ...]
    scale: tuple[float, ...]
    shift: tuple[float, ...]


# op -> its attribute type, filled by ``declare`` (the op declarations proper, with arity,
# parameters, shape rule and reference semantics, are ``OPS`` below)
ATTRS: dict[str, type] = {}


def _coerce(name: str, annotation: str, value: Any) -> Any:
    # annotations are strings (from __future__ import annotations); the set is small and closed
    if annotation in ("int",):
        return int(value)
    if annotation in ("float",):
        return float(value)
    if annotation in ("bool",):
        return bool(value)
    if annotation in ("Pair", "Pads", "tuple[int, ...]"):
        return tuple(int(v) for v in value)
    if annotation == "tuple[float, ...]":
        return tuple(float(v) for v in value)
    raise TypeError(f"attribute {name}: no rule for {annotation}")  # a new annotation needs a rule


def attrs_of(node: Node) -> Any:
    """The node's attributes as its op's typed dataclass, defaults filled in.

    Keys the op does not declare are ignored (readers keep source-side notes in attrs); a missing
    required attribute or a value of the wrong kind is a ModelError naming the node.
    """
    cls = ATTRS.get(node.op)
    if cls is None:
        raise ModelError(f"node '{node.name}': unknown op '{node.op}'")
    kw = {}
    for f in fields(cls):
        if f.name in node.attrs:
            try:
                kw[f.name] = _coerce(f.name, str(f.type), node.attrs[f.name])
            except (TypeError, ValueError) as e:
                raise ModelError(f"node '{node.name}' ({node.op}): attribute '{f.name}': {e}") from None
    try:
        return cls(**kw)
    except TypeError as e:
        raise ModelError(f"node '{node.name}' ({node.op}): {e}") from None


# ---------------------------------------------------------------------------- shared arithmetic


def pool_out(size: int, k: int, s: int, p0: int, p1: int, ceil: bool) -> int:
    """Pooled size with Caffe's clip rule: with ceil, a last window starting in the padding is dropped."""
    span = size + p0 + p1 - k
    n = (-(-span // s) if ceil else span // s) + 1
    if ceil and (n - 1) * s >= size + p0:
        n -= 1
    return n


def conv_out(size: int, k: int, s: int, p0: int, p1: int, d: int = 1) -> int:
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def pool_counts(size: int, k: int, s: int, p0: int, p1: int, m: int, include_pad: bool) -> np.ndarray:
    """Per-window divisor along one axis: the window clipped to [-p0, size + p1), or real pixels only."""
    start = np.arange(m) * s - p0
    if include_pad:
        return np.minimum(start + k, size + p1) - start
    return np.minimum(start + k, size) - np.maximum(start, 0)


def reshape_target(shape: Shape, spec: Iterable[int]) -> Shape:
    """Caffe's reshape: 0 copies the input dim, -1 is inferred."""
    out = [shape[i] if d == 0 else d for i, d in enumerate(spec)]
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(shape) // max(known, 1)
    return tuple(out)


def last_uses(graph: Graph) -> dict[str, int]:
    """value -> index of the last node that reads it (values never read are absent)."""
    last: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for v in n.inputs:
            last[v] = i
    return last


def dead_after(graph: Graph) -> list[list[str]]:
    """For each node, the values that nobody needs after it (never the graph output)."""
    last = last_uses(graph)
    return [
        [v for v in dict.fromkeys(n.inputs) if last[v] == i and v != graph.output] for i, n in enumerate(graph.nodes)
    ]


def graph_shapes(graph: Graph, input_shape: Shape | None = None) -> dict[str, Shape]:
    """Every value's shape from the graph alone (no weights needed)."""
    shapes: dict[str, Shape] = {graph.input_name: tuple(input_shape or graph.input_shape)}
    for n in graph.nodes:
        a = attrs_of(n)  # a ModelError naming the node for an unknown op or bad attributes
        try:
            shapes[n.name] = OPS[n.op].shape(a, [shapes[i] for i in n.inputs])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelError(f"node '{n.name}' ({n.op}): {e}") from None
    return shapes


# ---------------------------------------------------------------------------- op declarations

A = TypeVar("A")
Arrays = dict[str, np.ndarray]


class Op(Generic[A]):
    """One canonical op: the class docstring is its documented semantics, ``reference`` the exact
    float64 numpy implementation every backend is compared with (it runs in float32 as well).

    Parameter names ending in '?' are optional: present when the node's ``bias`` attribute is true.
    """

    name: str = ""
    arity: int | None = 1  # number of inputs; None: variadic
    params: tuple[str, ...] = ()
    attrs: type[A]

    def shape(self, a: A, ins: list[Shape]) -> Shape:
        return ins[0]  # elementwise ops keep their input's shape

    def param_shapes(self, a: A, ins: list[Shape]) -> dict[str, Shape]:
        return {}

    def reference(self, a: A, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        raise NotImplementedError(self.name)  # every declaration overrides it (the conformance test checks)

    @property
    def doc(self) -> str:
        return " ".join((type(self).__doc__ or "").split())


# op name -> its one declaration
OPS: dict[str, Op[Any]] = {}


def declare(cls: type[Op[Any]]) -> type[Op[Any]]:
    """Class decorator: register the op (once) and its attribute type."""
    op = cls()
    if not op.name or op.name in OPS:
        raise ValueError(f"op '{op.name}' declared twice or without a name")
    OPS[op.name] = op
    ATTRS[op.name] = op.attrs
    return cls


def param_names(op: str, attrs: dict[str, Any]) -> list[str]:
    """The parameters a node of ``op`` carries (optional ones only when ``attrs['bias']`` is true)."""
    return [p.rstrip("?") for p in OPS[op].params if not p.endswith("?") or attrs.get("bias", True)]


def _windows(
    xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int
) -> Iterator[np.ndarray]:
    for i in range(kh):
        for j in range(kw):
            yield xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: Pair,
    pad: Pads,
    dilation: Pair = (1, 1),
    groups: int = 1,
) -> np.ndarray:
    """Cross-correlation as im2col + one matmul per group (kernel size from the weight)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw), g = stride, pad, dilation, groups
    ho, wo = conv_out(h, kh, sh, pt, pb, dh), conv_out(wd, kw, sw, pl, pr, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    if kh == kw == 1:
        cols = xp[:, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw].reshape(n, g, cg, ho * wo)
    else:
        cols = np.stack(list(_windows(xp, kh, kw, sh, sw, dh, dw, ho, wo)), axis=2)  # n, c, taps, ho, wo
        cols = cols.reshape(n, g, cg * kh * kw, ho * wo)
    y = np.matmul(w.reshape(g, o // g, cg * kh * kw), cols).reshape(n, o, ho, wo)
    return y if b is None else y + b[:, None, None]


def pool2d(x: np.ndarray, a: PoolAttrs, is_max: bool) -> np.ndarray:
    """Gather the kh*kw shifted windows of a canvas holding x at (pt, pl); max or sum / divisor."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a.kernel, a.stride, a.pad
    ho, wo = a.out_hw(h, w)
    fill = -np.inf if is_max else 0.0
    xp = np.full((n, c, max((ho - 1) * sh + kh, h + pt + pb), max((wo - 1) * sw + kw, w + pl + pr)), fill, x.dtype)
    xp[:, :, pt : pt + h, pl : pl + w] = x
    taps = _windows(xp, kh, kw, sh, sw, 1, 1, ho, wo)
    acc = next(taps).copy()
    for t in taps:
        if is_max:
            np.maximum(acc, t, out=acc)
        else:
            acc += t
    return acc if is_max else acc / a.divisor(h, w).astype(x.dtype)


def _nc11(v: np.ndarray) -> np.ndarray:
    return v.reshape(v.shape[0], v.shape[1], 1, 1)


@declare
class Conv(Op[ConvAttrs]):
    """y = cross-correlation(x, weight) [+ bias]. attrs: out_channels, kernel (kh, kw), stride (sh, sw),
    pad (top, left, bottom, right; zeros), dilation (dh, dw), groups, bias (bool).
    params: weight (O, I/groups, kh, kw), bias (O,)."""

    name, params, attrs = "conv", ("weight", "bias?"), ConvAttrs

    def shape(self, a: ConvAttrs, ins: list[Shape]) -> Shape:
        x = ins[0]
        (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = a.kernel, a.stride, a.pad, a.dilation
        if x[1] % a.groups or a.out_channels % a.groups:
            raise ValueError(f"channels {x[1]} -> {a.out_channels} not divisible by groups {a.groups}")
        return (x[0], a.out_channels, conv_out(x[2], kh, sh, pt, pb, dh), conv_out(x[3], kw, sw, pl, pr, dw))

    def param_shapes(self, a: ConvAttrs, ins: list[Shape]) -> dict[str, Shape]:
        return {"weight": (a.out_channels, ins[0][1] // a.groups, *a.kernel), "bias": (a.out_channels,)}

    def reference(self, a: ConvAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return conv2d(ins[0], p["weight"], p.get("bias"), a.stride, a.pad, a.dilation, a.groups)


@declare
class BatchNorm(Op[BatchNormAttrs]):
    """Inference BN: (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel (axis 1).
    attrs: eps. params: weight, bias, running_mean, running_var, each (C,)."""

    name, params, attrs = "batch_norm", ("weight", "bias", "running_mean", "running_var"), BatchNormAttrs

    def param_shapes(self, a: BatchNormAttrs, ins: list[Shape]) -> dict[str, Shape]:
        return {k: (ins[0][1],) for k in self.params}

    def reference(self, a: BatchNormAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        x = ins[0]
        scale = p["weight"] / np.sqrt(p["running_var"] + x.dtype.type(a.eps))
        shift = p["bias"] - p["running_mean"] * scale
        return x * scale[:, None, None] + shift[:, None, None]


@declare
class Relu(Op[NoAttrs]):
    """max(x, 0), elementwise."""

    name, attrs = "relu", NoAttrs

    def reference(self, a: NoAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return np.maximum(ins[0], 0)


@declare
class Sigmoid(Op[NoAttrs]):
    """1 / (1 + exp(-x)), elementwise."""

    name, attrs = "sigmoid", NoAttrs

    def reference(self, a: NoAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return 1 / (1 + np.exp(-ins[0]))


class _Pool(Op[PoolAttrs]):
    attrs = PoolAttrs

    def shape(self, a: PoolAttrs, ins: list[Shape]) -> Shape:
        x = ins[0]
        return (x[0], x[1], *a.out_hw(x[2], x[3]))


@declare
class MaxPool(_Pool):
    """attrs: kernel, stride, pad (t, l, b, r), ceil (bool). Output size per axis:
    n = ceil_or_floor((size + p0 + p1 - k) / s) + 1, and with ceil, when (n - 1) * s >= size + p0 the
    last window would start in the padding and is dropped (Caffe's clip rule). Padding never wins."""

    name = "max_pool"

    def reference(self, a: PoolAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return pool2d(ins[0], a, True)


@declare
class AvgPool(_Pool):
    """As max_pool, plus count_include_pad (bool): divide by the window clipped to [-p0, size + p1)
    when true, else by the number of real pixels in the window."""

    name = "avg_pool"

    def reference(self, a: PoolAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return pool2d(ins[0], a, False)


@declare
class GlobalAvgPool(Op[NoAttrs]):
    """Mean over H, W; output N x C x 1 x 1."""

    name, attrs = "global_avg_pool", NoAttrs

    def shape(self, a: NoAttrs, ins: list[Shape]) -> Shape:
        return (ins[0][0], ins[0][1], 1, 1)

    def reference(self, a: NoAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return ins[0].mean(axis=(2, 3), keepdims=True)


@declare
class Axpy(Op[NoAttrs]):
    """Inputs (a, x, y): out = a * x + y, a of shape N x C x 1 x 1 (or N x C) broadcast over H, W.
    The SE scale fused with the residual sum (Caffe Axpy)."""

    name, arity, attrs = "axpy", 3, NoAttrs

    def shape(self, a: NoAttrs, ins: list[Shape]) -> Shape:
        a_, x_, y_ = ins
        if x_ != y_ or tuple(a_[:2]) != tuple(x_[:2]) or math.prod(a_) != a_[0] * a_[1]:
            raise ValueError(f"axpy needs a: N x C x 1 x 1 and x, y of one shape; got {a_}, {x_}, {y_}")
        return x_

    def reference(self, a: NoAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return _nc11(ins[0]) * ins[1] + ins[2]


@declare
class ChannelScale(Op[NoAttrs]):
    """Inputs (x, s): out = x * s, s of shape N x C (or N x C x 1 x 1)."""

    name, arity, attrs = "channel_scale", 2, NoAttrs

    def shape(self, a: NoAttrs, ins: list[Shape]) -> Shape:
        x, s = ins
        if tuple(s[:2]) != tuple(x[:2]) or math.prod(s) != x[0] * x[1]:
            raise ValueError(f"channel_scale needs s of shape N x C; got {s} for x {x}")
        return x

    def reference(self, a: NoAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return ins[0] * _nc11(ins[1])


@declare
class Add(Op[NoAttrs]):
    """Inputs (x, y) of one shape: x + y."""

    name, arity, attrs = "add", 2, NoAttrs

    def shape(self, a: NoAttrs, ins: list[Shape]) -> Shape:
        if ins[0] != ins[1]:
            raise ValueError(f"add of different shapes {ins[0]} and {ins[1]}")
        return ins[0]

    def reference(self, a: NoAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return ins[0] + ins[1]


@declare
class Concat(Op[ConcatAttrs]):
    """attrs: axis. Inputs joined along that axis."""

    name, arity, attrs = "concat", None, ConcatAttrs

    def shape(self, a: ConcatAttrs, ins: list[Shape]) -> Shape:
        x, ax = ins[0], a.axis
        for s in ins[1:]:
            if s[:ax] + s[ax + 1 :] != x[:ax] + x[ax + 1 :]:
                raise ValueError(f"concat along axis {ax} of incompatible shapes {ins}")
        return x[:ax] + (sum(s[ax] for s in ins),) + x[ax + 1 :]

    def reference(self, a: ConcatAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return np.concatenate(ins, axis=a.axis)


@declare
class Reshape(Op[ReshapeAttrs]):
    """attrs: shape (Caffe semantics: 0 copies the input dim, -1 is inferred). C-order."""

    name, attrs = "reshape", ReshapeAttrs

    def shape(self, a: ReshapeAttrs, ins: list[Shape]) -> Shape:
        out = reshape_target(ins[0], a.shape)
        if math.prod(out) != math.prod(ins[0]):
            raise ValueError(f"cannot reshape {ins[0]} to {list(a.shape)}")
        return out

    def reference(self, a: ReshapeAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return ins[0].reshape(reshape_target(ins[0].shape, a.shape))


@declare
class Flatten(Op[NoAttrs]):
    """N x ... -> N x prod(...), C-order (NCHW)."""

    name, attrs = "flatten", NoAttrs

    def shape(self, a: NoAttrs, ins: list[Shape]) -> Shape:
        return (ins[0][0], math.prod(ins[0][1:]))

    def reference(self, a: NoAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return ins[0].reshape(ins[0].shape[0], -1)


@declare
class Linear(Op[LinearAttrs]):
    """y = flatten(x) @ weight.T [+ bias]. attrs: out_features, bias (bool). params: weight (O, I), bias (O,)."""

    name, params, attrs = "linear", ("weight", "bias?"), LinearAttrs

    def shape(self, a: LinearAttrs, ins: list[Shape]) -> Shape:
        return (ins[0][0], a.out_features)

    def param_shapes(self, a: LinearAttrs, ins: list[Shape]) -> dict[str, Shape]:
        return {"weight": (a.out_features, math.prod(ins[0][1:])), "bias": (a.out_features,)}

    def reference(self, a: LinearAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        x = ins[0]
        y = x.reshape(x.shape[0], -1) @ p["weight"].T
        return y + p["bias"] if "bias" in p else y


@declare
class Softmax(Op[NoAttrs]):
    """Softmax along axis 1 (max-subtracted)."""

    name, attrs = "softmax", NoAttrs

    def reference(self, a: NoAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        x = ins[0]
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


@declare
class Dropout(Op[DropoutAttrs]):
    """Identity at inference. attrs: ratio (informational)."""

    name, attrs = "dropout", DropoutAttrs

    def reference(self, a: DropoutAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        return ins[0]


@declare
class InputNorm(Op[InputNormAttrs]):
    """The exact input stage: y[:, c] = x[:, perm[c]] * scale[c] + shift[c].
    attrs: perm (channel order), scale, shift (per output channel lists)."""

    name, attrs = "input_norm", InputNormAttrs

    def shape(self, a: InputNormAttrs, ins: list[Shape]) -> Shape:
        if len(a.perm) != ins[0][1]:
            raise ValueError(f"input_norm for {len(a.perm)} channels applied to {ins[0][1]}")
        return ins[0]

    def reference(self, a: InputNormAttrs, ins: list[np.ndarray], p: Arrays) -> np.ndarray:
        x = ins[0]
        scale = np.asarray(a.scale, x.dtype)[:, None, None]
        shift = np.asarray(a.shift, x.dtype)[:, None, None]
        return x[:, list(a.perm)] * scale + shift


def vocabulary() -> str:
    """The op vocabulary as text: one line per op with arity, parameters and semantics."""
    rows = []
    for op in OPS.values():
        arity = "n" if op.arity is None else str(op.arity)
        rows.append(f"{op.name} ({arity} in; params {', '.join(op.params) or '-'}): {op.doc}")
    return "\n".join(rows)


# ----------------------------------------------------------------------- lowering tables, walker


class MissingLowering(UnsupportedError):
    """A backend has no lowering for an op (the one exception every builder raises for this)."""

    def __init__(self, backend: str, op: str, node: str | None = None, why: str = "") -> None:
        at = f" (node '{node}')" if node else ""
        super().__init__(f"backend '{backend}' cannot express op '{op}'{at}{': ' + why if why else ''}")
        self.backend, self.op, self.node = backend, op, node


F = TypeVar("F", bound=Callable[..., Any])
V = TypeVar("V")


class Lowerings(Generic[F]):
    """One backend's table: op -> the small function that lowers it.

    ``@TABLE.register("relu", "sigmoid")`` declares a lowering; ``unsupported(op, why)`` declares
    that the backend cannot express an op (the conformance test then expects MissingLowering with
    that reason instead of listing the op as missing).
    """

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self._fns: dict[str, F] = {}
        self.refused: dict[str, str] = {}

    def register(self, *ops: str) -> Callable[[F], F]:
        def deco(fn: F) -> F:
            for op in ops:
                if op not in ATTRS:
                    raise ValueError(f"{self.backend}: lowering for unknown op '{op}'")
                if op in self._fns:
                    raise ValueError(f"{self.backend}: op '{op}' lowered twice")
                self._fns[op] = fn
            return fn

        return deco

    def unsupported(self, op: str, why: str) -> None:
        self.refused[op] = why

    def get(self, op: str, node: str | None = None) -> F:
        fn = self._fns.get(op)
        if fn is None:
            raise MissingLowering(self.backend, op, node, self.refused.get(op, ""))
        return fn

    def __contains__(self, op: object) -> bool:
        return op in self._fns

    def missing(self) -> list[str]:
        """Ops of the vocabulary with neither a lowering nor a declared refusal."""
        return [op for op in ATTRS if op not in self._fns and op not in self.refused]


@dataclass(frozen=True)
class Step:
    """One node prepared for a walk: its typed attributes and its lowering, looked up once."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: Any
    node: Node
    fn: Callable[..., Any]


def plan(graph: Graph, table: Lowerings[Any]) -> list[Step]:
    """The graph as steps for ``table``; every missing lowering fails here, before any work."""
    return [Step(n.name, n.op, tuple(n.inputs), attrs_of(n), n, table.get(n.op, n.name)) for n in graph.nodes]


def walk(
    graph: Graph,
    steps: list[Step],
    ctx: Any,
    x: Any,
    *,
    taps: bool = True,
    dead: list[list[str]] | None = None,
    on_value: Callable[[str, Any], None] | None = None,
) -> dict[str, Any]:
    """Run ``steps`` (from ``plan``): each lowering is called as ``fn(ctx, step, inputs)``.

    Returns every node's value (taps) or only the graph output. Without taps, values are dropped
    after their last use (``dead`` from ``dead_after`` can be passed in when it was computed once
    at build time). ``on_value(name, value)`` sees each value as it is made (streaming taps).
    """
    values: dict[str, Any] = {graph.input_name: x}
    out: dict[str, Any] = {}
    free = dead if dead is not None else (None if taps else dead_after(graph))
    for i, s in enumerate(steps):
        y = s.fn(ctx, s, [values[v] for v in s.inputs])
        values[s.name] = y
        if on_value is not None:
            on_value(s.name, y)
        if taps or s.name == graph.output:
            out[s.name] = y
        if free is not None and not taps:
            for v in free[i]:
                values.pop(v, None)
    return out
