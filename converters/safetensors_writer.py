"""Write a PyTorch state_dict as ``.safetensors`` (the hub ecosystem's pickle-free weights file).

The tensors are exactly those of the ``.pth`` writer (``pth.model_state_dict``: the names torch's
``state_dict()`` gives senet-hub's module, Cadene / timm names for the released architectures,
BatchNorm's ``num_batches_tracked`` as int64 0), written with the ``safetensors`` library's numpy
API, so neither torch nor any pickle is involved, and ``safetensors.torch.load_file`` +
``load_state_dict(strict=True)`` loads it where the ``.pth`` loads.

The header's ``__metadata__`` holds only strings: ``format`` = ``pt`` (what transformers and the
hub loaders expect of a PyTorch safetensors file) and ``senet_hub`` = the JSON text of the record
``pth.metadata_record`` makes (architecture, input convention, class order, input fold, source
hashes). ``read_metadata`` reads it back from the header alone (no tensor read, nothing executed).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from senet_hub.graph import Model

METADATA_KEY = "senet_hub"
HEADER_LIMIT = 100 << 20  # safetensors' own limit on the JSON header


def _library() -> Any:
    """The safetensors numpy API, or one line naming the package (lazy: importing senet-hub loads nothing)."""
    try:
        import safetensors.numpy as stn
    except ImportError:
        from senet_hub.errors import MissingFrameworkError

        raise MissingFrameworkError(
            "writing .safetensors needs the safetensors package: pip install -c constraints.txt safetensors"
        ) from None
    return stn


def write_tensors(tensors: Mapping[str, np.ndarray], path: str, metadata: dict[str, Any] | None = None) -> None:
    """Write `tensors` to `path` (a temporary name: callers rename it into place) with the safetensors
    library; `metadata` (JSON-serialisable) goes into ``__metadata__`` as the string ``senet_hub``."""
    stn = _library()
    header = {"format": "pt"}
    if metadata is not None:
        header[METADATA_KEY] = json.dumps(metadata, sort_keys=True, default=str)
    # the library serialises C-ordered little-endian buffers; memory-mapped caffemodel views may be neither
    # (np.require, not ascontiguousarray: that one makes a 0-d num_batches_tracked 1-d)
    arrays = {k: np.require(v, np.asarray(v).dtype.newbyteorder("<"), "C") for k, v in tensors.items()}
    stn.save_file(arrays, path, metadata=header)
    _sort_metadata(path)


def _sort_metadata(path: str) -> None:
    """Rewrite the header with ``__metadata__``'s keys sorted, in place and at the same length.

    The library keeps the metadata in a hash map whose order changes from one call to the next, so
    the same tensors would give different bytes; sorted, the bytes depend only on the tensors and the
    record (as the .pth writer's do). The rewritten header is the same JSON value, checked."""
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
        text = raw.rstrip(b" ")  # the library pads the header with spaces to an 8-byte boundary
        header = json.loads(text)
        meta = header.get("__metadata__")
        if not isinstance(meta, dict):
            return
        header["__metadata__"] = dict(sorted(meta.items()))
        new = json.dumps(
            {"__metadata__": header.pop("__metadata__"), **header}, separators=(",", ":"), ensure_ascii=False
        )
        data = new.encode("utf-8")
        if len(data) != len(text) or json.loads(data) != json.loads(text):
            return  # another serialisation than expected: keep the library's (valid) header as it is
        f.seek(8)
        f.write(data)


def save_model(model: Model, path: str, metadata: dict[str, Any] | None = None) -> list[str]:
    """Write the model's state_dict (the .pth writer's keys and values) as a .safetensors file, atomically;
    with `metadata` (see pth.metadata_record) the header carries that record too."""
    from senet_hub.atomic import atomic_outputs

    from .pth import check_weights_only, model_state_dict

    check_weights_only(model, "a .safetensors state_dict")
    _library()  # a missing package is said before anything is written
    sd = model_state_dict(model)
    with atomic_outputs([path]) as (tmp,):
        write_tensors(sd, tmp, metadata)
    return [path]


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor entries and ``__metadata__``), read without the library.

    FormatError (exit 4) when the file is not a safetensors file; InputFileError (3) when unreadable."""
    from senet_hub.errors import FormatError

    from .wire import open_regular

    p = os.fspath(path)
    f, st = open_regular(p, "safetensors file")
    size = st.st_size
    with f:
        head = f.read(8)
        if len(head) < 8:
            raise FormatError(f"{p}: {len(head)} bytes, too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(HEADER_LIMIT, size - 8):
            raise FormatError(f"{p}: not a safetensors file (header length {n} for a file of {size} bytes)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise FormatError(f"{p}: not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise FormatError(f"{p}: not a safetensors file (its header is not a JSON object)")
    return header


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """The senet-hub record of a .safetensors file (from ``__metadata__``), or None when it has none."""
    meta = read_header(path).get("__metadata__") or {}
    text = meta.get(METADATA_KEY) if isinstance(meta, dict) else None
    if not isinstance(text, str):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("format") == "senet-hub" else None
