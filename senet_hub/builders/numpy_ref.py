"""The numpy reference executor: the oracle that needs no framework.

A lowering table like every builder's, but each entry is the op declaration's own ``reference``
(senet_hub.ops), so the numpy backend *is* the documented semantics, in float32 or float64.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .. import ops
from ..graph import Model, Node, infer_shapes
from ..ops import Lowerings, Step

NAME = "numpy"
EXTRA = None

Params = dict[str, dict[str, np.ndarray]]  # node -> its parameters in the compute dtype
LOWER: Lowerings[Any] = Lowerings("numpy")


class Native(NamedTuple):
    model: Model
    dtype: np.dtype
    weights: dict[str, np.ndarray]
    steps: list[Step]
    params: Params


def available() -> str | None:
    return np.__version__


@LOWER.register(*ops.OPS)
def _reference(params: Params, step: Step, ins: list[np.ndarray]) -> np.ndarray:
    return ops.OPS[step.op].reference(step.attrs, ins, params[step.name])


def build(model: Model, dtype: Any = np.float64) -> Native:
    """Validate, and copy the weights once into aligned arrays of the compute dtype."""
    infer_shapes(model)
    weights = {k: np.array(v, dtype=dtype) for k, v in model.weights.items()}
    params = {n.name: {p: weights[f"{n.name}.{p}"] for p in n.param_names()} for n in model.graph.nodes}
    return Native(model, np.dtype(dtype), weights, ops.plan(model.graph, LOWER), params)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, a: dict[str, Any]) -> np.ndarray:
    """The reference convolution on raw attributes (stride, pad; dilation, groups optional)."""
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = a["stride"], a["pad"], a.get("dilation", (1, 1))
    return ops.conv2d(x, w, b, (sh, sw), (pt, pl, pb, pr), (dh, dw), a.get("groups", 1))


def pool2d(x: np.ndarray, a: dict[str, Any], is_max: bool) -> np.ndarray:
    return ops.pool2d(x, ops.attrs_of(Node("pool", "max_pool" if is_max else "avg_pool", [], a)), is_max)


def run_node(node: Node, ins: list[np.ndarray], p: dict[str, np.ndarray]) -> np.ndarray:
    """One node on given inputs and parameters."""
    return ops.OPS[node.op].reference(ops.attrs_of(node), ins, p)


def run(native: Native, x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    """Run the model; return every node's output (taps) or just the graph output."""
    return ops.walk(native.model.graph, native.steps, native.params, np.asarray(x, native.dtype), taps=taps)


def forward(model: Model, x: np.ndarray, dtype: Any = np.float64) -> np.ndarray:
    """The model's final output for input x."""
    return run(build(model, dtype), x, taps=False)[model.graph.output]
