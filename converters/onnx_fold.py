"""Constant values of an ONNX graph, for the ``--from onnx`` reader (``onnx_source``).

Tensors as numpy (initializers, ``Constant`` nodes, external data files beside the model, read
with the same care as the model itself), and the shape arithmetic ``torch.onnx.export`` writes
around a reshape (``Shape -> Gather -> Unsqueeze -> Concat``, ``Slice``, ``Cast``, ...) folded to
constants. A dimension the file leaves dynamic stays symbolic through the folding (``Sym``,
``Derived``), so the reader can tell a reshape target that copies the batch from one that depends
on the input's H, W.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from senet_hub.errors import FormatError, SenetHubError, UnsupportedError

from .wire import open_regular

# ONNX ops accepted only when every input is a constant (shape arithmetic); they vanish from the graph
FOLDABLE = ("Constant", "Shape", "Cast", "Slice", "Sub", "Div", "ConstantOfShape", "Range")

# bytes per element of the ONNX number types (TensorProto.DataType), the only ones read
DTYPE_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}

# elementwise arithmetic on constants; on dynamic dims a Div is an integer division (shape arithmetic)
_ARITH: dict[str, Callable[..., Any]] = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}
_DIM_ARITH: dict[str, Callable[..., Any]] = {**_ARITH, "Div": np.floor_divide}


def node_error(path: str, node: Any, msg: str, cls: type[SenetHubError] = UnsupportedError) -> SenetHubError:
    """The one-line error for an ONNX node: ``<file>: node '<name>' (<op>): <msg>``."""
    label = node.name or (node.output[0] if node.output else "?")
    return cls(f"{path}: node '{label}' ({node.op_type}): {msg}")


# ------------------------------------------------------------------------------------ tensors


def tensors_of(proto: Any) -> list[Any]:
    """Every TensorProto a load may read: initializers and Constant nodes' tensor attributes."""
    out = list(proto.graph.initializer)
    for n in proto.graph.node:
        out += [a.t for a in n.attribute if a.HasField("t")]
    return out


def load_external(proto: Any, path: str) -> list[str]:
    """Read tensors stored in external data files (torch.onnx.export's default ``X.onnx.data``).

    A location must be a relative path inside the model's directory (no absolute path, no ``..``),
    a regular file, and the declared offset + length must lie inside it and match the tensor's
    size: a crafted model cannot make senet-hub read other files or block on a FIFO.
    Returns the data files read.
    """
    base = os.path.dirname(os.path.abspath(path))
    files: dict[str, tuple[Any, int]] = {}
    try:
        for t in tensors_of(proto):
            if t.data_location != 1:  # EXTERNAL
                continue
            info = {e.key: e.value for e in t.external_data}
            loc = info.get("location", "")
            parts = loc.replace("\\", "/").split("/")
            if not loc or os.path.isabs(loc) or ".." in parts or "\x00" in loc:
                raise FormatError(
                    f"{path}: tensor '{t.name}' points at external data '{loc}': only files beside the model are read"
                )
            data_path = os.path.join(base, *parts)
            if data_path not in files:
                f, st = open_regular(data_path, f"external data of {os.path.basename(path)}")
                files[data_path] = (f, st.st_size)
            f, size = files[data_path]
            try:
                offset = int(info.get("offset", "0"))
                length = int(info["length"]) if "length" in info else size - offset
            except ValueError:
                raise FormatError(f"{path}: tensor '{t.name}': bad external data offset/length") from None
            item = DTYPE_SIZE.get(t.data_type)
            want = math.prod(int(d) for d in t.dims) * item if item else None
            if offset < 0 or length < 0 or offset + length > size or want is None or length != want:
                raise FormatError(
                    f"{path}: tensor '{t.name}': external data {loc} [{offset}, +{length}) does not hold its "
                    f"{list(t.dims)} values (file size {size}); the data file does not belong to this model"
                )
            f.seek(offset)
            t.raw_data = f.read(length)
            t.data_location = 0
            del t.external_data[:]
    finally:
        for f, _ in files.values():
            f.close()
    return sorted(files)


def to_array(t: Any, where: str) -> np.ndarray:
    """A TensorProto as numpy (FormatError for a malformed one)."""
    from onnx import numpy_helper

    if t.data_type not in DTYPE_SIZE:
        raise UnsupportedError(f"{where}: tensor '{t.name}' has ONNX data type {t.data_type}, not a number type")
    if t.data_type == 16:  # bfloat16: numpy has none; widen by hand (exact)
        raw = np.frombuffer(t.raw_data, np.uint16) if t.raw_data else np.asarray(t.int32_data, np.uint16)
        if raw.size != math.prod(t.dims):
            raise FormatError(f"{where}: tensor '{t.name}' holds {raw.size} values for shape {list(t.dims)}")
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(tuple(t.dims))
    try:
        return np.asarray(numpy_helper.to_array(t))
    except Exception as e:  # ValueError/TypeError/RuntimeError from a size or type mismatch
        raise FormatError(f"{where}: tensor '{t.name}' is malformed ({str(e).splitlines()[0][:200]})") from None


def constant_value(node: Any, path: str) -> np.ndarray:
    """The value of a ``Constant`` node."""
    a = node.attribute
    if len(a) != 1:
        raise node_error(path, node, "a Constant needs exactly one value attribute", FormatError)
    a0 = a[0]
    if a0.name == "value":
        return to_array(a0.t, path)
    if a0.name in ("value_float", "value_floats"):
        return np.asarray(a0.f if a0.name == "value_float" else list(a0.floats), np.float32)
    if a0.name in ("value_int", "value_ints"):
        return np.asarray(a0.i if a0.name == "value_int" else list(a0.ints), np.int64)
    raise node_error(path, node, f"Constant '{a0.name}' is not supported")


# ---------------------------------------------------------------------------- symbolic shapes


@dataclass(frozen=True)
class Sym:
    """A dimension the file leaves dynamic, as a Shape op reports it: the batch ('N') or a spatial
    size that depends on the input's H, W ('HW'). `value` is the size used for this read."""

    name: str
    value: int

    def __int__(self) -> int:
        return self.value


@dataclass(frozen=True)
class Derived:
    """Arithmetic on dynamic dimensions (which ones it used): never a reshape target canonical ops express."""

    names: frozenset[str]
    value: int

    def __int__(self) -> int:
        return self.value


def syms(a: np.ndarray) -> set[str]:
    """The dynamic dimensions (Sym names) a folded value was computed from."""
    if a.dtype != object:
        return set()
    out: set[str] = set()
    for v in a.flat:
        if isinstance(v, Sym):
            out.add(v.name)
        elif isinstance(v, Derived):
            out |= v.names
    return out


def concrete(a: np.ndarray) -> np.ndarray:
    """The values used for this read (dynamic dims at their chosen size)."""
    if a.dtype != object:
        return a
    return np.array([int(v) for v in a.flat], np.int64).reshape(a.shape)


def shape_value(shape: tuple[int, ...], dynamic_batch: bool, dynamic_hw: bool, at: dict[str, Any]) -> np.ndarray:
    """What a ``Shape`` node (attributes `at`: start, end) reports for a tensor of `shape`, its
    dynamic dims symbolic (Sym): the batch when the file leaves it dynamic, H and W when the
    tensor's spatial size follows the input's dynamic H, W."""
    dims: list[Any] = list(shape)
    if dynamic_batch:
        dims[0] = Sym("N", dims[0])
    if dynamic_hw:
        dims[2:] = [Sym("HW", d) for d in dims[2:]]
    arr = np.empty(len(dims), object)
    arr[:] = dims
    if not any(isinstance(d, Sym) for d in dims):
        arr = np.asarray(dims, np.int64)
    rank = len(dims)
    start, end = int(at.get("start", 0)), at.get("end")
    start = max(0, start + rank if start < 0 else start)
    stop = rank if end is None else (int(end) + rank if int(end) < 0 else min(int(end), rank))
    return arr[start:stop]


# ------------------------------------------------------------------------------------ folding


def _given(ins: list[np.ndarray | None], i: int) -> np.ndarray:
    """Input i of a node being folded; an empty input name where the op needs a value is a malformed
    node (the ValueError becomes the reader's FormatError 'cannot fold its constant inputs')."""
    v = ins[i] if i < len(ins) else None
    if v is None:
        raise ValueError(f"input {i} is missing")
    return v


def _optional(ins: list[np.ndarray | None], i: int) -> np.ndarray | None:
    return ins[i] if i < len(ins) else None


def fold(node: Any, ins: list[np.ndarray | None], at: dict[str, Any], path: str) -> np.ndarray | None:
    """Evaluate a node whose inputs are all constants (shape arithmetic; `ins` holds None for an
    empty input name); None when it is no such op."""
    op = node.op_type
    x = ins[0] if ins else None
    if op == "Identity" or (op == "Dropout" and x is not None):
        return x
    if op == "Cast":
        to = int(at.get("to", 1))
        from onnx import helper

        if x is not None and x.dtype == object:  # symbolic dims stay symbolic through int casts
            return x if to in (6, 7) else concrete(x).astype(helper.tensor_dtype_to_np_dtype(to))
        return np.asarray(x).astype(helper.tensor_dtype_to_np_dtype(to))
    if op == "Gather":
        idx = concrete(np.asarray(ins[1]))
        return np.take(_given(ins, 0), idx, axis=int(at.get("axis", 0)))
    if op in ("Unsqueeze", "Squeeze"):
        data = _given(ins, 0)
        given_axes = _optional(ins, 1)
        axes = given_axes if given_axes is not None else at.get("axes")
        if op == "Squeeze":
            if axes is None:
                return np.squeeze(data)
            return np.squeeze(data, axis=tuple(int(a) % max(np.ndim(data), 1) for a in np.asarray(axes).ravel()))
        if axes is None:
            raise ValueError("Unsqueeze without axes")
        out = data
        rank = np.ndim(data) + len(axes)
        for ax in sorted(int(a) % rank for a in np.asarray(axes).ravel()):
            out = np.expand_dims(out, ax)
        return out
    if op == "Concat":
        parts = [np.atleast_1d(_given(ins, i)) for i in range(len(ins))]
        dtype = object if any(p.dtype == object for p in parts) else None
        return np.concatenate([p.astype(dtype) if dtype else p for p in parts], axis=int(at.get("axis", 0)))
    if op == "Slice":
        data = _given(ins, 0)
        starts, ends = concrete(_given(ins, 1)).ravel(), concrete(_given(ins, 2)).ravel()
        given_axes, given_steps = _optional(ins, 3), _optional(ins, 4)
        axes = concrete(given_axes).ravel() if given_axes is not None else range(len(starts))
        steps = concrete(given_steps).ravel() if given_steps is not None else [1] * len(starts)
        sl = [slice(None)] * np.ndim(data)
        for s, e, a, st in zip(starts, ends, axes, steps):
            big = np.iinfo(np.int64).max
            sl[int(a)] = slice(int(s), None if int(e) >= big // 2 else int(e), int(st))
        return data[tuple(sl)]
    if op in _ARITH:
        first, second = ins  # a ValueError (a malformed node) unless exactly two inputs
        if first is None or second is None:
            raise ValueError(f"input {0 if first is None else 1} is missing")
        a, b = np.asarray(first), np.asarray(second)
        names = frozenset(syms(a) | syms(b))
        if names:
            val = _DIM_ARITH[op](concrete(a), concrete(b))
            return np.vectorize(lambda v: Derived(names, int(v)), otypes=[object])(val)
        out = _ARITH[op](a, b)
        if op == "Div" and np.issubdtype(a.dtype, np.integer):
            out = np.floor_divide(a, b)
        return np.asarray(out).astype(np.result_type(a, b))
    if op == "ConstantOfShape":
        val = to_array(at["value"], path).ravel() if "value" in at else np.zeros(1, np.float32)
        shape = [int(v) for v in concrete(np.asarray(x)).ravel()]
        if math.prod(shape) > 1 << 20:
            raise node_error(path, node, f"ConstantOfShape of {shape} elements is not shape arithmetic")
        return np.full(shape, val[0], val.dtype)
    if op == "Range":
        s, lim, d = (concrete(np.asarray(v)).item() for v in ins)
        if d == 0 or abs((lim - s) / d) > 1 << 20:
            raise node_error(path, node, "Range too long for shape arithmetic")
        return np.arange(s, lim, d)
    if op == "Reshape":
        return np.reshape(_given(ins, 0), [int(v) for v in concrete(np.asarray(ins[1])).ravel()])
    if op == "Flatten":
        data = _given(ins, 0)
        ax = int(at.get("axis", 1))
        return np.reshape(data, (math.prod(data.shape[:ax]), -1))
    return None
