"""A user's .npy input array, read without trusting it.

np.load would unpickle object arrays (refused here without allow_pickle, but as a ValueError),
open .npz archives as a lazy mapping, allocate whatever shape a header claims ("out of memory"
for a 100-byte file) and happily return NaN. Each of those is one clear line here instead.
"""

from __future__ import annotations

import os

import numpy as np

from senet_hub.errors import FormatError, InputFileError

from .wire import check_unchanged, open_regular

WHAT = ".npy input array"


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """The float32 array in a .npy file: real numbers only, finite, header consistent with the file."""
    f, st = open_regular(path, WHAT)
    with f:
        magic = f.read(6)
        if magic[:2] == b"PK":
            raise FormatError(f"{path}: is an .npz archive; save one array with np.save(path, x) and pass that .npy")
        if magic != b"\x93NUMPY":
            raise FormatError(f"{path}: not a .npy file (no NUMPY magic); save the input with np.save(path, x)")
        try:
            f.seek(0)
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = read_header[version](f)
        except ValueError as e:
            raise FormatError(f"{path}: corrupt .npy header ({e}); save the input again with np.save") from None
        if dtype.hasobject:
            raise FormatError(
                f"{path}: holds Python objects (dtype object); refused, never unpickled: pass a float array"
            )
        if dtype.fields is not None or dtype.subdtype is not None:
            raise FormatError(f"{path}: has a structured dtype {dtype}; pass a plain float32 N x C x H x W array")
        if dtype.kind not in "fiu":
            raise FormatError(f"{path}: has dtype {dtype} ({dtype.kind!r} kind); pass real numbers (float32)")
        count = int(np.prod(shape, dtype=object))
        need = count * dtype.itemsize
        have = st.st_size - f.tell()
        if need != have:
            raise FormatError(
                f"{path}: the header claims shape {tuple(shape)} ({need} bytes) but the file holds {have} bytes "
                "of data; the file is truncated or corrupt"
            )
        buf = bytearray(need)
        if f.readinto(buf) != need:
            raise FormatError(f"{path}: the {WHAT} changed while being read; try again")
        check_unchanged(path, f, st, WHAT)
    x = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        raise FormatError(
            f"{path}: {int(bad.sum())} of {x.size} input values are NaN or Inf; parity is undefined on them: "
            "pass finite values"
        )
    return x


def check_exists(path: str) -> None:
    """InputFileError early (before a model is loaded) when the input array is missing."""
    if not os.path.lexists(path):
        raise InputFileError(f"{path}: {WHAT} not found; check the path")
