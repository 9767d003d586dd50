"""Write a PyTorch state_dict file (.pth) without importing torch.

`torch.save` on a dict of tensors writes a zip archive (stored, not compressed) holding
`data.pkl` (a protocol-2 pickle that rebuilds each tensor with `torch._utils._rebuild_tensor_v2`
from a persistent storage id), one `data/<key>` record per storage (aligned to 64 bytes), and
`version` / `byteorder` records. Importing torch costs about a second; writing the archive
ourselves streams the weights (often views on a memory-mapped caffemodel) straight to disk.
`torch.load(path)` (weights_only or not) reads the result; a test checks it against torch.save.
Timestamps are fixed, so the bytes depend only on the tensors (and the metadata record).

A file senet-hub writes from a model also holds one extra zip member, ``<archive>/senet_hub.json``:
what a state_dict has no field for (architecture, input convention, class order, how an input
stage was folded, source hashes). torch's reader opens members by name and never lists them, so
``torch.load`` (weights_only too, and mmap) and strict ``load_state_dict`` see only the tensors;
``read_metadata`` reads the record back with zipfile + json, never unpickling anything.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    from senet_hub.graph import Model

ALIGN = 64
_STORAGE = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


def _unicode(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    return b"\x8a\x08" + struct.pack("<q", n)  # LONG1, 8 bytes


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _pickle(entries: list[tuple[str, str, str, tuple[int, ...]]]) -> bytes:
    """entries: (key, storage class, storage key, shape) -> protocol-2 pickle of an OrderedDict."""
    out = [b"\x80\x02", b"ccollections\nOrderedDict\n", b")R", b"("]
    for key, storage, skey, shape in entries:
        numel = int(np.prod(shape, dtype=np.int64))
        strides, acc = [], 1
        for d in reversed(shape):
            strides.append(acc)
            acc *= max(d, 1)
        pid = _tuple(
            [_unicode("storage"), f"ctorch\n{storage}\n".encode(), _unicode(skey), _unicode("cpu"), _int(numel)]
        )
        args = [
            pid + b"Q",
            _int(0),
            _tuple([_int(d) for d in shape]),
            _tuple([_int(s) for s in reversed(strides)]),
            b"\x89",
            b"ccollections\nOrderedDict\n)R",
        ]
        out += [_unicode(key), b"ctorch._utils\n_rebuild_tensor_v2\n", _tuple(args), b"R"]
    out += [b"u", b"."]
    return b"".join(out)


def _crc(chunks: list[memoryview | bytes]) -> int:
    crc = 0
    for c in chunks:
        crc = zlib.crc32(c, crc)
    return crc


class _ZipWriter:
    """Minimal stored (uncompressed) zip writer with 64-byte aligned data, like torch's."""

    def __init__(self, f: BinaryIO):
        self.f, self.pos = f, 0
        self.central: list[tuple[bytes, int, int, int]] = []  # (name, crc, size, offset)

    def add(self, name: str, chunks: list[memoryview | bytes], crc: int | None = None) -> None:
        fname = name.encode()
        size = sum(len(c) if isinstance(c, bytes) else c.nbytes for c in chunks)
        if crc is None:
            crc = _crc(chunks)
        if size >= 0xFFFFFFFF:
            raise ValueError(f"{name}: tensors over 4 GiB need zip64, not supported")
        pad = (-(self.pos + 30 + len(fname) + 4)) % ALIGN
        extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB" padding field, as torch writes
        header = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, crc, size, size, len(fname), len(extra))
        self.f.write(header + fname + extra)
        for c in chunks:
            self.f.write(c)
        self.central.append((fname, crc, size, self.pos))
        self.pos += len(header) + len(fname) + len(extra) + size

    def add_many(self, records: list[tuple[str, list[memoryview | bytes]]]) -> None:
        """add() each record, computing the next record's CRC in a thread while this one is written
        (zlib and file writes release the GIL: the two overlap on two cores)."""
        if not records:
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            nxt = pool.submit(_crc, records[0][1])
            for i, (name, chunks) in enumerate(records):
                crc = nxt.result()
                if i + 1 < len(records):
                    nxt = pool.submit(_crc, records[i + 1][1])
                self.add(name, chunks, crc)

    def close(self) -> None:
        start = self.pos
        for fname, crc, size, offset in self.central:
            rec = struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                0,
                0,
                0x21,
                crc,
                size,
                size,
                len(fname),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            self.f.write(rec + fname)
            self.pos += len(rec) + len(fname)
        n = len(self.central)
        self.f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, self.pos - start, start, 0))


METADATA_NAME = "senet_hub.json"
METADATA_LIMIT = 1 << 20  # the record is a few hundred bytes; refuse to read a huge member


def write_state_dict(
    tensors: Mapping[str, np.ndarray], f: BinaryIO, archive: str = "archive", metadata: dict | None = None
) -> None:
    """Write `tensors` (name -> numpy array, C order) as torch.save would write the dict of tensors;
    `metadata` (JSON-serialisable) goes into the extra member ``<archive>/senet_hub.json``."""
    entries, records = [], []
    for i, (key, arr) in enumerate(tensors.items()):
        a = np.asarray(arr)
        if a.dtype not in _STORAGE:
            raise TypeError(f"{key}: dtype {a.dtype} has no torch storage type here")
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)
        if a.dtype.byteorder == ">":
            a = a.astype(a.dtype.newbyteorder("<"))
        entries.append((key, _STORAGE[a.dtype], str(i), tuple(int(d) for d in a.shape)))
        records.append((f"{archive}/data/{i}", memoryview(a.reshape(-1)).cast("B") if a.size else b""))  # type: ignore[arg-type]
    z = _ZipWriter(f)
    z.add(f"{archive}/data.pkl", [_pickle(entries)])
    z.add(f"{archive}/.format_version", [b"1"])
    z.add(f"{archive}/.storage_alignment", [b"64"])
    z.add(f"{archive}/byteorder", [b"little"])
    z.add_many([(name, [data]) for name, data in records])
    if metadata is not None:
        z.add(f"{archive}/{METADATA_NAME}", [json.dumps(metadata, sort_keys=True, default=str).encode("utf-8")])
    z.add(f"{archive}/version", [b"3\n"])
    z.close()


def model_state_dict(model: Model) -> dict[str, np.ndarray]:
    """The state_dict torch would give for senet-hub's module of `model`, in the same key order.

    Parameterised nodes are leaf modules at their dotted path; torch lists a module tree
    depth-first with children in registration (graph) order; BatchNorm adds num_batches_tracked.
    """
    tree: dict = {}
    for n in model.graph.nodes:
        params = n.param_names()
        if not params:
            continue
        node = tree
        for part in n.name.split("."):
            node = node.setdefault(part, {})
        node[None] = n
    out: dict[str, np.ndarray] = {}

    def walk(node: dict, prefix: str) -> None:
        n = node.get(None)
        if n is not None:
            for p in n.param_names():
                out[f"{n.name}.{p}"] = np.asarray(model.weights[f"{n.name}.{p}"], np.float32)
            if n.op == "batch_norm":
                out[f"{n.name}.num_batches_tracked"] = np.zeros((), np.int64)
        for k, child in node.items():
            if k is not None:
                walk(child, f"{prefix}{k}.")

    walk(tree, "")
    return out


def metadata_record(model: Model) -> dict[str, Any]:
    """What a state_dict file cannot say by itself: the record read_metadata returns."""
    from senet_hub import __version__

    meta = model.meta
    return {
        "format": "senet-hub",
        "version": __version__,
        "arch": meta.get("arch"),
        "input_convention": meta.get("input_convention"),
        "class_order": meta.get("class_order"),
        "input_fold": meta.get("input_fold"),
        "source_sha256": meta.get("source_sha256"),
    }


def check_weights_only(model: Model, what: str = "a .pth state_dict") -> None:
    """Refuse a model whose input convention lives in an input_norm stage: the stage has no
    parameters, so a state_dict would drop it silently and a consumer's model (timm, Cadene) would
    compute the source convention (fold it first, as sources.save_model does). A graph with no
    input convention (e.g. a test graph of every op) is written as is: its input_norm lives in the
    graph senet-hub loads the file with (builders.torch.load_state_dict(graph, path))."""
    from senet_hub.errors import UnsupportedError

    stages = [n.name for n in model.graph.nodes if n.op == "input_norm"]
    if stages and model.meta.get("input_convention"):
        raise UnsupportedError(
            f"{model.arch}: node '{stages[0]}' (the input convention stage) has no weights, so {what} cannot "
            "hold it; fold it into conv1 (senet_hub.transforms.fold_input_stage) or write .pt2/.pt/ONNX"
        )


def save_model(model: Model, path: str, metadata: dict[str, Any] | None = None) -> list[str]:
    """Write the model's state_dict as a .pth file, atomically, without importing torch;
    with `metadata` (see metadata_record) the file carries that record too."""
    from senet_hub.atomic import atomic_outputs

    check_weights_only(model)
    sd = model_state_dict(model)
    with atomic_outputs([path]) as (tmp,), open(tmp, "wb") as f:
        write_state_dict(sd, f, metadata=metadata)
    return [path]


def read_metadata(path: str) -> dict[str, Any] | None:
    """The senet-hub record of a .pth (zipfile + json, nothing unpickled); None when the file is not
    a zip archive or has no such record. An unreadable path raises InputFileError (exit 3)."""
    from senet_hub.errors import FormatError

    from .wire import open_regular

    f, _ = open_regular(path, "PyTorch state_dict")
    with f:
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
        with zf:
            names = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/" + METADATA_NAME)]
            if not names:
                return None
            info = zf.getinfo(names[0])
            if info.file_size > METADATA_LIMIT:
                raise FormatError(f"{path}: {names[0]} is {info.file_size} bytes, not a senet-hub record")
            try:
                data = json.loads(zf.read(info).decode("utf-8"))
            except (zipfile.BadZipFile, OSError, ValueError, UnicodeDecodeError) as e:
                raise FormatError(f"{path}: unreadable {names[0]} ({e}); rewrite the file with senet-hub") from None
    if not isinstance(data, dict) or data.get("format") != "senet-hub":
        return None
    return data
