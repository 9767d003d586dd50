"""Structure-aware fuzzing of senet-hub's readers (used by tests/test_fuzz.py and bench/fuzz.py).

Over 500 lines because it is one format-aware mutator per reader plus one runner; each part is
independent and read alone. It lives in bench/ (not tests/): a library, not a test module; tests
import it through tests/conftest.py, which puts bench/ on sys.path.

Every reader of untrusted input is a ``Target``: seed files, mutators that know the format's
structure, and ``run(paths)`` that reads the mutated file the way a user's command would. The
contract checked for every input: the reader returns, or raises a ``SenetHubError``; never another
exception, never a hang (``HANG_LIMIT`` seconds: generous, so a busy machine never fails a test;
speed figures are bench/fuzz.py's, against ``TIME_LIMIT``), never more traced memory than
``target.mem_factor * file size + MEM_SLACK`` (tracemalloc peak; numpy buffers and the input's
own buffer, 1x the file size, are traced).

Formats and what is mutated:

* caffemodel (protobuf wire format, parsed here into a field tree with a schema): truncation at
  every field boundary, bit flips, huge declared lengths, huge/negative/zero/too many dims,
  legacy num/channels/height/width, wrong wire types, duplicated/missing/renamed layers and
  blobs, NaN/Inf weights, deep nesting, over-long varints, field 0, groups, splices.
* prototxt (protobuf text format, tokenised): truncation at every token, unbalanced braces,
  nesting around the parser's MAX_DEPTH and far beyond, huge/odd numbers, bad enums, duplicate
  layer names, cycles/undefined/self bottoms, scalars where messages belong and back, bad UTF-8.
* MindSpore .ckpt and the YAML manifest: registered when their readers exist
  (``converters/mindspore.py: read_ckpt_tensors``, ``senet_hub/manifest.py``).
* torch.save archives (``converters/pytorch.py: read_state_dict``): the zip container, the
  data.pkl pickle (bytes, globals such as ``os.system``, tensor offsets/shapes/strides, storage
  ids, wrappers and prefixes), the storage records (sizes, compression, byte order), the legacy
  format; and .safetensors through the same reader.

Adding a reader is one ``@target_family("name")`` function returning its ``Target``s; every family
in ``FAMILIES`` is built by ``setup_targets`` and a family that fails to build raises (it is never
dropped): tests/test_fuzz.py asserts the exact set of target names.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import random
import re
import signal
import struct
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from senet_hub.converters import caffe  # noqa: E402
from senet_hub.converters.caffe_format import MAX_DEPTH, encode_layer, ld, read_caffemodel  # noqa: E402
from senet_hub.errors import SenetHubError  # noqa: E402

# An input still running after HANG_LIMIT seconds is a hang (a BUG outcome). Typical inputs take
# milliseconds, the slowest ~1 s on a busy shared CPU: tests assert no wall time below this
# (a 5 s assertion failed under load once); TIME_LIMIT is the speed figure bench/fuzz.py reports.
HANG_LIMIT = 120.0
TIME_LIMIT = 5.0
MEM_SLACK = 1 << 20  # bytes of fixed overhead allowed on top of the per-byte factor

# ------------------------------------------------------------------------------------ seeds
# The smallest nets that exercise the reader; tests/test_caffe_reader.py and others use them too
# (one definition). TINY: conv + BatchNorm/Scale + ReLU + ceil max pool + InnerProduct + Softmax.
TINY = """
name: "tiny"
input: "data"
input_shape { dim: 1 dim: 3 dim: 9 dim: 9 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 bias_term: false } }
layer { name: "conv/bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "conv/scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# V1 (`layers`, enum types, legacy input_dim header)
V1_NET = """
name: "tiny-v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 9 input_dim: 9
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"
         convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 bias_term: false } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
layers { name: "pool" type: POOLING bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool" top: "fc" inner_product_param { num_output: 5 } }
layers { name: "prob" type: SOFTMAX bottom: "fc" top: "prob" }
"""
TINY_V1 = V1_NET


def tiny_weights(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """TINY's blobs by layer (the reader tests' weights: BatchNorm's blobs stored x2, factor 2)."""
    return {
        "conv": [rng.normal(size=(4, 3, 3, 3)).astype(np.float32)],
        "conv/bn": [
            rng.normal(size=4).astype(np.float32) * 2,
            rng.uniform(1, 2, 4).astype(np.float32) * 2,
            np.array([2.0], np.float32),
        ],
        "conv/scale": [rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)],
        "fc": [rng.normal(size=(5, 4 * 2 * 2)).astype(np.float32), rng.normal(size=5).astype(np.float32)],
    }


# An SE block with every layer type the reader handles (Axpy, two-bottom Scale, Split, Concat, ...)
SE_TINY = """
name: "se_tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 6 dim: 6 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "conv1/bn" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { use_global_stats: true eps: 1e-5 } }
layer { name: "conv1/scale" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "conv1/relu" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "se/pool" type: "Pooling" bottom: "conv1" top: "se/pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "se/down" type: "Convolution" bottom: "se/pool" top: "se/down" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "se/relu" type: "ReLU" bottom: "se/down" top: "se/down" }
layer { name: "se/up" type: "Convolution" bottom: "se/down" top: "se/up" convolution_param { num_output: 8 kernel_size: 1 } }
layer { name: "se/prob" type: "Sigmoid" bottom: "se/up" top: "se/up" }
layer { name: "proj" type: "Convolution" bottom: "data" top: "proj" convolution_param { num_output: 8 kernel_size: 1 group: 4 } }
layer { name: "axpy" type: "Axpy" bottom: "se/up" bottom: "conv1" bottom: "proj" top: "axpy" }
layer { name: "split" type: "Split" bottom: "axpy" top: "s1" top: "s2" }
layer { name: "gate" type: "Scale" bottom: "s1" bottom: "se/up" top: "gate" scale_param { axis: 0 } }
layer { name: "sum" type: "Eltwise" bottom: "gate" bottom: "s2" top: "sum" eltwise_param { operation: SUM } }
layer { name: "cat" type: "Concat" bottom: "sum" bottom: "proj" top: "cat" concat_param { axis: 1 } }
layer { name: "pool" type: "Pooling" bottom: "cat" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" dropout_param { dropout_ratio: 0.2 } }
layer { name: "flat" type: "Flatten" bottom: "pool" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc" inner_product_param { num_output: 3 } }
layer { name: "rs" type: "Reshape" bottom: "fc" top: "rs" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "prob" type: "Softmax" bottom: "rs" top: "prob" }
"""


def tiny_blobs(rng: np.random.Generator) -> list[tuple[str, str, list[np.ndarray]]]:
    f = np.float32
    return [
        ("conv", "Convolution", [rng.normal(size=(4, 3, 3, 3)).astype(f)]),
        ("conv/bn", "BatchNorm", [rng.normal(size=4).astype(f), rng.uniform(1, 2, 4).astype(f), np.array([2.0], f)]),
        ("conv/scale", "Scale", [rng.normal(size=4).astype(f), rng.normal(size=4).astype(f)]),
        ("fc", "InnerProduct", [rng.normal(size=(5, 16)).astype(f), rng.normal(size=5).astype(f)]),
    ]


def se_tiny_blobs(rng: np.random.Generator) -> list[tuple[str, str, list[np.ndarray]]]:
    f = np.float32

    def n(*s):
        return rng.normal(size=s).astype(f)

    return [
        ("conv1", "Convolution", [n(8, 4, 3, 3)]),
        ("conv1/bn", "BatchNorm", [n(8), rng.uniform(1, 2, 8).astype(f), np.array([1.0], f)]),
        ("conv1/scale", "Scale", [n(8), n(8)]),
        ("se/down", "Convolution", [n(2, 8, 1, 1), n(2)]),
        ("se/up", "Convolution", [n(8, 2, 1, 1), n(8)]),
        ("proj", "Convolution", [n(8, 1, 1, 1), n(8)]),
        ("fc", "InnerProduct", [n(3, 256), n(3)]),
    ]


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(num: int, wt: int) -> bytes:
    return _varint(num << 3 | wt)


def legacy_caffemodel(rng: np.random.Generator) -> bytes:
    """TINY_V1's weights in old encodings: V1 `layers` with enum types, num/channels/height/width,
    double_data, one float per field (unpacked), plus an unused packed V1 layer."""
    blobs = {n: b for n, _, b in tiny_blobs(rng)}

    def blob(arr: np.ndarray, mode: str) -> bytes:
        dims = (1,) * (4 - arr.ndim) + arr.shape
        body = b"".join(_key(f, 0) + _varint(d) for f, d in zip((1, 2, 3, 4), dims))
        if mode == "double":
            return body + ld(8, arr.astype("<f8").tobytes())
        if mode == "unpacked":
            return body + b"".join(_key(5, 5) + v.tobytes() for v in arr.astype("<f4").ravel())
        return body + ld(5, arr.astype("<f4").tobytes())

    def v1(name: str, enum: int, arrs: list[np.ndarray], mode: str) -> bytes:
        body = ld(4, name.encode()) + _key(5, 0) + _varint(enum)
        return ld(2, body + b"".join(ld(6, blob(a, mode)) for a in arrs))

    return (
        ld(1, b"tiny-v1")
        + v1("conv", 4, blobs["conv"], "double")
        + v1("unused", 0, blobs["conv/scale"], "packed")
        + v1("fc", 14, blobs["fc"], "unpacked")
    )


def caffemodel_bytes(records: list[tuple[str, str, list[np.ndarray]]]) -> bytes:
    return b"".join(encode_layer(n, t, b) for n, t, b in records)


@dataclass
class CaffeSeed:
    name: str
    prototxt: str
    caffemodel: bytes


def caffe_seeds() -> list[CaffeSeed]:
    rng = np.random.default_rng(20240607)
    return [
        CaffeSeed("tiny", TINY, caffemodel_bytes(tiny_blobs(rng))),
        CaffeSeed("tiny_v1", TINY_V1, legacy_caffemodel(rng)),
        CaffeSeed("se_tiny", SE_TINY, caffemodel_bytes(se_tiny_blobs(rng))),
    ]  # fmt: skip


# ------------------------------------------------------------------------ protobuf field tree
class PB:
    """One protobuf field: number, wire type, value (int | bytes | list[PB] for a parsed message)."""

    __slots__ = ("num", "wt", "val", "declared")

    def __init__(self, num: int, wt: int, val: Any, declared: int | None = None):
        self.num, self.wt, self.val, self.declared = num, wt, val, declared

    def __deepcopy__(self, memo: dict) -> PB:
        v = [copy.deepcopy(x, memo) for x in self.val] if isinstance(self.val, list) else self.val
        return PB(self.num, self.wt, v, self.declared)


# message type -> {field number: message type of that field}
CAFFE_SCHEMA = {
    "Net": {100: "Layer", 2: "V1Layer"},
    "Layer": {7: "Blob"},
    "V1Layer": {6: "Blob"},
    "Blob": {7: "Shape"},
    "Shape": {},
}
CKPT_SCHEMA = {"Checkpoint": {1: "Value"}, "Value": {2: "Tensor"}, "Tensor": {}}


def pb_parse(buf: bytes, schema: dict[str, dict[int, str]], msg: str) -> list[PB] | None:
    """Parse a whole message (None if it is not one); fields the schema names are parsed too."""
    out, pos, n = [], 0, len(buf)
    try:
        while pos < n:
            key, pos = _read_varint(buf, pos)
            num, wt = key >> 3, key & 7
            if num == 0:
                return None
            if wt == 0:
                v, pos = _read_varint(buf, pos)
                out.append(PB(num, 0, v))
            elif wt in (1, 5):
                size = 8 if wt == 1 else 4
                if pos + size > n:
                    return None
                out.append(PB(num, wt, buf[pos : pos + size]))
                pos += size
            elif wt == 2:
                ln, pos = _read_varint(buf, pos)
                if pos + ln > n:
                    return None
                payload = buf[pos : pos + ln]
                pos += ln
                sub = schema[msg].get(num)
                parsed = pb_parse(payload, schema, sub) if sub else None
                out.append(PB(num, 2, parsed if parsed is not None else payload))
            else:
                return None
    except IndexError:
        return None
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise IndexError


def pb_encode(fields: list[PB], bounds: list[int] | None = None, base: int = 0) -> bytes:
    """Encode a field tree; `bounds` collects the absolute start and end offset of every field."""
    out = bytearray()
    for f in fields:
        if bounds is not None:
            bounds.append(base + len(out))
        out += _key(f.num, f.wt)
        if f.wt == 0:
            out += _varint(f.val if isinstance(f.val, int) else len(f.val))
        elif f.wt in (1, 5):
            raw = f.val if isinstance(f.val, bytes) else b""
            out += raw
        elif f.wt == 2:
            if isinstance(f.val, list):
                inner_bounds: list[int] | None = [] if bounds is not None else None
                payload = pb_encode(f.val, inner_bounds, 0)
            else:
                payload, inner_bounds = (f.val if isinstance(f.val, bytes) else _varint(f.val)), None
            out += _varint(len(payload) if f.declared is None else f.declared)
            if bounds is not None and inner_bounds is not None:
                bounds.extend(base + len(out) + b for b in inner_bounds)
            out += payload
        # wire types 3, 4 (groups) and 6, 7 (invalid) carry nothing here: the key alone
        if bounds is not None:
            bounds.append(base + len(out))
    return bytes(out)


def pb_walk(fields: list[PB], schema: dict, msg: str, depth: int = 0) -> Iterator[tuple[list[PB], int, str]]:
    """(parent list, index, message type of the parent) for every field, depth first."""
    for i, f in enumerate(fields):
        yield fields, i, msg
        sub = schema.get(msg, {}).get(f.num)
        if isinstance(f.val, list) and sub:
            yield from pb_walk(f.val, schema, sub, depth + 1)


def nest(core: bytes, fields: list[int]) -> bytes:
    """`core` wrapped in length-delimited fields (outermost first), built in linear time."""
    heads, n = [], len(core)
    for num in reversed(fields):
        h = _key(num, 2) + _varint(n)
        heads.append(h)
        n += len(h)
    return b"".join(reversed(heads)) + core


# ------------------------------------------------------------------------------- byte mutators
SPECIAL_FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 1e-45, 3.4028235e38, -3.4028235e38]
HUGE_LENGTHS = [2**31 - 1, 2**31, 2**32, 2**32 + 7, 2**63 - 1, 2**64 - 1, 1 << 40]


def flip_bits(rng: random.Random, data: bytes, n: int | None = None) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    for _ in range(n or rng.choice([1, 1, 2, 4, 8])):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def set_bytes(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    b = bytearray(data)
    for _ in range(rng.choice([1, 2, 4])):
        b[rng.randrange(len(b))] = rng.choice([0x00, 0xFF, 0x80, 0x7F, 0x01, 0x0A, 0x22, 0x7B, 0x7D])
    return bytes(b)


def truncate_random(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data) + 1)] if data else data


def splice(rng: random.Random, a: bytes, b: bytes) -> bytes:
    i, j = rng.randrange(len(a) + 1), rng.randrange(len(b) + 1)
    return a[:i] + b[j:]


# ------------------------------------------------------------------------ caffemodel mutators
class CaffemodelMutator:
    """Structure-aware mutations of one seed caffemodel (a parsed NetParameter tree)."""

    def __init__(self, seeds: list[bytes], big: bool = False):
        self.seeds, self.big = seeds, big
        self._index(CAFFE_SCHEMA, "Net")

    def _index(self, schema: dict, root: str) -> None:
        """Parse every seed into its field tree and record every field boundary (for truncations)."""
        self.trees = [pb_parse(s, schema, root) for s in self.seeds]
        assert all(t is not None for t in self.trees)
        self.bounds = []
        for t in self.trees:
            b: list[int] = []
            pb_encode(t, b)
            self.bounds.append(sorted(set(b)))

    def truncations(self) -> Iterator[tuple[str, bytes]]:
        """Every field boundary of every seed, and one byte either side of it."""
        for s, bounds in zip(self.seeds, self.bounds):
            cuts = sorted({c + d for c in bounds for d in (-1, 0, 1) if 0 <= c + d < len(s)})
            for c in cuts:
                yield "truncate@boundary", s[:c]

    OPS = (
        "bitflip", "setbytes", "truncate", "huge_length", "short_length", "dims", "legacy_dims",
        "wire_type", "dup_layer", "drop_layer", "swap_layers", "dup_blob", "drop_blob", "rename_layer",
        "layer_type", "nan_inf", "deep_nesting", "overlong_varint", "field0_group", "unknown_fields",
        "splice", "float_and_double", "misaligned_data", "many_layers", "empty_blobs", "random",
    )  # fmt: skip

    def mutate(self, rng: random.Random, op: str | None = None) -> tuple[str, bytes]:
        k = rng.randrange(len(self.seeds))
        op = op or rng.choice(self.OPS)
        data = self._finish(rng, k, getattr(self, "_" + op)(rng, k))
        if rng.random() < 0.15:  # havoc: stack a byte-level mutation on top
            data = rng.choice([flip_bits, set_bytes, truncate_random])(rng, data)
            op += "+havoc"
        return op, data

    # -- helpers
    def _finish(self, rng: random.Random, k: int, data: bytes) -> bytes:
        return data

    def _tree(self, k: int) -> list[PB]:
        return copy.deepcopy(self.trees[k])

    def _nodes(self, tree: list[PB], msg: str | None = None, num: int | None = None, wt: int | None = None):
        out = []
        for parent, i, m in pb_walk(tree, CAFFE_SCHEMA, "Net"):
            f = parent[i]
            if (msg is None or m == msg) and (num is None or f.num == num) and (wt is None or f.wt == wt):
                out.append((parent, i))
        return out

    def _layers(self, tree: list[PB]) -> list[int]:
        return [i for i, f in enumerate(tree) if f.num in (100, 2) and f.wt == 2]

    def _blobs(self, tree: list[PB]) -> list[tuple[list[PB], int]]:
        return self._nodes(tree, "Layer", 7, 2) + self._nodes(tree, "V1Layer", 6, 2)

    # -- operators (each returns the mutated bytes)
    def _bitflip(self, rng, k):
        return flip_bits(rng, self.seeds[k])

    def _setbytes(self, rng, k):
        return set_bytes(rng, self.seeds[k])

    def _truncate(self, rng, k):
        return truncate_random(rng, self.seeds[k])

    def _random(self, rng, k):
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 7, 64, 512])))

    def _huge_length(self, rng, k):
        t = self._tree(k)
        cands = self._nodes(t, wt=2)
        parent, i = rng.choice(cands)
        parent[i].declared = rng.choice(HUGE_LENGTHS)
        return pb_encode(t)

    def _short_length(self, rng, k):
        t = self._tree(k)
        parent, i = rng.choice(self._nodes(t, wt=2))
        real = len(pb_encode([parent[i]])) - 2
        parent[i].declared = max(0, real + rng.choice([-1, 1, -3, 5]))
        return pb_encode(t)

    def _dims(self, rng, k):
        t = self._tree(k)
        blobs = self._blobs(t)
        if not blobs:
            return self.seeds[k]
        parent, i = rng.choice(blobs)
        blob = parent[i].val if isinstance(parent[i].val, list) else []
        count = sum(len(f.val) // 4 for f in blob if f.num == 5 and f.wt == 2 and isinstance(f.val, bytes))
        dims = rng.choice(
            [
                [0], [-1], [-count], [count, -1, -1], [2**62, 2**62], [2**63 - 1], [2**64 - 1], [2**31], [0, 2**40],
                [0, 2**63], [1] * 33, [1] * 100, [1] * rng.choice([1000, 20000 if self.big else 2000]), [], [count, 0], [0] * 40,
                [count, 1, 1, 1], [1, count], [3, 3, 3, 3, 3], [count + 1], [2**32 + count],
            ]
        )  # fmt: skip
        packed = rng.random() < 0.7
        shape = [PB(1, 2, b"".join(_varint(d) for d in dims))] if packed else [PB(1, 0, d & (2**64 - 1)) for d in dims]
        blob = [f for f in blob if f.num != 7] + [PB(7, 2, shape)]
        if rng.random() < 0.3:
            rng.shuffle(blob)
        parent[i] = PB(parent[i].num, 2, blob)
        return pb_encode(t)

    def _legacy_dims(self, rng, k):
        t = self._tree(k)
        blobs = self._blobs(t)
        parent, i = rng.choice(blobs)
        blob = [f for f in (parent[i].val if isinstance(parent[i].val, list) else []) if f.num not in (1, 2, 3, 4, 7)]
        vals = rng.choice([[0, 0, 0, 0], [2**64 - 1] * 4, [2**31, 2**31, 1, 1], [1, 1, 1, 2**63], [7], [1, 2**33]])
        blob = [PB(f, 0, v) for f, v in zip((1, 2, 3, 4), vals)] + blob
        parent[i] = PB(parent[i].num, 2, blob)
        return pb_encode(t)

    def _wire_type(self, rng, k):
        t = self._tree(k)
        parent, i = rng.choice(self._nodes(t))
        f = parent[i]
        wt = rng.choice([w for w in range(8) if w != f.wt])
        val: Any = {0: rng.choice([0, 1, 2**63, 2**64 - 1]), 1: struct.pack("<d", rng.choice(SPECIAL_FLOATS)),
                    5: struct.pack("<f", rng.choice(SPECIAL_FLOATS)), 2: rng.choice([b"", b"\x08\x01", b"\xff" * 9])}.get(wt, b"")  # fmt: skip
        if wt == 2 and rng.random() < 0.5 and isinstance(f.val, (bytes, list)):
            val = f.val  # keep the payload, lie about its type elsewhere
        parent[i] = PB(f.num, wt, val)
        return pb_encode(t)

    def _dup_layer(self, rng, k):
        t = self._tree(k)
        i = rng.choice(self._layers(t))
        t.insert(rng.randrange(len(t) + 1), copy.deepcopy(t[i]))
        return pb_encode(t)

    def _drop_layer(self, rng, k):
        t = self._tree(k)
        del t[rng.choice(self._layers(t))]
        return pb_encode(t)

    def _swap_layers(self, rng, k):
        t = self._tree(k)
        ls = self._layers(t)
        a, b = rng.choice(ls), rng.choice(ls)
        t[a], t[b] = t[b], t[a]
        return pb_encode(t)

    def _dup_blob(self, rng, k):
        t = self._tree(k)
        parent, i = rng.choice(self._blobs(t))
        parent.insert(i, copy.deepcopy(parent[i]))
        return pb_encode(t)

    def _drop_blob(self, rng, k):
        t = self._tree(k)
        parent, i = rng.choice(self._blobs(t))
        del parent[i]
        return pb_encode(t)

    def _rename_layer(self, rng, k):
        t = self._tree(k)
        names = self._nodes(t, "Layer", 1, 2) + self._nodes(t, "V1Layer", 4, 2)
        parent, i = rng.choice(names)
        others = [p[j].val for p, j in names if isinstance(p[j].val, bytes)]
        new = [b"", b"\xff\xfe", b"x" * 5000, "conv\u00e9".encode(), b"\x00", b"a\nb", b"\x1b[31mred", b"\r", *others]
        parent[i] = PB(parent[i].num, 2, rng.choice(new))
        return pb_encode(t)

    def _layer_type(self, rng, k):
        t = self._tree(k)
        cands = self._nodes(t, "Layer", 2) + self._nodes(t, "V1Layer", 5)
        parent, i = rng.choice(cands)
        f = parent[i]
        if f.wt == 0 or rng.random() < 0.3:
            parent[i] = PB(f.num, 0, rng.choice([0, 14, 39, 40, 255, 2**31, 2**63, 2**64 - 1]))
        else:
            parent[i] = PB(f.num, 2, rng.choice([b"", b"Axpy", b"LRN", b"Convolution", b"\xc3", b"Python"]))
        return pb_encode(t)

    def _nan_inf(self, rng, k):
        t = self._tree(k)
        cands = self._nodes(t, "Blob", 5, 2) + self._nodes(t, "Blob", 8, 2) + self._nodes(t, "Blob", 5, 5)
        parent, i = rng.choice(cands)
        f = parent[i]
        raw = bytearray(f.val) if isinstance(f.val, bytes) else bytearray()
        size = 8 if f.num == 8 else 4
        fmt = "<d" if size == 8 else "<f"
        n = len(raw) // size
        if n:
            if rng.random() < 0.2:  # every value
                raw[:] = struct.pack(f"<{n}{fmt[1]}", *[rng.choice(SPECIAL_FLOATS) for _ in range(n)])
            for _ in range(rng.choice([1, 1, 3])):
                j = rng.randrange(n) * size
                raw[j : j + size] = struct.pack(fmt, rng.choice(SPECIAL_FLOATS))
        parent[i] = PB(f.num, f.wt, bytes(raw))
        return pb_encode(t)

    def _deep_nesting(self, rng, k):
        depth = rng.choice([10, MAX_DEPTH + 1, 1000, 100_000] if self.big else [10, MAX_DEPTH + 1, 1000, 5000])
        payload = nest(b"\x0a\x01x", [rng.choice([100, 7, 1, 2]) for _ in range(depth)])
        t = self._tree(k)
        if rng.random() < 0.5:
            return pb_encode(t) + payload
        return pb_encode(t[: self._layers(t)[0]]) + ld(100, ld(1, b"deep") + ld(7, payload))

    def _overlong_varint(self, rng, k):
        s = self.seeds[k]
        i = rng.randrange(len(s))
        return s[:i] + b"\xff" * rng.choice([9, 10, 11, 64]) + rng.choice([b"\x01", b"", b"\x00"]) + s[i:]

    def _field0_group(self, rng, k):
        t = self._tree(k)
        parent, i = rng.choice(self._nodes(t))
        parent.insert(i, PB(rng.choice([0, 3, 2**29 - 1]), rng.choice([0, 3, 4, 6, 7]), 0))
        return pb_encode(t)

    def _unknown_fields(self, rng, k):
        t = self._tree(k)
        for _ in range(rng.choice([1, 5, 50])):
            parent, i = rng.choice(self._nodes(t))
            wt = rng.choice([0, 1, 2, 5])
            val = {0: rng.randrange(2**64), 1: b"\x00" * 8, 5: b"\x00" * 4, 2: b"junk"}[wt]
            parent.insert(i, PB(rng.choice([3, 6, 9, 99, 101, 4096]), wt, val))
        return pb_encode(t)

    def _splice(self, rng, k):
        return splice(rng, self.seeds[k], rng.choice(self.seeds))

    def _float_and_double(self, rng, k):
        t = self._tree(k)
        parent, i = rng.choice(self._blobs(t))
        blob = parent[i].val if isinstance(parent[i].val, list) else []
        blob.append(PB(8, 2, struct.pack("<3d", 1.0, float("nan"), 2.0)))
        if rng.random() < 0.5:
            blob[:] = [f for f in blob if f.num != 5]
        parent[i] = PB(parent[i].num, 2, blob)
        return pb_encode(t)

    def _misaligned_data(self, rng, k):
        t = self._tree(k)
        cands = self._nodes(t, "Blob", 5, 2) + self._nodes(t, "Blob", 8, 2)
        parent, i = rng.choice(cands)
        f = parent[i]
        raw = f.val if isinstance(f.val, bytes) else b""
        parent[i] = PB(
            f.num, 2, raw[: max(0, len(raw) - rng.choice([1, 2, 3]))] if rng.random() < 0.5 else raw + b"\x00"
        )
        return pb_encode(t)

    def _many_layers(self, rng, k):
        """Lots of tiny records: the reader's per-record overhead against the file size."""
        n = rng.choice([1000, 20000] if self.big else [200, 1000])
        kind = rng.choice(["empty_layer", "empty_blob", "one_float", "unpacked"])
        if kind == "empty_layer":
            body = b"".join(ld(100, ld(1, b"l%d" % j) + ld(7, b"")) for j in range(n))
        elif kind == "empty_blob":
            body = ld(100, ld(1, b"l") + ld(7, b"") * n)
        elif kind == "one_float":
            body = b"".join(ld(100, ld(1, b"%d" % j) + ld(7, ld(5, b"\x00\x00\x80\x3f"))) for j in range(n))
        else:
            body = ld(100, ld(1, b"u") + ld(7, (_key(5, 5) + b"\x00\x00\x80\x3f") * n))
        return self.seeds[k] + body

    def _empty_blobs(self, rng, k):
        t = self._tree(k)
        for parent, i in self._blobs(t):
            if rng.random() < 0.5:
                parent[i] = PB(parent[i].num, 2, b"")
        return pb_encode(t)


# -------------------------------------------------------------------------- prototxt mutators
_TOK = re.compile(r"""\s+|\#[^\n]*|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|[{}:\[\],;<>]|[^\s{}:\[\],;<>#"']+""")
HUGE_NUMBERS = ["9" * 5000, "1" + "0" * 100, "1e999", "-1e999", "-1", "0", "-0", "2147483648", "4294967297",
                "9223372036854775808", "-9223372036854775809", "18446744073709551616", "nan", "inf", "-inf",
                "0x7fffffff", "1.5", "1e3", "1_000", "+3", "٣", "true", '""', "''"]  # fmt: skip
ENUM_FIELDS = ("pool", "operation", "round_mode", "phase", "bias_term", "global_pooling", "type", "transpose")
BAD_ENUMS = ["MAX", "AVE", "STOCHASTIC", "PROD", "MAXIMUM", "FLOOR", "CEIL", "TRAIN", "TEST", "false", "true",
             "2", "-1", "99", '"MAX"', '"Convolution"', '"LRN"', '"Python"', '""', "Axpy", '"Input"', '"Scale"']  # fmt: skip


class PrototxtMutator:
    """Token-level, structure-aware mutations of seed prototxt texts."""

    def __init__(self, seeds: list[str], big: bool = False):
        self.seeds, self.big = seeds, big
        self.toks = [[(m.start(), m.end()) for m in _TOK.finditer(s) if not s[m.start()].isspace()] for s in seeds]

    def truncations(self) -> Iterator[tuple[str, bytes]]:
        for s, toks in zip(self.seeds, self.toks):
            for a, b in toks:
                yield "truncate@token", s[:a].encode()
                yield "truncate@token", s[:b].encode()

    OPS = (
        "truncate", "drop_token", "dup_token", "swap_tokens", "drop_brace", "extra_brace", "deep_nesting",
        "deep_nesting_inside", "huge_number", "bad_enum", "dup_layer", "drop_layer", "swap_layers",
        "rename_dup", "bottom", "scalar_message", "input_shape", "bad_bytes", "bitflip", "splice_lines",
        "many_layers", "list_values", "strings",
    )  # fmt: skip

    def mutate(self, rng: random.Random, op: str | None = None) -> tuple[str, bytes]:
        k = rng.randrange(len(self.seeds))
        op = op or rng.choice(self.OPS)
        out = getattr(self, "_" + op)(rng, k)
        data = out if isinstance(out, bytes) else out.encode("utf-8", "surrogatepass")
        if rng.random() < 0.1:
            data = rng.choice([flip_bits, set_bytes, truncate_random])(rng, data)
            op += "+havoc"
        return op, data

    # -- helpers
    def _tok(self, k: int, i: int) -> str:
        a, b = self.toks[k][i]
        return self.seeds[k][a:b]

    def _replace_tok(self, k: int, i: int, new: str) -> str:
        s = self.seeds[k]
        a, b = self.toks[k][i]
        return s[:a] + new + s[b:]

    def _blocks(self, k: int) -> list[tuple[int, int]]:
        """Character spans of top-level `layer { ... }` blocks."""
        s, toks, out = self.seeds[k], self.toks[k], []
        i = 0
        while i < len(toks):
            if self._tok(k, i) in ("layer", "layers") and i + 1 < len(toks) and self._tok(k, i + 1) == "{":
                depth, j = 0, i + 1
                while j < len(toks):
                    t = self._tok(k, j)
                    depth += (t == "{") - (t == "}")
                    if depth == 0:
                        break
                    j += 1
                out.append((toks[i][0], toks[min(j, len(toks) - 1)][1]))
                i = j
            i += 1
        assert out or not s
        return out

    def _value_idx(self, k: int, fields: tuple[str, ...]) -> list[int]:
        """Indexes of value tokens of `field: value` for the given field names."""
        out = []
        for i in range(len(self.toks[k]) - 2):
            if self._tok(k, i) in fields and self._tok(k, i + 1) == ":":
                out.append(i + 2)
        return out

    # -- operators
    def _truncate(self, rng, k):
        s = self.seeds[k]
        return s[: rng.randrange(len(s) + 1)]

    def _drop_token(self, rng, k):
        return self._replace_tok(k, rng.randrange(len(self.toks[k])), "")

    def _dup_token(self, rng, k):
        i = rng.randrange(len(self.toks[k]))
        t = self._tok(k, i)
        return self._replace_tok(k, i, f"{t} {t}")

    def _swap_tokens(self, rng, k):
        n = len(self.toks[k])
        i = rng.randrange(n - 1)
        a, b = self._tok(k, i), self._tok(k, i + 1)
        s = self.seeds[k]
        (a0, _), (_, b1) = self.toks[k][i], self.toks[k][i + 1]
        return s[:a0] + b + " " + a + s[b1:]

    def _drop_brace(self, rng, k):
        idx = [i for i in range(len(self.toks[k])) if self._tok(k, i) in "{}"]
        return self._replace_tok(k, rng.choice(idx), "")

    def _extra_brace(self, rng, k):
        i = rng.randrange(len(self.toks[k]))
        return self._replace_tok(k, i, self._tok(k, i) + " " + rng.choice(["{", "}", "}}", "<", ">", "[", "]"]))

    def _deep_nesting(self, rng, k):
        n = rng.choice([MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 1000, 200_000 if self.big else 5000])
        opener, closer = rng.choice([("a {", "}"), ("a <", ">"), ("a: {", "}"), ("layer {", "}")])
        close = rng.random() < 0.7
        return self.seeds[k] + " ".join([opener] * n) + (" ".join([closer] * n) if close else "")

    def _deep_nesting_inside(self, rng, k):
        n = rng.choice([MAX_DEPTH - 3, MAX_DEPTH + 1, 5000])
        blocks = self._blocks(k)
        a, b = rng.choice(blocks)
        s = self.seeds[k]
        inner = "convolution_param " + "{ x " * n + "}" * n
        return s[: b - 1] + inner + s[b - 1 :]

    def _huge_number(self, rng, k):
        idx = [i for i in range(len(self.toks[k])) if re.fullmatch(r"-?\d[\w.+-]*", self._tok(k, i))]
        return self._replace_tok(k, rng.choice(idx), rng.choice(HUGE_NUMBERS))

    def _bad_enum(self, rng, k):
        idx = self._value_idx(k, ENUM_FIELDS)
        return self._replace_tok(k, rng.choice(idx), rng.choice(BAD_ENUMS))

    def _dup_layer(self, rng, k):
        s = self.seeds[k]
        a, b = rng.choice(self._blocks(k))
        return s[:b] + "\n" + s[a:b] + s[b:]

    def _drop_layer(self, rng, k):
        s = self.seeds[k]
        a, b = rng.choice(self._blocks(k))
        return s[:a] + s[b:]

    def _swap_layers(self, rng, k):
        s = self.seeds[k]
        blocks = self._blocks(k)
        i = rng.randrange(len(blocks) - 1)
        (a0, a1), (b0, b1) = blocks[i], blocks[i + 1]
        return s[:a0] + s[b0:b1] + s[a1:b0] + s[a0:a1] + s[b1:]

    def _rename_dup(self, rng, k):
        idx = self._value_idx(k, ("name",))
        i, j = rng.choice(idx), rng.choice(idx)
        return self._replace_tok(k, i, self._tok(k, j))

    def _bottom(self, rng, k):
        """Undefined, self-referencing or later (cycle) bottoms and tops."""
        bottoms = self._value_idx(k, ("bottom",))
        tops = self._value_idx(k, ("top",))
        i = rng.choice(bottoms + tops)
        choice = rng.random()
        if choice < 0.3:
            new = '"nowhere"'
        elif choice < 0.6:
            later = [t for t in tops if t > i] or tops
            new = self._tok(k, rng.choice(later))  # a blob produced later: a cycle in the graph
        else:
            new = self._tok(k, rng.choice(tops + bottoms))
        return self._replace_tok(k, i, new)

    def _scalar_message(self, rng, k):
        """A scalar where a message belongs (`convolution_param: 5`) or a message where a scalar does."""
        toks = self.toks[k]
        if rng.random() < 0.5:
            idx = [i for i in range(len(toks) - 1) if self._tok(k, i + 1) == "{"]
            i = rng.choice(idx)
            s = self.seeds[k]
            depth, j = 0, i + 1
            while j < len(toks):
                t = self._tok(k, j)
                depth += (t == "{") - (t == "}")
                if depth == 0:
                    break
                j += 1
            return (
                s[: toks[i][1]]
                + ": "
                + rng.choice(["5", '"x"', "MAX", "[]", "[1, 2]"])
                + s[toks[min(j, len(toks) - 1)][1] :]
            )
        idx = [i for i in range(len(toks)) if self._tok(k, i) == ":"]
        i = rng.choice(idx)
        s = self.seeds[k]
        a, b = toks[i + 1] if i + 1 < len(toks) else toks[i]
        return s[: toks[i][0]] + rng.choice([" { }", " { a: 1 }", " { dim: 1 }", " < >"]) + s[b:]

    def _input_shape(self, rng, k):
        s = self.seeds[k]
        dims = rng.choice([["0"], ["-1"] * 4, ["1", "3", "0", "9"], ["1", "3", "1000000000", "1000000000"], ["1"] * 4,
                           ["1", "3"], ["1", "3", "9", "9", "9"], ["2147483648"] * 4, ["1", "100000", "1", "1"],
                           ["1", "3", "1", "1"], ["1", "3", "9", "x"], ["1", "3", "9.5", "9"], ["65536", "3", "9", "9"]])  # fmt: skip
        text = "shape { " + " ".join(f"dim: {d}" for d in dims) + " }"
        if "input_shape" in s:
            return re.sub(r"input_shape \{[^}]*\}", lambda _: "input_" + text, s, count=1)
        return re.sub(r"shape \{[^}]*\}", lambda _: text, s, count=1)

    def _bad_bytes(self, rng, k):
        s = self.seeds[k].encode()
        i = rng.randrange(len(s) + 1)
        junk = rng.choice([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80", b'"unterminated', b"'", b"\\", b"#",
                           b"\r", b"\t\x0b\x0c", "名前".encode(), b"\xef\xbb\xbf"])  # fmt: skip
        return s[:i] + junk + s[i:]

    def _bitflip(self, rng, k):
        return flip_bits(rng, self.seeds[k].encode())

    def _splice_lines(self, rng, k):
        a = self.seeds[k].splitlines(keepends=True)
        b = rng.choice(self.seeds).splitlines(keepends=True)
        i, j = rng.randrange(len(a) + 1), rng.randrange(len(b) + 1)
        return "".join(a[:i] + b[j:])

    def _many_layers(self, rng, k):
        n = rng.choice([200, 2000] if self.big else [50, 300])
        kind = rng.random()
        if kind < 0.5:
            extra = "".join(f'layer {{ name: "r{j}" type: "ReLU" bottom: "prob" top: "prob" }}\n' for j in range(n))
        else:
            extra = "".join(f'layer {{ name: "s{j}" type: "Split" bottom: "prob" top: "prob" }}\n' for j in range(n))
        return self.seeds[k] + extra

    def _list_values(self, rng, k):
        idx = self._value_idx(k, ("num_output", "kernel_size", "stride", "pad", "dim", "axis", "group"))
        return self._replace_tok(k, rng.choice(idx), rng.choice(["[1, 2]", "[]", "[", "[[1]]", "[1 2 3]", "[{}]"]))

    def _strings(self, rng, k):
        idx = self._value_idx(k, ("name", "bottom", "top", "type"))
        new = rng.choice(['"a\\"b"', '"\\x00"', "'single'", '""', '"' + "x" * 10000 + '"', '"a\nb"', "unquoted", '"\\',
                          '"\x1b[2J"', '"a\rb"'])  # fmt: skip
        return self._replace_tok(k, rng.choice(idx), new)


# --------------------------------------------------------------------------- YAML mutators
class YamlMutator:
    """Mutations of YAML documents: nesting, alias bombs, huge documents, wrong types."""

    def __init__(self, seeds: list[str], big: bool = False):
        self.seeds, self.big = seeds, big
        self.lines = [s.splitlines(keepends=True) for s in seeds]

    def truncations(self) -> Iterator[tuple[str, bytes]]:
        for lines in self.lines:
            for i in range(len(lines) + 1):
                yield "truncate@line", "".join(lines[:i]).encode()

    OPS = ("truncate", "deep_flow", "deep_block", "alias_bomb", "huge_doc", "wrong_type", "python_tag",
           "dup_key", "drop_line", "dup_line", "bad_bytes", "tabs", "bitflip", "swap_lines", "multi_doc",
           "huge_scalar", "anchor_cycle")  # fmt: skip

    def mutate(self, rng: random.Random, op: str | None = None) -> tuple[str, bytes]:
        k = rng.randrange(len(self.seeds))
        op = op or rng.choice(self.OPS)
        out = getattr(self, "_" + op)(rng, k)
        return op, out if isinstance(out, bytes) else out.encode("utf-8", "surrogatepass")

    def _truncate(self, rng, k):
        s = self.seeds[k]
        return s[: rng.randrange(len(s) + 1)]

    def _deep_flow(self, rng, k):
        n = rng.choice([50, 1000, 100_000] if self.big else [33, 50, 1000])
        o, c = rng.choice([("[", "]"), ("{a: ", "}")])
        return self.seeds[k] + "\ndeep: " + o * n + "1" + c * n + "\n"

    def _deep_block(self, rng, k):
        n = rng.choice([50, 500, 3000] if self.big else [33, 50, 300])
        return (
            self.seeds[k] + "\ndeep:\n" + "".join(" " * (i + 1) + f"k{i}:\n" for i in range(n)) + " " * (n + 1) + "v\n"
        )

    def _alias_bomb(self, rng, k):
        lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        for i in range(1, rng.choice([5, 9, 12])):
            lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
        target = rng.choice(["models", "extra", "conventions"])
        return "\n".join(lines) + f"\n{target}: *a{len(lines) - 1}\n" + ("" if rng.random() < 0.5 else self.seeds[k])

    def _huge_doc(self, rng, k):
        n = rng.choice([10_000, 100_000] if self.big else [50, 200])
        return self.seeds[k] + "\nextra:\n" + "".join(f"  - {{id: m{i}, x: [1, 2]}}\n" for i in range(n))

    def _wrong_type(self, rng, k):
        lines = list(self.lines[k])
        idx = [i for i, ln in enumerate(lines) if ":" in ln and not ln.strip().startswith("#")]
        i = rng.choice(idx)
        key = lines[i].split(":", 1)[0]
        lines[i] = (
            key
            + ": "
            + rng.choice(
                [
                    "[]",
                    "{}",
                    "null",
                    "42",
                    "-1",
                    "3.5",
                    "true",
                    "[1, [2]]",
                    "{a: b}",
                    '"x"',
                    "~",
                    ".inf",
                    ".nan",
                    "0x10",
                    "2001-01-01",
                ]
            )
            + "\n"
        )
        return "".join(lines)

    def _python_tag(self, rng, k):
        tag = rng.choice(
            [
                "!!python/object/apply:os.system ['true']",
                "!!python/name:os.system",
                "!!binary AAAA",
                "!custom x",
                "!!set {a, b}",
                "!!timestamp 2001-01-01",
                "!!float nan",
            ]
        )
        return self.seeds[k] + f"\ninjected: {tag}\n"

    def _dup_key(self, rng, k):
        lines = list(self.lines[k])
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
        return "".join(lines)

    def _drop_line(self, rng, k):
        lines = list(self.lines[k])
        del lines[rng.randrange(len(lines))]
        return "".join(lines)

    def _dup_line(self, rng, k):
        lines = list(self.lines[k])
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines.insert(i, lines[j])
        return "".join(lines)

    def _swap_lines(self, rng, k):
        lines = list(self.lines[k])
        i = rng.randrange(len(lines) - 1)
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
        return "".join(lines)

    def _bad_bytes(self, rng, k):
        s = self.seeds[k].encode()
        i = rng.randrange(len(s) + 1)
        return s[:i] + rng.choice([b"\xff", b"\x00", b"\xc3", b"\x1b", b"\xef\xbb\xbf", b"\xfe\xff"]) + s[i:]

    def _tabs(self, rng, k):
        return self.seeds[k].replace("  ", "\t", rng.choice([1, 10, 1000]))

    def _bitflip(self, rng, k):
        return flip_bits(rng, self.seeds[k].encode())

    def _multi_doc(self, rng, k):
        return self.seeds[k] + "\n---\n" + self.seeds[k] + rng.choice(["", "\n...\n", "\n--- !!str x\n"])

    def _huge_scalar(self, rng, k):
        n = 1_000_000 if self.big else 50_000
        return (
            self.seeds[k]
            + "\nbig: "
            + rng.choice(["9" * (n // 10), "x" * n, '"' + "\\x41" * (n // 10) + '"', "1" * 5000])
        )

    def _anchor_cycle(self, rng, k):
        return "a: &a\n  b: *a\n" + rng.choice(["", self.seeds[k]])


# ------------------------------------------------------------------------------- ckpt mutators
class WireMutator(CaffemodelMutator):
    """The caffemodel operators over another protobuf schema (MindSpore .ckpt)."""

    def __init__(self, seeds: list[bytes], schema: dict, root: str, layer_fields: tuple[int, ...],
                 blob_path: tuple[str, int], big: bool = False):  # fmt: skip
        self.schema, self.root, self.layer_fields, self.blob_path = schema, root, layer_fields, blob_path
        self.big = big
        # MindSpore's crc_check trailer (b"crc_num" + 10-byte CRC-32) is kept aside and recomputed
        # for most mutants, so that they reach the parser instead of failing the CRC check
        self.crc = [s[-17:-10] == b"crc_num" for s in seeds]
        self.seeds = [s[:-17] if c else s for s, c in zip(seeds, self.crc)]
        self._index(schema, root)

    def truncations(self) -> Iterator[tuple[str, bytes]]:
        for op, data in super().truncations():
            yield op, data
            yield op + "+crc", self._finish(random.Random(0), 0, data) if self.crc[0] else data

    def _finish(self, rng: random.Random, k: int, data: bytes) -> bytes:
        if not self.crc[k]:
            return data
        import zlib

        crc = zlib.crc32(data) if rng.random() < 0.85 else rng.randrange(2**32)
        return data + b"crc_num" + crc.to_bytes(10, "big")

    OPS = ("bitflip", "setbytes", "truncate", "huge_length", "short_length", "wire_type", "dup_layer", "drop_layer",
           "swap_layers", "nan_inf", "deep_nesting", "overlong_varint", "field0_group", "unknown_fields", "splice",
           "random", "ckpt_dims", "ckpt_dtype", "ckpt_content")  # fmt: skip

    def _nodes(self, tree, msg=None, num=None, wt=None):
        out = []
        for parent, i, m in pb_walk(tree, self.schema, self.root):
            f = parent[i]
            if (msg is None or m == msg) and (num is None or f.num == num) and (wt is None or f.wt == wt):
                out.append((parent, i))
        return out

    def _layers(self, tree):
        return [i for i, f in enumerate(tree) if f.num in self.layer_fields and f.wt == 2] or [0]

    def _blobs(self, tree):
        return self._nodes(tree, *self.blob_path, 2)

    def _nan_inf(self, rng, k):
        t = self._tree(k)
        cands = self._nodes(t, "Tensor", 3, 2)
        if not cands:
            return self.seeds[k]
        parent, i = rng.choice(cands)
        raw = bytearray(parent[i].val if isinstance(parent[i].val, bytes) else b"")
        for _ in range(rng.choice([1, 3, 100])):
            if len(raw) >= 4:
                j = rng.randrange(len(raw) // 4) * 4
                raw[j : j + 4] = struct.pack("<f", rng.choice(SPECIAL_FLOATS))
        parent[i] = PB(3, 2, bytes(raw))
        return pb_encode(t)

    def _deep_nesting(self, rng, k):
        depth = rng.choice([10, 1000, 100_000] if self.big else [10, 1000, 5000])
        return self.seeds[k] + nest(b"\x0a\x01x", [rng.choice([1, 2]) for _ in range(depth)])

    def _ckpt_dims(self, rng, k):
        t = self._tree(k)
        cands = self._nodes(t, "Value", 2, 2)
        if not cands:
            return self.seeds[k]
        parent, i = rng.choice(cands)
        tensor = [f for f in (parent[i].val if isinstance(parent[i].val, list) else []) if f.num != 1]
        dims = rng.choice([[0], [-1], [2**62, 2**62], [2**63 - 1], [2**64 - 1], [1] * 100, [], [0, 2**40], [3, -3]])
        shape = (
            [PB(1, 2, b"".join(_varint(d) for d in dims))]
            if rng.random() < 0.5
            else [PB(1, 0, d & (2**64 - 1)) for d in dims]
        )
        parent[i] = PB(2, 2, shape + tensor)
        return pb_encode(t)

    def _ckpt_dtype(self, rng, k):
        t = self._tree(k)
        cands = self._nodes(t, "Tensor", 2, 2)
        if not cands:
            return self.seeds[k]
        parent, i = rng.choice(cands)
        parent[i] = PB(
            2,
            2,
            rng.choice(
                [
                    b"",
                    b"Float16",
                    b"Float64",
                    b"Int8",
                    b"UInt8",
                    b"Bool",
                    b"String",
                    b"Complex64",
                    b"BFloat16",
                    b"\xff",
                    b"Float32" * 100,
                ]
            ),
        )
        return pb_encode(t)

    def _ckpt_content(self, rng, k):
        t = self._tree(k)
        cands = self._nodes(t, "Tensor", 3, 2)
        if not cands:
            return self.seeds[k]
        parent, i = rng.choice(cands)
        raw = parent[i].val if isinstance(parent[i].val, bytes) else b""
        parent[i] = PB(3, 2, rng.choice([b"", raw[:-1], raw + b"\x00", raw + raw, raw[: len(raw) // 2]]))
        return pb_encode(t)


class SafetensorsMutator:
    """Mutations of safetensors files (8-byte header length, JSON header, raw data)."""

    def __init__(self, seeds: list[bytes], big: bool = False):
        import json

        self.json, self.seeds, self.big = json, seeds, big
        self.headers = []
        for s in seeds:
            n = int.from_bytes(s[:8], "little")
            self.headers.append((json.loads(s[8 : 8 + n]), s[8 + n :]))

    def truncations(self) -> Iterator[tuple[str, bytes]]:
        for s in self.seeds:
            n = int.from_bytes(s[:8], "little")
            for c in sorted({0, 1, 7, 8, 9, 8 + n // 2, 8 + n - 1, 8 + n, 8 + n + 1, len(s) - 1}):
                yield "truncate@section", s[:c]

    OPS = ("bitflip", "truncate", "header_length", "offsets", "shape", "dtype", "entry_type", "dup_keys",
           "huge_header", "not_object", "deep_json", "extra_data")  # fmt: skip

    def mutate(self, rng: random.Random, op: str | None = None) -> tuple[str, bytes]:
        k = rng.randrange(len(self.seeds))
        op = op or rng.choice(self.OPS)
        return op, getattr(self, "_" + op)(rng, k)

    def _pack(self, header: Any, data: bytes, declared: int | None = None) -> bytes:
        h = header if isinstance(header, bytes) else self.json.dumps(header).encode()
        return (len(h) if declared is None else declared).to_bytes(8, "little") + h + data

    def _entry(self, rng, k):
        header, data = copy.deepcopy(self.headers[k][0]), self.headers[k][1]
        names = [n for n in header if n != "__metadata__"]
        return header, data, header[rng.choice(names)]

    def _bitflip(self, rng, k):
        return flip_bits(rng, self.seeds[k])

    def _truncate(self, rng, k):
        return truncate_random(rng, self.seeds[k])

    def _header_length(self, rng, k):
        header, data = self.headers[k]
        real = len(self.json.dumps(header).encode())
        return self._pack(
            header, data, rng.choice([0, 1, real - 1, real + 1, 2**63, 2**64 - 1, 2**32, len(self.seeds[k])])
        )

    def _offsets(self, rng, k):
        header, data, e = self._entry(rng, k)
        a, b = e["data_offsets"]
        e["data_offsets"] = rng.choice(
            [[b, a], [a, b + 4], [-4, b], [a, 2**63], [0, 0], [a], [a, b, 1], ["0", "4"], None, [1.5, 2]]
        )
        return self._pack(header, data)

    def _shape(self, rng, k):
        header, data, e = self._entry(rng, k)
        e["shape"] = rng.choice(
            [[-1], [2**62, 2**62], [0], [], [1] * 100, [2**64], ["3"], [[2]], None, [1.5], [0, 2**63]]
        )
        return self._pack(header, data)

    def _dtype(self, rng, k):
        header, data, e = self._entry(rng, k)
        e["dtype"] = rng.choice(["F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "XYZ", "", None, 4, ["F32"]])
        return self._pack(header, data)

    def _entry_type(self, rng, k):
        header, data, _ = self._entry(rng, k)
        header[rng.choice(list(header))] = rng.choice([None, 1, "x", [], {}, {"dtype": "F32"}])
        return self._pack(header, data)

    def _dup_keys(self, rng, k):
        header, data = self.headers[k]
        h = self.json.dumps(header)
        return self._pack(("{" + h[1:-1] + ", " + h[1:-1] + "}").encode(), data)

    def _huge_header(self, rng, k):
        header, data = copy.deepcopy(self.headers[k][0]), self.headers[k][1]
        for i in range(rng.choice([100, 2000])):
            header[f"t{i}"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
        return self._pack(header, data)

    def _not_object(self, rng, k):
        return self._pack(rng.choice([b"[]", b'"x"', b"1", b"null", b"{", b"{}", b"\xff\xfe"]), self.headers[k][1])

    def _deep_json(self, rng, k):
        n = rng.choice([100, 10_000, 100_000 if self.big else 20_000])
        return self._pack(b'{"a": ' + b"[" * n + b"]" * n + b"}", self.headers[k][1])

    def _extra_data(self, rng, k):
        return self.seeds[k] + b"\x00" * rng.choice([1, 3, 4096])


# ------------------------------------------------------------------------- torch.save archives
# One tensor of a crafted data.pkl: (key, storage class, storage key, storage numel, offset, shape, stride)
TorchEntry = tuple[str, str, str, int, int, tuple[int, ...], tuple[int, ...]]
TORCH_ITEMSIZE = {"FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "DoubleStorage": 8, "LongStorage": 8}


def torch_pickle(entries: list[TorchEntry], wrappers: tuple[str, ...] = (), prefix: str = "") -> bytes:
    """A protocol-2 data.pkl as torch.save writes it, with explicit offsets and strides (views), each
    storage declared where first used, the state_dict nested under `wrappers` and keys prefixed."""
    from senet_hub.converters.pth import _int, _tuple, _unicode

    out = [b"\x80\x02"]
    for w in wrappers:  # {w: {... the state_dict ...}}
        out += [b"}", _unicode(w)]
    out += [b"ccollections\nOrderedDict\n", b")R", b"("]
    for key, storage, skey, numel, offset, shape, stride in entries:
        pid = _tuple(
            [_unicode("storage"), f"ctorch\n{storage}\n".encode(), _unicode(skey), _unicode("cpu"), _int(numel)]
        )
        args = [pid + b"Q", _int(offset), _tuple([_int(d) for d in shape]), _tuple([_int(d) for d in stride]), b"\x89",
                b"ccollections\nOrderedDict\n)R"]  # fmt: skip
        out += [_unicode(prefix + key), b"ctorch._utils\n_rebuild_tensor_v2\n", _tuple(args), b"R"]
    out.append(b"u")
    out += [b"s"] * len(wrappers)
    return b"".join(out) + b"."


def torch_archive(members: list[tuple[str, bytes]], deflate: tuple[str, ...] = ()) -> bytes:
    """A zip of (name, data) members, stored (as torch.save writes) unless named in `deflate`."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            z.writestr(info, data)
    return buf.getvalue()


@dataclass
class TorchSeed:
    entries: list[TorchEntry]
    storages: dict[str, bytes]  # storage key -> its record
    wrappers: tuple[str, ...] = ()
    prefix: str = ""
    extra: list[tuple[str, bytes]] = field(default_factory=list)  # e.g. the senet-hub record

    def members(self, pkl: bytes | None = None) -> list[tuple[str, bytes]]:
        pkl = torch_pickle(self.entries, self.wrappers, self.prefix) if pkl is None else pkl
        return [("archive/data.pkl", pkl), ("archive/.format_version", b"1"), ("archive/byteorder", b"little"),
                *((f"archive/data/{k}", v) for k, v in self.storages.items()), *self.extra,
                ("archive/version", b"3\n")]  # fmt: skip

    def archive(self) -> bytes:
        return torch_archive(self.members())


def torch_seeds() -> list[TorchSeed]:
    """Two small archives: dtypes and views (transposed, sliced, shared storage), then a wrapped,
    DataParallel-prefixed state_dict with a senet-hub record."""
    rng = np.random.default_rng(11)

    def rec(storage: str, n: int) -> bytes:
        return rng.integers(0, 256, n * TORCH_ITEMSIZE[storage], dtype=np.uint8).tobytes()

    a = TorchSeed(
        entries=[("conv.weight", "FloatStorage", "0", 108, 0, (4, 3, 3, 3), (27, 9, 3, 1)),
                 ("fc.weight", "FloatStorage", "1", 20, 0, (5, 4), (1, 5)),  # a transposed view
                 ("fc.bias", "FloatStorage", "1", 20, 3, (5,), (4,)),  # a strided slice of the same storage
                 ("half", "HalfStorage", "2", 4, 0, (2, 2), (2, 1)),
                 ("bf", "BFloat16Storage", "3", 3, 0, (3,), (1,)),
                 ("bn.num_batches_tracked", "LongStorage", "4", 1, 0, (), ())],
        storages={"0": rec("FloatStorage", 108), "1": rec("FloatStorage", 20), "2": rec("HalfStorage", 4),
                  "3": rec("BFloat16Storage", 3), "4": rec("LongStorage", 1)},
    )  # fmt: skip
    b = TorchSeed(
        entries=[("conv1.weight", "FloatStorage", "0", 24, 0, (2, 3, 2, 2), (12, 4, 2, 1)),
                 ("bn1.running_var", "DoubleStorage", "1", 2, 0, (2,), (1,))],
        storages={"0": rec("FloatStorage", 24), "1": rec("DoubleStorage", 2)},
        wrappers=("state_dict",), prefix="module.",
        extra=[("archive/senet_hub.json", b'{"format": "senet-hub", "arch": "seresnet18"}')],
    )  # fmt: skip
    return [a, b]


class TorchZipMutator:
    """Mutations of torch.save archives: the zip container, the data.pkl pickle (bytes, globals,
    tensor geometry, storage ids, wrappers), and the storage records."""

    OPS = ("bitflip", "truncate", "pickle_bytes", "pickle_truncate", "global", "geometry", "storage_id",
           "record_size", "compressed", "drop_member", "byteorder", "wrapper", "legacy", "splice")  # fmt: skip
    GLOBALS = (b"os\nsystem", b"builtins\neval", b"builtins\ngetattr", b"posix\nsystem", b"torch\nFooStorage",
               b"torch._utils\n_rebuild_tensor", b"collections\nnamedtuple", b"numpy\nndarray",
               b"torch.nn.modules.linear\nLinear", b"builtins\nset", b"_codecs\nencode", b"torch\nUntypedStorage",
               b"torch._utils\n_rebuild_parameter")  # fmt: skip

    def __init__(self, seeds: list[TorchSeed], big: bool = False):
        self.specs, self.big = seeds, big
        self.seeds = [sd.archive() for sd in seeds]

    def truncations(self) -> Iterator[tuple[str, bytes]]:
        for s in self.seeds:
            cuts = {0, 1, 4, 30, len(s) // 2, len(s) - 22, len(s) - 1}  # headers, the middle, the end record
            for c in sorted(x for x in cuts if 0 <= x < len(s)):
                yield "truncate@section", s[:c]

    def mutate(self, rng: random.Random, op: str | None = None) -> tuple[str, bytes]:
        k = rng.randrange(len(self.seeds))
        op = op or rng.choice(self.OPS)
        return op, getattr(self, "_" + op)(rng, k)

    def _with_pickle(self, k: int, pkl: bytes) -> bytes:
        return torch_archive(self.specs[k].members(pkl))

    def _pkl(self, k: int) -> bytes:
        sd = self.specs[k]
        return torch_pickle(sd.entries, sd.wrappers, sd.prefix)

    def _bitflip(self, rng, k):
        return flip_bits(rng, self.seeds[k])

    def _truncate(self, rng, k):
        return truncate_random(rng, self.seeds[k])

    def _pickle_bytes(self, rng, k):
        pkl = self._pkl(k)
        return self._with_pickle(k, flip_bits(rng, pkl) if rng.random() < 0.5 else set_bytes(rng, pkl))

    def _pickle_truncate(self, rng, k):
        return self._with_pickle(k, truncate_random(rng, self._pkl(k)))

    def _global(self, rng, k):
        pkl = self._pkl(k)
        olds = [g for g in (b"collections\nOrderedDict", b"torch._utils\n_rebuild_tensor_v2", b"torch\nFloatStorage")
                if b"c" + g + b"\n" in pkl]  # fmt: skip
        old = rng.choice(olds)
        return self._with_pickle(k, pkl.replace(b"c" + old + b"\n", b"c" + rng.choice(self.GLOBALS) + b"\n", 1))

    def _geometry(self, rng, k):
        sd = copy.deepcopy(self.specs[k])
        i = rng.randrange(len(sd.entries))
        key, st, sk, n, off, shape, stride = sd.entries[i]
        what = rng.choice(["offset", "shape", "stride", "dims", "numel"])
        if what == "offset":
            off = rng.choice([-1, n, n - 1, 2**40, 2**63 - 1])
        elif what == "shape":
            shape = tuple(rng.choice([0, -1, 2**31, 2**62, d + 1]) for d in shape) or (2**40,)
        elif what == "stride":
            stride = tuple(rng.choice([0, -1, 2**40, s + 1]) for s in stride) or (1,)
        elif what == "dims":
            shape, stride = (1,) * rng.choice([33, 64, 1000]), (1,) * 33
        else:
            n = rng.choice([-1, 0, n + 1, 2**40, 2**62])
        sd.entries[i] = (key, st, sk, n, off, shape, stride)
        return self._with_pickle(k, torch_pickle(sd.entries, sd.wrappers, sd.prefix))

    def _storage_id(self, rng, k):
        sd = copy.deepcopy(self.specs[k])
        i = rng.randrange(len(sd.entries))
        key, st, sk, n, off, shape, stride = sd.entries[i]
        what = rng.choice(["class", "key", "redeclare"])
        if what == "class":
            st = rng.choice(["FooStorage", "ComplexFloatStorage", "UntypedStorage", "BoolStorage", "DoubleStorage"])
        elif what == "key":
            sk = rng.choice(["missing", "", "../../etc/passwd", "0" * 300])
        else:  # the same storage key with another class / size
            sd.entries.append((key + "2", "DoubleStorage", sk, n * 2, 0, (1,), (1,)))
        sd.entries[i] = (key, st, sk, n, off, shape, stride)
        return self._with_pickle(k, torch_pickle(sd.entries, sd.wrappers, sd.prefix))

    def _record_size(self, rng, k):
        members = self.specs[k].members()
        idx = [j for j, (name, _) in enumerate(members) if "/data/" in name]
        j = rng.choice(idx)
        name, data = members[j]
        members[j] = (name, rng.choice([b"", data[:-1], data + b"\x00", data + data, data[: len(data) // 2]]))
        return torch_archive(members)

    def _compressed(self, rng, k):
        members = self.specs[k].members()
        names = [n for n, _ in members]
        return torch_archive(members, deflate=tuple(rng.sample(names, rng.choice([1, len(names)]))))

    def _drop_member(self, rng, k):
        members = self.specs[k].members()
        del members[rng.randrange(len(members))]
        return torch_archive(members)

    def _byteorder(self, rng, k):
        members = [(n, rng.choice([b"big", b"", b"middle", b"little" * 10]) if n.endswith("byteorder") else d)
                   for n, d in self.specs[k].members()]  # fmt: skip
        return torch_archive(members)

    def _wrapper(self, rng, k):
        sd = self.specs[k]
        wrappers = rng.choice([(), ("model",), ("model_state_dict",), ("state_dict",) * 5, ("other",)])
        prefix = rng.choice(["", "module.", "model.module.", "_orig_mod.", "x."])
        if rng.random() < 0.2:  # a list or a bare tensor at the top
            pkl = torch_pickle(sd.entries)
            pkl = b"\x80\x02]" + pkl[2:-1] + b"a." if rng.random() < 0.5 else pkl
            return self._with_pickle(k, pkl)
        return self._with_pickle(k, torch_pickle(sd.entries, wrappers, prefix))

    def _legacy(self, rng, k):
        magic = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
        return rng.choice([magic + self.seeds[k][:100], b"\x80\x04K\x01.", b"ustar" + b"\x00" * 600])

    def _splice(self, rng, k):
        return splice(rng, self.seeds[k], self.seeds[rng.randrange(len(self.seeds))])


# ------------------------------------------------------------------------- Chainer .npz, MXNet .params
class NpzMutator:
    """Mutations of .npz files (a zip of .npy members): the container, each member's .npy header,
    senet-hub's graph JSON, and pickled object arrays (which must never be unpickled)."""

    OPS = ("bitflip", "truncate", "setbytes", "drop_member", "npy_header", "graph_json", "object_array",
           "extra_member", "deflate", "splice")  # fmt: skip

    def __init__(self, seeds: list[dict[str, np.ndarray]], graph_key: str, big: bool = False):
        self.members, self.graph_key, self.big = seeds, graph_key, big
        self.seeds = [self._pack(m) for m in seeds]

    @staticmethod
    def _npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
        b = io.BytesIO()
        np.lib.format.write_array(b, np.asanyarray(arr), allow_pickle=allow_pickle)
        return b.getvalue()

    def _pack(self, members: dict[str, Any], deflate: bool = False) -> bytes:
        b = io.BytesIO()
        mode = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
        with zipfile.ZipFile(b, "w", mode) as zf:
            for k, v in members.items():
                zf.writestr(k + ".npy", v if isinstance(v, bytes) else self._npy(v))
        return b.getvalue()

    def truncations(self) -> Iterator[tuple[str, bytes]]:
        for s in self.seeds:
            for c in sorted({0, 1, 3, 4, 30, len(s) // 2, len(s) - 22, len(s) - 1}):
                yield "truncate@section", s[:c]

    def mutate(self, rng: random.Random, op: str | None = None) -> tuple[str, bytes]:
        k = rng.randrange(len(self.seeds))
        op = op or rng.choice(self.OPS)
        return op, getattr(self, "_" + op)(rng, k)

    def _bitflip(self, rng, k):
        return flip_bits(rng, self.seeds[k])

    def _truncate(self, rng, k):
        return truncate_random(rng, self.seeds[k])

    def _setbytes(self, rng, k):
        return set_bytes(rng, self.seeds[k])

    def _splice(self, rng, k):
        return splice(rng, self.seeds[k], self.seeds[rng.randrange(len(self.seeds))])

    def _drop_member(self, rng, k):
        m = dict(self.members[k])
        del m[rng.choice(list(m))]
        return self._pack(m)

    def _npy_header(self, rng, k):
        m: dict[str, Any] = dict(self.members[k])
        key = rng.choice([x for x in m if x != self.graph_key] or list(m))
        raw = self._npy(m[key])
        head = rng.choice([b"'shape': (2147483648, 2147483648)", b"'shape': (-1,)", b"'shape': ()", b"'shape': (0,)",
                           b"'descr': '|O'", b"'descr': '<c8'", b"'descr': '>f4'", b"'fortran_order': True",
                           b"'descr': 'V3'"])  # fmt: skip
        field_ = head.split(b":")[0]
        i = raw.find(field_)
        j = raw.find(b",", raw.find(b")", i) if b"shape" in field_ else i)
        m[key] = raw[:i] + head + raw[j:] if i >= 0 and j > i else raw
        return self._pack(m)

    def _graph_json(self, rng, k):
        m: dict[str, Any] = dict(next(x for x in self.members if self.graph_key in x))
        text = bytes(m[self.graph_key]).decode()
        choice = rng.choice(["op", "attrs", "inputs", "nodes", "not_json", "deep", "name", "shape", "meta"])
        if choice == "op":
            text = text.replace('"op": "conv"', '"op": "' + rng.choice(["nope", "linear", "axpy", ""]) + '"', 1)
        elif choice == "attrs":
            text = text.replace('"out_channels": 4', '"out_channels": ' + rng.choice(["-1", "0", "1e9", '"4"', "[]"]))
        elif choice == "inputs":
            text = text.replace('"inputs": ["data"]', '"inputs": ' + rng.choice(["[]", '["nowhere"]', "3", "null"]))
        elif choice == "nodes":
            text = text.replace(
                '"nodes": [', '"nodes": ' + rng.choice(["{", "[1, ", '[{"name": 1}, ', 'null, "x": [']), 1
            )
        elif choice == "not_json":
            text = rng.choice(["", "{", "[]", "null", '"x"', "\udcff"])
        elif choice == "deep":
            n = rng.choice([100, 20_000])
            text = '{"a": ' + "[" * n + "]" * n + "}"
        elif choice == "name":
            text = text.replace('"name": "conv"', '"name": "' + rng.choice(["a.b", "", ".", "x/y", "fc"]) + '"', 1)
        elif choice == "shape":
            text = text.replace(
                '"input_shape": [1, 3, 6, 6]', '"input_shape": ' + rng.choice(["[1, 3]", "[]", "[1, 3, -6, 6]"])
            )
        else:
            text = text.replace('"meta": {', '"meta": ' + rng.choice(["[", '1, "m": {', 'null, "m": {']), 1)
        m[self.graph_key] = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
        return self._pack(m)

    def _object_array(self, rng, k):
        m: dict[str, Any] = dict(self.members[k])
        key = rng.choice(list(m))
        m[key] = self._npy(np.array([1, "x", None], dtype=object), allow_pickle=True)
        return self._pack(m)

    def _extra_member(self, rng, k):
        m: dict[str, Any] = dict(self.members[k])
        m[rng.choice(["x/W", "conv/W_", "conv/N", "zz"])] = np.zeros(rng.choice([1, 3]), np.float32)
        return self._pack(m)

    def _deflate(self, rng, k):
        return (
            flip_bits(rng, self._pack(self.members[k], deflate=True), rng.choice([0, 1]) or None)
            if rng.random() < 0.5
            else self._pack(self.members[k], deflate=True)
        )


class MxParamsMutator:
    """Mutations of MXNet NDArray-list files (mx.nd.save): counts, per-array headers, names."""

    OPS = ("bitflip", "truncate", "list_magic", "count", "nd_magic", "stype", "ndim", "dims", "dtype", "names",
           "trailing", "splice")  # fmt: skip

    def __init__(self, seeds: list[list[tuple[str, np.ndarray]]], big: bool = False):
        self.items, self.big = seeds, big
        self.seeds = [self.pack(s) for s in seeds]

    @staticmethod
    def pack(items: list[tuple[str, np.ndarray]], magic: int = 0x112, count: int | None = None,
             nd: Callable[[int, np.ndarray], bytes] | None = None, names: list[bytes] | None = None) -> bytes:  # fmt: skip
        """The bytes mx.nd.save writes for a dict (one array's header may be replaced by `nd`)."""
        flags = {np.dtype("<f4"): 0, np.dtype("<f8"): 1, np.dtype("<f2"): 2, np.dtype("u1"): 3, np.dtype("<i4"): 4,
                 np.dtype("<i8"): 6}  # fmt: skip
        out = [struct.pack("<QQQ", magic, 0, len(items) if count is None else count)]
        for i, (_, a) in enumerate(items):
            if nd is not None and (h := nd(i, a)):
                out.append(h)
                continue
            out.append(struct.pack("<IiI", 0xF993FAC9, 0, a.ndim))
            out.append(struct.pack(f"<{a.ndim}q", *a.shape) + struct.pack("<iii", 1, 0, flags[a.dtype]) + a.tobytes())
        nm = names if names is not None else [k.encode() for k, _ in items]
        out.append(struct.pack("<Q", len(nm)) + b"".join(struct.pack("<Q", len(x)) + x for x in nm))
        return b"".join(out)

    def truncations(self) -> Iterator[tuple[str, bytes]]:
        for s in self.seeds:
            for c in sorted({0, 7, 8, 23, 24, 28, 40, len(s) // 2, len(s) - 1}):
                yield "truncate@section", s[:c]

    def mutate(self, rng: random.Random, op: str | None = None) -> tuple[str, bytes]:
        k = rng.randrange(len(self.seeds))
        op = op or rng.choice(self.OPS)
        return op, getattr(self, "_" + op)(rng, k)

    def _bitflip(self, rng, k):
        return flip_bits(rng, self.seeds[k])

    def _truncate(self, rng, k):
        return truncate_random(rng, self.seeds[k])

    def _splice(self, rng, k):
        return splice(rng, self.seeds[k], self.seeds[rng.randrange(len(self.seeds))])

    def _list_magic(self, rng, k):
        return self.pack(self.items[k], magic=rng.choice([0, 0x111, 0x113, 2**64 - 1]))

    def _count(self, rng, k):
        return self.pack(self.items[k], count=rng.choice([0, len(self.items[k]) + 1, *HUGE_LENGTHS]))

    def _header(self, rng, k, fn):
        j = rng.randrange(len(self.items[k]))
        return self.pack(self.items[k], nd=lambda i, a: fn(a) if i == j else b"")

    def _nd_magic(self, rng, k):
        m = rng.choice([0, 0xF993FAC8, 0xF993FACA, 0xFFFFFFFF])
        return self._header(rng, k, lambda a: struct.pack("<Iii", m, 0, a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
                            + struct.pack("<iii", 1, 0, 0) + a.astype("<f4").tobytes())  # fmt: skip

    def _stype(self, rng, k):
        st = rng.choice([1, 2, -1])
        return self._header(rng, k, lambda a: struct.pack("<IiI", 0xF993FAC9, st, a.ndim)
                            + struct.pack(f"<{a.ndim}q", *a.shape) + struct.pack("<iii", 1, 0, 0) + a.tobytes())  # fmt: skip

    def _ndim(self, rng, k):
        nd = rng.choice([0, 33, 2**31, 2**32 - 1, 1000])
        return self._header(rng, k, lambda a: struct.pack("<IiI", 0xF993FAC9, 0, nd) + b"\x01" * 16)

    def _dims(self, rng, k):
        def one(a):
            shape = [rng.choice([-1, 0, 2**40, 2**62, 2**63 - 1, d + 1]) for d in a.shape] or [2**40]
            return (struct.pack("<IiI", 0xF993FAC9, 0, len(shape)) + struct.pack(f"<{len(shape)}q", *shape)
                    + struct.pack("<iii", 1, 0, 0) + a.tobytes())  # fmt: skip

        return self._header(rng, k, one)

    def _dtype(self, rng, k):
        fl = rng.choice([1, 2, 3, 4, 6, 7, 12, -1, 99])
        return self._header(rng, k, lambda a: struct.pack("<IiI", 0xF993FAC9, 0, a.ndim)
                            + struct.pack(f"<{a.ndim}q", *a.shape) + struct.pack("<iii", 1, 0, fl) + a.tobytes())  # fmt: skip

    def _names(self, rng, k):
        nm = [k_.encode() for k_, _ in self.items[k]]
        what = rng.choice(["dup", "short", "huge", "utf8", "fewer"])
        if what == "dup":
            nm[-1] = nm[0]
        elif what == "utf8":
            nm[0] = b"\xff\xfe"
        elif what == "fewer":
            nm = nm[:-1]
        data = self.pack(self.items[k], names=nm)
        if what in ("short", "huge"):
            tail = struct.pack("<Q", len(nm[-1])) + nm[-1]
            bad = struct.pack("<Q", rng.choice([len(nm[-1]) + 5, *HUGE_LENGTHS])) + nm[-1]
            data = data[: -len(tail)] + bad if data.endswith(tail) else data
        return data

    def _trailing(self, rng, k):
        return self.seeds[k] + b"\x00" * rng.choice([1, 8, 4096])


# ---------------------------------------------------------------------------------- targets
@dataclass
class Target:
    """A reader under test: `run(path)` reads one mutated file like a user's command would."""

    name: str
    suffix: str
    run: Callable[[str], Any]
    mutator: Any  # .truncations() and .mutate(rng) -> (operator, bytes)
    mem_factor: float  # traced-memory peak allowed per byte of input (plus MEM_SLACK)
    weight: float = 1.0  # share of the random corpus
    note: str = ""
    mem_abs: int = 0  # or up to this many bytes whatever the size (readers bounded by declared sizes)

    def mem_limit(self, size: int) -> float:
        return max(self.mem_factor * size + MEM_SLACK, self.mem_abs)


TARGETS: dict[str, Target] = {}  # the targets of the last setup_targets() call


def register(t: Target) -> Target:
    """Add one target (setup_targets' families call this; a second target of one name is an error)."""
    if t.name in TARGETS:
        raise ValueError(f"fuzz target {t.name!r} registered twice")
    TARGETS[t.name] = t
    return t


@dataclass
class Setup:
    """What a family builder gets: where to write its seed files, and whether to make giant inputs."""

    workdir: str
    big: bool


# name -> builder: each builder registers the targets of one reader family, named like its source
# format in senet_hub.formats; one registry, no optional families (a builder that raises fails
# setup_targets, and so the tests)
FAMILIES: dict[str, Callable[[Setup], None]] = {}


def target_family(name: str) -> Callable[[Callable[[Setup], None]], Callable[[Setup], None]]:
    def deco(fn: Callable[[Setup], None]) -> Callable[[Setup], None]:
        FAMILIES[name] = fn
        return fn

    return deco


# Files read that are no source format (senet_hub.formats lists the model formats)
HUB_FILES = ("manifest",)


def family_names() -> list[str]:
    """The families that must exist: every source format of senet_hub.formats that reads files (a
    format with no suffixes, like zoo, reads none), then the hub's own files."""
    from senet_hub import formats

    return [f.name for f in formats.sources() if f.suffixes] + list(HUB_FILES)


def setup_targets(workdir: str | os.PathLike, big: bool = False) -> dict[str, Target]:
    """Build every family's targets, with seed files written under `workdir`.

    big: also generate multi-megabyte inputs (nesting 100,000 deep, 20,000 records; bench/fuzz.py).
    Raises if a source format has no family, a family is for no format, or one builds nothing.
    """
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    TARGETS.clear()
    names = family_names()
    unknown = sorted(set(FAMILIES) - set(names))
    missing = [n for n in names if n not in FAMILIES]
    if missing or unknown:
        raise RuntimeError(f"fuzz families out of step with senet_hub.formats: missing {missing}, unknown {unknown}")
    for name in names:
        before = len(TARGETS)
        FAMILIES[name](Setup(workdir, big))
        if len(TARGETS) == before:
            raise RuntimeError(f"fuzz target family {name!r} registered no target")
    return TARGETS


@target_family("caffe")
def _register_caffe(s: Setup) -> None:
    workdir, big = s.workdir, s.big
    seeds = caffe_seeds()
    protos, models = [], []
    for seed in seeds:
        p, w = os.path.join(workdir, f"{seed.name}.prototxt"), os.path.join(workdir, f"{seed.name}.caffemodel")
        Path(p).write_text(seed.prototxt)
        Path(w).write_bytes(seed.caffemodel)
        protos.append(p)
        models.append(w)
    # caffe.load canonicalizes through senet_hub.zoo (always present: a plain import, a broken zoo fails)
    canonical = True
    cm = CaffemodelMutator([seed.caffemodel for seed in seeds], big)
    pm = PrototxtMutator([seed.prototxt for seed in seeds], big)

    # mem_factor: a real caffemodel costs its buffer, 1x (blobs are views on it); crafted files made
    # of minimal records (an empty layer per 12 bytes) cost ~25x more in Python objects, capped by MAX_BLOBS
    register(Target("caffemodel", ".caffemodel", lambda path: read_caffemodel(path), cm, mem_factor=32, weight=3,
                    note="wire reader alone (read_caffemodel)"))  # fmt: skip

    # the whole Caffe load with a mutated caffemodel: handlers and validation see the mutated blobs
    # (paired with the seed's prototxt: the mutator picks seed k, the pair must match, so one per seed)
    for k, seed in enumerate(seeds):
        cmk = CaffemodelMutator([seed.caffemodel], big)
        register(Target(f"caffe_load[{seed.name}].caffemodel", ".caffemodel",
                        lambda path, p=protos[k]: caffe.load(p, path, canonical=canonical), cmk, mem_factor=32,
                        weight=0.7, note="caffe.load(seed prototxt, mutated caffemodel)"))  # fmt: skip
        pmk = PrototxtMutator([seed.prototxt], big)
        register(Target(f"caffe_load[{seed.name}].prototxt", ".prototxt",
                        lambda path, w=models[k]: caffe.load(path, w, canonical=canonical), pmk, mem_factor=64,
                        weight=0.8, note="caffe.load(mutated prototxt, seed caffemodel)"))  # fmt: skip
    # without weights, per-channel vectors follow the declared shapes (capped by the reader)
    register(Target("prototxt_graph", ".prototxt", lambda path: caffe.load_prototxt(path), pm, mem_factor=64,
                    weight=1, note="caffe.load_prototxt (placeholder weights)", mem_abs=160 << 20))  # fmt: skip


@target_family("mindspore")
def _register_mindspore(s: Setup) -> None:
    from senet_hub.converters.mindspore import read_ckpt_tensors as reader
    from senet_hub.converters.mindspore import write_ckpt_tensors as writer

    workdir, big = s.workdir, s.big
    rng = np.random.default_rng(5)
    tensors = [
        {"conv1.weight": rng.normal(size=(4, 3, 3, 3)).astype("<f4"), "bn1.gamma": np.ones(4, "<f4"),
         "bn1.moving_mean": rng.normal(size=4).astype("<f4"), "classifier.weight": rng.normal(size=(5, 4)).astype("<f4"),
         "global_step": np.array([100], "<i4")},
        {"scalar": np.array(1.5, "<f4"), "half": rng.normal(size=(2, 2)).astype("<f2"), "f64": np.arange(3.0)},
    ]  # fmt: skip
    seeds = []
    for j, (ts, crc) in enumerate([(tensors[0], False), (tensors[0], True), (tensors[1], False)]):
        p = os.path.join(workdir, f"seed{j}.ckpt")
        writer(ts, p, crc=crc)
        reader(p)  # the seeds must read: a failure here is a bug, reported by the caller
        seeds.append(Path(p).read_bytes())
    register(Target("mindspore_ckpt", ".ckpt", lambda path: reader(path),
                    WireMutator(seeds, CKPT_SCHEMA, "Checkpoint", (1,), ("Value", 2), big), mem_factor=4, weight=1.2,
                    note="converters/mindspore.read_ckpt_tensors (protobuf .ckpt)"))  # fmt: skip
    import json

    data = rng.normal(size=12).astype("<f4").tobytes() + np.arange(4, dtype="<f2").tobytes()
    header = {"__metadata__": {"format": "ms"}, "w": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
              "h": {"dtype": "F16", "shape": [4], "data_offsets": [48, 56]}}  # fmt: skip
    h = json.dumps(header).encode()
    st = len(h).to_bytes(8, "little") + h + data
    p = os.path.join(workdir, "seed.safetensors")
    Path(p).write_bytes(st)
    reader(p)
    # mem_factor: the safetensors library returns a dict and a buffer per entry, each made a numpy array:
    # ~1.2 KB per entry, ~20x the ~65 header bytes of a crafted empty entry (real files: ~1x, data dominates)
    register(Target("mindspore_safetensors", ".ckpt", lambda path: reader(path), SafetensorsMutator([st], big),
                    mem_factor=32, weight=0.4, note="converters/mindspore.read_ckpt_tensors (safetensors)"))  # fmt: skip


@target_family("pytorch")
def _register_pytorch(s: Setup) -> None:
    from senet_hub.converters.pytorch import read_state_dict as reader

    seeds = torch_seeds()
    for j, seed in enumerate(seeds):
        p = os.path.join(s.workdir, f"seed{j}.pth")
        Path(p).write_bytes(seed.archive())
        reader(p)  # the seeds must read
    # mem_factor: the reader holds the pickle's objects (~50 bytes per pickle byte at worst: an opcode
    # per tuple) and one copy of the storages it reads (views stay views)
    register(Target("pytorch_pth", ".pth", lambda path: reader(path), TorchZipMutator(seeds, s.big), mem_factor=64,
                    weight=1.2, note="converters/pytorch.read_state_dict (torch.save zip, restricted unpickler)"))  # fmt: skip
    import json

    data = np.arange(12, dtype="<f4").tobytes() + np.arange(4, dtype="<u2").tobytes()
    header = {"__metadata__": {"format": "pt", "senet_hub": json.dumps({"format": "senet-hub"})},
              "module.w": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
              "module.b": {"dtype": "BF16", "shape": [4], "data_offsets": [48, 56]}}  # fmt: skip
    h = json.dumps(header).encode()
    st = len(h).to_bytes(8, "little") + h + data
    p = os.path.join(s.workdir, "seed.safetensors")
    Path(p).write_bytes(st)
    reader(p)
    # mem_factor: as mindspore_safetensors (the same library underneath)
    register(Target("pytorch_safetensors", ".safetensors", lambda path: reader(path), SafetensorsMutator([st], s.big),
                    mem_factor=32, weight=0.4, note="converters/pytorch.read_state_dict (safetensors library)"))  # fmt: skip


@target_family("chainer")
def _register_chainer(s: Setup) -> None:
    from senet_hub.builders.chainer import GRAPH_KEY
    from senet_hub.converters.chainer_npz import load
    from senet_hub.graph import Graph, Node, graph_to_json

    rng = np.random.default_rng(5)
    g = Graph([Node("conv", "conv", ["data"], {"out_channels": 4, "kernel": (3, 3), "bias": True}),
               Node("bn", "batch_norm", ["conv"], {}), Node("gap", "global_avg_pool", ["bn"]),
               Node("fc", "linear", ["gap"], {"out_features": 3})], input_shape=(1, 3, 6, 6))  # fmt: skip
    arrays = {"bn/N": np.array(0, np.int64), "bn/avg_mean": rng.standard_normal(4).astype(np.float32),
              "bn/avg_var": np.ones(4, np.float32), "bn/beta": np.zeros(4, np.float32),
              "bn/gamma": np.ones(4, np.float32), "conv/W": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
              "conv/b": np.zeros(4, np.float32), "fc/W": rng.standard_normal((3, 4)).astype(np.float32),
              "fc/b": np.zeros(3, np.float32)}  # fmt: skip
    with_graph = {**arrays, GRAPH_KEY: np.frombuffer(graph_to_json(g, {"arch": "tiny"}).encode(), np.uint8)}
    mut = NpzMutator([with_graph, arrays], GRAPH_KEY, s.big)
    for j, data in enumerate(mut.seeds[:1]):
        p = os.path.join(s.workdir, f"seed{j}.npz")
        Path(p).write_bytes(data)
        load(p)  # the seed with its graph must read (the graph-less one is recognised against the zoo: refused)
    # mem_factor: np.load reads a member whole, then the float32 copy; mem_abs: the zoo recognition pass
    # of a graph-less file builds each architecture's expected keys
    register(Target("chainer_npz", ".npz", lambda path: load(path), mut, mem_factor=8, mem_abs=24 << 20, weight=0.2,
                    note="converters/chainer_npz.load (zip of .npy, pickles refused, graph JSON)"))  # fmt: skip


@target_family("mxnet")
def _register_mxnet(s: Setup) -> None:
    from senet_hub.converters.mxnet_params import read_params

    rng = np.random.default_rng(6)
    items = [[("arg:conv_weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
              ("arg:bn_gamma", np.ones(4, np.float32)), ("aux:bn_moving_var", np.ones(4, np.float32)),
              ("arg:fc_weight", rng.standard_normal((3, 4)).astype(np.float64))],
             [("arg:x", np.arange(6, dtype=np.int64).reshape(2, 3))]]  # fmt: skip
    mut = MxParamsMutator(items, s.big)
    for j, data in enumerate(mut.seeds):
        p = os.path.join(s.workdir, f"seed{j}.params")
        Path(p).write_bytes(data)
        read_params(p)  # the seeds must read
    # mem_factor: the file is read whole, then each array copied once (native byte order)
    register(Target("mxnet_params", ".params", lambda path: read_params(path), mut, mem_factor=4, weight=0.4,
                    note="converters/mxnet_params.read_params (mx.nd.save NDArray list)"))  # fmt: skip


ONNX_SCHEMA = {
    "Model": {7: "Graph", 25: "Function"}, "Graph": {1: "Node", 5: "Tensor", 11: "ValueInfo", 12: "ValueInfo"},
    "Node": {5: "Attribute"}, "Attribute": {5: "Tensor", 6: "Graph"}, "Tensor": {}, "ValueInfo": {2: "Type"},
    "Type": {1: "TypeTensor"}, "TypeTensor": {2: "Shape"}, "Shape": {1: "Dim"}, "Dim": {}, "Function": {7: "Node"},
}  # fmt: skip


def onnx_seeds() -> list[bytes]:
    """Two tiny SE graphs: torch.onnx.export's forms (BN, ceil pool, Shape -> Gather -> Concat reshape
    target, Mul + Add gate) and senet-hub's own export (Axpy node + its model-local function)."""
    from onnx import TensorProto, helper, numpy_helper

    from senet_hub.builders import onnx as onnx_builder
    from senet_hub.graph import Graph, Model, Node

    rng = np.random.default_rng(11)

    def arr(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    mk = helper.make_node
    inits = {"c.weight": arr(4, 3, 3, 3), "bn.weight": arr(4), "bn.bias": arr(4), "bn.running_mean": arr(4),
             "bn.running_var": np.abs(arr(4)) + 0.5, "fc1.weight": arr(2, 4, 1, 1), "fc2.weight": arr(4, 2, 1, 1),
             "fc.weight": arr(5, 4), "fc.bias": arr(5), "zero": np.array([0], np.int64),
             "minus1": np.array([-1], np.int64)}  # fmt: skip
    nodes = [
        mk("Conv", ["x", "c.weight"], ["c"], name="/c/Conv", pads=[1, 1, 1, 1]),
        mk("BatchNormalization", ["c", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"], ["b"]),
        mk("Relu", ["b"], ["r"]),
        mk("MaxPool", ["r"], ["p"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        mk("ReduceMean", ["p"], ["m"], axes=[2, 3], keepdims=1),
        mk("Conv", ["m", "fc1.weight"], ["f1"]), mk("Relu", ["f1"], ["f1r"]),
        mk("Conv", ["f1r", "fc2.weight"], ["f2"]), mk("Sigmoid", ["f2"], ["g"]),
        mk("Mul", ["p", "g"], ["s"]), mk("Add", ["s", "p"], ["a"]),
        mk("GlobalAveragePool", ["a"], ["gap"]),
        mk("Shape", ["gap"], ["shape"]), mk("Gather", ["shape", "zero"], ["n"], axis=0),
        mk("Concat", ["n", "minus1"], ["target"], axis=0), mk("Reshape", ["gap", "target"], ["flat"]),
        mk("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], transB=1), mk("Softmax", ["logits"], ["y"], axis=1),
    ]  # fmt: skip
    g = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )  # fmt: skip
    torch_like = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    canon = Graph(
        [Node("conv", "conv", ["data"], {"out_channels": 4, "kernel": (3, 3), "bias": False}),
         Node("gap", "global_avg_pool", ["conv"]), Node("fc", "conv", ["gap"], {"out_channels": 4, "kernel": (1, 1)}),
         Node("gate", "sigmoid", ["fc"]), Node("axpy", "axpy", ["gate", "conv", "conv"]),
         Node("cls", "linear", ["axpy"], {"out_features": 3})],
        input_shape=(1, 3, 6, 6),
    )  # fmt: skip
    weights = {"conv.weight": arr(4, 3, 3, 3), "fc.weight": arr(4, 4, 1, 1), "fc.bias": arr(4),
               "cls.weight": arr(3, 64), "cls.bias": arr(3)}  # fmt: skip
    own = onnx_builder.to_bytes(Model(canon, weights, {"arch": "tiny"}), opset=17)
    return [torch_like.SerializeToString(), own]


@target_family("onnx")
def _register_onnx(s: Setup) -> None:
    from senet_hub.converters.onnx_source import load

    seeds = onnx_seeds()
    for j, data in enumerate(seeds):
        p = os.path.join(s.workdir, f"seed{j}.onnx")
        Path(p).write_bytes(data)
        load(p)  # the seeds must read
    # mem_factor: protobuf parses in C++ (untraced); the weights are copied once into numpy arrays,
    # then once more as float32 canonical weights; mem_abs: the zoo's recognition pass
    register(Target("onnx_model", ".onnx", lambda path: load(path),
                    WireMutator(seeds, ONNX_SCHEMA, "Model", (7,), ("Graph", 5), s.big), mem_factor=8,
                    mem_abs=16 << 20, weight=0.4, note="converters/onnx_source.load (protobuf ModelProto)"))  # fmt: skip


@target_family("manifest")
def _register_manifest(s: Setup) -> None:
    from senet_hub.hub import manifest as man

    loader = man.load
    seed_path = ROOT / "weights_manifest.yaml"
    text = seed_path.read_text()
    loader(str(seed_path))  # the repository's own manifest must load
    # The shipped manifest cut after its first two models (anchors included): parsing costs ~1 ms
    # per line, and every line is a truncation point. bench/fuzz.py --big uses all of it.
    lines = text.splitlines(keepends=True)
    starts = [i for i, ln in enumerate(lines) if ln.startswith("  - id:")]
    small = "".join(lines[: starts[2]]) if len(starts) > 2 and not s.big else text
    seeds = [small, "schema_version: 1\nmodels: []\n"]
    # mem_abs: the loader reads with f.read(limit + 1), which reserves its 1 MiB limit up front
    register(Target("manifest_yaml", ".yaml", lambda path: loader(path), YamlMutator(seeds, s.big), mem_factor=64, mem_abs=3 << 20,
                    weight=0.5, note="senet_hub.hub.manifest.load"))  # fmt: skip


# -------------------------------------------------------------------------------- the runner
class Timeout(BaseException):
    """Raised by SIGALRM inside a reader that runs too long (BaseException: no reader swallows it)."""


@dataclass
class Outcome:
    target: str
    op: str
    size: int
    result: str  # "ok", "SenetHubError subclass name", or "BUG <type>: <message>"
    seconds: float
    peak: int
    data: bytes = field(repr=False, default=b"")

    @property
    def bug(self) -> bool:
        return self.result.startswith("BUG")

    def mem_ok(self, limit: float) -> bool:
        return self.peak <= limit


def corpus(n: int, seed: int = 0, targets: dict[str, Target] | None = None) -> Iterator[tuple[Target, str, bytes]]:
    """A fixed-seed corpus of `n` inputs: every truncation of every seed first, then random operators
    (each operator of each target in turn, so every one is exercised), weighted by target."""
    targets = targets or TARGETS
    rng = random.Random(seed)
    count = 0
    for t in targets.values():
        for op, data in t.mutator.truncations():
            if count >= n:
                return
            yield t, op, data
            count += 1
    names = list(targets)
    weights = [targets[k].weight for k in names]
    ops_cycle = {k: 0 for k in names}
    while count < n:
        t = targets[rng.choices(names, weights)[0]]
        ops = t.mutator.OPS
        op = ops[ops_cycle[t.name] % len(ops)]
        ops_cycle[t.name] += 1
        label, data = t.mutator.mutate(rng, op)
        yield t, label, data
        count += 1


def _alarm(signum, frame):
    raise Timeout()


@contextlib.contextmanager
def hang_guard(seconds: float = HANG_LIMIT) -> Iterator[None]:
    """Raise Timeout in the body after `seconds` (SIGALRM): a hang fails the test instead of blocking CI."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_one(t: Target, data: bytes, path: str, op: str = "", time_limit: float = HANG_LIMIT) -> Outcome:
    """Write `data` to a fresh file (a reader may keep views of the previous one) and read it."""
    with open(path, "wb") as f:
        f.write(data)
    traced = tracemalloc.is_tracing()
    base = tracemalloc.get_traced_memory()[0] if traced else 0
    if traced:
        tracemalloc.reset_peak()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    t0 = time.perf_counter()
    try:
        t.run(path)
        result = "ok"
    except SenetHubError as e:
        result = type(e).__name__
        msg = str(e)
        if "\n" in msg or not msg:
            result = f"BUG message not one line: {msg!r}"
    except Timeout:
        result = f"BUG timeout after {time_limit} s"
    except RecursionError as e:
        result = f"BUG RecursionError: {str(e)[:200]}"
    except Exception as e:  # noqa: BLE001 - the point: anything else is a bug
        result = f"BUG {type(e).__name__}: {str(e)[:300]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    dt = time.perf_counter() - t0
    peak = (tracemalloc.get_traced_memory()[1] - base) if traced else 0
    os.unlink(path)
    return Outcome(t.name, op, len(data), result, dt, peak, data)


def warm_up(targets: dict[str, Target], workdir: str) -> None:
    """Run each target's seeds once, untraced: first-time imports and caches are not the input's cost."""
    for t in targets.values():
        for _, data in list(t.mutator.truncations())[-1:]:
            run_one(t, data, os.path.join(workdir, "warm" + t.suffix))
        for op in t.mutator.OPS[:3]:
            _, data = t.mutator.mutate(random.Random(0), op)
            run_one(t, data, os.path.join(workdir, "warm" + t.suffix))


def run_corpus(
    n: int,
    workdir: str | os.PathLike,
    seed: int = 0,
    trace_memory: bool = True,
    big: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
    targets: dict[str, Target] | None = None,
) -> list[Outcome]:
    """Run `n` corpus inputs (targets: from setup_targets(workdir, big) unless given)."""
    workdir = os.fspath(workdir)
    targets = targets if targets is not None else setup_targets(workdir, big)
    warm_up(targets, workdir)
    outcomes: list[Outcome] = []
    gen = corpus(n, seed, targets)
    while len(outcomes) < n:
        batch = [x for _, x in zip(range(500), gen)]  # generated untraced: only the readers are measured
        if not batch:
            break
        if trace_memory:
            tracemalloc.start()
        try:
            for t, op, data in batch:
                o = run_one(t, data, os.path.join(workdir, f"in{len(outcomes)}{t.suffix}"), op)
                o.data = data if (o.bug or not o.mem_ok(t.mem_limit(o.size))) else b""
                outcomes.append(o)
                if on_outcome:
                    on_outcome(o)
        finally:
            if trace_memory:
                tracemalloc.stop()
    return outcomes


def summarize(outcomes: list[Outcome]) -> str:
    by_target: dict[str, dict[str, int]] = {}
    for o in outcomes:
        key = "BUG" if o.bug else o.result
        by_target.setdefault(o.target, {}).setdefault(key, 0)
        by_target[o.target][key] += 1
    lines = []
    for t, counts in by_target.items():
        tos = [o for o in outcomes if o.target == t]
        worst_t = max(o.seconds for o in tos)
        ratio = max((o.peak / o.size for o in tos if o.size >= 4096), default=0.0)
        lines.append(
            f"{t:<34} n={len(tos):>5}  {sum(o.seconds for o in tos):5.1f} s  max {worst_t * 1e3:6.1f} ms"
            f"  max peak {max(o.peak for o in tos) / 2**20:5.1f} MiB"
            f"  max peak/size (>= 4 KiB) {ratio:6.1f}  " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        )
    return "\n".join(lines)
