"""MindSpore ``.ckpt`` checkpoints of MindCV networks <-> canonical Models: the name mapping, reading
and writing. The file format itself (``read_ckpt_tensors`` / ``write_ckpt_tensors``, no MindSpore
needed) is ``mindspore_format``; its names are importable from here too.

Names: the canonical graph of a MindCV architecture (``senet_hub.zoo.expand``, family mindcv) keeps
each parametrised node's MindCV cell in ``node.source[0]``; the mapping is derived from it:

    conv            <cell>.weight (O, I, kh, kw)                     canonical <node>.weight
    SE Dense        <cell>.weight (O, I)  <-> (O, I, 1, 1), .bias      (se_module.conv_reduce/expand)
    batch_norm      <cell>.gamma / beta / moving_mean / moving_variance
                    <-> weight / bias / running_mean / running_var
    classifier      Dense (classes, features) <-> linear, same layout

Checkpoint entries outside the network (optimizer moments, ``learning_rate``, ``global_step``,
``epoch_num`` ...) are ignored (counted in ``meta["ignored_entries"]``); a ``network.`` /
``backbone.`` style wrapper prefix is stripped when the bare names are absent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from senet_hub.errors import FormatError, ModelError, SenetHubError

from . import recognize

if TYPE_CHECKING:
    from senet_hub.graph import Graph, Model

# the file format, importable from here as before the split
from .mindspore_format import (  # noqa: F401
    CKPT_DTYPES,
    CRC_MARK,
    CRC_TRAILER,
    MAX_DIMS,
    NP_TO_CKPT,
    SLICE_BYTES,
    _encode,
    _ld,
    _varint,
    read_ckpt_tensors,
    write_ckpt_tensors,
)

# top-level MindCV SENet cells: checkpoint entries under them belong to the network
NET_ROOTS = ("layer0", "pool0", "layer1", "layer2", "layer3", "layer4", "pool", "dropout", "classifier")
WRAPPER_PREFIXES = ("network.", "backbone.", "_backbone.", "net.", "model.", "network.backbone.", "network._backbone.")
BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
DENSE_CELLS = ("se_module.conv_reduce", "se_module.conv_expand")

# ------------------------------------------------------------------------------- name mapping


def mindcv_names(graph: Graph) -> list[tuple[str, str, str]]:
    """[(canonical key, MindCV key, kind)] in MindCV's parameter order; kind: "same" | "dense"."""
    out = []
    for n in graph.nodes:
        params = n.param_names()
        if not params:
            continue
        if not n.source:
            raise ModelError(f"node '{n.name}' has no MindCV source name")
        cell = n.source[0]
        dense = n.op == "conv" and cell.endswith(DENSE_CELLS)
        if n.op == "batch_norm":
            for p in ("running_mean", "running_var", "weight", "bias"):  # MindSpore's BN order
                out.append((f"{n.name}.{p}", f"{cell}.{BN_NAMES[p]}", "same"))
        else:
            for p in params:
                out.append((f"{n.name}.{p}", f"{cell}.{p}", "dense" if dense and p == "weight" else "same"))
    return out


def generic_names(graph: Graph) -> list[tuple[str, str]]:
    """(canonical key, MindSpore-style key) for any graph: BN params get MindSpore's names."""
    out = []
    for n in graph.nodes:
        if n.op == "batch_norm":  # in MindSpore's order
            out += [
                (f"{n.name}.{p}", f"{n.name}.{BN_NAMES[p]}") for p in ("running_mean", "running_var", "weight", "bias")
            ]
        else:
            out += [(f"{n.name}.{p}", f"{n.name}.{p}") for p in n.param_names()]
    return out


def _network_entries(tensors: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Split entries into the network's (wrapper prefix stripped) and the rest."""

    def is_net(k: str) -> bool:
        return k.split(".", 1)[0] in NET_ROOTS

    if not any(is_net(k) for k in tensors):
        for pre in sorted(WRAPPER_PREFIXES, key=len, reverse=True):
            if any(k.startswith(pre) and is_net(k[len(pre) :]) for k in tensors):
                tensors = {(k[len(pre) :] if k.startswith(pre) else k): v for k, v in tensors.items()}
                break
    net = {k: v for k, v in tensors.items() if is_net(k) and v.dtype.kind != "U"}
    return net, [k for k in tensors if k not in net]


def _expected(arch: str, num_classes: int | None) -> tuple[Any, dict[str, tuple[str, tuple[int, ...], str]]]:
    from senet_hub import zoo

    g = zoo.expand(arch, num_classes)
    shapes = zoo.graph_param_shapes(g)
    exp = {}
    for ck, mk, kind in mindcv_names(g):
        shp = shapes[ck]
        exp[mk] = (ck, shp[:2] if kind == "dense" else shp, kind)
    return g, exp


def _num_classes(net: dict[str, np.ndarray]) -> int | None:
    w = net.get("classifier.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else None


def _expected_shapes(net: dict[str, np.ndarray], arch: str) -> dict[str, tuple[int, ...]]:
    """{MindCV key: shape} of `arch`, with the head width of these entries."""
    return {mk: shp for mk, (_, shp, _) in _expected(arch, _num_classes(net))[1].items()}


def mismatches(net: dict[str, np.ndarray], arch: str) -> list[str]:
    """What keeps these MindCV entries from being `arch` (empty list = they fit exactly)."""
    return recognize.mismatches({k: tuple(v.shape) for k, v in net.items()}, _expected_shapes(net, arch))


def _summary(problems: list[str], n: int = 4) -> str:
    return recognize.summary(problems, n)


def infer_arch(tensors: dict[str, np.ndarray]) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """The MindCV architecture the entries fit exactly (None unless exactly one), and every
    candidate's mismatches, best first (converters.recognize: the rule every weights-only source uses)."""
    from senet_hub import zoo

    net, _ = _network_entries(tensors)
    got = {k: tuple(v.shape) for k, v in net.items()}
    scored = recognize.rank(got, zoo.list_archs("mindcv"), lambda a: _expected_shapes(net, a))
    arch, _ = recognize.choose(scored)
    return arch, scored


def from_mindcv(tensors: dict[str, np.ndarray], arch: str, path: str = "<tensors>") -> Model:
    """Canonical Model of MindCV `arch` from checkpoint entries (MindCV names)."""
    from senet_hub import zoo
    from senet_hub.graph import Model, validate

    if not zoo.is_arch(arch, "mindcv"):
        try:  # another spelling of a MindCV arch (mindcv/seresnet50); the MindCV family first on a tie
            resolved = zoo.resolve_arch(arch, prefer=("mindcv",))
        except SenetHubError:
            resolved = arch
        if not zoo.is_arch(resolved, "mindcv"):
            raise SenetHubError(
                f"unknown MindCV architecture '{arch}'; choose one of {', '.join(zoo.list_archs('mindcv'))}"
            )
        arch = resolved
    net, other = _network_entries(tensors)
    problems = mismatches(net, arch)
    if problems:
        fits, _ = infer_arch(tensors)
        hint = f" (it fits {fits}: pass --arch {fits} or omit --arch)" if fits else ""
        raise ModelError(f"{path}: does not fit {arch}{hint}: {len(problems)} mismatches: {_summary(problems)}")
    ncls = _num_classes(net)
    graph, exp = _expected(arch, ncls)
    weights: dict[str, np.ndarray] = {}
    dtypes = set()
    for mk, (ck, _, kind) in exp.items():
        a = net[mk]
        dtypes.add(str(a.dtype))
        if a.dtype.kind != "f":
            raise ModelError(f"{path}: {mk} has dtype {a.dtype}, expected a float tensor")
        a = a.astype(np.float32, copy=False)
        weights[ck] = a.reshape(*a.shape, 1, 1) if kind == "dense" else a
    meta = {
        **zoo.meta(arch, ncls),
        "source_format": "mindspore",
        "source_files": {"ckpt": os.path.basename(path)},
        "source_paths": {"ckpt": os.path.abspath(path)} if os.path.exists(path) else {},
        "source_dtype": sorted(dtypes),
        "ignored_entries": len(other),
    }
    record = _record(tensors.get(METADATA_TAG))
    if record:  # written by senet-hub: the convention and class order folded into the weights
        for k in ("input_convention", "class_order", "input_fold"):
            if record.get(k):
                meta[k] = record[k]
    model = Model(graph, weights, meta)
    validate(model)
    return model


def load_ckpt(path: str | os.PathLike, arch: str | None = None) -> Model:
    """Read a MindCV SENet checkpoint into a validated canonical Model.

    Without `arch` the architecture is inferred when exactly one MindCV SENet fits the
    checkpoint's names and shapes; otherwise a one-line error asks for --arch.
    """
    from senet_hub import zoo

    path = os.fspath(path)
    tensors = read_ckpt_tensors(path)
    record = _record(tensors.get(METADATA_TAG), path)
    named = arch if arch is not None else (record or {}).get("arch")
    if isinstance(named, str):
        try:
            resolved = zoo.resolve_arch(named, prefer=("mindcv",))
        except SenetHubError:
            resolved = None
        if resolved is not None and not zoo.is_arch(resolved, "mindcv"):
            # what save_ckpt writes for any other architecture: canonical names, MindSpore's BN names
            return _from_generic(tensors, resolved, path, record)
    if arch is None:
        arch, scored = infer_arch(tensors)
        if arch is None:
            fits = [a for a, m in scored if not m]
            if fits:
                raise ModelError(f"{path}: fits several architectures ({', '.join(fits)}); pass --arch")
            best, probs = scored[0]
            raise ModelError(
                f"{path}: not one of the MindCV SENets ({', '.join(a for a, _ in scored)}); closest is {best} "
                f"with {len(probs)} mismatches: {_summary(probs, 3)}; pass --arch to see its full check"
            )
    return from_mindcv(tensors, arch, path)


def _from_generic(tensors: dict[str, np.ndarray], arch: str, path: str, record: dict | None) -> Model:
    """A zoo architecture that is not MindCV's, from the names save_ckpt gives it (generic_names)."""
    from senet_hub import zoo
    from senet_hub.graph import Model, validate

    graph = zoo.expand(arch)
    linears = [n.name for n in graph.nodes if n.op == "linear"]
    head = tensors.get(f"{linears[-1]}.weight") if linears else None
    ncls = int(head.shape[0]) if head is not None and head.ndim == 2 else None
    if ncls is not None and ncls != zoo.description(arch).get("num_classes"):
        graph = zoo.expand(arch, ncls)
    names = generic_names(graph)
    shapes = zoo.graph_param_shapes(graph)
    roots = {mk.split(".", 1)[0] for _, mk in names}  # the graph's top-level cells; the rest is not the net's
    net = {k: v for k, v in tensors.items() if k.split(".", 1)[0] in roots and v.dtype.kind != "U"}
    other = [k for k in tensors if k not in net]
    problems = recognize.mismatches({k: tuple(v.shape) for k, v in net.items()}, {mk: shapes[ck] for ck, mk in names})
    if problems:
        raise ModelError(f"{path}: does not fit {arch}: {len(problems)} mismatches: {_summary(problems)}")
    weights: dict[str, np.ndarray] = {}
    for ck, mk in names:
        if net[mk].dtype.kind != "f":
            raise ModelError(f"{path}: {mk} has dtype {net[mk].dtype}, expected a float tensor")
        weights[ck] = net[mk].astype(np.float32, copy=False)
    meta = {
        **zoo.meta(arch, ncls),
        "source_format": "mindspore",
        "source_files": {"ckpt": os.path.basename(path)},
        "source_paths": {"ckpt": os.path.abspath(path)} if os.path.exists(path) else {},
        "source_dtype": sorted({str(net[mk].dtype) for _, mk in names}),
        "ignored_entries": len(other),
    }
    for k in ("input_convention", "class_order", "input_fold"):
        if record and record.get(k):
            meta[k] = record[k]
    model = Model(graph, weights, meta)
    validate(model)
    return model


def to_mindcv(model: Model) -> dict[str, np.ndarray]:
    """MindCV-named float32 tensors of a model of a MindCV architecture, in MindCV's order."""
    from senet_hub import zoo
    from senet_hub.graph import infer_shapes, structure

    arch = model.arch
    ncls = model.graph.node(model.graph.output).attrs.get("out_features") if model.graph.output else None
    ref = zoo.expand(arch, ncls, model.graph.input_shape[-1])
    got, want = structure(model.graph), structure(ref)
    if got != want or [n.name for n in model.graph.nodes] != [n.name for n in ref.nodes]:
        for i, (a, b) in enumerate(
            zip(model.graph.nodes + [None] * len(ref.nodes), ref.nodes + [None] * len(model.graph.nodes))
        ):
            if a is None or b is None or a.name != b.name or got[i] != want[i]:
                what = f"node '{a.name}' ({a.op})" if a is not None else "the end of the graph"
                exp = f"'{b.name}' ({b.op})" if b is not None else "nothing"
                hint = (
                    " (input_norm: change the input convention back to mindcv first)"
                    if a is not None and a.op == "input_norm"
                    else ""
                )
                raise ModelError(
                    f"{arch}: the model's graph is not MindCV's {arch}: {what} where MindCV has {exp}{hint}"
                )
    infer_shapes(model)
    out: dict[str, np.ndarray] = {}
    for ck, mk, kind in mindcv_names(model.graph):
        arr = np.asarray(model.weights[ck], np.float32)
        out[mk] = arr.reshape(arr.shape[:2]) if kind == "dense" else arr
    return out


def notes(model: Model, say: Callable[[str], None]) -> None:
    """Before a .ckpt is written: say where it loads when its architecture is not a MindCV one
    (the file is still exact and senet-hub reads it back, but mindcv.create_model has no such net)."""
    from senet_hub import zoo

    if zoo.is_arch(model.arch, "mindcv"):
        return
    say(
        f"note: {model.arch} is not a MindCV architecture: the .ckpt holds its weights under senet-hub's "
        "canonical names (MindSpore BatchNorm names); senet-hub reads it back (--from mindspore --ckpt), "
        "mindcv.create_model has no model that loads it"
    )


METADATA_TAG = "senet_hub_metadata"  # a "str" entry: MindSpore loads it as a str, load_param_into_net skips it


def save_ckpt(model: Model, path: str | os.PathLike, crc: bool = False, metadata: dict | None = None) -> str:
    """Write a model as a MindSpore .ckpt; returns the path.

    A model of a MindCV architecture gets MindCV's names (``mindcv.create_model(arch)`` +
    ``load_param_into_net`` loads it with nothing missing or unexpected). Any other model gets
    its canonical names with MindSpore's BatchNorm parameter names (``gamma``, ``beta``,
    ``moving_mean``, ``moving_variance``), for a MindSpore network whose cells sit at the
    canonical paths.

    A checkpoint holds only parameters, so a graph with an input_norm stage is refused (fold it
    first: senet_hub.sources.save_model does). `metadata` (senet_hub.converters.pth.metadata_record) is
    stored as one string entry, ``senet_hub_metadata`` (JSON), last: MindSpore's load_checkpoint
    returns it as a str and load_param_into_net leaves it out; read it with read_metadata.
    """
    from senet_hub import zoo
    from senet_hub.graph import infer_shapes

    from .pth import check_weights_only

    if zoo.is_arch(model.arch, "mindcv"):
        tensors = to_mindcv(model)  # refuses any graph that is not MindCV's, an input stage included
    else:
        check_weights_only(model, "a MindSpore checkpoint")
        infer_shapes(model)
        tensors = {mk: np.asarray(model.weights[ck], np.float32) for ck, mk in generic_names(model.graph)}
    if metadata is not None:
        tensors[METADATA_TAG] = np.array(json.dumps(metadata, sort_keys=True, default=str))
    return write_ckpt_tensors(tensors, path, crc=crc)


def read_metadata(path: str | os.PathLike) -> dict | None:
    """The senet-hub record of a .ckpt (see save_ckpt), or None when it has none."""
    return _record(read_ckpt_tensors(path).get(METADATA_TAG), os.fspath(path))


def _record(entry: np.ndarray | None, path: str = "<tensors>") -> dict | None:
    if entry is None or entry.dtype.kind != "U":
        return None
    try:
        data = json.loads(str(entry.reshape(-1)[0]) if entry.size else "")
    except ValueError as e:
        raise FormatError(f"{path}: unreadable {METADATA_TAG} entry ({e}); rewrite the file") from None
    return data if isinstance(data, dict) and data.get("format") == "senet-hub" else None
