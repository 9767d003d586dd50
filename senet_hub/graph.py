"""The canonical model every part of senet-hub speaks.

A ``Model`` is a ``Graph`` (ordered nodes), ``weights`` (``{"<node>.<param>": ndarray}``) and
``meta`` (architecture id, input convention, class order, source hashes). Layout is NCHW / OIHW,
float32 (the numpy reference may run in float64). Every node has exactly one output value, named
like the node, so a tap on node ``n`` is the value ``n``.

The op vocabulary, with the exact semantics every builder must reproduce:

``conv``            y = cross-correlation(x, weight) [+ bias]. attrs: out_channels, kernel (kh, kw),
                    stride (sh, sw), pad (top, left, bottom, right; zeros), dilation (dh, dw),
                    groups, bias (bool). params: weight (O, I/groups, kh, kw), bias (O,).
``batch_norm``      inference BN: (x - running_mean) / sqrt(running_var + eps) * weight + bias,
                    per channel (axis 1). attrs: eps. params: weight, bias, running_mean,
                    running_var, each (C,).
``relu``, ``sigmoid``   elementwise.
``max_pool``, ``avg_pool``  attrs: kernel, stride, pad (t, l, b, r), ceil (bool),
                    count_include_pad (bool, avg only). Output size per axis:
                    n = ceil_or_floor((size + p0 + p1 - k) / s) + 1, and with ceil, when
                    (n - 1) * s >= size + p0 the last window would start in the padding and is
                    dropped (Caffe's clip rule). Max pooling ignores padding. Average pooling
                    divides by the window clipped to [-p0, size + p1) when count_include_pad,
                    else by the number of real pixels in the window.
``global_avg_pool`` mean over H, W; output N x C x 1 x 1.
``axpy``            inputs (a, x, y): out = a * x + y, a of shape N x C x 1 x 1 (or N x C)
                    broadcast over H, W. The SE scale fused with the residual sum (Caffe Axpy).
``channel_scale``   inputs (x, s): out = x * s, s of shape N x C (or N x C x 1 x 1).
``add``             inputs (x, y): x + y.
``concat``          attrs: axis. Inputs joined along that axis.
``reshape``         attrs: shape (Caffe semantics: 0 copies the input dim, -1 is inferred).
``flatten``         N x ... -> N x prod(...), C-order (NCHW).
``linear``          y = flatten(x) @ weight.T [+ bias]. attrs: out_features, bias (bool).
                    params: weight (O, I), bias (O,).
``softmax``         along axis 1.
``dropout``         identity at inference. attrs: ratio (informational).
``input_norm``      the exact input stage: y[:, c] = (x[:, perm[c]] * scale[c] + shift[c]).
                    attrs: perm (channel order), scale, shift (per output channel lists).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ModelError

# op -> (number of inputs or None for variadic, parameter names [optional ones end in '?'])
OPS: dict[str, tuple[int | None, tuple[str, ...]]] = {
    "conv": (1, ("weight", "bias?")),
    "batch_norm": (1, ("weight", "bias", "running_mean", "running_var")),
    "relu": (1, ()),
    "sigmoid": (1, ()),
    "max_pool": (1, ()),
    "avg_pool": (1, ()),
    "global_avg_pool": (1, ()),
    "axpy": (3, ()),
    "channel_scale": (2, ()),
    "add": (2, ()),
    "concat": (None, ()),
    "reshape": (1, ()),
    "flatten": (1, ()),
    "linear": (1, ("weight", "bias?")),
    "softmax": (1, ()),
    "dropout": (1, ()),
    "input_norm": (1, ()),
}


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    source: list[str] = field(default_factory=list)  # names in the source format (Caffe layers)

    def param_names(self) -> list[str]:
        names = []
        for p in OPS[self.op][1]:
            if p.endswith("?"):
                if self.attrs.get("bias", True):
                    names.append(p[:-1])
            else:
                names.append(p)
        return names


@dataclass
class Graph:
    nodes: list[Node]
    input_name: str = "data"
    input_shape: tuple[int, ...] = (1, 3, 224, 224)  # the shape the model was described with
    output: str = ""  # defaults to the last node

    def __post_init__(self) -> None:
        if not self.output and self.nodes:
            self.output = self.nodes[-1].name

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def consumers(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out.setdefault(i, []).append(n.name)
        return out


@dataclass
class Model:
    graph: Graph
    weights: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)

    def param(self, node: str, name: str) -> np.ndarray:
        return self.weights[f"{node}.{name}"]

    def copy(self) -> Model:
        g = Graph(
            [
                dataclasses.replace(n, inputs=list(n.inputs), attrs=dict(n.attrs), source=list(n.source))
                for n in self.graph.nodes
            ],
            self.graph.input_name,
            tuple(self.graph.input_shape),
            self.graph.output,
        )
        return Model(g, dict(self.weights), dict(self.meta))

    @property
    def arch(self) -> str:
        return str(self.meta.get("arch", "unknown"))


def pool_out(size: int, k: int, s: int, p0: int, p1: int, ceil: bool) -> int:
    span = size + p0 + p1 - k
    n = (-(-span // s) if ceil else span // s) + 1
    if ceil and (n - 1) * s >= size + p0:
        n -= 1
    return n


def conv_out(size: int, k: int, s: int, p0: int, p1: int, d: int = 1) -> int:
    return (size + p0 + p1 - d * (k - 1) - 1) // s + 1


def _reshape_target(shape: tuple[int, ...], spec: list[int]) -> tuple[int, ...]:
    out = [shape[i] if d == 0 else d for i, d in enumerate(spec)]
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        out[out.index(-1)] = math.prod(shape) // max(known, 1)
    return tuple(out)


def expected_params(node: Node, in_shapes: list[tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes a node needs given its input shapes."""
    a = node.attrs
    if node.op == "conv":
        c = in_shapes[0][1]
        o, g = a["out_channels"], a.get("groups", 1)
        shapes = {"weight": (o, c // g, *a["kernel"]), "bias": (o,)}
    elif node.op == "batch_norm":
        c = in_shapes[0][1]
        shapes = {k: (c,) for k in ("weight", "bias", "running_mean", "running_var")}
    elif node.op == "linear":
        shapes = {"weight": (a["out_features"], math.prod(in_shapes[0][1:])), "bias": (a["out_features"],)}
    else:
        shapes = {}
    return {k: v for k, v in shapes.items() if k in node.param_names()}


def output_shape(node: Node, ins: list[tuple[int, ...]]) -> tuple[int, ...]:
    a, op = node.attrs, node.op
    x = ins[0]
    if op == "conv":
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pad"]
        dh, dw = a.get("dilation", (1, 1))
        if x[1] % a.get("groups", 1) or a["out_channels"] % a.get("groups", 1):
            raise ValueError(f"channels {x[1]} -> {a['out_channels']} not divisible by groups {a.get('groups')}")
        return (x[0], a["out_channels"], conv_out(x[2], kh, sh, pt, pb, dh), conv_out(x[3], kw, sw, pl, pr, dw))
    if op in ("max_pool", "avg_pool"):
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pad"]
        c = a.get("ceil", False)
        return (x[0], x[1], pool_out(x[2], kh, sh, pt, pb, c), pool_out(x[3], kw, sw, pl, pr, c))
    if op == "global_avg_pool":
        return (x[0], x[1], 1, 1)
    if op == "axpy":
        a_, x_, y_ = ins
        if x_ != y_ or tuple(a_[:2]) != tuple(x_[:2]) or math.prod(a_) != a_[0] * a_[1]:
            raise ValueError(f"axpy needs a: N x C x 1 x 1 and x, y of one shape; got {a_}, {x_}, {y_}")
        return x_
    if op == "channel_scale":
        if tuple(ins[1][:2]) != tuple(x[:2]) or math.prod(ins[1]) != x[0] * x[1]:
            raise ValueError(f"channel_scale needs s of shape N x C; got {ins[1]} for x {x}")
        return x
    if op == "add":
        if ins[0] != ins[1]:
            raise ValueError(f"add of different shapes {ins[0]} and {ins[1]}")
        return x
    if op == "concat":
        ax = a.get("axis", 1)
        for s in ins[1:]:
            if s[:ax] + s[ax + 1 :] != x[:ax] + x[ax + 1 :]:
                raise ValueError(f"concat along axis {ax} of incompatible shapes {ins}")
        return x[:ax] + (sum(s[ax] for s in ins),) + x[ax + 1 :]
    if op == "reshape":
        out = _reshape_target(x, list(a["shape"]))
        if math.prod(out) != math.prod(x):
            raise ValueError(f"cannot reshape {x} to {a['shape']}")
        return out
    if op == "flatten":
        return (x[0], math.prod(x[1:]))
    if op == "linear":
        return (x[0], a["out_features"])
    if op == "input_norm":
        if len(a["perm"]) != x[1]:
            raise ValueError(f"input_norm for {len(a['perm'])} channels applied to {x[1]}")
        return x
    return x  # relu, sigmoid, batch_norm, softmax, dropout


def infer_shapes(model: Model, input_shape: tuple[int, ...] | None = None) -> dict[str, tuple[int, ...]]:
    """Check the whole model and return every value's shape.

    Raises ModelError naming the offending node: unknown op, dangling input, duplicate name,
    missing or mis-shaped parameter, or shapes that do not fit.
    """
    g = model.graph
    shapes: dict[str, tuple[int, ...]] = {g.input_name: tuple(input_shape or g.input_shape)}
    for n in g.nodes:
        if n.op not in OPS:
            raise ModelError(f"node '{n.name}': unknown op '{n.op}'")
        if n.name in shapes:
            raise ModelError(f"node '{n.name}': duplicate name")
        arity = OPS[n.op][0]
        if arity is not None and len(n.inputs) != arity:
            raise ModelError(f"node '{n.name}' ({n.op}): expects {arity} inputs, has {len(n.inputs)}")
        for i in n.inputs:
            if i not in shapes:
                raise ModelError(f"node '{n.name}': input '{i}' is not produced by an earlier node")
        ins = [shapes[i] for i in n.inputs]
        for p, shp in expected_params(n, ins).items():
            key = f"{n.name}.{p}"
            if key not in model.weights:
                raise ModelError(f"node '{n.name}' ({n.op}): missing parameter '{p}' {shp}")
            got = tuple(model.weights[key].shape)
            if got != shp:
                raise ModelError(f"node '{n.name}' ({n.op}): parameter '{p}' has shape {got}, expected {shp}")
        try:
            shapes[n.name] = output_shape(n, ins)
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelError(f"node '{n.name}' ({n.op}): {e}") from None
        if any(d <= 0 for d in shapes[n.name]):
            raise ModelError(f"node '{n.name}' ({n.op}): output shape {shapes[n.name]} is empty (input too small?)")
    if g.output not in shapes:
        raise ModelError(f"graph output '{g.output}' is not produced by any node")
    return shapes


def validate(model: Model) -> dict[str, tuple[int, ...]]:
    """infer_shapes plus a check that no weight is left unused."""
    shapes = infer_shapes(model)
    used = {f"{n.name}.{p}" for n in model.graph.nodes for p in n.param_names()}
    extra = sorted(set(model.weights) - used)
    if extra:
        raise ModelError(f"weights not used by any node: {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
    return shapes


def structure(graph: Graph) -> list[tuple]:
    """Name-free description of a graph (ops, attrs, wiring by position) for equality checks."""
    index = {graph.input_name: -1}
    out = []
    for i, n in enumerate(graph.nodes):
        index[n.name] = i
        attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(n.attrs.items())}
        out.append((n.op, repr(attrs), tuple(index[x] for x in n.inputs)))
    return out


def rename(model: Model, mapping: dict[str, str]) -> Model:
    """Rename nodes (and their weights); names not in mapping are kept."""
    m = model.copy()
    for n in m.graph.nodes:
        n.inputs = [mapping.get(i, i) for i in n.inputs]
    weights = {}
    for n in m.graph.nodes:
        new = mapping.get(n.name, n.name)
        for p in n.param_names():
            weights[f"{new}.{p}"] = model.weights[f"{n.name}.{p}"]
        n.name = new
    m.graph.output = mapping.get(m.graph.output, m.graph.output)
    m.weights = weights
    return m
