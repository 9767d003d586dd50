"""Checksums of downloaded and cached files: sha256, ``<file>.sha256`` sidecars, the check on every use.

* ``sha256`` in the manifest: the file must match it;
* ``sha256_prefix`` only (MindCV, the torch.hub convention): the file's sha256 must start with it;
  the full hash is then recorded in the sidecar and later uses must match that too;
* ``sha256_from: x-linked-etag`` (files on the Hugging Face Hub): the download must match the sha256
  the Hub states for it (hub.download.hub_sha256); that hash is recorded like a first download's;
* neither (the Caffe release published none): the hash of the first download is recorded in
  ``<file>.sha256`` (said once on stderr) and every later use is checked against it.

Imports nothing of senet-hub but errors and atomic, so readers (sources.ensure_hashes) can hash
without importing the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from ..atomic import temp_name
from ..errors import ChecksumError, InputFileError

SIDECAR = ".sha256"
CHUNK = 1 << 20

Log = Callable[[str], None]


def stderr_log(msg: str) -> None:
    print(f"senet-hub: {msg}", file=sys.stderr, flush=True)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def read_sidecar(path: Path) -> str | None:
    """The recorded sha256 for `path`, None when there is no sidecar; ChecksumError when it is garbage."""
    side = sidecar_path(path)
    try:
        text = side.read_text(errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ChecksumError(f"{side}: cannot read the recorded checksum ({e.strerror}); fix its permissions") from None
    tok = text.split()[0].lower() if text.split() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", tok):
        raise ChecksumError(f"{side}: not a sha256 record; delete it (it is re-recorded from {path.name} on next use)")
    return tok


def write_sidecar(path: Path, digest: str) -> Path:
    side = sidecar_path(path)
    tmp = temp_name(str(side))
    try:
        with open(tmp, "w") as f:
            f.write(f"{digest}  {path.name}\n")
        os.replace(tmp, side)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return side


def checksum_kind(spec: dict) -> str:
    if spec.get("sha256"):
        return "sha256"
    if spec.get("sha256_prefix"):
        return "sha256-prefix"
    if spec.get("sha256_from"):
        return "hub-sha256"  # checked against the sha256 the server states at download, then recorded
    return "first-download"


def _fix(model_id: str) -> str:
    return f"run `senet-hub cache rm {model_id}` and download again (`senet-hub download {model_id}`)"


def check_file(
    model_id: str, role: str, spec: dict, path: Path, log: Log | None = stderr_log, record: bool = True
) -> str:
    """Hash `path` and check it against the manifest / sidecar; returns the sha256.

    A file with no published checksum and no sidecar gets one recorded (when `record`).
    """
    try:
        actual = sha256_file(path)
    except FileNotFoundError:
        raise InputFileError(
            f"{path}: {model_id} {role} is not in the cache; run `senet-hub download {model_id}`"
        ) from None
    except OSError as e:
        raise InputFileError(
            f"{path}: cannot read the cached {model_id} {role} ({e.strerror}); {_fix(model_id)}"
        ) from None
    full = (spec.get("sha256") or "").lower()
    prefix = (spec.get("sha256_prefix") or "").lower()
    if full and actual != full:
        raise ChecksumError(
            f"{path}: sha256 mismatch for {model_id} {role}: expected {full}, got {actual}; {_fix(model_id)}"
        )
    if prefix and not actual.startswith(prefix):
        raise ChecksumError(
            f"{path}: sha256 mismatch for {model_id} {role}: expected a hash starting {prefix}, got {actual}; {_fix(model_id)}"
        )
    if not full:
        recorded = read_sidecar(path)
        if recorded is None:
            if record:
                side = write_sidecar(path, actual)
                if log and not prefix:
                    log(
                        f"{model_id} {role}: no checksum was published for this file; recorded its sha256 {actual} "
                        f"in {side} and every later use is checked against it"
                    )
        elif recorded != actual:
            raise ChecksumError(
                f"{path}: sha256 mismatch for {model_id} {role}: expected {recorded} (recorded at first download in "
                f"{sidecar_path(path).name}), got {actual}; {_fix(model_id)}"
            )
    return actual
