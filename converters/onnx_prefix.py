"""A constant per-channel input prefix -> one canonical ``input_norm``, for the ``--from onnx`` reader.

Models are often exported wrapped with their preprocessing: ``(x - mean) / std``, ``x * scale +
shift``, ``x / 255``, and a BGR <-> RGB swap (``Gather`` on axis 1, ``Slice`` with step -1, or
``Slice`` / ``Split`` [+ ``Squeeze`` / ``Unsqueeze``] + ``Concat``). Every such chain straight on
the graph input is one affine map per channel, ``y[:, c] = x[:, perm[c]] * scale[c] + shift[c]``,
which is exactly ``input_norm`` (senet-hub's own export writes it as Gather + Mul + Add).

``input_stage`` runs before the reader's pass: it follows the values computed from the graph input
alone (the *region*), composing each op's affine map in float64, and takes the region as one
input_norm when it has a single exit (one value read outside it), ends with every input channel
exactly once, and a replay of the region with ``onnx.reference`` agrees with the composition:
against float64 arithmetic within the float32 rounding of the stored constants, and against float32
arithmetic within the chain's own rounding. Anything else (a non-constant operand, a spatially
varying or per-sample constant, a division by the input, two exits) is left to the pass, which
refuses it as before; why the prefix was not taken is added to that error (``Context.prefix_why``).

``stage_convention`` names what a prefix implements when it is one of the known conventions
(``transforms.CONVENTIONS``): e.g. RGB pixels in [0, 1] normalised with ImageNet's mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .onnx_context import Context, Tensor, node_attrs
from .onnx_fold import constant_value, fold

# ops a prefix may hold; anything else reading the input ends the region
PREFIX_OPS = ("Sub", "Div", "Mul", "Add", "Gather", "Slice", "Split", "Concat", "Squeeze", "Unsqueeze",
              "Transpose", "GatherND", "Identity", "Cast")  # fmt: skip
_ARITH = ("Sub", "Div", "Mul", "Add")
_BIG = 2**31 - 1  # an end at least this large is "to the end" (exporters write INT32_MAX or INT64_MAX)
_EPS32 = float(np.finfo(np.float32).eps)
_EPS64 = float(np.finfo(np.float64).eps)


@dataclass
class Affine:
    """A value of the region: channel k is ``x[:, src[k]] * a[k] + b[k]``; squeezed: the channel axis
    was removed (one channel, rank 3), as ``x.unbind(1)`` exports it; axis: where the channel axis
    is (0 between the two ``Transpose`` that the dynamo exporter wraps ``x[:, [2, 1, 0]]``'s
    ``GatherND`` in)."""

    src: tuple[int, ...]
    a: np.ndarray
    b: np.ndarray
    squeezed: bool = False
    axis: int = 1

    def take(self, idx: list[int]) -> Affine:
        return Affine(tuple(self.src[i] for i in idx), self.a[idx], self.b[idx], axis=self.axis)


class NotAffine(Exception):
    """Why a node reading the region is not part of it (one clause, added to the pass's error)."""


# ---------------------------------------------------------------------------- constants first


def _constants(ctx: Context) -> dict[str, np.ndarray]:
    """Every constant of the graph: initializers, Constant nodes and what folds from them alone
    (``mean.view(1, 3, 1, 1)`` in a forward is a Reshape of an initializer). The pass folds them
    again in order; a node that does not fold is simply not a constant here."""
    consts = dict(ctx.consts)
    for n in ctx.g.node:
        try:
            if n.op_type == "Constant":
                consts[n.output[0]] = constant_value(n, ctx.path)
                continue
            given = [i for i in n.input if i]
            if not given or n.op_type == "Shape" or not all(i in consts for i in given):
                continue
            val = fold(n, [consts.get(i) if i else None for i in n.input], node_attrs(n), ctx.path)
        except Exception:  # a malformed constant: the pass reports it in its own words
            continue
        if val is not None and n.output and val.dtype != object:
            consts[n.output[0]] = np.asarray(val)
    return consts


# ------------------------------------------------------------------------- one op, composed


def _per_channel(k: np.ndarray, c: int) -> np.ndarray:
    """A constant operand as c per-channel float64 values; NotAffine unless it broadcasts against
    N x c x H x W to one value per channel (a scalar, [c], [c,1,1], [1,c,1,1], or 1s there)."""
    if not np.issubdtype(k.dtype, np.floating):
        raise NotAffine(f"its constant is {k.dtype}, not floating point")
    if k.ndim > 4:
        raise NotAffine(f"its constant of shape {list(k.shape)} has more axes than the image")
    k4 = (1,) * (4 - k.ndim) + tuple(k.shape)
    if k4[0] != 1:
        raise NotAffine(f"its constant of shape {list(k.shape)} differs per sample")
    if k4[2] != 1 or k4[3] != 1:
        raise NotAffine(f"its constant of shape {list(k.shape)} varies over H, W (not per channel)")
    if k4[1] not in (1, c):
        raise NotAffine(f"its constant of shape {list(k.shape)} does not fit {c} channels")
    out = np.broadcast_to(np.asarray(k, np.float64).reshape(k4[1]), (c,)).copy()
    if not np.all(np.isfinite(out)):
        raise NotAffine("its constant is not finite")
    return out


def _arith(op: str, v: Affine, k: np.ndarray, v_first: bool) -> Affine:
    if v.squeezed or v.axis != 1:
        raise NotAffine("computes on a channel whose axis was squeezed away or moved")
    c = len(v.src)
    k = _per_channel(k, c)
    if op == "Add":
        return Affine(v.src, v.a, v.b + k)
    if op == "Sub":
        return Affine(v.src, v.a, v.b - k) if v_first else Affine(v.src, -v.a, k - v.b)
    if op == "Mul":
        return Affine(v.src, v.a * k, v.b * k)
    if not v_first:
        raise NotAffine("divides a constant by the input (not affine)")
    if np.any(k == 0):
        raise NotAffine("divides by zero")
    return Affine(v.src, v.a / k, v.b / k)


def _ints(consts: dict[str, np.ndarray], n: Any, i: int, what: str) -> list[int] | None:
    if len(n.input) <= i or not n.input[i]:
        return None
    v = consts.get(n.input[i])
    if v is None:
        raise NotAffine(f"its {what} are computed at run time")
    if not np.issubdtype(v.dtype, np.integer):
        raise NotAffine(f"its {what} are not integers")
    return [int(t) for t in np.asarray(v).ravel()]


def _slice_range(dim: int, start: int, end: int, step: int) -> list[int]:
    """The indices ONNX Slice takes from an axis of `dim` (the spec's clamping, step may be negative)."""
    if step == 0:
        raise NotAffine("slices with step 0")
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return list(range(start, end, step))


def _slice(consts: dict[str, np.ndarray], n: Any, v: Affine) -> Affine:
    if v.squeezed:
        raise NotAffine("slices a channel whose axis was squeezed away")
    starts, ends = _ints(consts, n, 1, "starts"), _ints(consts, n, 2, "ends")
    if starts is None or ends is None or len(starts) != len(ends):
        raise NotAffine("has no constant starts and ends")
    axes = _ints(consts, n, 3, "axes") or list(range(len(starts)))
    steps = _ints(consts, n, 4, "steps") or [1] * len(starts)
    out = v
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if ax % 4 == v.axis:
            out = out.take(_slice_range(len(out.src), s, e, st))
        elif not (s in (0, -(2**63)) and st == 1 and e >= _BIG):
            raise NotAffine(f"slices axis {ax} (only the channel axis is an input stage)")
    if not out.src:
        raise NotAffine("takes no channel")
    return out


def _axes(consts: dict[str, np.ndarray], n: Any, at: dict[str, Any]) -> list[int] | None:
    got = _ints(consts, n, 1, "axes")
    return got if got is not None else ([int(a) for a in at["axes"]] if "axes" in at else None)


def _apply(n: Any, at: dict[str, Any], ins: list[Affine | None], consts: dict[str, np.ndarray]) -> list[Affine]:
    """The affine value of each output of node `n`, whose inputs are region values (Affine) or
    constants (None here, looked up in `consts`). NotAffine when the node is no input stage op."""
    op = n.op_type
    v = next(x for x in ins if x is not None)
    if op == "Identity":
        return [v]
    if op == "Cast":
        if int(at.get("to", 0)) != 1:
            raise NotAffine(f"casts the input to ONNX type {at.get('to')}, not float32")
        return [v]
    if op in _ARITH:
        if len(n.input) != 2 or all(x is not None for x in ins):
            raise NotAffine("combines the input with itself" if len(n.input) == 2 else "needs two inputs")
        k = consts.get(n.input[1] if ins[0] is not None else n.input[0])
        if k is None:
            raise NotAffine("its other operand is computed at run time, not a constant")
        return [_arith(op, v, k, ins[0] is not None)]
    if any(x is not None for x in ins[1:]):
        raise NotAffine("reads the input where a constant belongs")
    if op == "Gather":
        idx = consts.get(n.input[1]) if len(n.input) > 1 else None
        if idx is None or not np.issubdtype(idx.dtype, np.integer) or idx.ndim > 1:
            raise NotAffine("its indices are not a constant list of integers")
        if int(at.get("axis", 0)) % 4 != v.axis or v.squeezed or idx.ndim == 0 and v.axis != 1:
            raise NotAffine(f"gathers along axis {at.get('axis', 0)} (only the channel axis is an input stage)")
        c = len(v.src)
        picked = [int(i) for i in idx.ravel()]
        if any(not -c <= i < c for i in picked):
            raise NotAffine(f"indices {picked} outside {c} channels")
        out = v.take([i % c for i in picked])
        if idx.ndim == 0:
            out.squeezed = True  # x[:, 0]: one channel, its axis removed
        return [out]
    if op == "Slice":
        return [_slice(consts, n, v)]
    if op == "Split":
        if int(at.get("axis", 0)) % 4 != v.axis or v.squeezed:
            raise NotAffine(f"splits along axis {at.get('axis', 0)} (only the channel axis is an input stage)")
        c, parts = len(v.src), len(n.output)
        sizes = _ints(consts, n, 1, "split sizes")
        if sizes is None:  # num_outputs (opset 18) or the outputs: ceil-sized chunks, the last one smaller
            chunk = -(-c // int(at.get("num_outputs", parts)))
            sizes = [min(chunk, max(c - i * chunk, 0)) for i in range(parts)]
        if len(sizes) != parts or sum(sizes) != c or min(sizes) < 0:
            raise NotAffine(f"splits {c} channels into {sizes}")
        starts = [sum(sizes[:i]) for i in range(parts)]
        return [v.take(list(range(s, s + k))) for s, k in zip(starts, sizes)]
    if op == "Transpose":
        perm = [int(p) for p in at.get("perm", [])]
        if v.squeezed or perm not in ([1, 0, 2, 3], [0, 1, 2, 3]):
            raise NotAffine(f"transposes axes {perm or 'reversed'} (only swapping batch and channel is an input stage)")
        return [Affine(v.src, v.a, v.b, axis=v.axis if perm == [0, 1, 2, 3] else 1 - v.axis)]
    if op == "GatherND":
        idx = consts.get(n.input[1]) if len(n.input) > 1 else None
        if idx is None or not np.issubdtype(idx.dtype, np.integer) or idx.ndim != 2 or idx.shape[1] != 1:
            raise NotAffine("its indices are not a constant k x 1 list of integers")
        if int(at.get("batch_dims", 0)) != 0 or v.axis != 0 or v.squeezed:
            raise NotAffine("gathers along another axis than the channels (moved first by a Transpose)")
        c = len(v.src)
        picked = [int(i) for i in idx.ravel()]
        if any(not -c <= i < c for i in picked):
            raise NotAffine(f"indices {picked} outside {c} channels")
        return [v.take([i % c for i in picked])]
    if op in ("Squeeze", "Unsqueeze"):
        axes = _axes(consts, n, at)
        rank = 3 if op == "Unsqueeze" else 4  # the value's rank before the op
        if axes is None or [a % (rank + (op == "Unsqueeze")) for a in axes] != [1]:
            raise NotAffine(f"{op.lower()}s axes {axes} (only the channel axis of one channel is an input stage)")
        if op == "Squeeze" and (v.squeezed or len(v.src) != 1 or v.axis != 1) or op == "Unsqueeze" and not v.squeezed:
            raise NotAffine(f"{op.lower()}s a value that is not one channel")
        return [Affine(v.src, v.a, v.b, op == "Squeeze")]
    raise NotAffine(f"{op} is no input stage op")  # pragma: no cover - _grow offers only PREFIX_OPS


def _concat(at: dict[str, Any], ins: list[Affine | None]) -> Affine:
    if any(x is None or x.squeezed for x in ins):
        raise NotAffine("joins the input with other values")
    parts = [x for x in ins if x is not None]
    if len({x.axis for x in parts}) != 1 or int(at.get("axis", 0)) % 4 != parts[0].axis:
        raise NotAffine(f"concatenates along axis {at.get('axis')} (only the channel axis is an input stage)")
    src = tuple(s for x in parts for s in x.src)
    return Affine(src, np.concatenate([x.a for x in parts]), np.concatenate([x.b for x in parts]), axis=parts[0].axis)


# --------------------------------------------------------------------------------- the region


@dataclass
class Region:
    nodes: list[int]  # indices of the ONNX nodes taken
    values: dict[str, Affine]  # every value computed from the input alone, the input included
    why: dict[str, str]  # output name -> why a node reading the region is not part of it


def _grow(ctx: Context, consts: dict[str, np.ndarray]) -> Region:
    c = ctx.input_shape[1]
    root = Affine(tuple(range(c)), np.ones(c), np.zeros(c))
    reg = Region([], {ctx.input_name: root}, {})
    for i, n in enumerate(ctx.g.node):
        reads = [x for x in n.input if x in reg.values]
        if not reads or not n.output or n.domain not in ("", "ai.onnx") or n.op_type not in PREFIX_OPS:
            continue
        label = n.output[0]
        ins = [reg.values.get(x) if x else None for x in n.input]
        if any(x and x not in reg.values and x not in consts for x in n.input) and n.op_type != "Concat":
            reg.why[label] = "its other operand is computed at run time, not a constant"
            continue
        try:
            at = node_attrs(n)
            outs = _concat(at, ins) if n.op_type == "Concat" else None
            got = [outs] if outs is not None else _apply(n, at, ins, consts)
        except NotAffine as e:
            reg.why[label] = str(e)
            continue
        except Exception as e:  # a malformed node (crafted file): the pass reports it in its own words
            reg.why[label] = f"malformed ({type(e).__name__})"
            continue
        reg.nodes.append(i)
        for o, v in zip(n.output, got):
            if o:
                reg.values[o] = v
    return reg


def _exits(ctx: Context, reg: Region) -> list[str]:
    """The region's values read outside it (by a node not taken, or as the graph output)."""
    taken = set(reg.nodes)
    outside = {x for i, n in enumerate(ctx.g.node) if i not in taken for x in n.input}
    outside |= {o.name for o in ctx.g.output}
    return [v for v in reg.values if v in outside]


# ------------------------------------------------------------------------------ the replay check


def _replay(ctx: Context, reg: Region, consts: dict[str, np.ndarray], exit_: str, x: np.ndarray) -> list[np.ndarray]:
    """The region run by ``onnx.reference`` on x (its dtype, float32 or float64): the exit first,
    then every intermediate value. Float64 runs turn float constants and ``Cast`` to float64."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    wide = x.dtype == np.float64
    nodes, inits, seen = [], [], set()
    for i in reg.nodes:
        n = ctx.g.node[i]
        for name in n.input:
            if name and name in consts and name not in seen:
                k = consts[name]
                seen.add(name)
                inits.append(numpy_helper.from_array(k.astype(np.float64) if wide and k.dtype.kind == "f" else k, name))
        if wide and n.op_type == "Cast":
            nodes.append(helper.make_node("Identity", list(n.input[:1]), list(n.output[:1])))
        else:
            nodes.append(n)
    elem = TensorProto.DOUBLE if wide else TensorProto.FLOAT
    inner = [o for i in reg.nodes for o in ctx.g.node[i].output if o and o != exit_]
    graph = helper.make_graph(
        nodes,
        "input_stage",
        [helper.make_tensor_value_info(ctx.input_name, elem, list(x.shape))],
        [helper.make_tensor_value_info(o, elem, None) for o in [exit_, *inner]],
        initializer=inits,
    )
    opsets = [o for o in ctx.proto.opset_import if o.domain in ("", "ai.onnx")]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ctx.proto.ir_version
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, {ctx.input_name: x})]


def _check(ctx: Context, reg: Region, consts: dict[str, np.ndarray], exit_: str, stage: Affine) -> str | None:
    """None when the input_norm (float32 constants) reproduces the region, else why not."""
    c = ctx.input_shape[1]
    rng = np.random.default_rng(0)
    # one sample per magnitude a preprocessing sees (normalised, [0, 1], [0, 255], large)
    mags = np.array([1.0, 1.0, 255.0, 1e4]).reshape(4, 1, 1, 1)
    x32 = (rng.uniform(-1, 1, (4, c, 2, 3)) * mags).astype(np.float32)
    try:
        out32, *mid32 = _replay(ctx, reg, consts, exit_, x32)
        out64, *_ = _replay(ctx, reg, consts, exit_, x32.astype(np.float64))
    except Exception as e:  # onnx.reference refuses a node the composition accepted: not taken
        return f"onnx.reference cannot run it ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    want = (x32.shape[0], c, *x32.shape[2:])
    if out32.shape != want or out64.shape != want:
        return f"it computes a {list(out32.shape)} tensor from a {list(x32.shape)} input"
    a, b = (np.asarray(v, np.float64)[None, :, None, None] for v in (stage.a, stage.b))
    ax = x32.astype(np.float64)[:, list(stage.src)] * a
    got = ax + b
    # per sample, the largest magnitude the chain computes: its float32 rounding scales with it
    big = np.max([np.abs(v).reshape(4, -1).max(axis=1) for v in [x32, out32, got, *mid32] if v.size], axis=0)
    big = big.reshape(4, 1, 1, 1)
    steps = len(reg.nodes) + 1
    # exact arithmetic (float64) differs only by the constants' rounding to float32 ...
    if np.any(np.abs(got - out64) > _EPS32 * (np.abs(ax) + np.abs(b)) + 16 * steps * _EPS64 * big):
        return "its per-channel composition does not reproduce what onnx.reference computes"
    # ... and the chain in float32 by no more than its own rounding
    if np.any(np.abs(got - out32) > 2 * steps * _EPS32 * big):
        return "it is not reproduced within float32 rounding"
    return None


# ------------------------------------------------------------------------------------ entry


def _f32(v: np.ndarray) -> np.ndarray:
    """float64 values as the float32 constants every backend computes with (held as float64)."""
    return np.asarray(v, np.float32).astype(np.float64)


def input_stage(ctx: Context) -> None:
    """Take a constant per-channel affine prefix on the graph input as one input_norm node (the
    ONNX nodes it replaces are skipped by the pass); leave the graph alone when there is none or
    it cannot be one input_norm, saying why in ``ctx.prefix_why`` for the pass's error."""
    consts = _constants(ctx)
    reg = _grow(ctx, consts)
    ctx.prefix_why.update(reg.why)
    ops = {ctx.g.node[i].op_type for i in reg.nodes}
    if not ops - {"Identity", "Cast"}:  # nothing but copies: the pass reads them as before
        return
    labels = [ctx.g.node[i].output[0] for i in reg.nodes]

    def refuse(why: str) -> None:
        for lab in labels:
            ctx.prefix_why.setdefault(lab, why)

    exits = _exits(ctx, reg)
    c = ctx.input_shape[1]
    if len(exits) != 1:
        shown = ", ".join(f"'{e}'" for e in exits[:3])
        return refuse(f"values computed from the input alone are read in {len(exits)} places ({shown}), not one")
    exit_ = exits[0]
    v = reg.values[exit_]
    if v.squeezed or v.axis != 1 or sorted(v.src) != list(range(c)):
        return refuse(f"the input stage ends with channels {list(v.src)}, not each of the {c} input channels once")
    stage = Affine(v.src, _f32(v.a), _f32(v.b))
    if not (np.all(np.isfinite(stage.a)) and np.all(np.isfinite(stage.b))):
        return refuse("its composed constants overflow float32")
    why = _check(ctx, reg, consts, exit_, stage)
    if why is not None:
        return refuse(why)
    ctx.skip.update(reg.nodes)
    names = ", ".join(ctx.g.node[i].name or ctx.g.node[i].output[0] for i in reg.nodes[:4])
    more = ", ..." if len(reg.nodes) > 4 else ""
    ctx.notes.append(f"input stage: {len(reg.nodes)} node(s) on the input ({names}{more}) read as one input_norm")
    if list(stage.src) == list(range(c)) and np.all(stage.a == 1) and np.all(stage.b == 0):
        ctx.values[exit_] = ctx.values[ctx.input_name]  # the identity (x * 1, a Gather of 0, 1, 2): no node
        return
    attrs = {"perm": list(stage.src), "scale": [float(s) for s in stage.a], "shift": [float(s) for s in stage.b]}
    src = " + ".join(ctx.g.node[i].name or ctx.g.node[i].op_type for i in reg.nodes)
    # named as set_input_convention names it (senet-hub's own export writes that name as the value)
    out = ctx.emit("input_norm", [ctx.input_name], attrs, "input_norm", src)
    ctx.values[exit_] = Tensor(out, ctx.input_shape, ctx.dynamic_hw)


def _raw(order: str, top: float) -> dict[str, Any]:
    return {"channel_order": order, "range": [0, top], "mean": [0.0] * 3, "std": [1.0] * 3}


def stage_convention(attrs: dict[str, Any], size: int) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """What an input stage implements, when it maps a known input onto a known convention
    (``transforms.CONVENTIONS``): (the model's input convention, the convention the stage feeds the
    network, a phrase saying so); None otherwise. The model's input is raw pixels (RGB or BGR, in
    [0, 1] or [0, 255]) or one of the conventions; the stage feeds one of the conventions."""
    from senet_hub import transforms
    from senet_hub.errors import SenetHubError

    perm = [int(p) for p in attrs["perm"]]
    scale, shift = np.asarray(attrs["scale"], np.float64), np.asarray(attrs["shift"], np.float64)
    if len(perm) != 3:
        return None
    raws = {f"{o} pixels in [0, {t}]": _raw(o, t) for t in (1, 255) for o in ("RGB", "BGR")}
    inputs = {**raws, **transforms.CONVENTIONS}
    for net_name, net in transforms.CONVENTIONS.items():
        for in_name, given in inputs.items():
            if given is net:
                continue
            try:
                p, s, b = transforms._norm_params(net, given)
            except SenetHubError:  # channel orders that do not map (none among these conventions)
                continue
            tol = 1e-6 * max(1.0, float(np.abs(shift).max()))
            if p == perm and np.allclose(s, scale, rtol=1e-6, atol=0) and np.allclose(b, shift, rtol=1e-6, atol=tol):
                return (
                    {**given, "size": size},
                    {**net, "size": size},
                    f"input stage maps {in_name} onto the '{net_name}' convention",
                )
    return None


__all__ = ["PREFIX_OPS", "input_stage", "stage_convention"]
