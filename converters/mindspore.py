"""MindSpore ``.ckpt`` files without MindSpore, and the MindCV <-> canonical name mapping.

File format (MindSpore's checkpoint.proto, proto2)::

    Checkpoint  { repeated Value value = 1; }
    Value       { string tag = 1; TensorProto tensor = 2; MapTensorProto maptensor = 3; }
    TensorProto { repeated int64 dims = 1; string tensor_type = 2; bytes tensor_content = 3; }

``tensor_content`` is raw little-endian C-order data. ``mindspore.save_checkpoint`` writes one
``Checkpoint`` message per Value and simply appends them (protobuf concatenation = one message);
a tensor over 512 MB is cut along axis 0 into consecutive Values with the same tag, each
carrying the full dims; ``crc_check=True`` appends ``b"crc_num"`` + a 10-byte big-endian CRC-32 of
everything before it. The reader joins the parts of a tag, strips (and checks) the CRC trailer,
accepts non-packed and packed dims, and reads every dtype MindSpore writes (``Float16/32/64``,
``BFloat16`` -> float32, signed/unsigned ints, ``Bool``, ``str``). Each declared length is checked
against the bytes present before anything is allocated; a corrupt, truncated or encrypted file
fails with ``FormatError`` naming the file and the problem. MindSpore's safetensors output
(``format="safetensors"``) is read too (same parameter names).

Names: the canonical graph of a MindCV architecture (``senet_hub.zoo_mindcv.expand``) keeps
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
import math
import os
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from senet_hub.errors import FormatError, ModelError, SenetHubError

from .wire import WireReader, read_bytes

# tensor_type string -> numpy dtype (little-endian as written on disk)
CKPT_DTYPES: dict[str, str] = {
    "Float16": "<f2",
    "Float32": "<f4",
    "Float64": "<f8",
    "Int8": "i1",
    "UInt8": "u1",
    "Int16": "<i2",
    "UInt16": "<u2",
    "Int32": "<i4",
    "UInt32": "<u4",
    "Int64": "<i8",
    "UInt64": "<u8",
    "Bool": "?",
}
NP_TO_CKPT = {np.dtype(v.lstrip("<")): k for k, v in CKPT_DTYPES.items()}  # native dtype -> tensor_type
SAFETENSORS_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "U8": "u1", "I16": "<i2", "U16": "<u2",
                      "I32": "<i4", "U32": "<u4", "I64": "<i8", "U64": "<u8", "BOOL": "?", "BF16": "bf16"}  # fmt: skip
SLICE_BYTES = 512 * 1024 * 1024  # mindspore SLICE_SIZE (512 * 1024 KB): larger tensors are split
CRC_MARK = b"crc_num"
CRC_TRAILER = len(CRC_MARK) + 10
MAX_DIMS = 32
# top-level MindCV SENet cells: checkpoint entries under them belong to the network
NET_ROOTS = ("layer0", "pool0", "layer1", "layer2", "layer3", "layer4", "pool", "dropout", "classifier")
WRAPPER_PREFIXES = ("network.", "backbone.", "_backbone.", "net.", "model.", "network.backbone.", "network._backbone.")
BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
DENSE_CELLS = ("se_module.conv_reduce", "se_module.conv_expand")


# ------------------------------------------------------------------------------------ reading


class _Wire(WireReader):
    hint = "truncated, corrupt, encrypted or not a MindSpore .ckpt?"


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype("<u4") << 16).view("<f4")


def _tensor(w: _Wire, span: tuple[int, int], tag: str) -> tuple[list[int], str, tuple[int, int]]:
    dims: list[int] = []
    ttype, content = None, (span[0], span[0])
    for field, wt, val in w.fields(*span):
        if field == 1 and wt == 0:
            dims.append(val)
        elif field == 1 and wt == 2:  # packed
            pos = val[0]
            while pos < val[1]:
                d, pos = w.varint(pos, val[1])
                dims.append(d)
        elif field == 2 and wt == 2:
            ttype = w.text(val, f"the dtype of {tag!r}")
        elif field == 3 and wt == 2:
            content = val
    if ttype is None:
        raise w.error(f"tensor {tag!r} has no tensor_type")
    if len(dims) > MAX_DIMS or any(d >= 1 << 62 for d in dims):
        raise w.error(f"tensor {tag!r} has invalid dims {dims[:8]}")
    return dims, ttype, content


def _assemble(w: _Wire, tag: str, dims: list[int], ttype: str, parts: list[tuple[int, int]]) -> np.ndarray:
    nbytes = sum(b - a for a, b in parts)
    if ttype == "str":
        raw = b"".join(bytes(w.buf[a:b]) for a, b in parts)
        if len(raw) % 4:
            raise w.error(f"string entry {tag!r} is not UTF-32 ({len(raw)} bytes)")
        return np.frombuffer(raw, f"<U{max(len(raw) // 4, 1)}")[0:1].reshape(()) if raw else np.array("")
    if ttype == "BFloat16":
        dtype = np.dtype("<u2")
    elif ttype in CKPT_DTYPES:
        dtype = np.dtype(CKPT_DTYPES[ttype])
    else:
        raise FormatError(f"{w.path}: tensor {tag!r} has unsupported dtype {ttype!r}")
    shape: tuple[int, ...] = tuple(dims)
    if dims == [0] and nbytes == dtype.itemsize:  # MindSpore writes scalars with dims [0]
        shape = ()
    count = math.prod(shape)
    if count * dtype.itemsize != nbytes:
        raise w.error(
            f"tensor {tag!r} {ttype}{list(dims)} needs {count * dtype.itemsize} bytes but has {nbytes}"
            f"{' in ' + str(len(parts)) + ' parts' if len(parts) > 1 else ''}"
        )
    if len(parts) == 1:
        a, b = parts[0]
        arr = np.frombuffer(w.buf[a:b], dtype)
    else:  # one copy; split tensors are consecutive cuts along axis 0 (joined bytes = whole tensor)
        arr = np.empty(count, dtype)
        raw = arr.view(np.uint8)
        pos = 0
        for a, b in parts:
            raw[pos : pos + b - a] = np.frombuffer(w.buf[a:b], np.uint8)
            pos += b - a
    try:
        arr = arr.reshape(shape)
    except ValueError:  # e.g. dims (0, 2**61): no data, but numpy refuses the shape
        raise w.error(f"tensor {tag!r} has invalid dims {list(dims)[:8]}") from None
    if ttype == "BFloat16":
        arr = _bf16_to_f32(arr)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def _parse_ckpt(buf: bytearray, path: str) -> dict[str, np.ndarray]:
    view = memoryview(buf)
    end = len(buf)
    if end >= CRC_TRAILER and bytes(view[end - CRC_TRAILER : end - 10]) == CRC_MARK:
        want = int.from_bytes(view[end - 10 : end], "big")
        end -= CRC_TRAILER
        got = zlib.crc32(view[:end])
        if got != want:
            raise FormatError(
                f"{path}: CRC check failed (file says {want:#x}, data gives {got:#x}): the file is damaged"
            )
    w = _Wire(view, path)
    order: list[str] = []
    entries: dict[str, tuple[list[int], str, list[tuple[int, int]]]] = {}
    for field, wt, val in w.fields(0, end):
        if field != 1 or wt != 2:
            raise w.error(f"unexpected field {field} (wire type {wt}) at the top level")
        tag, tensor, has_map = None, None, False
        for f2, wt2, v2 in w.fields(*val):
            if f2 == 1 and wt2 == 2:
                tag = w.text(v2, "a tag")
            elif f2 == 2 and wt2 == 2:
                tensor = v2
            elif f2 == 3 and wt2 == 2:
                has_map = True
        if tag is None:
            raise w.error(f"a value without a tag at byte {val[0]}")
        if tensor is None:
            if has_map:  # MapParameter (embedding tables): not part of any SENet
                continue
            raise w.error(f"entry {tag!r} holds no tensor")
        dims, ttype, content = _tensor(w, tensor, tag)
        if tag in entries:
            d0, t0, parts = entries[tag]
            if d0 != dims or t0 != ttype:
                raise w.error(f"parts of {tag!r} disagree: {t0!r}{d0} then {ttype!r}{dims}")
            parts.append(content)
        else:
            entries[tag] = (dims, ttype, [content])
            order.append(tag)
    if not entries and end > 0:
        raise w.error("no tensors found")
    return {tag: _assemble(w, tag, *entries[tag]) for tag in order}


def _parse_safetensors(buf: bytearray, path: str) -> dict[str, np.ndarray]:
    n = int.from_bytes(buf[:8], "little")
    if n > len(buf) - 8:
        raise FormatError(f"{path}: safetensors header declares {n} bytes but the file has {len(buf) - 8}")
    try:
        header = json.loads(bytes(buf[8 : 8 + n]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise FormatError(f"{path}: unreadable safetensors header: {str(e)[:200]}") from None
    if not isinstance(header, dict):
        raise FormatError(f"{path}: safetensors header is not a JSON object")
    data = memoryview(buf)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt, shape = info["dtype"], tuple(int(d) for d in info["shape"])
            a, b = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise FormatError(f"{path}: safetensors entry {name!r} is malformed") from None
        if not isinstance(dt, str) or dt not in SAFETENSORS_DTYPES:
            raise FormatError(f"{path}: safetensors entry {name!r} has unsupported dtype {dt!r}")
        dtype = np.dtype("<u2" if dt == "BF16" else SAFETENSORS_DTYPES[dt])
        if any(d < 0 for d in shape) or not (0 <= a <= b <= len(data)) or (b - a) != math.prod(shape) * dtype.itemsize:
            raise FormatError(f"{path}: safetensors entry {name!r} {dt}{list(shape)} has bad offsets [{a}, {b})")
        try:
            arr = np.frombuffer(data[a:b], dtype).reshape(shape)
        except ValueError:
            raise FormatError(f"{path}: safetensors entry {name!r} has invalid shape {list(shape)[:8]}") from None
        out[name] = _bf16_to_f32(arr) if dt == "BF16" else arr.astype(dtype.newbyteorder("="), copy=False)
    return out


def _looks_like_safetensors(buf: bytearray) -> bool:
    return len(buf) >= 10 and int.from_bytes(buf[:8], "little") < len(buf) and buf[8:10] in (b'{"', b"{ ")


def read_ckpt_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a MindSpore checkpoint, in file order: {tag: ndarray} (native byte order).

    String entries come back as 0-d unicode arrays. Arrays of unsplit tensors are views on one
    in-memory copy of the file.
    """
    path = os.fspath(path)
    buf = read_bytes(path, "MindSpore checkpoint")
    if not buf:
        raise FormatError(f"{path}: empty file, not a MindSpore checkpoint")
    if _looks_like_safetensors(buf):
        return _parse_safetensors(buf, path)
    return _parse_ckpt(buf, path)


# ------------------------------------------------------------------------------------ writing


def _varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _ld(field: int, payload_len: int) -> bytes:
    """Key + length of a length-delimited field (the payload follows)."""
    return _varint(field << 3 | 2) + _varint(payload_len)


def _encode(tag: str, arr: np.ndarray) -> Iterator[bytes]:
    """The bytes of one tensor as MindSpore writes it: one Checkpoint message per slice."""
    if arr.dtype.kind == "U":
        ttype, dims, slices = "str", [0], [str(arr.reshape(-1)[0] if arr.size else "").encode("utf-32-le")]
    else:
        native = np.dtype(f"{arr.dtype.kind}{arr.dtype.itemsize}")
        if native not in NP_TO_CKPT:
            raise ModelError(f"tensor {tag!r}: dtype {arr.dtype} cannot be stored in a .ckpt")
        ttype = NP_TO_CKPT[native]
        data = np.ascontiguousarray(arr, dtype=np.dtype(CKPT_DTYPES[ttype]))
        dims = list(arr.shape)  # a scalar has no dims, as mindspore writes it
        n = math.ceil(data.nbytes / SLICE_BYTES) if data.nbytes > SLICE_BYTES and data.ndim else 1
        slices = [memoryview(s.reshape(-1)).cast("B") for s in np.array_split(data, n)] if n > 1 else [data.tobytes()]
    tag_b, type_b = tag.encode("utf-8"), ttype.encode("ascii")
    dims_b = b"".join(b"\x08" + _varint(d) for d in dims)
    for content in slices:
        tensor_head = dims_b + _ld(2, len(type_b)) + type_b + _ld(3, len(content))
        tensor_len = len(tensor_head) + len(content)
        value_head = _ld(1, len(tag_b)) + tag_b + _ld(2, tensor_len)
        yield _ld(1, len(value_head) + tensor_len) + value_head + tensor_head
        yield bytes(content) if isinstance(content, memoryview) else content


def write_ckpt_tensors(tensors: dict[str, np.ndarray], path: str | os.PathLike, crc: bool = False) -> str:
    """Write {tag: array} as a MindSpore .ckpt (atomically); with crc the CRC trailer is added."""
    from senet_hub.atomic import atomic_outputs

    path = os.fspath(path)
    for k, v in tensors.items():
        if not isinstance(v, np.ndarray):
            raise ModelError(f"tensor {k!r} is a {type(v).__name__}, not a numpy array")
    with atomic_outputs([path]) as (tmp,):
        c = 0
        with open(tmp, "wb") as f:
            for tag, arr in tensors.items():
                for chunk in _encode(tag, arr):
                    f.write(chunk)
                    if crc:
                        c = zlib.crc32(chunk, c)
            if crc:
                f.write(CRC_MARK + c.to_bytes(10, "big"))
    return path


# ------------------------------------------------------------------------------- name mapping


def mindcv_names(graph: Any) -> list[tuple[str, str, str]]:
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


def generic_names(model: Any) -> list[tuple[str, str]]:
    """(canonical key, MindSpore-style key) for any model: BN params get MindSpore's names."""
    out = []
    for n in model.graph.nodes:
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
    from senet_hub import zoo_mindcv

    g = zoo_mindcv.expand(arch, num_classes)
    shapes = zoo_mindcv._param_shapes(g)
    exp = {}
    for ck, mk, kind in mindcv_names(g):
        shp = shapes[ck]
        exp[mk] = (ck, shp[:2] if kind == "dense" else shp, kind)
    return g, exp


def _num_classes(net: dict[str, np.ndarray]) -> int | None:
    w = net.get("classifier.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else None


def mismatches(net: dict[str, np.ndarray], arch: str) -> list[str]:
    """What keeps these MindCV entries from being `arch` (empty list = they fit exactly)."""
    _, exp = _expected(arch, _num_classes(net))
    out = []
    for mk, (_, shp, _) in exp.items():
        if mk not in net:
            out.append(f"missing {mk} {shp}")
        elif tuple(net[mk].shape) != shp:
            out.append(f"{mk} has shape {tuple(net[mk].shape)}, expected {shp}")
    out += [f"unexpected {k} {tuple(v.shape)}" for k, v in net.items() if k not in exp]
    return out


def _summary(problems: list[str], n: int = 4) -> str:
    more = f" (and {len(problems) - n} more)" if len(problems) > n else ""
    return "; ".join(problems[:n]) + more


def infer_arch(tensors: dict[str, np.ndarray]) -> tuple[str | None, list[tuple[str, list[str]]]]:
    """The MindCV architecture the entries fit exactly (None unless exactly one), and every
    candidate's mismatches, best first."""
    from senet_hub import zoo_mindcv

    net, _ = _network_entries(tensors)
    scored = sorted(((a, mismatches(net, a)) for a in zoo_mindcv.list_archs()), key=lambda t: len(t[1]))
    exact = [a for a, m in scored if not m]
    return (exact[0] if len(exact) == 1 else None), scored


def from_mindcv(tensors: dict[str, np.ndarray], arch: str, path: str = "<tensors>") -> Any:
    """Canonical Model of MindCV `arch` from checkpoint entries (MindCV names)."""
    from senet_hub import zoo_mindcv
    from senet_hub.graph import Model, validate

    if not zoo_mindcv.is_arch(arch):
        raise SenetHubError(f"unknown MindCV architecture '{arch}'; choose one of {', '.join(zoo_mindcv.list_archs())}")
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
        **zoo_mindcv.meta(arch, ncls),
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


def load_ckpt(path: str | os.PathLike, arch: str | None = None) -> Any:
    """Read a MindCV SENet checkpoint into a validated canonical Model.

    Without `arch` the architecture is inferred when exactly one MindCV SENet fits the
    checkpoint's names and shapes; otherwise a one-line error asks for --arch.
    """
    path = os.fspath(path)
    tensors = read_ckpt_tensors(path)
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


def to_mindcv(model: Any) -> dict[str, np.ndarray]:
    """MindCV-named float32 tensors of a model of a MindCV architecture, in MindCV's order."""
    from senet_hub import zoo_mindcv
    from senet_hub.graph import infer_shapes, structure

    arch = model.arch
    ncls = model.graph.node(model.graph.output).attrs.get("out_features") if model.graph.output else None
    ref = zoo_mindcv.expand(arch, ncls, model.graph.input_shape[-1])
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
    out = {}
    for ck, mk, kind in mindcv_names(model.graph):
        a = np.asarray(model.weights[ck], np.float32)
        out[mk] = a.reshape(a.shape[:2]) if kind == "dense" else a
    return out


METADATA_TAG = "senet_hub_metadata"  # a "str" entry: MindSpore loads it as a str, load_param_into_net skips it


def save_ckpt(model: Any, path: str | os.PathLike, crc: bool = False, metadata: dict | None = None) -> str:
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
    from senet_hub import zoo_mindcv
    from senet_hub.graph import infer_shapes

    from .pth import check_weights_only

    if zoo_mindcv.is_arch(model.arch):
        tensors = to_mindcv(model)  # refuses any graph that is not MindCV's, an input stage included
    else:
        check_weights_only(model, "a MindSpore checkpoint")
        infer_shapes(model)
        tensors = {mk: np.asarray(model.weights[ck], np.float32) for ck, mk in generic_names(model)}
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
