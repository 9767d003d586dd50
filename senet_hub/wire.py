"""Protobuf wire format, read by hand (Caffe's NetParameter, MindSpore's Checkpoint).

No generated code and no protobuf dependency: a cursor over a buffer that yields fields and
checks every declared length against the bytes present before anything is sliced. Each format
subclasses it only to say, in `hint`, what a user should suspect when its file does not parse.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from .errors import FormatError, InputFileError


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


def read_bytes(path: str | os.PathLike, what: str, limit: int | None = None) -> bytearray:
    """Read a whole input file into a writable buffer (frombuffer views on it are then writable).

    Read-only files are fine (MindSpore writes checkpoints 0400); a file over `limit` bytes is
    refused before anything is allocated for it.
    """
    try:
        size = os.path.getsize(path)
        if limit is not None and size > limit:
            raise FormatError(f"{path}: {size} bytes is too large for a {what} (limit {limit}); pass the deploy file")
        buf = bytearray(size)
        with open(path, "rb") as f:
            got = f.readinto(buf)
    except FileNotFoundError:
        raise InputFileError(f"{path}: {what} not found; check the path") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a directory, expected a {what} file") from None
    except OSError as e:
        raise InputFileError(f"{path}: cannot read {what}: {e.strerror or e}") from None
    if got != size:
        raise FormatError(f"{path}: file changed while reading ({got} of {size} bytes); try again")
    return buf
