"""Caffe's two file formats, read without Caffe or generated protobuf code.

* prototxt: protobuf text format, parsed into nested dicts ``{field: [values]}``.
* caffemodel: protobuf wire format (NetParameter), read into ``{layer name: [ndarray, ...]}``
  with ``np.frombuffer`` views on the packed blob data, so a 461 MB file costs one read.
  V0 files (pre-2014: V1LayerParameter.layer = 1, a V0LayerParameter with blobs = 50) are
  refused with the Caffe tool that upgrades them.

Field numbers are from BVLC caffe.proto: NetParameter.layer = 100 (V2) and .layers = 2 (V1);
LayerParameter name=1 type=2 blobs=7; V1LayerParameter name=4 type=5 (enum) blobs=6;
BlobProto num/channels/height/width = 1..4, data=5, shape=7 (BlobShape.dim=1), double_data=8.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from senet_hub.errors import FormatError

from .wire import WireReader, read_bytes

# V1LayerParameter.LayerType enum (caffe.proto) -> V2 type string
V1_TYPES = {
    0: "None", 1: "Accuracy", 2: "BNLL", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout",
    7: "EuclideanLoss", 8: "Flatten", 9: "HDF5Data", 10: "HDF5Output", 11: "Im2col", 12: "ImageData",
    13: "InfogainLoss", 14: "InnerProduct", 15: "LRN", 16: "MultinomialLogisticLoss", 17: "Pooling",
    18: "ReLU", 19: "Sigmoid", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 23: "TanH",
    24: "WindowData", 25: "Eltwise", 26: "Power", 27: "SigmoidCrossEntropyLoss", 28: "HingeLoss",
    29: "MemoryData", 30: "ArgMax", 31: "Threshold", 32: "DummyData", 33: "Slice", 34: "MVN",
    35: "AbsVal", 36: "Silence", 37: "ContrastiveLoss", 38: "Exp", 39: "Deconvolution",
}  # fmt: skip
# V1 prototxt enum names (INNER_PRODUCT) -> V2 type strings, matched without underscores
V1_TYPE_NAMES = {v.upper(): v for v in V1_TYPES.values()} | {"SOFTMAXLOSS": "SoftmaxWithLoss"}

MAX_DEPTH = 64  # nesting limit for text messages: deploy files need 4
# Fuzzing limits (see tests/fuzzing.py). Parsed text costs tens of bytes of Python objects per
# byte, so the file size is capped: the largest released deploy file (SENet-154) is 150 KB.
MAX_PROTOTXT_BYTES = 4 << 20
MAX_BLOB_AXES = 32  # Caffe's kMaxBlobAxes (and numpy's ndim limit)
# Crafted files of minimal records cost far more per byte than real ones (a blob: ~300 bytes of
# Python objects and ~10 us; any field: ~1 us). Real models have a few thousand blobs (SENet-154:
# ~2,600) and fields; these caps bound a crafted file to about a second and ~30 MB.
MAX_BLOBS = 1 << 16
MAX_FIELDS = 1 << 20  # fields of the net, its layers and blobs, not counting float values


# ------------------------------------------------------------------------------ text format
class Quoted(str):
    """A string value that was quoted in the text (names) as opposed to an enum or number."""


# Strings are written "unrolled" ([^"\\]* runs between escapes): `(?:[^"\\]|\\.)*` made the regex
# engine keep ~150 bytes of backtracking state per character, so an unterminated 1 MB quote took
# 150 MB (fuzzing fix).
_TOKEN = re.compile(
    r"""\s+|\#[^\n]*|("[^"\\\n]*(?:\\.[^"\\\n]*)*"|'[^'\\\n]*(?:\\.[^'\\\n]*)*')|([{}:\[\],;<>])|([^\s{}:\[\],;<>#"']+)"""
)


def _tokens(text: str, path: str):
    """(kind, value, line) tokens, produced lazily: a parse error (a nesting bomb, a stray brace)
    stops the work there instead of after tokenising the whole file (fuzzing fix)."""
    pos, line, n = 0, 1, len(text)
    while pos < n:
        m = _TOKEN.match(text, pos)
        if not m:
            raise FormatError(f"{path}:{line}: cannot parse prototxt near {text[pos : pos + 20]!r}")
        if m.group(1):
            yield "str", Quoted(m.group(1)[1:-1]), line
        elif m.group(2):
            yield "sym", m.group(2), line
        elif m.group(3):
            yield "word", m.group(3), line
        line += text.count("\n", pos, m.end())
        pos = m.end()


def parse_prototxt(text: str, path: str = "<prototxt>") -> dict[str, list[Any]]:
    """Protobuf text format -> nested dicts {field: [value, ...]}; scalars stay strings."""
    toks = _tokens(text, path)
    cur: tuple[str, str, int] | None = next(toks, None)
    last_line = 1

    def advance() -> None:
        nonlocal cur, last_line
        if cur is not None:
            last_line = cur[2]
        cur = next(toks, None)

    def fail(msg: str) -> FormatError:
        return FormatError(f"{path}:{cur[2] if cur is not None else last_line}: {msg}")

    def message(close: str | None, depth: int) -> dict[str, list[Any]]:
        if depth > MAX_DEPTH:
            raise fail(f"messages nested deeper than {MAX_DEPTH}")
        out: dict[str, list[Any]] = {}
        while True:
            if cur is None:
                if close is None:
                    return out
                raise fail(f"unexpected end of file: missing '{close}'")
            kind, val, _ = cur
            if kind == "sym" and val == close:
                return out
            if kind != "word":
                raise fail(f"expected a field name, got {val!r}")
            advance()
            if cur is not None and cur[:2] == ("sym", ":"):
                advance()
            if cur is None:
                raise fail(f"field '{val}' has no value")
            k2, v2, _ = cur
            if k2 == "sym" and v2 in "{<":
                advance()
                out.setdefault(val, []).append(message("}" if v2 == "{" else ">", depth + 1))
                advance()
            elif k2 == "sym" and v2 == "[":
                advance()
                while cur is not None and cur[:2] != ("sym", "]"):
                    if cur[:2] != ("sym", ","):
                        out.setdefault(val, []).append(cur[1])
                    advance()
                if cur is None:
                    raise fail(f"unclosed '[' in field '{val}'")
                advance()
            elif k2 == "sym":
                raise fail(f"field '{val}': unexpected {v2!r}")
            else:
                out.setdefault(val, []).append(v2)
                advance()
            if cur is not None and cur[:2] in (("sym", ","), ("sym", ";")):
                advance()

    result = message(None, 0)
    if cur is not None:
        raise fail(f"unexpected {cur[1]!r}")
    return result


def format_prototxt(msg: dict[str, list[Any]], indent: int = 0) -> str:
    """Nested dicts -> protobuf text format (the inverse of parse_prototxt)."""
    pad, out = "  " * indent, []
    for key, values in msg.items():
        for v in values:
            if isinstance(v, dict):
                out.append(f"{pad}{key} {{\n{format_prototxt(v, indent + 1)}{pad}}}\n")
            elif isinstance(v, Quoted):
                out.append(f'{pad}{key}: "{v}"\n')
            elif isinstance(v, bool):
                out.append(f"{pad}{key}: {str(v).lower()}\n")
            else:
                out.append(f"{pad}{key}: {v}\n")
    return "".join(out)


def read_prototxt(path: str | os.PathLike) -> tuple[dict[str, list[Any]], str]:
    raw = read_bytes(path, "prototxt", MAX_PROTOTXT_BYTES)
    if not raw.strip():  # not "no input declared" (exit 6): an empty file is a bad file (exit 4)
        raise FormatError(f"{path}: empty file; pass the deploy .prototxt")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: not a text prototxt (binary data?); pass the deploy .prototxt") from None
    net = parse_prototxt(text, str(path))
    # V0 nets (pre-2014) nest the layer in `layers { layer { name type ... } bottom top }`: read
    # as V1 they are layers without a name or type, so say what they are and what upgrades them
    if any(isinstance(raw_layer, dict) and isinstance(next(iter(raw_layer.get("layer", [])), None), dict)
           for raw_layer in net.get("layers", [])):  # fmt: skip
        raise FormatError(
            f"{path}: a V0 (pre-2014) prototxt; convert it with Caffe's tools/upgrade_net_proto_text first"
        )
    return net, text


# ------------------------------------------------------------------------------ wire format
class _Wire(WireReader):
    """The NetParameter cursor: names the layer being read and caps the number of fields."""

    __slots__ = ("what", "u8", "left")

    def __init__(self, buf: memoryview, path: str, what: str):
        super().__init__(buf, path)
        self.what = what
        self.left = MAX_FIELDS  # see spend()
        # blobs are views of this one array: a slice of it costs less than a memoryview + array per blob
        self.u8 = np.frombuffer(buf, np.uint8)
        # read-only like the memory map it replaced: a builder that wrote into a weight in place
        # would otherwise change the model it was given
        self.u8.flags.writeable = False

    def error(self, msg: str) -> FormatError:
        return FormatError(f"{self.path}: {msg} in {self.what} (truncated or not a caffemodel?); re-download the file")

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise self.error(f"more than {MAX_FIELDS} fields")

    def string(self, span: tuple[int, int]) -> str:
        return self.text(span, "a name")

    def packed_ints(self, span: tuple[int, int], limit: int) -> list[int]:
        out, pos = [], span[0]
        while pos < span[1]:
            v, pos = self.varint(pos, span[1])
            out.append(v - (1 << 64) if v >= 1 << 63 else v)
            if len(out) > limit:
                raise self.error(f"more than {limit} values in a packed field")
        return out


def show(name: str, limit: int = 80) -> str:
    """A name read from a file, fit for a one-line message: control characters escaped, long names cut."""
    if not name.isprintable():
        name = "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)
    return name if len(name) <= limit else name[:limit] + "..."


_EMPTY = np.zeros(0, np.float32)
_EMPTY.flags.writeable = False  # like every blob (read-only views on the file's buffer)

_RUN = -1  # _blob_fields' wire type for a run of one-value-per-field floats or doubles
_RUN_TAGS = {0x2D: (5, 4), 0x41: (8, 8)}  # key byte of field 5 fixed32 / field 8 fixed64 -> (field, size)
_RUN_CHUNK = 1 << 16  # records compared per numpy call at most (bounds the temporary to 64 KB)


def _run_length(u8: np.ndarray, pos: int, end: int, tag: int, rec: int) -> int:
    """How many `rec`-byte records starting at `pos` (and ending by `end`) begin with `tag`.

    Compared with numpy on a strided view of the key bytes, in chunks that start small and
    double: a short run costs one small comparison, a long one a few large ones, so a crafted
    blob of alternating fields stays linear.
    """
    nmax = (end - pos) // rec
    n, step = 0, 64
    while n < nmax:
        k = min(step, nmax - n)
        eq = u8[pos + n * rec : pos + (n + k) * rec : rec] == tag
        if not eq.all():
            return n + int(eq.argmin())
        n += k
        step = min(2 * step, _RUN_CHUNK)
    return n


def _blob_fields(w: _Wire, pos: int, end: int):
    """BlobProto fields like w.fields, except that a run of unpacked float (or double) values,
    one key byte + 4 (8) bytes each, comes as one (field, _RUN, (start, count)) item.

    Old Caffe writers and careless scripts store every value as its own field: parsing those one
    by one cost ~1 us each (107 s for SE-ResNet-50); found as runs they read at packed speed.
    """
    buf, u8 = w.buf, w.u8
    while pos < end:
        tag = buf[pos]
        if tag in _RUN_TAGS:
            field, size = _RUN_TAGS[tag]
            n = _run_length(u8, pos, end, tag, size + 1)
            if n:
                yield field, _RUN, (pos, n)
                pos += n * (size + 1)
                continue
        field, wt, val = next(w.fields(pos, end))  # any other field (or a cut value): the general reader
        pos = w.varint(w.varint(pos, end)[1], end)[1] if wt == 0 else val[1]
        yield field, wt, val


def _blob(w: _Wire, start: int, end: int) -> np.ndarray:
    legacy = {}
    shape: list[int] | None = None
    # float (5) / double (8) data: packed, or one value per field (old files). Only counted here,
    # then gathered into one array: no Python object per value or per field (fuzzing fix: unpacked
    # floats cost ~100 bytes each before, so a crafted or legacy file took ~20x its size).
    counts, nfields, first = {5: 0, 8: 0}, {5: 0, 8: 0}, {5: (0, 0), 8: (0, 0)}
    for field, wt, val in _blob_fields(w, start, end):
        if wt == _RUN:  # n values, one per field: counted, never iterated in Python
            pos, n = val
            size = 4 if field == 5 else 8
            counts[field] += n
            nfields[field] += n
            if nfields[field] == n:  # the first data of this field: a single value is a view
                first[field] = (pos + 1, pos + 1 + size)
            continue
        if field not in (5, 8):  # one value per field is legal (old files): values are not counted
            w.spend()
        if field in (1, 2, 3, 4) and wt == 0:
            legacy[field] = val
        elif field == 7 and wt == 2:
            shape = []
            for f2, wt2, v2 in w.fields(*val):
                if f2 != 1:
                    continue
                if wt2 == 2:
                    shape.extend(w.packed_ints(v2, MAX_BLOB_AXES))
                elif wt2 == 0:
                    shape.append(v2 - (1 << 64) if v2 >= 1 << 63 else v2)
                else:  # fuzzing fix: a fixed32/64 dim used to reach the shape check as a tuple
                    raise w.error(f"BlobShape.dim has wire type {wt2}")
                if len(shape) > MAX_BLOB_AXES:
                    raise w.error(f"blob shape has more than {MAX_BLOB_AXES} axes")
        elif field in (5, 8) and wt in (2, 5, 1):  # float / double data, packed or one value per field
            size = 4 if field == 5 else 8
            if (val[1] - val[0]) % size:
                raise w.error(f"packed {'float' if size == 4 else 'double'} data is not a multiple of {size} bytes")
            counts[field] += (val[1] - val[0]) // size
            nfields[field] += 1
            if nfields[field] == 1:
                first[field] = val
    field = 5 if nfields[5] or not nfields[8] else 8
    dtype = np.dtype("<f4" if field == 5 else "<f8")
    count = counts[field]
    if shape is None:
        shape = [legacy.get(k, 1) for k in (1, 2, 3, 4)] if legacy else [count]
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=object)) != count:
        raise w.error(f"blob shape {shape} does not match its {count} values")
    if count == 0 and shape == [0]:
        return _EMPTY  # shared: a file of empty blob records costs ~4x its size, not ~60x
    if nfields[field] <= 1:  # the usual case: a view on the file, nothing copied
        a, b = first[field]
        data = w.u8[a:b].view(dtype)
    else:  # one copy of the bytes (bit for bit, NaN payloads included), whatever the encoding
        data, i = np.empty(count, dtype), 0
        raw = data.view(np.uint8)
        size = dtype.itemsize
        for f, wt, v in _blob_fields(w, start, end):
            if f != field:
                continue
            if wt == _RUN:  # n (key, value) records viewed as a struct: the values copied in one go
                a, n = v
                records = w.u8[a : a + n * (size + 1)].view(np.dtype([("key", "u1"), ("value", dtype)]))
                data[i : i + n] = records["value"]
                i += n
            elif wt in (2, 5, 1):
                a, b = v
                raw[i * size : i * size + (b - a)] = w.u8[a:b]
                i += (b - a) // size
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # doubles past float32 become inf: reported later
            return data.astype(np.float32, copy=False).reshape(shape)
    except (ValueError, OverflowError):  # e.g. [0, 2**63]: no values, but no array has that shape
        raise w.error(f"blob shape {shape} is not a valid array shape") from None


def read_caffemodel(path: str | os.PathLike) -> dict[str, tuple[str, list[np.ndarray]]]:
    """{layer name: (layer type, [blobs])} for every layer that carries blobs.

    The file is read into one buffer with one readinto (wire.read_bytes: regular files only, so a
    FIFO never blocks; a file truncated or rewritten while being read is a FormatError, exit 4,
    where the memory map it replaces died of SIGBUS). Float blobs are read-only views on that
    buffer: nothing else is copied, so peak memory stays near the file size. Views may be
    unaligned; code that computes with them copies what it needs.
    """
    buf = read_bytes(path, "caffemodel")
    if not buf:
        raise FormatError(f"{path}: empty file; re-download the caffemodel")
    return _read_net(memoryview(buf), str(path))


def _read_net(mv: memoryview, path: str) -> dict[str, tuple[str, list[np.ndarray]]]:
    w = _Wire(mv, path, "NetParameter")
    layers: dict[str, tuple[str, list[np.ndarray]]] = {}
    seen_layer, n_blobs = False, 0
    for field, wt, val in w.fields(0, len(mv)):
        w.spend()
        if wt != 2 or field not in (2, 100):
            continue
        seen_layer = True
        v1 = field == 2
        name, ltype, blobs = None, "", []
        w.what = "a layer"
        for f2, wt2, v2 in w.fields(*val):
            w.spend()
            if v1 and f2 == 1 and wt2 == 2:  # V1LayerParameter.layer: a V0LayerParameter (blobs = 50)
                raise FormatError(
                    f"{path}: a V0 (pre-2014) caffemodel; convert it with Caffe's tools/upgrade_net_proto_binary first"
                )
            if wt2 == 2 and f2 == (4 if v1 else 1):
                name = w.string(v2)
                w.what = f"layer '{show(name)}'"  # a crafted name may hold newlines or escapes
            elif f2 == (5 if v1 else 2):
                ltype = V1_TYPES.get(v2, str(v2)) if v1 and wt2 == 0 else w.string(v2) if wt2 == 2 else str(v2)
            elif wt2 == 2 and f2 == (6 if v1 else 7):
                n_blobs += 1
                if n_blobs > MAX_BLOBS:
                    raise w.error(f"more than {MAX_BLOBS} blobs")
                blobs.append(_blob(w, *v2))
        w.what = "NetParameter"
        if name is None:
            raise w.error("a layer without a name")
        if blobs:
            if name in layers:  # Caffe copies both, the last winning: an ambiguity to refuse
                raise FormatError(
                    f"{path}: two layers named '{show(name)}' carry weights; Caffe would copy both into one "
                    "layer (the last winning, each blob count checked): remove or rename the duplicate"
                )
            layers[name] = (ltype, blobs)
    if not seen_layer:
        raise FormatError(f"{path}: no layers found: not a Caffe caffemodel (binary NetParameter)")
    return layers


# ------------------------------------------------------------------------------ wire writer
def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)


def ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_layer(name: str, ltype: str, blobs: list[np.ndarray]) -> bytes:
    """One NetParameter.layer (V2) record with its blobs (shape + packed float data)."""
    body = ld(1, name.encode()) + ld(2, ltype.encode())
    for arr in blobs:
        arr = np.ascontiguousarray(arr, dtype="<f4")
        shape = ld(1, b"".join(_varint(int(d)) for d in arr.shape))
        body += ld(7, ld(7, shape) + ld(5, arr.tobytes()))
    return ld(100, body)
