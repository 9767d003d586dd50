"""PyTorch weight files without torch: torch.save archives (a restricted unpickler) and safetensors.

* torch.save archives (torch >= 1.6): ``<archive>/data.pkl`` is a pickle that rebuilds each tensor
  with ``torch._utils._rebuild_tensor_v2`` from a persistent storage id ``('storage',
  torch.FloatStorage, key, location, numel)``; the storage's bytes are the stored record
  ``<archive>/data/<key>``. ``TorchArchive.load`` unpickles with ``find_class`` resolving only what a
  weights-only checkpoint needs (``collections.OrderedDict``, the tensor and parameter rebuild
  functions, the ``torch.*Storage`` types, ``_codecs.encode`` of latin-1 text, plain containers,
  ``argparse.Namespace`` as an empty placeholder: timm's training checkpoints hold their ``args``),
  each to an inert stand-in defined here: ``os.system`` or any other global is refused before
  anything is called (FormatError, exit 4). Tensors come back as ``TensorRef`` (shape known, no
  data read); ``materialise`` reads one, honouring storage offset, shape and strides (views of one
  storage, transposed layouts), dtypes float32/float16/bfloat16/float64 and the integer types, and
  a big-endian ``byteorder`` record; every size is checked against the archive before anything is
  allocated, and compressed records (which torch.save never writes: a zip bomb) are refused.
* legacy torch.save files (torch < 1.6, Cadene's ports): ``LegacyArchive``, the same unpickler over
  the pickles at the head of the file, each storage found by walking the element counts after them.
* safetensors: ``parse_safetensors`` through the ``safetensors`` library (``safetensors.deserialize``
  validates header, offsets and sizes); the dtype table is ours because ``safetensors.numpy`` has
  no bfloat16: BF16 becomes float32 exactly, by widening the bits.

Why this module is long: the three containers share one restricted unpickler, one tensor model
(storages, TensorRef, materialise) and one set of size checks; split apart, each container's
reader would have to re-export or copy the pieces whose safety the others rely on.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import zipfile
from collections import OrderedDict
from typing import Any, cast

import numpy as np

from senet_hub.errors import FormatError, MissingFrameworkError

PICKLE_LIMIT = 16 << 20  # data.pkl of a 10,000-tensor checkpoint is ~2 MB; a bigger one is not weights
MAX_DIMS = 32


# ------------------------------------------------------------------------ the restricted unpickler


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co.: only its element type matters."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: str):
        self.name, self.dtype = name, dtype


# torch storage class -> numpy dtype (little-endian; "bf16" widened to float32 on materialising)
STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "BFloat16Storage": "bf16",
    "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2", "CharStorage": "i1",
    "ByteStorage": "u1", "BoolStorage": "?", "UntypedStorage": "u1",
}  # fmt: skip


class Storage:
    """One storage of the archive: the record ``data/<key>`` holding `numel` elements."""

    __slots__ = ("key", "stype", "numel")

    def __init__(self, key: str, stype: _StorageType, numel: int):
        self.key, self.stype, self.numel = key, stype, numel


class TensorRef:
    """A tensor as the pickle describes it; its data is read only when materialised."""

    __slots__ = ("storage", "offset", "size", "stride", "metadata")

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any, metadata: Any = None):
        if not isinstance(storage, Storage):
            raise TypeError(f"a tensor's storage is a {type(storage).__name__}, not a persistent storage")
        if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= MAX_DIMS):
            raise TypeError("a tensor's size and stride are not tuples of one length")
        if not all(type(v) is int and v >= 0 for v in (offset, *size, *stride)):
            raise TypeError("a tensor's offset, size and strides are not non-negative integers")
        self.storage, self.offset, self.size, self.stride, self.metadata = storage, offset, size, stride, metadata

    @property
    def shape(self) -> tuple[int, ...]:
        return self.size

    def __setstate__(self, state: Any) -> None:  # a BUILD opcode on a tensor: not from torch.save
        raise TypeError("state set on a tensor")


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    metadata: Any = None,
) -> TensorRef:
    return TensorRef(storage, offset, size, stride, metadata or None)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> TensorRef:
    return TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, state: Any = None) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise TypeError(f"a parameter wraps a {type(data).__name__}, not a tensor")
    return data  # requires_grad, hooks and Python attributes are no part of the weights


def _latin1(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode``: how protocol-2 pickles spell bytes; only that use (latin-1 text)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise TypeError("_codecs.encode used for something other than bytes")
    return text.encode("latin-1")


class _Inert:
    """Stands in for ``argparse.Namespace`` (timm's training checkpoints hold their ``args``): takes
    any arguments and state, keeps none, runs nothing."""

    __slots__ = ()

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass


_STORAGE_TYPES = {name: _StorageType(name, dt) for name, dt in STORAGE_DTYPES.items()}
# (module, name) -> what the pickle gets instead; anything else is refused by find_class. No entry
# can allocate more than its arguments' size (bytearray(2**40) would) or reach another object.
ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,  # torch 0.3 (Cadene's 2017 files)
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("_codecs", "encode"): _latin1,
    ("argparse", "Namespace"): _Inert,
    **{
        ("builtins", n): c
        for n, c in (("set", set), ("frozenset", frozenset), ("list", list), ("dict", dict), ("tuple", tuple))
    },  # fmt: skip
    **{("torch", n): st for n, st in _STORAGE_TYPES.items()},
    # legacy files saved from the GPU name the CUDA types; the bytes on disk are the same
    **{("torch.cuda", n): st for n, st in _STORAGE_TYPES.items() if n != "UntypedStorage"},
    ("torch.storage", "UntypedStorage"): _STORAGE_TYPES["UntypedStorage"],
}


class Refused(Exception):
    """The pickle names a global a weights-only checkpoint never needs."""


class _Unpickler(pickle.Unpickler):
    """`legacy`: the pre-1.6 format, whose storage ids carry a sixth item, view metadata."""

    def __init__(self, data: bytes | io.BytesIO, legacy: bool = False):
        super().__init__(data if isinstance(data, io.BytesIO) else io.BytesIO(data))
        self.storages: dict[str, Storage] = {}
        self.legacy = legacy

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise Refused(f"{str(module)[:100]}.{str(name)[:100]}") from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == (6 if self.legacy else 5) and pid[0] == "storage"):
            raise TypeError(f"unknown persistent id {str(pid)[:80]}")
        if self.legacy and pid[5] is not None:
            # torch < 0.4 saved views of one storage this way; a state_dict of modules never holds one
            raise TypeError(f"storage {str(pid[2])[:40]!r} is saved as a view of another storage; not supported")
        _, stype, key, _location, numel = pid[:5]
        if not isinstance(stype, _StorageType) or not isinstance(key, str) or type(numel) is not int or numel < 0:
            raise TypeError(f"malformed storage id {str(pid)[:80]}")
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = Storage(key, stype, numel)
        elif known.stype is not stype or known.numel != numel:
            raise TypeError(f"storage {key!r} is declared twice, differently")
        return known


# ------------------------------------------------------------------------------ torch zip archives


class TorchArchive:
    """A torch.save zip archive opened for reading: the unpickled object, storages read on demand."""

    def __init__(self, f: io.BufferedReader, size: int, path: str):
        names = self._open_zip(f, size, path, "torch.save archive", "truncated or corrupt?")
        pkls = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
        if len(pkls) != 1:
            what = "no data.pkl" if not pkls else f"{len(pkls)} data.pkl records"
            torchscript = any(n.endswith(("/constants.pkl", "/code/")) or "/code/" in n for n in names)
            hint = (
                "it is a TorchScript module (torch.jit.save); save its weights: "
                "torch.save(torch.jit.load(f).state_dict(), 'sd.pth')"
                if torchscript
                else "a zip file but not what torch.save writes (a .pt2 torch.export program? save "
                "model.state_dict() with torch.save)"
            )
            raise FormatError(f"{path}: {what}: {hint}")
        self.prefix = pkls[0][: -len("data.pkl")]
        if self.prefix + "constants.pkl" in names:
            raise FormatError(
                f"{path}: is a TorchScript module (torch.jit.save), not a state_dict; save its weights: "
                "torch.save(torch.jit.load(f).state_dict(), 'sd.pth')"
            )
        order = self.small(self.prefix + "byteorder", 16) if self.prefix + "byteorder" in names else b"little"
        if order not in (b"little", b"big"):
            raise FormatError(f"{path}: unknown byteorder record {order[:16]!r}")
        self.big_endian = order == b"big"

    def _open_zip(self, f: io.BufferedReader, size: int, path: str, what: str, fix: str) -> list[str]:
        """Open the zip (kept as self.zf) and list its records; a damaged one is one FormatError line."""
        self.path, self.size = path, size
        try:
            self.zf = zipfile.ZipFile(f)
            return self.zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
            raise FormatError(f"{path}: not a readable {what} ({e}); {fix}") from None

    def close(self) -> None:
        self.zf.close()

    def _info(self, name: str) -> zipfile.ZipInfo:
        try:
            return self.zf.getinfo(name)
        except KeyError:
            raise FormatError(f"{self.path}: record {name} is missing (truncated or corrupt archive?)") from None

    def small(self, name: str, limit: int) -> bytes:
        info = self._info(name)
        if info.file_size > limit:
            raise FormatError(f"{self.path}: {name} is {info.file_size} bytes (at most {limit} expected)")
        return bytes(self._read(info, bytearray(info.file_size)))

    def _read(self, info: zipfile.ZipInfo, buf: bytearray) -> bytearray:
        try:
            with self.zf.open(info) as zr:
                r = cast(io.BufferedIOBase, zr)  # a ZipExtFile: readinto fills the buffer without a copy
                view, got = memoryview(buf), 0
                while got < len(buf):
                    n = r.readinto(view[got:])
                    if not n:
                        break
                    got += n
                if got != len(buf) or r.read(1):
                    raise FormatError(f"{self.path}: record {info.filename} is not {len(buf)} bytes long")
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
            raise FormatError(f"{self.path}: record {info.filename} is unreadable ({e}); the file is damaged") from None
        return buf

    def load(self) -> Any:
        """The unpickled object: dicts, lists and TensorRef stand-ins."""
        data = self.small(self.prefix + "data.pkl", PICKLE_LIMIT)
        unpickler = _Unpickler(data)
        try:
            return unpickler.load()
        except Refused as e:
            raise _refused(self.path, e) from None
        except Exception as e:  # noqa: BLE001 - any failure of an untrusted pickle is a format error
            raise FormatError(f"{self.path}: data.pkl is not a torch.save pickle ({type(e).__name__}: {e})") from None

    def storage_array(self, s: Storage) -> np.ndarray:
        """The storage's elements as a flat writable array (byte order as the archive's)."""
        dt = s.stype.dtype
        dtype = np.dtype("<u2" if dt == "bf16" else dt)
        if self.big_endian:
            dtype = dtype.newbyteorder(">")
        info = self._info(f"{self.prefix}data/{s.key}")
        need = s.numel * dtype.itemsize
        if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
            # torch.save stores every record; a compressed one could declare any size (a zip bomb)
            raise FormatError(f"{self.path}: record {info.filename} is compressed; torch.save never compresses")
        if info.file_size != need or info.header_offset + need > self.size:
            raise FormatError(
                f"{self.path}: record {info.filename} holds {info.file_size} bytes, but its storage declares "
                f"{s.numel} x {dtype.itemsize} bytes"
            )
        return np.frombuffer(self._read(info, bytearray(need)), dtype)


# ------------------------------------------------------------------------------ torch < 1.6 files

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


class LegacyArchive:
    """A file in torch.save's format before 1.6 (still written with ``_use_new_zipfile_serialization=False``;
    Cadene's ports and timm's ``legacy_*`` weights are such files).

    Five pickles in a row: the magic number, the protocol version, ``sys_info``, the object (storage
    ids ``('storage', torch.FloatStorage, key, location, numel, None)``) and the sorted list of storage
    keys; then, in that order, each storage as an int64 little-endian element count and its raw
    little-endian bytes. The pickles are read from a size-capped head with the same restricted
    unpickler as data.pkl; each storage's place is found by walking the counts, every one checked
    against its declaration and the file's size before anything is allocated.
    """

    big_endian = False  # torch writes legacy storages little-endian on every host

    def __init__(self, f: io.BufferedReader, size: int, path: str):
        self.f, self.path, self.size = f, path, size
        self.offsets: dict[str, int] = {}
        self._obj: Any = None
        head = io.BytesIO(f.read(min(size, PICKLE_LIMIT)))
        unpickler = _Unpickler(head, legacy=True)
        try:
            magic = unpickler.load()
            if magic != LEGACY_MAGIC:
                raise FormatError(
                    f"{path}: a pickle, not a torch.save file (no torch magic number); only torch.save state_dicts "
                    "and safetensors are read"
                )
            version = unpickler.load()
            if version != LEGACY_PROTOCOL:
                raise FormatError(f"{path}: torch.save legacy protocol {version!r}, expected {LEGACY_PROTOCOL}")
            unpickler.load()  # sys_info: endianness and C type sizes; storages are little-endian regardless
            self._obj = unpickler.load()
            keys = unpickler.load()
        except FormatError:
            raise
        except Refused as e:
            raise _refused(path, e) from None
        except EOFError:
            what = "is truncated" if size <= PICKLE_LIMIT else f"holds pickles over {PICKLE_LIMIT >> 20} MB"
            raise FormatError(f"{path}: a legacy torch.save file that {what}; not a weights file") from None
        except Exception as e:  # noqa: BLE001 - any failure of an untrusted pickle is a format error
            raise FormatError(f"{path}: not a torch.save file ({type(e).__name__}: {e})") from None
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)) or set(keys) != set(
            unpickler.storages
        ):
            raise FormatError(f"{path}: its storage list does not match the storages its tensors use; damaged file")
        self.storages = unpickler.storages
        pos = head.tell()
        for k in keys:
            s = self.storages[k]
            need = 8 + s.numel * _itemsize(s)
            if pos + need > size:
                raise FormatError(f"{path}: storage {k!r} ends past the end of the file; the file is truncated")
            self.offsets[k] = pos
            pos += need

    def load(self) -> Any:
        return self._obj

    def storage_array(self, s: Storage) -> np.ndarray:
        dt = s.stype.dtype
        dtype = np.dtype("<u2" if dt == "bf16" else dt)
        pos, need = self.offsets[s.key], s.numel * dtype.itemsize
        try:
            self.f.seek(pos)
            count = int.from_bytes(self.f.read(8), "little")
            buf = bytearray(need)
            got = self.f.readinto(buf)
        except OSError as e:
            raise FormatError(f"{self.path}: storage {s.key!r} is unreadable ({e}); the file is damaged") from None
        if count != s.numel or got != need:
            raise FormatError(
                f"{self.path}: storage {s.key!r} declares {s.numel} elements, the file holds {count}; damaged file"
            )
        return np.frombuffer(buf, dtype)

    def close(self) -> None:
        pass  # the caller owns the file


def _itemsize(s: Storage) -> int:
    return 2 if s.stype.dtype == "bf16" else np.dtype(s.stype.dtype).itemsize


def _refused(path: str, e: Refused) -> FormatError:
    return FormatError(
        f"{path}: its pickle calls {e}, which a weights-only state_dict never needs: refused, nothing "
        "was run; if you trust the file, re-save only the weights with torch: "
        "torch.save(model.state_dict(), 'weights.pth')"
    )


def materialise(arc: TorchArchive | LegacyArchive, t: TensorRef, key: str, cache: dict[str, np.ndarray]) -> np.ndarray:
    """The tensor as a C-contiguous numpy array in native byte order (bfloat16 -> float32)."""
    s = t.storage
    if t.metadata:
        raise FormatError(f"{arc.path}: tensor {key!r} carries tensor metadata {sorted(t.metadata)[:3]}; not weights")
    n = math.prod(t.size)
    last = t.offset + sum((d - 1) * st for d, st in zip(t.size, t.stride)) if n else 0
    if n and last >= s.numel:
        raise FormatError(
            f"{arc.path}: tensor {key!r} of shape {list(t.size)}, strides {list(t.stride)}, offset {t.offset} reads "
            f"past its storage of {s.numel} elements"
        )
    if n > s.numel:  # only overlapping strides (an expand()ed view) can do this: not a weight
        raise FormatError(
            f"{arc.path}: tensor {key!r} has overlapping strides {list(t.stride)} (an expanded view); "
            "save tensor.contiguous() instead"
        )
    if s.key not in cache:
        cache[s.key] = arc.storage_array(s)
    flat = cache[s.key]
    item = flat.dtype.itemsize
    contiguous = all(st == math.prod(t.size[i + 1 :]) for i, (d, st) in enumerate(zip(t.size, t.stride)) if d != 1)
    try:
        if n == 0:
            a = np.empty(t.size, flat.dtype)
        elif contiguous:
            a = flat[t.offset : t.offset + n].reshape(t.size)  # a view: shared storages stay shared
        else:  # transposed / sliced views: bounds checked above
            a = np.lib.stride_tricks.as_strided(
                flat[t.offset :], shape=t.size, strides=tuple(st * item for st in t.stride), writeable=False
            ).copy()
    except ValueError:  # a shape numpy cannot hold (an empty tensor of 2**62 x 0 ...)
        raise FormatError(f"{arc.path}: tensor {key!r} has an invalid shape {list(t.size)[:8]}") from None
    if s.stype.dtype == "bf16":
        return bf16_to_f32(a)
    return a.astype(a.dtype.newbyteorder("="), copy=False)


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits -> float32, exactly (bfloat16 is the top half of a float32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


# ------------------------------------------------------------------------------------ safetensors

# safetensors dtype -> numpy dtype ("bf16": widened to float32); the F8 types have no numpy dtype
SAFETENSORS_DTYPES = {"F16": "<f2", "F32": "<f4", "F64": "<f8", "I8": "i1", "U8": "u1", "I16": "<i2", "U16": "<u2",
                      "I32": "<i4", "U32": "<u4", "I64": "<i8", "U64": "<u8", "BOOL": "?", "BF16": "bf16"}  # fmt: skip


_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "U16": 2, "I32": 4, "U32": 4,
             "I64": 8, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}  # fmt: skip


def _explain(data: bytes) -> str | None:
    """Which part of a file the safetensors library refused, named (the file, the entry, the
    numbers): its own messages say only what kind of problem. Messages only; None when the
    library's words are the best there are (JSON syntax, unknown dtype)."""
    try:
        return _explain_header(data)
    except Exception:  # noqa: BLE001 - an explanation of a crafted header must not fail: the library's words then
        return None


def _explain_header(data: bytes) -> str | None:
    if len(data) < 8:
        return f"{len(data)} bytes, shorter than the 8-byte header length"
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        return f"the header declares {n} bytes but {len(data) - 8} follow"
    if n > 16 << 20:
        return None
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return f"the header is a JSON {type(header).__name__}, not an object"
    body, end = len(data) - 8 - n, 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dt, shape = info["dtype"], [int(d) for d in info["shape"]]
            a, b = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            return f"entry {name!r} is malformed (it needs dtype, shape and two data_offsets)"
        size = _ITEMSIZE.get(dt, 0) if isinstance(dt, str) else 0
        need = math.prod(shape) * size if all(d >= 0 for d in shape) else -1
        if not 0 <= a <= b <= body or (size and b - a != need):
            return f"entry {name!r} {dt}{shape} has data offsets [{a}, {b}) in {body} data bytes ({need} needed)"
        end = max(end, b)
    if end != body:
        return f"the entries cover {end} of the {body} data bytes"
    return None


def looks_like_safetensors(head: bytes | bytearray, size: int | None = None) -> bool:
    """Whether a file starting with `head` (of `size` bytes: len(head) when None) is safetensors: an
    8-byte little-endian header length that fits the file, then a JSON object."""
    size = len(head) if size is None else size
    return size >= 10 and int.from_bytes(head[:8], "little") < size and bytes(head[8:10]) in (b'{"', b"{ ")


def parse_safetensors(data: bytes, path: str) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """({name: array}, __metadata__, {name: numpy dtype name in the file}) of a whole safetensors file,
    validated by the safetensors library.

    Arrays are writable, in native byte order; BF16 comes back as float32 (exact), its dtype named
    "bfloat16"."""
    try:
        import safetensors
    except ImportError:
        raise MissingFrameworkError(
            f"{path}: reading .safetensors needs the safetensors package: pip install safetensors"
        ) from None
    try:
        entries = safetensors.deserialize(data)
    except Exception as e:  # noqa: BLE001 - SafetensorError, and whatever a crafted header provokes
        why = _explain(data) or str(e).removeprefix("Error while deserializing: ")[:200]
        raise FormatError(f"{path}: not a valid safetensors file: {why} (truncated or corrupt?)") from None
    out: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    entries.reverse()
    while entries:  # popped: the library's per-entry dicts go as the arrays come (crafted 2,000-entry headers)
        name, info = entries.pop()
        dt, shape, raw = info["dtype"], tuple(info["shape"]), info["data"]
        if dt not in SAFETENSORS_DTYPES:
            raise FormatError(f"{path}: safetensors entry {name!r} has dtype {dt}, which has no numpy type")
        dtype = np.dtype("<u2" if dt == "BF16" else SAFETENSORS_DTYPES[dt])
        if len(shape) > MAX_DIMS or any(d >= 1 << 62 for d in shape):  # the library allows what numpy cannot
            raise FormatError(f"{path}: safetensors entry {name!r} has invalid shape {list(shape)[:8]}")
        arr = np.frombuffer(raw, dtype)  # the library checked len(raw) = prod(shape) * itemsize
        arr = arr.reshape(shape) if arr.shape != shape else arr
        out[name] = bf16_to_f32(arr) if dt == "BF16" else arr.astype(dtype.newbyteorder("="), copy=False)
        dtypes[name] = "bfloat16" if dt == "BF16" else str(out[name].dtype)
    n = int.from_bytes(data[:8], "little")  # the header the library just validated
    meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
    return out, (meta if isinstance(meta, dict) else {}), dtypes
