"""Protobuf wire format, read by hand (Caffe's NetParameter, MindSpore's Checkpoint).

No generated code and no protobuf dependency: a cursor over a buffer that yields fields and
checks every declared length against the bytes present before anything is sliced. Each format
subclasses it only to say, in `hint`, what a user should suspect when its file does not parse.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from typing import Any, BinaryIO

from senet_hub.errors import FormatError, InputFileError


class WireReader:
    """Cursor over a protobuf-encoded buffer; every length is checked before use."""

    __slots__ = ("buf", "path")
    hint = "truncated or corrupt"

    def __init__(self, buf: memoryview, path: str):
        self.buf, self.path = buf, path

    def error(self, msg: str) -> FormatError:
        return FormatError(f"{self.path}: {msg} ({self.hint})")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        result = shift = 0
        buf = self.buf
        while True:
            if pos >= end:
                raise self.error("varint runs past the end of the data")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result, pos
            shift += 7
            if shift > 63:
                raise self.error("varint longer than 10 bytes")

    def fields(self, pos: int, end: int) -> Iterator[tuple[int, int, Any]]:
        """Yield (field number, wire type, int value or (start, stop) span of the payload)."""
        while pos < end:
            key, pos = self.varint(pos, end)
            field, wt = key >> 3, key & 7
            if field == 0:
                raise self.error(f"field number 0 at byte {pos}")
            if wt == 0:
                val, pos = self.varint(pos, end)
                yield field, wt, val
            elif wt == 2:
                n, pos = self.varint(pos, end)
                if n > end - pos:
                    raise self.error(f"field {field} at byte {pos} declares {n} bytes but only {end - pos} remain")
                yield field, wt, (pos, pos + n)
                pos += n
            elif wt in (1, 5):
                size = 8 if wt == 1 else 4
                if size > end - pos:
                    raise self.error(f"fixed-size field {field} runs past the end")
                yield field, wt, (pos, pos + size)
                pos += size
            else:
                raise self.error(f"unsupported wire type {wt} (field {field}) at byte {pos}")

    def text(self, span: tuple[int, int], what: str) -> str:
        try:
            return bytes(self.buf[span[0] : span[1]]).decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not valid UTF-8") from None


def _stat_id(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def check_regular(path: str | os.PathLike, what: str) -> os.stat_result:
    """The stat of an input that must be a regular file; InputFileError (exit 3) otherwise."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputFileError(f"{path}: {what} not found; check the path") from None
    except OSError as e:
        raise InputFileError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputFileError(f"{path}: is a directory, expected a {what} file")
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(
            f"{path}: is not a regular file (a FIFO, pipe, socket or device); save the {what} to a file and pass that"
        )
    return st


def open_regular(path: str | os.PathLike, what: str) -> tuple[io.BufferedReader, os.stat_result]:
    """Open an input that must be a regular file, without ever blocking.

    A FIFO with no writer would block open() forever and a pipe reads as a short stream, so
    anything that is not a regular file (FIFO, socket, device, directory) is refused before it
    is opened; O_NONBLOCK covers the race where the name is swapped for a FIFO in between.
    Returns the file and its fstat (for `check_unchanged`).
    """
    check_regular(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise InputFileError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    f = io.open(fd, "rb")  # noqa: UP020  (a BufferedReader: readinto, typed)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        f.close()
        raise InputFileError(f"{path}: is not a regular file; save the {what} to a file and pass that")
    return f, st


def check_unchanged(path: str | os.PathLike, f: BinaryIO, before: os.stat_result, what: str) -> None:
    """FormatError when the file was truncated, rewritten or replaced while it was being read."""
    try:
        same = _stat_id(os.fstat(f.fileno())) == _stat_id(before) == _stat_id(os.stat(path))
    except OSError:
        same = False
    if not same:
        raise FormatError(f"{path}: the {what} changed while being read (another program is writing it); try again")


def read_bytes(path: str | os.PathLike, what: str, limit: int | None = None) -> bytearray:
    """Read a whole regular input file into a writable buffer (frombuffer views on it are then writable).

    Read-only files are fine (MindSpore writes checkpoints 0400); a file over `limit` bytes is
    refused before anything is allocated for it; a file that changes while being read is a
    FormatError (exit 4), never a short or mixed buffer.
    """
    f, st = open_regular(path, what)
    with f:
        size = st.st_size
        if limit is not None and size > limit:
            raise FormatError(f"{path}: {size} bytes is too large for a {what} (limit {limit}); pass the deploy file")
        buf = bytearray(size)
        try:
            got = f.readinto(buf)
            extra = f.read(1)
        except OSError as e:
            raise InputFileError(f"{path}: cannot read {what}: {e.strerror or e}") from None
        if got != size or extra:
            raise FormatError(f"{path}: the {what} changed while being read ({got} of {size} bytes); try again")
        check_unchanged(path, f, st, what)
    return buf
