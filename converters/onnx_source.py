"""ONNX model -> canonical Model (``--from onnx --onnx FILE [--input-shape N,C,H,W]``).

Reads any ONNX graph made of ops the canonical vocabulary (``senet_hub.ops``) expresses, opsets
13 and up (13-21 tested): senet-hub's own exports (the ``org.senet-hub::Axpy`` node with or
without its model-local function, or ``--inline``) and ``torch.onnx.export``'s usual forms
(initializers, ``Constant`` nodes, ``Identity`` on weights, ``Shape -> Gather -> Unsqueeze ->
Concat`` chains computing a reshape target, external data files beside the model).

This module is the entry point: it reads and checks the file (opset, model-local functions),
runs one pass over the nodes in order and builds the Model and its meta. The pass's parts:

- ``onnx_fold``: tensors (initializers, Constant nodes, external data) and constant shape
  arithmetic folded away, dynamic dims kept symbolic;
- ``onnx_context``: the pass's state (values, emitted nodes and weights, canonical naming);
- ``onnx_ops``: one handler per ONNX op type, onto canonical ops (the mapping is listed there);
- ``onnx_prefix``: before the pass, a constant per-channel prefix on the graph input (a model
  exported with its preprocessing: ``(x - mean) / std``, ``x / 255``, a BGR <-> RGB swap) -> one
  input_norm, and the input convention it implements (``meta.input_convention``);
- ``onnx_patterns``: what several nodes make together (an SE block's gate Mul + Add -> axpy,
  MatMul + Add -> linear) and recognition of a zoo architecture.

torch.onnx.export in eval mode folds BatchNormalization into the convolutions (conv with bias,
no batch_norm): that is still a canonical graph, just not the zoo's (meta says so:
``batch_norm_folded``). A recognised architecture is renamed to canonical names
(``zoo.canonicalize``, or a match that accepts pools computing the same windows at this input
size, which is how senet-hub's exporter may write a ceil-mode pool); senet-hub's own
``metadata_props`` (arch, input convention, class order) are carried into ``model.meta``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from senet_hub.errors import (
    FormatError,
    InputFileError,
    MissingFrameworkError,
    ModelError,
    SenetHubError,
    UnsupportedError,
)
from senet_hub.graph import Graph, Model, Node, validate

from .onnx_context import AXPY_DOMAIN, DEFAULT_SIZE, Context, InputShapeNeeded, Pending, node_attrs
from .onnx_fold import FOLDABLE, constant_value, fold, load_external, shape_value
from .onnx_ops import LAYER_OPS, handler_for
from .onnx_patterns import recognise
from .onnx_prefix import PREFIX_OPS, input_stage, stage_convention
from .wire import check_unchanged, open_regular

__all__ = ["InputShapeNeeded", "load", "parse_input_shape", "recognise"]

MIN_OPSET = 13  # Softmax-13 (one axis), Squeeze/Unsqueeze axes as inputs, ReduceSum axes input
TESTED_OPSETS = range(13, 22)
MAX_SHOWN = 3  # node names shown per unsupported op type


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingFrameworkError(
            "--from onnx needs the onnx package: pip install 'senet-hub[onnx]' (or: pip install onnx)"
        ) from None
    return onnx


# ------------------------------------------------------------------------------------ reading


def parse_input_shape(text: str | None) -> tuple[int, int, int, int] | None:
    """``--input-shape N,C,H,W`` (also ``NxCxHxW``) as four positive ints; None when not given."""
    if text is None or str(text).strip() == "":
        return None
    parts = [p.strip() for p in str(text).replace("x", ",").split(",")]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise InputShapeNeeded(f"--input-shape {text!r}: give four positive integers N,C,H,W (e.g. 1,3,224,224)")
    return dims[0], dims[1], dims[2], dims[3]


def _read_proto(path: str) -> Any:
    """The ModelProto of `path`, refusing special files before anything is parsed."""
    onnx = _onnx()
    f, st = open_regular(path, "ONNX model")
    with f:
        try:
            data = f.read()
        except OSError as e:
            raise InputFileError(f"{path}: cannot read the ONNX model: {e.strerror or e}") from None
        check_unchanged(path, f, st, "ONNX model")
    if not data:
        raise FormatError(f"{path}: empty file, not an ONNX model")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as e:  # google.protobuf DecodeError (or RuntimeError from the C++ parser)
        raise FormatError(f"{path}: not an ONNX model (protobuf: {str(e) or type(e).__name__})") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise FormatError(f"{path}: no graph (or an empty one): not an ONNX model")
    _check_text(proto, path)
    return proto


# fields only described, never read (in meta, producer_name and producer_version, as they are)
_INFO_FIELDS = {("ModelProto", "producer_name"), ("ModelProto", "producer_version"), ("ModelProto", "domain"),
                ("ModelProto", "metadata_props"), ("GraphProto", "name")}  # fmt: skip


def _check_text(msg: Any, path: str, plans: dict[str, tuple[list[str], list[str]]] | None = None) -> None:
    """Every string field the reader may read, in `msg` and the messages in it, is UTF-8 text. ONNX
    is proto2, which does not validate strings when parsing: upb then hands invalid UTF-8 (a
    corrupt file) back as bytes, which the reader would meet as a TypeError deep in a name.
    Bytes fields (raw_data, string attributes) are not touched, so no weight is copied; doc
    strings and _INFO_FIELDS are not checked (a file whose producer_name is garbled still reads)."""
    from google.protobuf.descriptor import FieldDescriptor
    from google.protobuf.message import Message

    plans = {} if plans is None else plans  # per message type: its string fields, its message fields
    kind = msg.DESCRIPTOR.name
    if kind not in plans:
        checked = [
            fd for fd in msg.DESCRIPTOR.fields if fd.name != "doc_string" and (kind, fd.name) not in _INFO_FIELDS
        ]
        plans[kind] = (
            [fd.name for fd in checked if fd.type == FieldDescriptor.TYPE_STRING],
            [fd.name for fd in checked if fd.type == FieldDescriptor.TYPE_MESSAGE],
        )
    strings, messages = plans[kind]
    for name in strings:
        v = getattr(msg, name)
        if any(not isinstance(s, str) for s in ([v] if isinstance(v, (str, bytes)) else v)):
            raise FormatError(f"{path}: a {kind}.{name} is not UTF-8 text: a corrupt ONNX model")
    for name in messages:
        v = getattr(msg, name)
        if not isinstance(v, Message):  # a repeated field
            for sub in v:
                _check_text(sub, path, plans)
        elif msg.HasField(name):
            _check_text(v, path, plans)


# ----------------------------------------------------------------------------------- the pass


def _check_ops(g: Any, path: str, taken: set[int] | frozenset[int] = frozenset()) -> None:
    """Every op outside the vocabulary, at once (UnsupportedError, one line); the nodes an input
    stage took (`taken`) are read already (a Split there is fine)."""
    bad: dict[str, list[str]] = {}
    for i, n in enumerate(g.node):
        if i in taken:
            continue
        if n.domain in ("", "ai.onnx"):
            ok = n.op_type in LAYER_OPS or n.op_type in FOLDABLE
        else:
            ok = n.domain == AXPY_DOMAIN and n.op_type == "Axpy"
        if not ok:
            key = f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
            bad.setdefault(key, []).append(n.name or (n.output[0] if n.output else "?"))
    if bad:
        parts = []
        for op, names in sorted(bad.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            more = ", ..." if len(names) > MAX_SHOWN else ""
            parts.append(f"{op} x{len(names)} ({', '.join(names[:MAX_SHOWN])}{more})")
        total = sum(len(v) for v in bad.values())
        raise UnsupportedError(
            f"{path}: {total} node{'s' if total > 1 else ''} of {len(bad)} op type{'s' if len(bad) > 1 else ''} "
            f"outside senet-hub's vocabulary: {'; '.join(parts)}; supported: {', '.join(LAYER_OPS)}, "
            f"{AXPY_DOMAIN}::Axpy, constant shape arithmetic ({', '.join(FOLDABLE)}), and on the graph input a "
            f"constant per-channel input stage ({', '.join(PREFIX_OPS)})"
        )


def _node(ctx: Context, n: Any) -> None:
    """One ONNX node: folded when its inputs are constants, else handed to its op's handler."""
    op = n.op_type
    at = node_attrs(n)
    if not n.output or not n.output[0]:
        raise ctx.err(n, "has no output", FormatError)
    for o in n.output[1:]:
        if o and ctx.consumers[o]:
            raise ctx.err(n, f"its second output '{o}' is used (training-mode outputs are not read)")
    if op == "Constant":
        ctx.consts[n.output[0]] = constant_value(n, ctx.path)
        return
    ins_const = [ctx.consts.get(i) if i else None for i in n.input]
    if op == "Shape":
        src = ctx.values.get(n.input[0]) if n.input else None
        if src is None:
            if n.input and n.input[0] in ctx.consts:
                ctx.consts[n.output[0]] = np.asarray(np.shape(ctx.consts[n.input[0]]), np.int64)
                return
            raise ctx.err(n, "reads a value no earlier node makes", ModelError)
        t = ctx.tensor(n, n.input[0])
        ctx.consts[n.output[0]] = shape_value(t.shape, ctx.dynamic_batch, t.dep, at)
        return
    given = [i for i in n.input if i]
    if given and all(i in ctx.consts for i in given) or op in FOLDABLE:
        if not all(i in ctx.consts for i in given):
            raise ctx.err(n, "computes on a run-time tensor; senet-hub folds it only as constant shape arithmetic")
        try:
            val = fold(n, ins_const, at, ctx.path)
        except SenetHubError:
            raise
        except Exception as e:  # numpy: bad axes, shapes or indices in crafted shape arithmetic
            raise ctx.err(n, f"cannot fold its constant inputs ({str(e).splitlines()[0][:160]})", FormatError) from None
        if val is None:
            raise ctx.err(n, "all inputs are constants, but this op is no shape arithmetic senet-hub folds")
        ctx.consts[n.output[0]] = val
        return
    handler = handler_for(n)
    if handler is None:  # _check_ops lets through only handled ops
        raise ctx.err(n, "is not supported")
    try:
        handler(ctx, n, at)
    except (TypeError, ValueError, IndexError, KeyError) as e:
        # an attribute of the wrong kind (a float where ints belong, a missing input) in a crafted
        # or corrupt file: the handlers read the ONNX spec's types, anything else is malformed
        raise ctx.err(n, f"malformed attributes or inputs ({type(e).__name__}: {str(e)[:160]})", FormatError) from None


def _reaching(nodes: list[Node], output: str) -> set[str]:
    by_name = {n.name: n for n in nodes}
    keep: set[str] = set()
    stack = [output]
    while stack:
        v = stack.pop()
        if v in keep or v not in by_name:
            continue
        keep.add(v)
        stack.extend(by_name[v].inputs)
    return keep


def _finish(ctx: Context) -> tuple[Graph, bool]:
    """The canonical graph up to the single output (nodes that do not reach it dropped, said in the
    notes), and whether BatchNormalization was folded into the convolutions."""
    outs = [o.name for o in ctx.g.output]
    if len(outs) != 1:
        raise UnsupportedError(
            f"{ctx.path}: the graph has {len(outs)} outputs ({', '.join(outs)}); senet-hub reads one"
        )
    v = ctx.values.get(outs[0])
    if v is None:
        why = "a constant" if outs[0] in ctx.consts else "not produced by any node"
        raise ModelError(f"{ctx.path}: the graph output '{outs[0]}' is {why}")
    t = ctx.settle(outs[0]) if isinstance(v, Pending) else v
    if t.name == ctx.input_name:
        raise UnsupportedError(f"{ctx.path}: the graph output is its input (no layers)")
    t = ctx.plain(t, "output")
    keep = _reaching(ctx.nodes, t.name)
    dead = [nd.name for nd in ctx.nodes if nd.name not in keep]
    if dead:  # values computed and never read (an extra output's branch): dropped, said in meta
        ctx.notes.append(f"dropped {len(dead)} node(s) that do not reach the output: {', '.join(dead[:3])}")
    nodes = [nd for nd in ctx.nodes if nd.name in keep]
    ctx.weights = {k: v for k, v in ctx.weights.items() if k.rsplit(".", 1)[0] in keep}
    folded_bn = not any(nd.op == "batch_norm" for nd in nodes) and any(nd.op == "conv" for nd in nodes)
    return Graph(nodes, ctx.input_name, tuple(ctx.input_shape), t.name), folded_bn


def _read_graph(proto: Any, path: str, req: tuple[int, int, int, int] | None) -> tuple[Context, Graph, bool]:
    """The pass: constants and the input read, the input stage taken, ops checked, every node in order."""
    ctx = Context(proto, path, req)
    try:
        ctx.read_constants()
        ctx.read_input()
        input_stage(ctx)
    except SenetHubError:
        _check_ops(proto.graph, path)  # ops outside the vocabulary are said first, as they always were
        raise
    _check_ops(proto.graph, path, ctx.skip)
    for i, n in enumerate(ctx.g.node):
        if i not in ctx.skip:
            _node(ctx, n)
    graph, folded_bn = _finish(ctx)
    return ctx, graph, folded_bn


# ------------------------------------------------------------------------------------ entry


def _metadata(proto: Any) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {}
    for p in proto.metadata_props:
        if p.key in ("arch", "input_convention", "class_order"):
            try:
                out[p.key] = json.loads(p.value)
            except ValueError:
                continue
    return out


def _check_opset(proto: Any, path: str) -> int:
    onnx = _onnx()
    versions = {o.domain: o.version for o in proto.opset_import}
    opset = versions.get("", versions.get("ai.onnx"))
    if opset is None:
        raise FormatError(f"{path}: no default-domain opset_import: not a valid ONNX model")
    top = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise UnsupportedError(
            f"{path}: ONNX opset {opset}; senet-hub reads opsets {MIN_OPSET}-{top} (tested 13-21): convert it first "
            f"(python -c \"import onnx, onnx.version_converter as v; onnx.save(v.convert_version(onnx.load('{os.path.basename(path)}'), 17), 'x17.onnx')\")"
        )
    if opset > top:
        raise UnsupportedError(
            f"{path}: ONNX opset {opset} is newer than the installed onnx knows ({top}); upgrade onnx"
        )
    return int(opset)


def _axpy_function_ok(proto: Any) -> None:
    """A model-local org.senet-hub::Axpy must be a * x + y (what canonical axpy computes)."""
    for f in proto.functions:
        if f.domain != AXPY_DOMAIN or f.name != "Axpy":
            continue
        a, x, y = (list(f.input) + ["", "", ""])[:3]
        body = [(nd.op_type, list(nd.input), list(nd.output)) for nd in f.node]
        if len(body) == 2 and len(f.output) == 1 and body[0][0] == "Mul" and body[1][0] == "Add":
            (_, mi, mo), (_, ai, ao) = body
            if sorted(mi) == sorted([a, x]) and sorted(ai) == sorted([mo[0], y]) and ao == list(f.output):
                continue
        raise UnsupportedError(f"model-local function {AXPY_DOMAIN}::Axpy is not a * x + y; senet-hub cannot read it")


def _inline_functions(proto: Any, path: str) -> Any:
    """Model-local functions other than senet-hub's Axpy are expanded into the graph."""
    others = [(f.domain, f.name) for f in proto.functions if not (f.domain == AXPY_DOMAIN and f.name == "Axpy")]
    if not others:
        return proto
    try:
        from onnx import inliner

        return inliner.inline_selected_functions(proto, others, exclude=False)
    except Exception as e:  # the inliner refuses a malformed function
        raise FormatError(f"{path}: cannot expand its model-local functions ({str(e).splitlines()[0][:200]})") from None


def load(onnx: str | os.PathLike, input_shape: str | None = None) -> Model:
    """Read an ONNX file into a validated canonical Model (the ``--from onnx`` reader).

    input_shape: ``"N,C,H,W"`` for a model whose H, W are dynamic where the graph needs them fixed
    (it must agree with the file's static dims). UnsupportedError (exit 6) lists every op outside
    the vocabulary; InputShapeNeeded (exit 2) asks for --input-shape.
    """
    path = os.fspath(onnx)
    req = parse_input_shape(input_shape)
    proto = _read_proto(path)
    opset = _check_opset(proto, path)
    data_files = load_external(proto, path)
    try:
        _axpy_function_ok(proto)
    except UnsupportedError as e:
        raise UnsupportedError(f"{path}: {e}") from None
    proto = _inline_functions(proto, path)
    ctx, graph, folded_bn = _read_graph(proto, path, req)
    written = _metadata(proto)
    conv = written.get("input_convention")
    stage = graph.nodes[0] if graph.nodes and graph.nodes[0].op == "input_norm" else None
    # a foreign model with its preprocessing built in: its input convention is what that stage
    # implements, when that is raw pixels (or a convention) mapped onto a known convention
    implements = stage_convention(stage.attrs, graph.input_shape[-1]) if stage and not isinstance(conv, dict) else None
    if implements:
        conv = implements[0]
        ctx.notes.append(implements[2])
    meta: dict[str, Any] = {
        "arch": "custom",
        "source_format": "onnx",
        "source_files": {"onnx": os.path.basename(path)},
        "source_paths": {"onnx": os.path.abspath(path), **{f"onnx_data{i or ''}": p for i, p in enumerate(data_files)}},
        "input_convention": {"size": graph.input_shape[-1], **conv} if isinstance(conv, dict) else None,
        "class_order": written.get("class_order") if written.get("class_order") not in (None, "unknown") else "unknown",
        "onnx": {
            "opset": opset,
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
            "batch_norm_folded": folded_bn,
            "input_shape": "given by --input-shape"
            if req
            else ("assumed (dynamic H, W)" if ctx.dynamic_hw else "file"),
            "notes": ctx.notes,
        },
    }
    if implements:  # the convention the network behind the stage takes (what a weights-only fold records)
        meta["input_stage_from"] = implements[1]
    if folded_bn:
        ctx.notes.append(
            "no BatchNormalization: folded into the convolutions (torch.onnx.export in eval mode does this), so the "
            "graph is canonical but not a zoo architecture's"
        )
    if ctx.dynamic_hw:
        ctx.notes.append(f"H, W are dynamic in the file and no op depends on them: described at {DEFAULT_SIZE}")
    model = Model(graph, ctx.weights, meta)
    try:
        validate(model)
    except ModelError as e:
        raise ModelError(f"{path}: {e}") from None
    model = recognise(model, not ctx.dynamic_hw)
    if written.get("arch") and model.arch == "custom":
        model.meta["written_from_arch"] = written["arch"]
    return model
