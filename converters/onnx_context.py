"""The state of one ``--from onnx`` read (``onnx_source``), shared by the op handlers (``onnx_ops``)
and the multi-node patterns (``onnx_patterns``): the canonical nodes and weights emitted so far,
the constants, the run-time value each ONNX name holds (``Tensor``, or a ``Pending`` gate Mul
waiting for its Add), who consumes what, and canonical naming from torch.onnx.export's scopes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from senet_hub.errors import ModelError, SenetHubError, UnsupportedError
from senet_hub.graph import Node

from .onnx_fold import node_error, to_array

AXPY_DOMAIN = "org.senet-hub"
DEFAULT_SIZE = 224  # H, W used when the file leaves them dynamic and no op depends on them


class InputShapeNeeded(SenetHubError):
    """The graph's meaning depends on dynamic H, W: a command-line usage error (exit 2) asking for --input-shape."""

    exit_code = 2


@dataclass
class Tensor:
    """A run-time value: the canonical node that makes it, and its ONNX shape (batch at its read size).

    view: the canonical value holds the same data in C order under another shape (a ReduceMean
    without keepdims, a gate reshaped to N x C x 1 x 1): consumers that do not care (linear, gates)
    use it as is, others get a reshape node (``Context.plain``).
    dep: its spatial size follows the input's dynamic H, W.
    """

    name: str
    shape: tuple[int, ...]
    dep: bool = False
    view: tuple[int, ...] | None = None  # the canonical shape, when it differs from `shape`
    gate_of: str | None = None  # a Sigmoid (or its view): preferred as the gate of a 1 x 1 Mul


@dataclass
class Pending:
    """A gate Mul held back until its consumer is seen (an Add turns it into axpy)."""

    out: str
    gate: Tensor
    x: Tensor
    source: str


def module_path(name: str) -> str:
    """``/layer1/layer1.0/se_module/fc1/Conv`` -> ``layer1.0.se_module.fc1`` ("" for other names):
    torch scopes a child of a Sequential by its qualified name, so a component extending the path
    so far replaces it."""
    if not name.startswith("/"):
        return ""
    path = ""
    for comp in name.strip("/").split("/")[:-1]:
        if not comp:
            return ""
        path = comp if not path or comp.startswith(path + ".") else f"{path}.{comp}"
    return path


def node_attrs(node: Any) -> dict[str, Any]:
    """A NodeProto's attributes by name (strings decoded)."""
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return out


def float_attr(v: float) -> float:
    """An ONNX float attribute (float32) as the decimal it was written from (1e-5, not 1.0000000117e-05)."""
    return float(str(np.float32(v)))


class Context:
    """One pass over the ONNX nodes (in order), emitting canonical nodes and weights."""

    def __init__(self, proto: Any, path: str, input_shape: tuple[int, int, int, int] | None):
        self.proto, self.path, self.g = proto, path, proto.graph
        self.consts: dict[str, np.ndarray] = {}
        self.values: dict[str, Tensor | Pending] = {}
        self.nodes: list[Node] = []
        self.weights: dict[str, np.ndarray] = {}
        self.used: set[str] = set()
        self.notes: list[str] = []
        self.consumers: Counter[str] = Counter()
        self.consumer_ops: dict[str, list[str]] = {}
        for n in self.g.node:
            for i in n.input:
                if i:
                    self.consumers[i] += 1
                    self.consumer_ops.setdefault(i, []).append(n.op_type)
        for o in self.g.output:
            self.consumers[o.name] += 1
            self.consumer_ops.setdefault(o.name, []).append("<output>")
        self.skip: set[int] = set()  # indices of ONNX nodes a pattern has consumed already
        # first output of a node that reads the graph input's values -> why it is not part of the
        # input stage (onnx_prefix); said in that node's error, where "Sub is unsupported" alone puzzles
        self.prefix_why: dict[str, str] = {}
        paths = [module_path(n.name) for n in self.g.node]
        self.scopes = Counter(p for p in paths if p)
        self.parents = {p[:i] for p in self.scopes for i, ch in enumerate(p) if ch == "."}
        self.requested = input_shape
        self.dynamic_batch = False
        self.dynamic_hw = False
        self.input_name = ""
        self.input_shape: tuple[int, int, int, int] = (0, 0, 0, 0)  # set by read_input

    # -- errors
    def err(self, node: Any, msg: str, cls: type[SenetHubError] = UnsupportedError) -> SenetHubError:
        why = self.prefix_why.get(node.output[0]) if node.output else None
        if why and cls is UnsupportedError:
            msg = f"{msg} (not read as part of an input stage: {why})"
        return node_error(self.path, node, msg, cls)

    def need_size(self, node: Any, why: str) -> InputShapeNeeded:
        label = node.name or node.output[0]
        return InputShapeNeeded(
            f"{self.path}: the input's H, W are dynamic and node '{label}' ({node.op_type}) {why}; "
            "pass --input-shape N,C,H,W (e.g. --input-shape 1,3,224,224)"
        )

    # -- emitting canonical nodes
    def fresh(self, base: str) -> str:
        name, i = base or "node", 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def emit(self, op: str, inputs: list[str], attrs: dict[str, Any], base: str, source: str, **params: Any) -> str:
        name = self.fresh(base)
        # `source` (the ONNX node names) stays out of Node.source: writers name Caffe layers after it,
        # and torch.onnx.export's "/layer1/layer1.0/conv1/Conv" is no name for a layer
        del source
        self.nodes.append(Node(name, op, list(inputs), attrs))
        for k, v in params.items():
            if v is not None:
                self.weights[f"{name}.{k}"] = np.ascontiguousarray(v, np.float32)
        return name

    def bind(self, n: Any, t: Tensor | Pending) -> None:
        """What node n's (first) output holds from now on."""
        self.values[n.output[0]] = t

    # -- reading values
    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)

    def tensor(self, node: Any, name: str) -> Tensor:
        v = self.values.get(name)
        if isinstance(v, Pending):
            return self.settle(name)
        if v is None:
            if name in self.consts:
                raise self.err(node, f"input '{name}' is a constant where senet-hub needs a computed tensor")
            raise self.err(node, f"input '{name}' is not produced by an earlier node", ModelError)
        return v

    def settle(self, name: str) -> Tensor:
        """A held-back gate Mul that no Add took: it is a channel_scale after all."""
        p = self.values[name]
        assert isinstance(p, Pending), "settle is called only for a name bound to a Pending"
        out = self.emit("channel_scale", [p.x.name, p.gate.name], {}, p.out, p.source)
        t = Tensor(out, p.x.shape, p.x.dep)
        self.values[name] = t
        return t

    def plain(self, t: Tensor, source: str) -> Tensor:
        """`t` as a canonical value of its ONNX shape (a reshape node for a view)."""
        if t.view is None:
            return t
        out = self.emit("reshape", [t.name], {"shape": [0, *t.shape[1:]]}, f"{t.name}/reshape", source)
        return Tensor(out, t.shape, t.dep)

    # -- canonical names
    def params_base(self, node: Any, names: list[str], op: str) -> str:
        """A node's canonical name: the common prefix of its weight names ``<p>.weight``
        (torch.onnx.export keeps module paths there, and senet-hub's exports canonical names),
        else its output's name."""
        prefixes = {n.rsplit(".", 1)[0] for n in names if n and "." in n}
        first = names[0] if names else ""
        if len(prefixes) == 1 and first.endswith(".weight"):
            p = prefixes.pop()
            if p not in self.used and p not in self.values:
                return p
        return self.name_for(node, op)

    def name_for(self, node: Any, op: str) -> str:
        """A canonical node name: torch.onnx.export's scoped node names (``/layer1/layer1.0/conv1/Conv``)
        give the module path (``layer1.0.conv1``; ``layer1.0.axpy`` for an op that is not a module of
        its own), anything else the node's output name (senet-hub's exports: the canonical name)."""
        path = module_path(node.name)
        if not path:
            return node.output[0]
        if self.scopes[path] == 1 and path not in self.parents:
            return path
        return f"{path}.{op}"

    # -- before the pass: constants and the graph input
    def read_constants(self) -> None:
        for t in self.g.initializer:
            self.consts[t.name] = to_array(t, self.path)
            self.used.add(t.name)

    def read_input(self) -> None:
        inits = {t.name for t in self.g.initializer}
        inputs = [i for i in self.g.input if i.name not in inits]
        if len(inputs) != 1:
            names = ", ".join(i.name for i in inputs) or "none"
            raise UnsupportedError(
                f"{self.path}: the graph has {len(inputs)} inputs ({names}); senet-hub reads one image input"
            )
        vi = inputs[0]
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or tt.elem_type != 1:
            raise UnsupportedError(f"{self.path}: input '{vi.name}' is not a float32 tensor (ONNX type {tt.elem_type})")
        if not tt.HasField("shape") or len(tt.shape.dim) != 4:
            rank = len(tt.shape.dim) if tt.HasField("shape") else "unknown"
            if self.requested is None:
                raise InputShapeNeeded(
                    f"{self.path}: input '{vi.name}' has rank {rank}, not N x C x H x W; pass --input-shape N,C,H,W"
                )
            dims: list[int | None] = [None] * 4
        else:
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]
        req = self.requested
        if req is not None:
            for i, (d, r) in enumerate(zip(dims, req)):
                if d is not None and d != r and i > 0:
                    raise InputShapeNeeded(
                        f"{self.path}: --input-shape {','.join(map(str, req))} disagrees with the model's input "
                        f"'{vi.name}' ({' x '.join(str(x or '?') for x in dims)}) at dimension {i}"
                    )
        self.dynamic_batch = dims[0] is None
        self.dynamic_hw = (dims[2] is None or dims[3] is None) and req is None
        if req is not None:
            shape = req
        else:
            c = dims[1]
            if c is None:
                raise InputShapeNeeded(
                    f"{self.path}: input '{vi.name}' has a dynamic channel count; pass --input-shape N,C,H,W"
                )
            shape = (dims[0] or 1, c, dims[2] or DEFAULT_SIZE, dims[3] or DEFAULT_SIZE)
        self.input_name = vi.name
        self.input_shape = (int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3]))
        self.used.add(vi.name)
        self.values[vi.name] = Tensor(vi.name, self.input_shape, self.dynamic_hw)
