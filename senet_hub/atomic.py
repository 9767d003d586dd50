"""Atomic outputs: write to temporary names in the target directory, rename when complete.

A crash or a kill mid-write leaves the previous file (or nothing) under the final name, never a
partial one; temporaries are removed on any error.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator

from .errors import OutputError

TMP_MARK = ".senet-hub-tmp-"


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, before any work, when the output's directory is missing or not writable."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(d):
        raise OutputError(f"{path}: directory {d} does not exist; create it or choose another output path")
    if not os.access(d, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: directory {d} is not writable; choose another output path")
    if os.path.isdir(path) and not os.path.splitext(path)[1] == "":
        raise OutputError(f"{path}: is an existing directory; choose a file name")


def temp_name(path: str) -> str:
    d, base = os.path.split(os.path.abspath(path))
    return os.path.join(d, f".{base}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(p: str) -> None:
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


@contextlib.contextmanager
def atomic_outputs(paths: list[str]) -> Iterator[list[str]]:
    """Yield temporary paths for `paths`; on success rename them all into place (dirs too)."""
    paths = [os.fspath(p) for p in paths]
    for p in paths:
        check_writable(p)
    tmps = [temp_name(p) for p in paths]
    try:
        yield tmps
        for t, p in zip(tmps, paths):
            if os.path.isdir(t) and os.path.isdir(p):  # a directory replaces a directory in two steps
                old = temp_name(p)
                os.rename(p, old)
                os.rename(t, p)
                _remove(old)
            else:
                os.replace(t, p)
    except OSError as e:
        name = paths[tmps.index(e.filename)] if e.filename in tmps else (e.filename or paths[0])
        raise OutputError(f"{name}: cannot write output: {e.strerror or e}; check the path and free space") from None
    finally:
        for t in tmps:
            if os.path.exists(t):
                _remove(t)
