"""MXNet ``-symbol.json`` + ``-NNNN.params`` -> canonical Model, without MXNet.

The ``.params`` file is ``mx.nd.save``'s NDArray list, read here by hand (little-endian):
``u64 0x112`` (list magic), ``u64`` reserved, ``u64`` count, then per array ``u32`` magic
(0xF993FAC9, NDArray v2; 0xF993FACA, v3), ``i32`` storage type (0: dense; sparse is refused),
``u32`` ndim (v3: ``i32``), ``i64`` dims, ``i32`` device type, ``i32`` device id, ``i32`` dtype
flag, the raw data; then ``u64`` count of names, each ``u64`` length + bytes (``arg:``/``aux:``).
Every count and length is checked against the bytes left before anything is allocated.

senet-hub's record: ``builders.mxnet.save`` puts ``builders.mxnet.record(model)`` into the symbol, as the attribute
``__senet_hub__`` of the input variable (MXNet keeps attributes named ``__x__`` through ``mx.sym.load``,
``gluon.SymbolBlock.imports`` and ``mx.mod.Module``, and no operator reads this one). It is what
``converters.pth.metadata_record`` records (arch, input convention, class order, input_fold, source
hashes) plus the canonical graph and meta as builders.chainer's graph JSON (the one graph
serialisation, shared with the Chainer ``.npz``, ``.pt2`` and ``.keras`` records). A symbol with the
record is read exactly, for any graph: the graph and meta from the record, every weight from the
params by the name builders.mxnet gives it (float32 bits unchanged). The files are cross-checked
against the record, and any disagreement is a ModelError (exit 5, the record does not describe
these files): the symbol must be what builders.mxnet makes of the graph (node names, output,
convolution / pooling / batch-norm attributes: ``symbol_mismatches``), the params must hold exactly
the graph's weights with its shapes, and an input stage's constants (``<node>_scale`` /
``_shift``, 1 x C x 1 x 1) must equal the record's convention bit for bit. A damaged record is a
FormatError (exit 4). ``load_prefix`` (the CLI) also takes the record from the ``-symbol.json``
beside ``<prefix>-NNNN.params`` when ``--symbol`` is not given and that file carries one.

Without a record (MXNet files written by someone else, or by senet-hub before the record): parameter
names are ``<node>_weight``/``_bias``/``_gamma``/``_beta``/``_moving_mean``/``_moving_var`` on
canonical node names (builders.mxnet.param_name), so the architecture is the zoo one whose names
and shapes the file has exactly (converters.recognize; the head width is the file's). Names and
shapes do not tell apart architectures that differ only in pooling (MindCV's ``seresnet50`` and
timm's pad the stem max-pool differently): the symbol file decides, its convolution, pooling and
batch-norm attributes (kernel, stride, pads, groups, ceil mode, eps) and its node names compared
with each candidate's. The meta (input convention, class order) is then the zoo's for that
architecture. A record-less prefix with an input stage (``<node>_scale``/``_shift``: a changed
--input-convention) is refused (exit 6): its files hold the stage's constants but not which
convention they implement.

Why this module is long: the params reader, the symbol reader and the two ways of naming the graph
(the record, recognition against the zoo) check each other; apart, each would need the others'
tables to say why a file is refused.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from senet_hub.builders.mxnet import RECORD_ATTR  # the writer's side names it; no MXNet is imported
from senet_hub.errors import FormatError, InputFileError, ModelError, UnsupportedError

LIST_MAGIC = 0x112
ND_V2, ND_V3 = 0xF993FAC9, 0xF993FACA
DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?"}
MAX_NDIM = 32
SYMBOL_LIMIT = 64 << 20  # bytes: a SENet-154 symbol is ~1 MB
PREFER = ("timm", "caffe", "mindcv")
RECORD_FORMAT = "senet-hub"
_PARAMS_NAME = re.compile(r"(.+)-\d+\.params")  # <prefix>-<epoch>.params, as mx.model.save_checkpoint names it


class _Cursor:
    __slots__ = ("buf", "path", "pos")

    def __init__(self, buf: memoryview, path: str):
        self.buf, self.path, self.pos = buf, path, 0

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > len(self.buf) - self.pos:
            raise FormatError(
                f"{self.path}: {what} at byte {self.pos} needs {n} bytes, {len(self.buf) - self.pos} remain "
                "(truncated or not an MXNet .params file)"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u64(self, what: str) -> int:
        return int(struct.unpack("<Q", self.take(8, what))[0])

    def u32(self, what: str) -> int:
        return int(struct.unpack("<I", self.take(4, what))[0])

    def i32(self, what: str) -> int:
        return int(struct.unpack("<i", self.take(4, what))[0])

    def i64(self, what: str) -> int:
        return int(struct.unpack("<q", self.take(8, what))[0])


def read_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``mx.nd.save`` file, by its saved name (``arg:conv1_weight`` ...)."""
    from .wire import read_bytes

    path = os.fspath(path)
    buf = read_bytes(path, "MXNet .params file")
    c = _Cursor(memoryview(buf), path)
    if len(buf) < 24 or c.u64("list magic") != LIST_MAGIC:
        raise FormatError(
            f"{path}: not an MXNet .params file (no NDArray-list magic 0x112); pass the -NNNN.params file"
        )
    c.u64("reserved")
    n = c.u64("array count")
    if n > (len(buf) - c.pos) // 24:  # an array takes at least 24 bytes: refuse absurd counts up front
        raise FormatError(f"{path}: declares {n} arrays in {len(buf)} bytes (truncated or corrupt)")
    arrays = [_array(c, i) for i in range(n)]
    m = c.u64("name count")
    if m != n:
        raise FormatError(f"{path}: {n} arrays but {m} names; mx.nd.save of a dict writes one name per array")
    names = []
    for i in range(m):
        size = c.u64(f"name {i} length")
        try:
            names.append(bytes(c.take(size, f"name {i}")).decode("utf-8"))
        except UnicodeDecodeError:
            raise FormatError(f"{path}: name {i} is not UTF-8 (corrupt)") from None
    if c.pos != len(buf):
        raise FormatError(f"{path}: {len(buf) - c.pos} bytes after the last name (corrupt or not one .params file)")
    if len(set(names)) != len(names):
        dup = next(x for x in names if names.count(x) > 1)
        raise FormatError(f"{path}: the name {dup} appears twice")
    return dict(zip(names, arrays))


def _array(c: _Cursor, i: int) -> np.ndarray:
    magic = c.u32(f"array {i} magic")
    if magic not in (ND_V2, ND_V3):
        raise FormatError(
            f"{c.path}: array {i} has magic {magic:#x}, not an NDArray v2/v3 (0xf993fac9/a); re-save it with "
            "MXNet >= 1.0 (mx.nd.save)"
        )
    stype = c.i32(f"array {i} storage type")
    if stype != 0:
        raise UnsupportedError(f"{c.path}: array {i} is sparse (storage type {stype}); save dense weights")
    ndim = c.i32(f"array {i} ndim") if magic == ND_V3 else c.u32(f"array {i} ndim")
    if ndim < 0 or ndim > MAX_NDIM:
        raise FormatError(f"{c.path}: array {i} declares {ndim} dimensions (corrupt)")
    shape = tuple(c.i64(f"array {i} dim") for _ in range(ndim))
    if any(d < 0 or d > len(c.buf) for d in shape):  # no real dimension exceeds the file's byte count
        raise FormatError(f"{c.path}: array {i} has an impossible dimension {shape} (corrupt)")
    if ndim == 0 and magic == ND_V2:  # MXNet writes nothing more for an empty (none) array
        return np.zeros((0,), np.float32)
    c.i32(f"array {i} device type")
    c.i32(f"array {i} device id")
    flag = c.i32(f"array {i} dtype")
    if flag not in DTYPES:
        raise FormatError(f"{c.path}: array {i} has dtype flag {flag}, not one of {sorted(DTYPES)}")
    dt = np.dtype(DTYPES[flag])
    count = 1
    for d in shape:
        count *= d
        if count * dt.itemsize > len(c.buf):
            raise FormatError(f"{c.path}: array {i} of shape {shape} is larger than the file (truncated or corrupt)")
    data = c.take(count * dt.itemsize, f"array {i} data ({shape})")
    return np.frombuffer(data, dt).reshape(shape).astype(dt.newbyteorder("="))


def read_symbol(path: str | os.PathLike) -> dict[str, Any]:
    """The symbol JSON's nodes by name: {name: (op, attrs)} and the head node's name (key "")."""
    from .wire import read_bytes

    path = os.fspath(path)
    raw = read_bytes(path, "MXNet symbol file", SYMBOL_LIMIT)
    try:
        doc = json.loads(bytes(raw).decode("utf-8"))
        nodes = doc["nodes"]
        table: dict[str, Any] = {}
        for n in nodes:
            attrs = n.get("attrs", n.get("attr", n.get("param", {}))) or {}
            if not isinstance(n["name"], str) or not isinstance(n["op"], str) or not isinstance(attrs, dict):
                raise TypeError("a node's name/op/attrs has the wrong type")
            table[n["name"]] = (n["op"], {str(k): str(v) for k, v in attrs.items()})
        heads = doc["heads"]
        table[""] = ("head", {"name": nodes[int(heads[0][0])]["name"]})
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, UnicodeDecodeError, RecursionError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FormatError(f"{path}: not an MXNet symbol JSON file ({msg}); pass the -symbol.json file") from None
    return table


# ---------------------------------------------------------------------------------- record


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def symbol_record(sym: dict[str, Any], path: str) -> tuple[dict[str, Any], Any, dict[str, Any]] | None:
    """(record, graph, meta) from a symbol table (read_symbol) that carries senet-hub's record;
    None when it carries none. A damaged record is a FormatError."""
    from senet_hub.graph import read_graph

    holders = [k for k, (_, at) in sym.items() if k and RECORD_ATTR in at]
    if not holders:
        return None
    fix = "write the prefix again with senet-hub convert --to mxnet"
    if len(holders) > 1 or sym[holders[0]][0] != "null":
        raise FormatError(
            f"{path}: {RECORD_ATTR} is on {', '.join(holders[:3])}; senet-hub puts one record on the input "
            f"variable: the symbol is damaged, {fix}"
        )
    where = f"{path}: the senet-hub record ({RECORD_ATTR} of '{holders[0]}')"
    try:
        doc = json.loads(sym[holders[0]][1][RECORD_ATTR])
    except (ValueError, RecursionError) as e:
        raise FormatError(f"{where} is damaged ({_first_line(e)}); {fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != RECORD_FORMAT:
        raise FormatError(f"{where} is damaged (not a senet-hub record); {fix}")
    graph, meta = read_graph(doc.get("graph"), f"{where}'s graph", fix)
    if graph.input_name != holders[0]:
        raise ModelError(
            f"{path}: the senet-hub record's graph takes '{graph.input_name}' but sits on the variable "
            f"'{holders[0]}': it does not describe this symbol; {fix}"
        )
    return doc, graph, meta


def _stage_constants(graph: Any) -> dict[str, np.ndarray]:
    """{saved name: array} of the input stages' constants, as builders.mxnet writes them (1 x C x 1 x 1)."""
    from senet_hub.builders.mxnet import param_name

    return {
        f"arg:{param_name(n.name, n.op, p)}": np.asarray(n.attrs[p], np.float32).reshape(1, -1, 1, 1)
        for n in graph.nodes
        if n.op == "input_norm"
        for p in ("scale", "shift")
    }


def _load_recorded(
    spath: str,
    ppath: str,
    sym: dict[str, Any],
    arrays: dict[str, np.ndarray],
    found: tuple[dict[str, Any], Any, dict[str, Any]],
    arch: str | None,
) -> Any:
    """The Model a prefix with senet-hub's record holds: graph and meta from the record, weights
    from the params by name (bits unchanged), every part checked against the record."""
    from senet_hub import zoo
    from senet_hub.graph import Model, validate

    from . import recognize

    rec, graph, meta = found
    recorded = rec.get("arch") or meta.get("arch")
    if arch is not None and _arch_id(arch) != recorded:
        raise ModelError(
            f"{spath}: holds {recorded or 'a custom graph'}, not {arch} (its graph is recorded in the symbol); "
            "leave out --arch"
        )
    what = recorded or "the recorded graph"
    try:
        shapes = zoo.graph_param_shapes(graph)
        expected = {k: tuple(shapes[key]) for k, (key, _) in expected_names(graph).items()}
        stage = _stage_constants(graph)
        problems = symbol_mismatches(graph, sym)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, ModelError) as e:  # a hand-edited record
        raise ModelError(f"{spath}: the graph in the senet-hub record is inconsistent: {_first_line(e)}") from None
    if problems:
        raise ModelError(
            f"{spath}: the symbol is not the graph its senet-hub record describes ({what}): "
            f"{recognize.summary(problems, 2)}; write the prefix again with senet-hub convert --to mxnet"
        )
    got = {k: tuple(v.shape) for k, v in arrays.items()}
    problems = recognize.mismatches(got, {**expected, **{k: v.shape for k, v in stage.items()}})
    if problems:
        raise ModelError(
            f"{ppath}: not the params of the model recorded in {os.path.basename(spath)} ({what}): "
            f"{len(problems)} mismatches, first: {recognize.summary(problems, 2)}; pass the params written "
            "with this symbol"
        )
    for k, want in stage.items():
        # the constants are the convention's, float32-rounded by the writer: bit-equal or not this model's
        if arrays[k].dtype != np.float32 or not np.array_equal(arrays[k].view(np.uint32), want.view(np.uint32)):
            raise ModelError(
                f"{ppath}: {k} is not the input stage recorded in {os.path.basename(spath)} "
                f"(convention {meta.get('input_convention') or rec.get('input_convention')}); pass the params "
                "written with this symbol"
            )
    weights = _weights(ppath, arrays, graph)
    # the stored meta minus where it came from before (this prefix is the source now); the record's
    # fields are what senet-hub vouches for in every file it writes
    meta = {k: v for k, v in meta.items() if not k.startswith("source_")}
    for k in ("arch", "input_convention", "class_order", "input_fold"):
        if rec.get(k) is not None:
            meta[k] = rec[k]
    files = {"params": ppath, "symbol": spath}
    meta.update(
        source_format="mxnet",
        source_container="prefix (senet-hub record)",
        source_files={k: os.path.basename(p) for k, p in files.items()},
        source_paths={k: os.path.abspath(p) for k, p in files.items()},
        mxnet={"written_by": f"senet-hub {rec.get('version')}"},
    )
    model = Model(graph, weights, meta)
    try:
        validate(model)
    except ModelError as e:
        raise ModelError(f"{spath}: {e}") from None
    return model


def _weights(ppath: str, arrays: dict[str, np.ndarray], graph: Any) -> dict[str, np.ndarray]:
    """{canonical key: float32 array} of the graph's parameters from the params' arrays."""
    weights: dict[str, np.ndarray] = {}
    for k, (key, _) in expected_names(graph).items():
        arr = arrays[k]
        if arr.dtype.kind != "f":
            raise ModelError(f"{ppath}: {k} has dtype {arr.dtype}, expected a floating-point array")
        weights[key] = arr.astype(np.float32, copy=False)
    return weights


# ---------------------------------------------------------------------------------- architecture


def expected_names(graph: Any) -> dict[str, tuple[str, str]]:
    """{saved name (arg:/aux:): (canonical weight key, canonical parameter)} as builders.mxnet saves them."""
    from senet_hub.builders.mxnet import _AUX, param_name

    out: dict[str, tuple[str, str]] = {}
    for n in graph.nodes:
        for p in n.param_names():
            kind = "aux" if n.op == "batch_norm" and p in _AUX else "arg"
            out[f"{kind}:{param_name(n.name, n.op, p)}"] = (f"{n.name}.{p}", p)
    return out


def _tuple(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.strip("()[] ").replace(" ", "").split(",") if x not in ("", "None"))
    except ValueError:
        return None


def _pads(sym: dict[str, Any], name: str, own: str | None) -> tuple[int, ...] | None:
    """(top, left, bottom, right) as the symbol applies them: an explicit ``<name>/pad`` op, else the
    symmetric pad attribute of the node itself."""
    if f"{name}/pad" in sym:
        w = _tuple(sym[f"{name}/pad"][1].get("pad_width"))
        return (w[4], w[6], w[5], w[7]) if w is not None and len(w) == 8 else None
    p = _tuple(own)
    return (p[0], p[1], p[0], p[1]) if p is not None and len(p) == 2 else (0, 0, 0, 0) if own is None else None


def symbol_mismatches(graph: Any, sym: dict[str, Any]) -> list[str]:
    """How the symbol differs from what builders.mxnet makes of `graph` in the attributes that set
    what is computed (empty: it is this graph). Names: every node's and no other (helpers are
    ``<node>/<what>``, variables are parameters or the input)."""
    from senet_hub.builders.mxnet import LOWER
    from senet_hub.ops import plan

    out: list[str] = []
    names = {n.name for n in graph.nodes}
    ops = {k: v for k, v in sym.items() if k and v[0] != "null"}
    # a helper is ``<node>/<what>`` (``what`` has no "/"); canonical names may hold "/" themselves
    mine = {k for k in ops if k in names or k.rsplit("/", 1)[0] not in names}
    for k in sorted(mine - names)[:3]:
        out.append(f"symbol node {k} is no node of the graph")
    for k in sorted(names - mine)[:3]:
        out.append(f"no symbol node {k}")
    if sym.get("", ("", {}))[1].get("name") != graph.output:
        out.append(f"the symbol's output is {sym.get('', ('', {}))[1].get('name')}, not {graph.output}")
    for s in plan(graph, LOWER):
        a = s.attrs
        if s.op == "conv":
            op, at = sym.get(s.name, ("", {}))
            got: tuple[Any, ...] = (
                op,
                _tuple(at.get("kernel")),
                _tuple(at.get("stride")),
                at.get("num_group"),
                _pads(sym, s.name, at.get("pad")),
            )
            want: tuple[Any, ...] = ("Convolution", tuple(a.kernel), tuple(a.stride), str(a.groups), tuple(a.pad))
        elif s.op in ("max_pool", "avg_pool"):
            key = s.name if sym.get(s.name, ("",))[0] == "Pooling" else f"{s.name}/pool"
            op, at = sym.get(key, ("", {}))
            got = (op, _tuple(at.get("kernel")), _tuple(at.get("stride")), at.get("pooling_convention"),
                   _pads(sym, s.name, at.get("pad")))  # fmt: skip
            want = ("Pooling", tuple(a.kernel), tuple(a.stride), "full" if a.ceil else "valid", tuple(a.pad))
            if s.op == "avg_pool" and at.get("count_include_pad", "True") != str(bool(a.count_include_pad)):
                out.append(f"{s.name}: count_include_pad {at.get('count_include_pad')}")
        elif s.op == "batch_norm":
            op, at = sym.get(s.name, ("", {}))
            try:
                eps = float(at.get("eps", "nan"))
            except ValueError:
                eps = float("nan")
            # MXNet keeps eps as a float32 attribute: compared at that precision
            got, want = (op, float(np.float32(eps))), ("BatchNorm", float(np.float32(a.eps)))
        else:
            continue
        if got != want:
            out.append(f"{s.name}: symbol has {got}, the architecture {want}")
    return out


def _candidates(
    got: dict[str, tuple[int, ...]], archs: Iterable[str], path: str
) -> tuple[list[tuple[str, list[str]]], dict[str, Any]]:
    from senet_hub import zoo

    from . import recognize

    graphs: dict[str, Any] = {}

    def expected(a: str) -> dict[str, tuple[int, ...]]:
        if a not in graphs:
            g = zoo.expand(a)
            linears = [n.name for n in g.nodes if n.op == "linear"]
            head = got.get(f"arg:{linears[-1]}_weight") if linears else None
            if head is not None and len(head) == 2 and head[0] != zoo.description(a).get("num_classes"):
                g = zoo.expand(a, int(head[0]))
            graphs[a] = g
        g = graphs[a]
        shapes = zoo.graph_param_shapes(g)
        return {k: tuple(shapes[v[0]]) for k, v in expected_names(g).items()}

    def family(a: str) -> str:
        return str(zoo.description(a)["family"])

    return recognize.rank(got, archs, expected, family, PREFER), graphs


def _arch_id(name: str) -> str:
    """A zoo id as given (MindCV's ``seresnet50`` stays MindCV's), else an alias or timm name resolved."""
    from senet_hub import zoo

    return name if zoo.is_arch(name) else zoo.resolve_arch(name, prefer=PREFER)


def load(symbol: str | os.PathLike | None, params: str | os.PathLike, arch: str | None = None) -> Any:
    """Read an MXNet prefix (symbol JSON + params) into a validated canonical Model: exactly from
    senet-hub's record when the symbol carries one, else as the zoo architecture the files fit."""
    from senet_hub import zoo
    from senet_hub.graph import Model, validate

    from . import recognize

    ppath = os.fspath(params)
    arrays = read_params(ppath)
    sym = read_symbol(symbol) if symbol else None
    if symbol and sym is not None:
        found = symbol_record(sym, os.fspath(symbol))
        if found is not None:
            return _load_recorded(os.fspath(symbol), ppath, sym, arrays, found, arch)
    stage = sorted(k for k in arrays if k.endswith("_scale") and k[: -len("_scale")] + "_shift" in arrays)
    if stage:
        where = "its symbol has no senet-hub record" if symbol else "no --symbol was given"
        raise UnsupportedError(
            f"{ppath}: holds an input stage ({stage[0]}) and {where}, so which input convention it implements "
            "is unknown: pass the -symbol.json senet-hub wrote with it (--symbol), convert from the original "
            "source, or write MXNet without --input-convention"
        )
    got = {k: tuple(v.shape) for k, v in arrays.items()}
    archs = [_arch_id(arch)] if arch else zoo.list_archs()
    scored, graphs = _candidates(got, archs, ppath)
    fits = [a for a, m in scored if not m]
    if not fits:
        closest, problems = scored[0]
        what = f"does not fit {closest}" if arch else f"is not the params of any zoo architecture; closest is {closest}"
        raise ModelError(f"{ppath}: {what} with {len(problems)} mismatches, first: {recognize.summary(problems, 3)}")
    if sym is not None:
        checked = {a: symbol_mismatches(graphs[a], sym) for a in fits}
        exact = [a for a in fits if not checked[a]]
        if not exact:
            a = fits[0]
            raise ModelError(
                f"{symbol}: the params fit {', '.join(fits)} but the symbol is not {a}'s: "
                f"{recognize.summary(checked[a], 2)}; senet-hub reads back MXNet files of zoo architectures only"
            )
        fits = exact
    if len(fits) > 1:
        family = {a: str(zoo.description(a)["family"]) for a in fits}
        best, _ = recognize.choose([(a, []) for a in fits], family.__getitem__, PREFER)
        if best is None or sym is None:
            raise ModelError(
                f"{ppath}: fits several architectures ({', '.join(fits)}); pass --symbol (the -symbol.json beside it) "
                "or --arch"
            )
        fits = [best]
    chosen = fits[0]
    graph = graphs[chosen]
    weights = _weights(ppath, arrays, graph)
    linears = [n for n in graph.nodes if n.op == "linear"]
    ncls = int(linears[-1].attrs["out_features"]) if linears else None
    files = {"params": os.path.basename(ppath)}
    paths = {"params": os.path.abspath(ppath)}
    if symbol:
        files["symbol"], paths["symbol"] = os.path.basename(os.fspath(symbol)), os.path.abspath(os.fspath(symbol))
    meta = {
        **zoo.meta(chosen, ncls),
        "source_format": "mxnet",
        "source_files": files,
        "source_paths": paths,
    }
    model = Model(graph, weights, meta)
    validate(model)
    return model


def sibling_symbol(params: str | os.PathLike) -> str | None:
    """``<prefix>-symbol.json`` beside ``<prefix>-NNNN.params`` when it exists and carries senet-hub's
    record (mx.model.load_checkpoint's pairing); None otherwise, a symbol that is no readable MXNet
    symbol included (the params alone are then read, as without the record)."""
    m = _PARAMS_NAME.fullmatch(os.fspath(params))
    path = f"{m.group(1)}-symbol.json" if m else None
    if path is None or not os.path.isfile(path):
        return None
    try:
        sym = read_symbol(path)
    except (FormatError, InputFileError):
        return None
    return path if any(RECORD_ATTR in at for k, (_, at) in sym.items() if k) else None


def load_prefix(params: str | os.PathLike, symbol: str | os.PathLike | None = None, arch: str | None = None) -> Any:
    """The CLI's reader (``--params``, ``--symbol``, ``--arch``, in formats.py's option order); without
    ``--symbol``, the ``-symbol.json`` beside the params is used when it carries senet-hub's record."""
    return load(symbol if symbol else sibling_symbol(params), params, arch)
