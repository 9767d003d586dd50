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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
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


# op -> its attribute type (the op declarations proper, with arity, parameters, shape rule and
# reference semantics, are ``OPS`` below)
ATTRS: dict[str, type] = {
    "conv": ConvAttrs,
    "batch_norm": BatchNormAttrs,
    "relu": NoAttrs,
    "sigmoid": NoAttrs,
    "max_pool": PoolAttrs,
    "avg_pool": PoolAttrs,
    "global_avg_pool": NoAttrs,
    "axpy": NoAttrs,
    "channel_scale": NoAttrs,
    "add": NoAttrs,
    "concat": ConcatAttrs,
    "reshape": ReshapeAttrs,
    "flatten": NoAttrs,
    "linear": LinearAttrs,
    "softmax": NoAttrs,
    "dropout": DropoutAttrs,
    "input_norm": InputNormAttrs,
}


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
    from .graph import output_shape

    shapes: dict[str, Shape] = {graph.input_name: tuple(input_shape or graph.input_shape)}
    for n in graph.nodes:
        try:
            shapes[n.name] = output_shape(n, [shapes[i] for i in n.inputs])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelError(f"node '{n.name}' ({n.op}): {e}") from None
    return shapes


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
