"""MindSpore ``.ckpt`` files without MindSpore: reading and writing {tag: array}.

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
(``format="safetensors"``, same parameter names) is read too, by the safetensors library
(``converters.pytorch_format.parse_safetensors``: one safetensors reader for every source).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator

import numpy as np

from senet_hub.errors import FormatError, ModelError

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
SLICE_BYTES = 512 * 1024 * 1024  # mindspore SLICE_SIZE (512 * 1024 KB): larger tensors are split
CRC_MARK = b"crc_num"
CRC_TRAILER = len(CRC_MARK) + 10
MAX_DIMS = 32

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
        flat = arr.view(np.uint8)
        pos = 0
        for a, b in parts:
            flat[pos : pos + b - a] = np.frombuffer(w.buf[a:b], np.uint8)
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


def read_ckpt_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a MindSpore checkpoint, in file order: {tag: ndarray} (native byte order).

    String entries come back as 0-d unicode arrays. Arrays of unsplit tensors are views on one
    in-memory copy of the file.
    """
    path = os.fspath(path)
    buf = read_bytes(path, "MindSpore checkpoint")
    if not buf:
        raise FormatError(f"{path}: empty file, not a MindSpore checkpoint")
    from .pytorch_format import looks_like_safetensors, parse_safetensors

    if looks_like_safetensors(buf):  # MindSpore's format="safetensors": the safetensors library reads it
        data = bytes(buf)
        del buf
        return parse_safetensors(data, path)[0]
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
    slices: list[bytes | memoryview]
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
        slices = [s.reshape(-1).data.cast("B") for s in np.array_split(data, n)] if n > 1 else [data.tobytes()]
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
