"""Outputs must never be inputs: identity checks between the files a command reads and writes.

Names are compared by file identity (st_dev, st_ino), so a symlink, a hard link, `./x` or an
absolute spelling of an input is caught; an output directory that contains an input is caught
too (replacing the directory would delete the input). Checked before anything is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from .errors import OutputError


def output_files(target: str, output: str) -> list[str]:
    """The files (or directory) a `convert --to target -o output` writes, as the writers name them."""
    if target == "caffe":
        prefix = output
        for ext in (".prototxt", ".caffemodel"):
            if prefix.endswith(ext):
                prefix = prefix[: -len(ext)]
        return [prefix + ".prototxt", prefix + ".caffemodel"]
    if target == "mxnet":
        prefix = output
        for suffix in ("-symbol.json", "-0000.params"):
            if prefix.endswith(suffix):
                prefix = prefix[: -len(suffix)]
        return [f"{prefix}-symbol.json", f"{prefix}-0000.params"]
    return [output]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _inside(path: str, directory: str) -> bool:
    try:
        p, d = os.path.realpath(path), os.path.realpath(directory)
    except (OSError, ValueError):
        return False
    return os.path.commonpath([p, d]) == d and p != d


def check_not_inputs(inputs: Iterable[str | os.PathLike | None], outputs: Iterable[str | os.PathLike | None]) -> None:
    """OutputError (exit 7) when an output is one of the inputs, or a directory holding one.

    Also refuses two outputs that are the same file (e.g. --json and --markdown to one name).
    """
    ins = {os.fspath(p): _identity(os.fspath(p)) for p in inputs if p}
    seen: dict[object, str] = {}
    for out in (os.fspath(o) for o in outputs if o):
        if out == "-":
            continue
        ident = _identity(out)
        for src, src_id in ins.items():
            if src_id is not None and ident == src_id:
                raise OutputError(
                    f"{out}: is the input {src} (same file); writing it would destroy the source; choose another output path"
                )
            if os.path.isdir(out) and _inside(src, out):
                raise OutputError(
                    f"{out}: the input {src} is inside this output directory, which would be replaced; "
                    "choose another output path"
                )
        key = ident or os.path.realpath(out)  # not there yet: the same name twice
        if key in seen:
            raise OutputError(f"{out}: is also the output {seen[key]}; give each output its own path")
        seen[key] = out
