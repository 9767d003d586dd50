"""Patterns of several ONNX nodes that are one canonical op, for the ``--from onnx`` reader
(``onnx_source``; the op handlers in ``onnx_ops`` ask these), and recognition of the result:

- an SE block's ``gate * x + shortcut`` (Mul by an N x C [x 1 x 1] gate whose only consumer is an
  Add with a tensor of x's shape) -> one axpy, so a Caffe export gets Axpy layers again;
- torch's Linear as ``MatMul`` + ``Add`` of a constant vector -> one linear with a bias;
- (a constant per-channel prefix on the graph input -> input_norm is ``onnx_prefix``);
- a recognised zoo architecture renamed to canonical names (``recognise``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from senet_hub.errors import SenetHubError
from senet_hub.graph import Model, infer_shapes, rename, structure

from .onnx_context import Context, Pending, Tensor

# ------------------------------------------------------------------------- SE gate -> axpy


def gate_pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor] | None:
    """(gate, x) when one is N x C [x 1 x 1] and the other N x C x H x W, else None."""

    def is_gate(g: Tensor, x: Tensor) -> bool:
        return (
            len(x.shape) == 4
            and tuple(g.shape[:2]) == x.shape[:2]
            and math.prod(g.shape[2:]) == 1
            and (len(g.shape) in (2, 4))
        )

    ga, gb = is_gate(a, b), is_gate(b, a)
    if ga and gb:  # both N x C x 1 x 1: the sigmoid's output is the gate
        return (a, b) if a.gate_of and not b.gate_of else (b, a)
    if gb:
        return b, a
    if ga:
        return a, b
    return None


def hold_for_add(ctx: Context, n: Any, gate: Tensor, x: Tensor) -> bool:
    """A gate Mul whose only consumer is an Add is held back (bound to a Pending): the Add may make
    both one axpy (``fuse_axpy``); any other reader settles it as a channel_scale."""
    if ctx.consumer_ops.get(n.output[0], []) != ["Add"]:
        return False
    ctx.bind(n, Pending(n.output[0], gate, x, n.name))
    return True


def fuse_axpy(ctx: Context, n: Any) -> bool:
    """An Add of a held-back gate Mul and a tensor of the Mul's shape: one axpy (True when made)."""
    va, vb = (ctx.values.get(i) for i in n.input)
    for p, other in ((va, n.input[1]), (vb, n.input[0])):
        if isinstance(p, Pending):
            y = ctx.plain(ctx.tensor(n, other), n.name)
            if y.shape == p.x.shape:
                out = ctx.emit(
                    "axpy", [p.gate.name, p.x.name, y.name], {}, ctx.name_for(n, "axpy"), f"{p.source} + {n.name}"
                )
                ctx.bind(n, Tensor(out, y.shape, y.dep))
                return True
    return False


# ------------------------------------------------------------------------ MatMul + Add bias


def matmul_bias(ctx: Context, n: Any, out_features: int) -> tuple[np.ndarray | None, str, str]:
    """A MatMul whose only consumer adds a constant vector: that Add is the bias (torch's Linear).
    Returns (bias or None, the ONNX name the linear's output binds, the source names); the Add,
    when taken, is skipped by the pass."""
    users = [i for i, m in enumerate(ctx.g.node) if n.output[0] in m.input]
    if len(users) == 1 and ctx.consumers[n.output[0]] == 1 and ctx.g.node[users[0]].op_type == "Add":
        add = ctx.g.node[users[0]]
        other = [i for i in add.input if i != n.output[0]]
        bias = ctx.consts.get(other[0]) if len(other) == 1 else None
        if bias is not None and bias.size == out_features and bias.ndim <= 2:
            ctx.skip.add(users[0])
            return bias, add.output[0], f"{n.name} + {add.name}"
    return None, n.output[0], n.name


# ------------------------------------------------------------------------------- recognition


def _pool_same(a: dict[str, Any], b: dict[str, Any], op: str, hw: tuple[int, ...]) -> bool:
    """Whether two pools compute the same thing on an h x w input: same windows over the real
    pixels, and (average pooling) the same divisors. Padding never wins a max, and exclude-pad
    averages count real pixels only, so there the end padding may differ."""
    from senet_hub.ops import PoolAttrs

    try:
        pa = PoolAttrs(
            tuple(a["kernel"]), tuple(a["stride"]), tuple(a["pad"]), bool(a["ceil"]), bool(a["count_include_pad"])
        )
        pb = PoolAttrs(
            tuple(b["kernel"]), tuple(b["stride"]), tuple(b["pad"]), bool(b["ceil"]), bool(b["count_include_pad"])
        )
    except (KeyError, TypeError):
        return False
    h, w = int(hw[2]), int(hw[3])
    if (
        pa.kernel != pb.kernel
        or pa.stride != pb.stride
        or pa.pad[:2] != pb.pad[:2]
        or pa.out_hw(h, w) != pb.out_hw(h, w)
    ):
        return False
    if op == "max_pool":
        return True
    return bool(np.array_equal(pa.divisor(h, w), pb.divisor(h, w)))


def recognise(model: Model, static_size: bool) -> Model:
    """Canonical names for a recognised zoo architecture (``zoo.canonicalize``); failing that, a
    match that accepts pools computing the same windows at this input size (senet-hub's exporter
    writes a ceil-mode pool in floor mode where the two agree) and dropout ratios (identity at
    inference), whose attributes are then taken from the zoo."""
    from senet_hub import zoo

    g = model.graph
    if g.nodes and g.nodes[0].op == "input_norm":  # an input stage in front of a zoo graph: match the rest
        inner = model.copy()
        stage = inner.graph.nodes.pop(0)
        for n in inner.graph.nodes:
            n.inputs = [inner.graph.input_name if i == stage.name else i for i in n.inputs]
        found = recognise(inner, static_size) if inner.graph.nodes else inner
        if found.arch == "custom" or stage.name in {n.name for n in found.graph.nodes}:
            return Model(model.graph, model.weights, {**model.meta, "arch": "custom"})
        for n in found.graph.nodes:
            n.inputs = [stage.name if i == found.graph.input_name else i for i in n.inputs]
        found.graph.nodes.insert(0, stage)
        return found
    m = zoo.canonicalize(model)
    if m.arch != "custom" or not static_size:
        return m
    g = model.graph
    mine = structure(g)
    shapes = None
    ncls = next((int(n.attrs["out_features"]) for n in reversed(g.nodes) if n.op == "linear"), None)
    for arch in zoo.list_archs():
        try:
            ref = zoo.expand(arch, num_classes=ncls)
        except SenetHubError:
            continue
        if len(ref.nodes) != len(g.nodes):
            continue
        theirs = structure(ref)
        if shapes is None:
            shapes = infer_shapes(model)
        ok = True
        for (op, attrs, wires), (rop, rattrs, rwires), node, rnode in zip(mine, theirs, g.nodes, ref.nodes):
            if op != rop or wires != rwires:
                ok = False
            elif attrs != rattrs:
                if op in ("max_pool", "avg_pool"):
                    ok = _pool_same(node.attrs, rnode.attrs, op, shapes[node.inputs[0]])
                else:
                    ok = op == "dropout"
            if not ok:
                break
        if not ok:
            continue
        fixed = model.copy()
        for node, rnode in zip(fixed.graph.nodes, ref.nodes):
            if node.op in ("max_pool", "avg_pool", "dropout"):
                node.attrs = dict(rnode.attrs)
        out = rename(fixed, {n.name: r.name for n, r in zip(fixed.graph.nodes, ref.nodes)})
        out.meta["arch"] = arch
        return out
    return m
