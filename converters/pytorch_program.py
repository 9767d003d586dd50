"""senet-hub's ``.pt2`` (torch.export) and TorchScript ``.pt`` files -> canonical Models, without torch.

A program file does not say which canonical graph it computes (recovering it from the exported
program or the TorchScript code would be a second front end for every op), so senet-hub's writer
(``builders.torch.save``) puts two extra files into the archive, where ``torch.export.save``'s
``extra_files`` and ``torch.jit.save``'s ``_extra_files`` go (``<archive>/extra/``):

* ``senet_hub.json``: the record a ``.pth`` carries (``converters.pth.metadata_record``: arch,
  input convention, class order, input_fold, source hashes);
* ``senet_hub_graph.json``: the canonical graph and meta, in builders.chainer's JSON (the one graph
  serialisation, shared with the Chainer ``.npz``).

``torch.export.load`` / ``torch.jit.load`` ignore them unless asked by name. Reading back, the
graph comes from the JSON and each weight from the archive by its module FQN, which is the
canonical key (builders.torch puts every node with parameters at its dotted canonical path):

* ``.pt2`` (torch 2.13's pt2 archive): ``data/weights/model_weights_config.json`` names, per FQN,
  the raw record (``data/weights/weight_<i>``, the bytes of the tensor's whole untyped storage,
  shared by views of one storage) and its dtype, sizes, strides and storage offset (schema
  ``ScalarType`` / ``Layout`` numbers); the input stage's buffers are non-persistent, so they are
  ``data/constants/tensor_<i>`` in ``model_constants_config.json``. No pickle is read at all
  (``data/sample_inputs/model.pt`` and the program ``models/model.json`` are never opened).
* TorchScript ``.pt``: ``data.pkl`` pickles the module tree as ``__torch__.*`` objects whose state
  dicts hold submodules, tensors (torch.save's persistent storages) and flags (``training``). It
  is read with ``pytorch_format``'s restricted unpickler plus one inert stand-in for every
  ``__torch__`` class (takes no constructor arguments, keeps a dict state, runs nothing): any other
  global, ``os.system`` included, is refused before anything is called (exit 4).

Every FQN must be accounted for: a node's parameter (shape as the graph says, floating point),
BatchNorm's ``num_batches_tracked`` (ignored), or an input_norm stage's ``perm`` / ``scale`` /
``shift`` (which must equal the graph's constants); a missing or extra tensor, a wrong shape or
stage is a ModelError (exit 5): the record does not describe these weights. A program file
without senet-hub's record (someone else's ``torch.export.save`` / ``torch.jit.save``) is refused
with one line (exit 4): its graph is not recovered, and its ``state_dict()`` saved with
``torch.save`` is the file to pass. The graph is the record's: a program edited after senet-hub
wrote it is read as its record says (the record is what senet-hub vouches for).
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from senet_hub.errors import FormatError, ModelError, SenetHubError

from .pytorch_format import (
    _STORAGE_TYPES,
    PICKLE_LIMIT,
    Refused,
    Storage,
    TensorRef,
    TorchArchive,
    _Unpickler,
    materialise,
)

if TYPE_CHECKING:
    from senet_hub.graph import Graph, Model

RECORD_NAME = "senet_hub.json"  # the .pth record (converters.pth.metadata_record), as an extra file
GRAPH_NAME = "senet_hub_graph.json"  # the canonical graph + meta (builders.chainer's graph JSON)
EXTRA_DIR = "extra/"  # where torch.export.save's extra_files and torch.jit.save's _extra_files go
RECORD_LIMIT = 1 << 20  # the record is a few hundred bytes
GRAPH_LIMIT = 32 << 20  # SENet-154's graph JSON is well under 1 MB
CONFIG_LIMIT = 64 << 20  # a weights config is ~300 bytes per tensor
MAX_DEPTH = 64  # module nesting of a TorchScript pickle (canonical names have a handful of parts)
WHAT = "PyTorch program file"
PT2_WEIGHTS = "data/weights/model_weights_config.json"  # torch.export.save's one model is "model"
PT2_CONSTANTS = "data/constants/model_constants_config.json"
STAGE_BUFFERS = ("perm", "scale", "shift")  # builders.torch.InputNorm's non-persistent buffers
# torch._export.serde.schema.ScalarType -> pytorch_format's storage type (same bytes per element)
SCALAR_TYPES = {1: "ByteStorage", 2: "CharStorage", 3: "ShortStorage", 4: "IntStorage", 5: "LongStorage",
                6: "HalfStorage", 7: "FloatStorage", 8: "DoubleStorage", 12: "BoolStorage", 13: "BFloat16Storage"}  # fmt: skip
STRIDED = 7  # schema Layout.Strided
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,200}")


# ------------------------------------------------------------------------------------------ writing


def extra_files(model: Model) -> dict[str, str]:
    """The extra files builders.torch.save puts into a .pt2 / .pt: the record and the graph (JSON text;
    the same model gives the same text, so a .pt2's bytes stay reproducible)."""
    from senet_hub.graph import graph_to_json

    from .pth import metadata_record

    record = json.dumps(metadata_record(model), sort_keys=True, default=str)
    return {RECORD_NAME: record, GRAPH_NAME: graph_to_json(model.graph, model.meta)}


# ------------------------------------------------------------------------------------------ layout


def _layout(names: list[str]) -> tuple[str, str] | None:
    """("pt2" | "torchscript", archive prefix) when the zip's members are a program archive's."""
    for n in names:
        if n.count("/") == 1 and n.endswith("/archive_format"):
            return "pt2", n[: -len("archive_format")]
    for n in names:
        if n.count("/") == 1 and n.endswith("/constants.pkl"):
            return "torchscript", n[: -len("constants.pkl")]
    return None


def is_program(path: str | os.PathLike) -> bool:
    """Whether `path` is a .pt2 / TorchScript archive (by its members; a .pt2 name whose zip is
    unreadable too, so that a truncated .pt2 is reported as one). False when it cannot be opened:
    the state_dict reader then says why."""
    from .wire import open_regular

    try:
        f, _ = open_regular(path, WHAT)
    except SenetHubError:
        return False
    with f:
        if f.read(4) != b"PK\x03\x04":
            return False
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as zf:
                return _layout(zf.namelist()) is not None
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
            return os.fspath(path).lower().endswith(".pt2")


class _Archive(TorchArchive):
    """A program archive: TorchArchive's record reading (sizes checked, stored records only), with
    the program layout in place of torch.save's (which TorchArchive refuses by design)."""

    def __init__(self, f: io.BufferedReader, size: int, path: str):
        names = self._open_zip(f, size, path, ".pt2 / TorchScript archive", "truncated or corrupt? write it again")
        found = _layout(names)
        if found is None:
            raise FormatError(f"{path}: a zip file, but neither a torch.export .pt2 nor a TorchScript archive")
        self.kind, self.prefix = found
        self.names = set(names)
        order = self.small(self.prefix + "byteorder", 16) if self.prefix + "byteorder" in self.names else b"little"
        if order not in (b"little", b"big"):
            raise FormatError(f"{path}: unknown byteorder record {order[:16]!r}")
        self.big_endian = order == b"big"

    def text(self, name: str, limit: int) -> str:
        try:
            return self.small(self.prefix + name, limit).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{self.path}: {self.prefix}{name} is not UTF-8 text; the file is damaged") from None


# ------------------------------------------------------------------------------ the record and graph


def _refuse_foreign(arc: _Archive) -> FormatError:
    if arc.kind == "pt2":
        what, fix = (
            "a torch.export program (.pt2)",
            "torch.save(model.state_dict(), 'sd.pth') of the model you exported (or of torch.export.load(f).module())",
        )
    else:
        what, fix = "a TorchScript module (torch.jit.save)", "torch.save(torch.jit.load(f).state_dict(), 'sd.pth')"
    return FormatError(
        f"{arc.path}: {what} without senet-hub's record ({arc.prefix}{EXTRA_DIR}{GRAPH_NAME}): the program's graph "
        f"is not recovered (only the .pt2/.pt files senet-hub writes are read back); save its weights with "
        f"{fix} and pass that"
    )


def _record_and_graph(arc: _Archive) -> tuple[dict[str, Any], Graph, dict[str, Any]]:
    from senet_hub.graph import read_graph

    have = [n for n in (RECORD_NAME, GRAPH_NAME) if arc.prefix + EXTRA_DIR + n in arc.names]
    if not have:
        raise _refuse_foreign(arc)
    if len(have) == 1:
        gone = GRAPH_NAME if have[0] == RECORD_NAME else RECORD_NAME
        raise FormatError(
            f"{arc.path}: has {arc.prefix}{EXTRA_DIR}{have[0]} but no {gone}; the file is damaged: write it again "
            "with senet-hub"
        )
    fix = "write the file again with senet-hub"
    try:
        record = json.loads(arc.text(EXTRA_DIR + RECORD_NAME, RECORD_LIMIT))
    except (ValueError, RecursionError):
        record = None
    if not isinstance(record, dict) or record.get("format") != "senet-hub":
        raise FormatError(f"{arc.path}: {arc.prefix}{EXTRA_DIR}{RECORD_NAME} is not a senet-hub record; {fix}")
    graph, meta = read_graph(
        arc.text(EXTRA_DIR + GRAPH_NAME, GRAPH_LIMIT), f"{arc.path}: {arc.prefix}{EXTRA_DIR}{GRAPH_NAME}", fix
    )
    return record, graph, meta


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


# --------------------------------------------------------------------------------- .pt2 weights


def _ints(v: Any, what: str) -> list[int]:
    if not isinstance(v, list) or len(v) > 32:
        raise TypeError(f"{what} is not a list of dimensions")
    return [_int(d, what) for d in v]


def _int(d: Any, what: str) -> int:
    # a concrete dimension is {"as_int": n}; a symbolic one ({"as_expr": ...}) is no weight's
    if not (isinstance(d, dict) and type(d.get("as_int")) is int and d["as_int"] >= 0):
        raise TypeError(f"{what} holds {str(d)[:60]}, not a non-negative integer")
    return int(d["as_int"])


def _pt2_tensors(arc: _Archive) -> dict[str, TensorRef]:
    """{FQN: TensorRef} of the program's weights and constants (no data read)."""
    out: dict[str, TensorRef] = {}
    storages: dict[str, Storage] = {}
    for config, directory in ((PT2_WEIGHTS, "weights"), (PT2_CONSTANTS, "constants")):
        if arc.prefix + config not in arc.names:
            if config == PT2_WEIGHTS:
                raise FormatError(f"{arc.path}: no {arc.prefix}{config}; not a .pt2 that torch.export.save wrote")
            continue
        try:
            entries = json.loads(arc.text(config, CONFIG_LIMIT))["config"]
            if not isinstance(entries, dict):
                raise TypeError("config is not an object")
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            raise FormatError(
                f"{arc.path}: {arc.prefix}{config} is not a pt2 payload config ({_first_line(e)})"
            ) from None
        for fqn, entry in entries.items():
            try:
                out[fqn] = _pt2_ref(arc, fqn, entry, directory, storages)
            except (TypeError, KeyError) as e:
                raise FormatError(
                    f"{arc.path}: {config}: entry {fqn[:200]!r} is malformed ({_first_line(e)})"
                ) from None
    return out


def _pt2_ref(arc: _Archive, fqn: str, entry: Any, directory: str, storages: dict[str, Storage]) -> TensorRef:
    if not isinstance(entry, dict):
        raise TypeError("not an object")
    if entry.get("use_pickle") is not False:
        # torch pickles tensor subclasses (torch.save of the tensor): senet-hub's modules hold none
        raise TypeError("a pickled tensor (a tensor subclass), which senet-hub never writes")
    name, meta = entry["path_name"], entry["tensor_meta"]
    if not (isinstance(name, str) and _NAME.fullmatch(name)) or not isinstance(meta, dict):
        raise TypeError("path_name or tensor_meta is invalid")
    if meta.get("layout") != STRIDED:
        raise TypeError(f"layout {str(meta.get('layout'))[:20]} is not strided")
    stype = _STORAGE_TYPES[SCALAR_TYPES[meta["dtype"]]] if meta.get("dtype") in SCALAR_TYPES else None
    if stype is None:
        raise TypeError(f"dtype {str(meta.get('dtype'))[:20]} has no numpy type here")
    key = f"{directory}/{name}"
    s = storages.get(key)
    if s is None:
        size = arc._info(arc.prefix + "data/" + key).file_size
        item = 2 if stype.dtype == "bf16" else np.dtype(stype.dtype).itemsize
        if size % item:
            raise TypeError(f"record {key} holds {size} bytes, not a whole number of {item}-byte elements")
        s = storages[key] = Storage(key, stype, size // item)
    elif s.stype is not stype:  # one untyped storage viewed as two dtypes: materialise caches per storage
        raise TypeError(f"record {key} is shared by tensors of different dtypes")
    sizes, strides = _ints(meta["sizes"], "sizes"), _ints(meta["strides"], "strides")
    return TensorRef(s, _int(meta["storage_offset"], "storage_offset"), tuple(sizes), tuple(strides))


# --------------------------------------------------------------------------- TorchScript weights


class _ScriptObject:
    """Stands in for every ``__torch__.*`` class of a TorchScript pickle (a module of the tree):
    made without arguments, keeps the dict its BUILD opcode gives, runs nothing."""

    __slots__ = ("state",)

    def __new__(cls, *args: Any) -> _ScriptObject:
        if args:
            raise TypeError("a TorchScript object is made with arguments; torch.jit.save never does that")
        self = super().__new__(cls)
        self.state = {}
        return self

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"a TorchScript object's state is a {type(state).__name__}, not a dict")
        self.state = state


class _ScriptUnpickler(_Unpickler):
    """pytorch_format's restricted unpickler; ``__torch__`` classes (TorchScript's own module
    classes, compiled from the archive's code/ that is never run here) become _ScriptObject."""

    def find_class(self, module: str, name: str) -> Any:
        if isinstance(module, str) and (module == "__torch__" or module.startswith("__torch__.")):
            return _ScriptObject
        return super().find_class(module, name)


def _script_tensors(arc: _Archive) -> dict[str, TensorRef]:
    data = arc.small(arc.prefix + "data.pkl", PICKLE_LIMIT)
    try:
        root = _ScriptUnpickler(data).load()
    except Refused as e:
        raise FormatError(
            f"{arc.path}: its data.pkl calls {e}, which no TorchScript module senet-hub writes needs: refused, "
            "nothing was run"
        ) from None
    except Exception as e:  # noqa: BLE001 - any failure of an untrusted pickle is a format error
        raise FormatError(
            f"{arc.path}: data.pkl is not a TorchScript module pickle ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(root, _ScriptObject):
        raise FormatError(f"{arc.path}: data.pkl holds a {type(root).__name__}, not a TorchScript module")
    out: dict[str, TensorRef] = {}
    seen: set[int] = set()
    todo: list[tuple[str, _ScriptObject, int]] = [("", root, 0)]
    while todo:
        prefix, obj, depth = todo.pop()
        if id(obj) in seen or depth > MAX_DEPTH:  # a crafted pickle can share or nest objects endlessly
            raise FormatError(f"{arc.path}: data.pkl's module tree repeats or nests a module at {prefix[:200]!r}")
        seen.add(id(obj))
        for k, v in obj.state.items():
            if not isinstance(k, str):
                raise FormatError(f"{arc.path}: data.pkl names an attribute {str(k)[:40]!r}, not a string")
            if isinstance(v, _ScriptObject):
                todo.append((f"{prefix}{k}.", v, depth + 1))
            elif isinstance(v, TensorRef):
                out[prefix + k] = v
            # flags (training, hooks) are no weights; anything else was refused by the unpickler
    return out


# ------------------------------------------------------------------------------------------ mapping


def _weights(arc: _Archive, graph: Graph, refs: dict[str, TensorRef]) -> tuple[dict[str, np.ndarray], set[str], int]:
    """{canonical key: float32 array}, the dtypes in the file and the count of ignored entries
    (num_batches_tracked); every FQN is checked against the graph (ModelError otherwise)."""
    from senet_hub import zoo

    path = arc.path
    try:
        shapes = zoo.graph_param_shapes(graph)
    except (SenetHubError, KeyError, ValueError, TypeError, IndexError) as e:  # a hand-edited graph
        raise ModelError(f"{path}: the stored graph is inconsistent: {_first_line(e)}") from None
    missing = [k for k in shapes if k not in refs]
    if missing:
        raise ModelError(
            f"{path}: the program has no tensor {missing[0]} ({len(missing)} of the recorded graph's parameters "
            "missing): its record does not describe these weights; write the file again with senet-hub"
        )
    bns = {n.name for n in graph.nodes if n.op == "batch_norm"}
    stages = {f"{n.name}.{b}": n for n in graph.nodes if n.op == "input_norm" for b in STAGE_BUFFERS}
    ignored = [k for k in refs if k.endswith(".num_batches_tracked") and k[: -len(".num_batches_tracked")] in bns]
    extra = [k for k in refs if k not in shapes and k not in stages and k not in ignored]
    if extra:
        raise ModelError(
            f"{path}: {len(extra)} tensors of the program are no parameter of the recorded graph, first: "
            f"{extra[0][:200]}; its record does not describe these weights"
        )
    cache: dict[str, np.ndarray] = {}
    weights: dict[str, np.ndarray] = {}
    dtypes: set[str] = set()
    for k, want in shapes.items():
        t = refs[k]
        if tuple(t.size) != tuple(want):
            raise ModelError(
                f"{path}: {k} has shape {list(t.size)} in the program, the recorded graph needs {list(want)}"
            )
        a = materialise(arc, t, k, cache)
        if a.dtype.kind != "f":
            raise ModelError(f"{path}: {k} has dtype {a.dtype}, expected a floating-point tensor")
        dtypes.add("bfloat16" if t.storage.stype.dtype == "bf16" else str(a.dtype))
        weights[k] = a.astype(np.float32, copy=False)
    for k, node in stages.items():
        _check_stage(arc, k, node, refs.get(k), cache)
    return weights, dtypes, len(ignored)


def _check_stage(arc: _Archive, key: str, node: Any, ref: TensorRef | None, cache: dict[str, np.ndarray]) -> None:
    """The program's input stage computes the recorded graph's input_norm: same perm, scale, shift."""
    part = key.rsplit(".", 1)[1]
    want = np.asarray(node.attrs[part], np.int64 if part == "perm" else np.float32).reshape(-1)
    got = None if ref is None else materialise(arc, ref, key, cache).reshape(-1)
    if got is None or got.shape != want.shape or not np.array_equal(got.astype(want.dtype), want):
        what = "has no tensor" if got is None else "holds other constants than"
        raise ModelError(
            f"{arc.path}: the program's input stage {key} {what} the recorded graph's input_norm "
            f"'{node.name}'; its record does not describe this program"
        )


# ------------------------------------------------------------------------------------------ reading


def _arch_id(name: str) -> str:
    from senet_hub import zoo

    return name if zoo.is_arch(name) else zoo.resolve_arch(name, prefer=("timm", "caffe", "mindcv"))


def load(path: str | os.PathLike, arch: str | None = None) -> Model:
    """Read a .pt2 / TorchScript .pt senet-hub wrote into a validated canonical Model (graph and meta
    from its record, weights bit for bit); a program without the record is refused (FormatError)."""
    from senet_hub.graph import Model, validate

    from .wire import check_unchanged, open_regular

    path = os.fspath(path)
    f, st = open_regular(path, WHAT)
    arc: _Archive | None = None
    try:
        arc = _Archive(f, st.st_size, path)
        record, graph, meta = _record_and_graph(arc)
        recorded = record.get("arch") or meta.get("arch")
        if arch is not None and _arch_id(arch) != recorded:
            raise ModelError(
                f"{path}: holds {recorded or 'a custom graph'}, not {arch} (its graph is recorded in the file); "
                "leave out --arch"
            )
        refs = _pt2_tensors(arc) if arc.kind == "pt2" else _script_tensors(arc)
        weights, dtypes, ignored = _weights(arc, graph, refs)
        check_unchanged(path, f, st, WHAT)
    finally:
        if arc is not None:
            arc.zf.close()
        f.close()
    # the stored meta minus where it came from before (this file is the source now); the record's
    # fields are what senet-hub vouches for in every weights file
    meta = {k: v for k, v in meta.items() if not k.startswith("source_")}
    for k in ("arch", "input_convention", "class_order", "input_fold"):
        if record.get(k) is not None:
            meta[k] = record[k]
    meta.update(
        source_format="pytorch",
        source_container=arc.kind,
        source_files={"weights": os.path.basename(path)},
        source_paths={"weights": os.path.abspath(path)},
        source_dtype=sorted(dtypes),
        ignored_entries=ignored,
    )
    model = Model(graph, weights, meta)
    validate(model)
    return model
