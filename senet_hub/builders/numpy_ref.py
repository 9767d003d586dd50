"""The numpy reference executor: the oracle that needs no framework.

Implements graph.py's op semantics literally, in float32 or float64. Convolution is im2col +
matmul per group; pooling gathers the kh*kw shifted windows; everything else is one numpy
expression.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..graph import Model, Node, infer_shapes, pool_out

NAME = "numpy"
EXTRA = None


def available() -> str | None:
    return np.__version__


def build(model: Model, dtype: Any = np.float64) -> tuple[Model, Any, dict[str, np.ndarray]]:
    """Validate, and copy the weights once into aligned arrays of the compute dtype."""
    infer_shapes(model)
    return (model, np.dtype(dtype), {k: np.array(v, dtype=dtype) for k, v in model.weights.items()})


def _windows(
    xp: np.ndarray, kh: int, kw: int, sh: int, sw: int, dh: int, dw: int, ho: int, wo: int
) -> Iterator[np.ndarray]:
    for i in range(kh):
        for j in range(kw):
            yield xp[:, :, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, a: dict) -> np.ndarray:
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (pt, pl, pb, pr) = a["stride"], a["pad"]
    dh, dw = a.get("dilation", (1, 1))
    g = a.get("groups", 1)
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    if kh == kw == 1:
        cols = xp[:, :, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw].reshape(n, g, cg, ho * wo)
    else:
        cols = np.stack(list(_windows(xp, kh, kw, sh, sw, dh, dw, ho, wo)), axis=2)  # n, c, taps, ho, wo
        cols = cols.reshape(n, g, cg * kh * kw, ho * wo)
    y = np.matmul(w.reshape(g, o // g, cg * kh * kw), cols).reshape(n, o, ho, wo)
    return y if b is None else y + b[:, None, None]


def _pool_counts(size: int, k: int, s: int, p0: int, p1: int, m: int, include_pad: bool) -> np.ndarray:
    start = np.arange(m) * s - p0
    if include_pad:
        return np.minimum(start + k, size + p1) - start
    return np.minimum(start + k, size) - np.maximum(start, 0)


def pool2d(x: np.ndarray, a: dict, is_max: bool) -> np.ndarray:
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a["kernel"], a["stride"], a["pad"]
    ceil = a.get("ceil", False)
    ho, wo = pool_out(h, kh, sh, pt, pb, ceil), pool_out(w, kw, sw, pl, pr, ceil)
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
    if is_max:
        return acc
    inc = a.get("count_include_pad", True)
    cnt = np.outer(_pool_counts(h, kh, sh, pt, pb, ho, inc), _pool_counts(w, kw, sw, pl, pr, wo, inc))
    return acc / cnt.astype(x.dtype)


def _nc11(v: np.ndarray) -> np.ndarray:
    return v.reshape(v.shape[0], v.shape[1], 1, 1)


def run_node(node: Node, ins: list[np.ndarray], p: dict[str, np.ndarray]) -> np.ndarray:
    a, op, x = node.attrs, node.op, ins[0]
    if op == "conv":
        return conv2d(x, p["weight"], p.get("bias"), a)
    if op == "batch_norm":
        scale = p["weight"] / np.sqrt(p["running_var"] + x.dtype.type(a["eps"]))
        shift = p["bias"] - p["running_mean"] * scale
        return x * scale[:, None, None] + shift[:, None, None]
    if op == "relu":
        return np.maximum(x, 0)
    if op == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if op in ("max_pool", "avg_pool"):
        return pool2d(x, a, op == "max_pool")
    if op == "global_avg_pool":
        return x.mean(axis=(2, 3), keepdims=True)
    if op == "axpy":
        return _nc11(ins[0]) * ins[1] + ins[2]
    if op == "channel_scale":
        return x * _nc11(ins[1])
    if op == "add":
        return x + ins[1]
    if op == "concat":
        return np.concatenate(ins, axis=a.get("axis", 1))
    if op == "reshape":
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(a["shape"])]
        return x.reshape(shape)
    if op == "flatten":
        return x.reshape(x.shape[0], -1)
    if op == "linear":
        y = x.reshape(x.shape[0], -1) @ p["weight"].T
        return y + p["bias"] if "bias" in p else y
    if op == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if op == "dropout":
        return x
    if op == "input_norm":
        scale = np.asarray(a["scale"], x.dtype)[:, None, None]
        shift = np.asarray(a["shift"], x.dtype)[:, None, None]
        return x[:, list(a["perm"])] * scale + shift
    raise NotImplementedError(op)


def run(native: tuple[Model, Any, dict[str, np.ndarray]], x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    """Run the model; return every node's output (taps) or just the graph output."""
    model, dtype, weights = native
    g = model.graph
    vals = {g.input_name: np.asarray(x, dtype)}
    last_use = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            last_use[v] = i
    out = {}
    for i, n in enumerate(g.nodes):
        params = {p: weights[f"{n.name}.{p}"] for p in n.param_names()}
        y = run_node(n, [vals[v] for v in n.inputs], params)
        vals[n.name] = y
        if taps or n.name == g.output:
            out[n.name] = y
        if not taps:
            for v in n.inputs:
                if last_use.get(v) == i and v != g.output:
                    vals.pop(v, None)
    return out


def forward(model: Model, x: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """The model's final output for input x."""
    return run(build(model, dtype), x, taps=False)[model.graph.output]
