"""The canonical model every part of senet-hub speaks.

A ``Model`` is a ``Graph`` (ordered nodes), ``weights`` (``{"<node>.<param>": ndarray}``) and
``meta`` (architecture id, input convention, class order, source hashes). Layout is NCHW / OIHW,
float32 (the numpy reference may run in float64). Every node has exactly one output value, named
like the node, so a tap on node ``n`` is the value ``n``.

The op vocabulary (arity, parameters, typed attributes, shape rule and the exact semantics every
builder must reproduce, as a float64 numpy reference) is declared once, in ``senet_hub.ops``
(``ops.OPS``; ``ops.vocabulary()`` prints it). This module keeps the containers and the checks,
and the names older code imports (``OPS``, ``output_shape``, ``expected_params``, ``pool_out``,
``conv_out``, ``_reshape_target``), each delegating to the registry.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import ops
from .errors import ModelError

# op -> (number of inputs or None for variadic, parameter names [optional ones end in '?']),
# derived from the declarations
OPS: dict[str, tuple[int | None, tuple[str, ...]]] = {name: (op.arity, op.params) for name, op in ops.OPS.items()}
pool_out = ops.pool_out
conv_out = ops.conv_out


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    source: list[str] = field(default_factory=list)  # names in the source format (Caffe layers)

    def param_names(self) -> list[str]:
        return ops.param_names(self.op, self.attrs)


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


def _reshape_target(shape: tuple[int, ...], spec: list[int]) -> tuple[int, ...]:
    return ops.reshape_target(shape, spec)


def expected_params(node: Node, in_shapes: list[tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes a node needs given its input shapes."""
    shapes = ops.OPS[node.op].param_shapes(ops.attrs_of(node), in_shapes)
    return {k: v for k, v in shapes.items() if k in node.param_names()}


def output_shape(node: Node, ins: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The node's output shape (its op's shape rule); a ModelError for an unknown op or bad attributes."""
    a = ops.attrs_of(node)
    return ops.OPS[node.op].shape(a, ins)


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


# ------------------------------------------------------------------------------------ stored graphs

GRAPH_FORMAT = "senet-hub graph 1"


def graph_document(graph: Graph, meta: dict) -> dict[str, Any]:
    """The graph and meta as a JSON-able document: what every file senet-hub writes stores to be read
    back exactly (Chainer .npz, .pt2/.pt, .keras/SavedModel, MXNet symbol). Local absolute paths
    (meta["source_paths"]) are left out of artifacts."""
    import json

    nodes = [
        dict(name=n.name, op=n.op, inputs=list(n.inputs), attrs=n.attrs, source=list(n.source)) for n in graph.nodes
    ]
    doc = dict(
        format=GRAPH_FORMAT,
        input_name=graph.input_name,
        input_shape=list(graph.input_shape),
        output=graph.output,
        nodes=nodes,
        meta={k: v for k, v in meta.items() if k != "source_paths"},
    )
    # numpy values in attrs/meta become lists, anything else its text: one JSON round trip normalises
    return dict(json.loads(json.dumps(doc, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))))


def graph_to_json(graph: Graph, meta: dict) -> str:
    """graph_document as JSON text."""
    import json

    return json.dumps(graph_document(graph, meta))


def read_graph(doc: Any, where: str, fix: str) -> tuple[Graph, dict]:
    """(graph, meta) of a stored graph document (graph_to_json's text or its parsed object).

    Anything else is a FormatError (exit 4): "<where> is not a readable senet-hub graph (<why>); <fix>".
    The graph is validated where it is used (graph.validate with the weights)."""
    import json

    from .errors import FormatError

    try:
        if isinstance(doc, (str, bytes)):
            doc = json.loads(doc)
        if not isinstance(doc, dict):
            raise TypeError(f"a JSON {type(doc).__name__}, not an object")
        nodes = [
            Node(d["name"], d["op"], list(d["inputs"]), dict(d["attrs"]), list(d.get("source", [])))
            for d in doc["nodes"]
        ]
        meta = doc.get("meta", {})
        if not isinstance(meta, dict):
            raise TypeError("meta is not an object")
        return Graph(nodes, doc["input_name"], tuple(doc["input_shape"]), doc["output"]), dict(meta)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        text = str(e).strip()
        why = text.splitlines()[0][:200] if text else type(e).__name__
        raise FormatError(f"{where} is not a readable senet-hub graph ({why}); {fix}") from None
