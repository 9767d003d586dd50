"""The download cache for the released weights named in the manifest.

Layout: ``<cache>/<model id>/<file name>`` plus ``<file name>.sha256`` sidecars, where ``<cache>``
is ``$SENET_HUB_HOME``, else ``$XDG_CACHE_HOME/senet-hub``, else ``~/.cache/senet-hub``.
Files arrive through hub.download (atomic, hashed as they arrive) and are checked on download
and on every use by hub.integrity. ``SENET_HUB_OFFLINE=1`` (or ``offline=True``) never touches
the network. ``model_from_cache`` reads a cached model with the reader its manifest entry's
``source_format`` names in the format registry.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from .. import formats
from ..atomic import TMP_MARK, temp_name
from ..errors import ChecksumError, DownloadError, InputFileError, OutputError, SenetHubError
from . import manifest
from .download import DEFAULT_TIMEOUT, candidate_urls, download_to
from .integrity import SIDECAR, Log, check_file, checksum_kind, read_sidecar, sha256_file, sidecar_path, write_sidecar
from .integrity import stderr_log as _stderr

ENV_HOME = "SENET_HUB_HOME"
ENV_OFFLINE = "SENET_HUB_OFFLINE"


def cache_dir() -> Path:
    """$SENET_HUB_HOME, else $XDG_CACHE_HOME/senet-hub, else ~/.cache/senet-hub (not created here)."""
    home = os.environ.get(ENV_HOME)
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg and os.path.isabs(os.path.expanduser(xdg)) else Path.home() / ".cache"
    return base / "senet-hub"


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return bool(offline)
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------------------------ the cache


def file_path(model_id: str, role: str) -> Path:
    """Where `role` of `model_id` lives in the cache (bundled files: inside the package)."""
    entry = manifest.get(model_id)
    spec = _spec(entry, role)
    if "bundled" in spec:
        return _bundled(entry, role, spec)
    return cache_dir() / entry["id"] / spec["filename"]


def _spec(entry: dict, role: str) -> dict:
    if role not in entry["files"]:
        raise SenetHubError(f"model {entry['id']} has no file '{role}'; it has {', '.join(entry['files'])}")
    return entry["files"][role]


def _bundled(entry: dict, role: str, spec: dict) -> Path:
    ref = resources.files("senet_hub.zoo_data") / spec["bundled"]
    if not ref.is_file():
        raise InputFileError(f"{ref}: bundled {entry['id']} {role} is missing from the package; reinstall senet-hub")
    if isinstance(ref, Path):
        return ref
    # a zipped install: materialize once in the cache
    dest = cache_dir() / entry["id"] / spec["bundled"]
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(str(dest))
        try:
            Path(tmp).write_bytes(ref.read_bytes())
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return dest


def _downloadable(entry: dict) -> list[tuple[str, dict]]:
    return [(r, s) for r, s in entry["files"].items() if "bundled" not in s]


def _manual_hint(entry: dict, role: str, spec: dict, dest: Path, urls: list[str], manual: list[str]) -> str:
    where = ", ".join([*urls, *manual]) or "the model's publisher"
    return f"download {spec['filename']} by hand from {where} and place it at {dest}"


def _fetch_one(
    entry: dict,
    role: str,
    spec: dict,
    offline: bool,
    progress: bool,
    urls: Iterable[str] | None,
    timeout: float,
    log: Log | None,
) -> tuple[Path, str]:
    mid = entry["id"]
    if "bundled" in spec:
        path = _bundled(entry, role, spec)
        digest = sha256_file(path)
        if spec.get("sha256") and digest != spec["sha256"].lower():
            raise ChecksumError(
                f"{path}: bundled {mid} {role} has sha256 {digest}, expected {spec['sha256']}; reinstall senet-hub"
            )
        return path, digest
    dest = cache_dir() / mid / spec["filename"]
    if dest.exists():
        return dest, check_file(mid, role, spec, dest, log=log)
    auto, manual = candidate_urls(spec, urls)
    if offline:
        raise DownloadError(
            f"{dest}: {mid} {role} is not in the cache and offline mode is on ({ENV_OFFLINE}=1 or --offline); "
            + _manual_hint(entry, role, spec, dest, auto, manual)
            + ", or go online"
        )
    if not auto:
        raise DownloadError(
            f"{dest}: {mid} {role} has no automatic download; " + _manual_hint(entry, role, spec, dest, auto, manual)
        )
    _check_space(dest, spec)
    failures: list[str] = []
    checksum_errors: list[ChecksumError] = []
    for url in auto:
        size = f" ({spec['size_mb']:g} MB)" if spec.get("size_mb") else ""
        if log:
            log(f"downloading {mid} {role}{size} from {url}")

        def check(digest: str, url: str, stated: str | None) -> None:
            full = (spec.get("sha256") or stated or "").lower()
            prefix = (spec.get("sha256_prefix") or "").lower()
            if full and digest != full:
                whose = "" if spec.get("sha256") else " (the sha256 the server states for it)"
                raise ChecksumError(
                    f"{url}: downloaded {mid} {role} has sha256 {digest}, expected {full}{whose}; nothing was saved; "
                    f"retry `senet-hub download {mid}` (if it persists, the server serves another file)"
                )
            if prefix and not digest.startswith(prefix):
                raise ChecksumError(
                    f"{url}: downloaded {mid} {role} has sha256 {digest}, expected one starting {prefix}; nothing was saved; "
                    f"retry `senet-hub download {mid}` (if it persists, the server serves another file)"
                )

        try:
            stated = _stated_sha256(spec, url, timeout, log)  # asking the server can fail like a download
            if stated is None and spec.get("sha256_from"):
                raise _NoStatement()
            digest = download_to(
                url, dest, check=functools.partial(check, url=url, stated=stated), progress=progress, timeout=timeout
            )
        except _NoStatement:
            failures.append(f"{url}: states no sha256 for the file (no X-Linked-Etag)")
            continue
        except ChecksumError as e:
            checksum_errors.append(e)
            failures.append(f"{url}: checksum mismatch")
            if log and len(auto) > 1:
                log(f"{url}: {e}; trying the next mirror")
            continue
        except DownloadError as e:
            failures.append(str(e))
            if log and url != auto[-1]:
                log(f"{e}; trying the next mirror")
            continue
        if not spec.get("sha256"):
            write_sidecar(dest, digest)
            if log and spec.get("sha256_from"):
                log(f"{mid} {role}: matches the sha256 its server states; recorded in {sidecar_path(dest)}")
            elif log and not spec.get("sha256_prefix"):
                log(
                    f"{mid} {role}: no checksum was published for this file; recorded its sha256 {digest} in "
                    f"{sidecar_path(dest)} and every later use is checked against it"
                )
        if log:
            log(f"saved {dest} (sha256 {digest})")
        return dest, digest
    if checksum_errors and len(checksum_errors) == len(auto):
        raise checksum_errors[0]
    raise DownloadError(
        f"{dest}: could not download {mid} {role}: {'; '.join(failures)}; check the network, or "
        + _manual_hint(entry, role, spec, dest, [], manual or auto)
    )


class _NoStatement(Exception):
    """A server that should state a file's sha256 (sha256_from) did not: the download is not made."""


def _stated_sha256(spec: dict, url: str, timeout: float, log: Log | None) -> str | None:
    """The sha256 the server states for `url` when the manifest says to ask (sha256_from), else None.

    A server that states none is skipped (the next URL is tried): downloading a file nobody vouches
    for when its publisher does vouch for it elsewhere would make the check weaker than the manifest
    promises. A mirror holding exactly the file can be given as an entry with a sha256 instead."""
    if spec.get("sha256") or spec.get("sha256_from") != "x-linked-etag":
        return None
    from .download import hub_sha256

    digest, size = hub_sha256(url, timeout)
    if digest and log:
        what = f", {size / 1e6:.1f} MB" if size else ""
        log(f"{url}: the server states sha256 {digest}{what}")
    return digest


def _check_space(dest: Path, spec: dict) -> None:
    need = float(spec.get("size_mb") or 0) * 1e6
    if not need:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(dest.parent).free
        if free < need:
            raise OutputError(
                f"{dest.parent}: {free / 1e6:.0f} MB free, the download needs about {need / 1e6:.0f} MB; free space or set {ENV_HOME}"
            )


def fetch_files(
    model_id: str,
    offline: bool | None = None,
    progress: bool | None = None,
    urls: dict[str, list[str]] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    log: Log | None = _stderr,
) -> dict[str, dict[str, Any]]:
    """Like fetch(), with the sha256 of every file: {role: {"path": Path, "sha256": str}}."""
    entry = manifest.get(model_id)
    off = is_offline(offline)
    if progress is None:
        progress = sys.stderr.isatty()
    out: dict[str, dict[str, Any]] = {}
    for role, spec in entry["files"].items():
        path, digest = _fetch_one(entry, role, spec, off, bool(progress), (urls or {}).get(role), timeout, log)
        out[role] = {"path": path, "sha256": digest}
    return out


def fetch(
    model_id: str,
    offline: bool | None = None,
    progress: bool | None = None,
    urls: dict[str, list[str]] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, Path]:
    """Local, checksum-verified paths of a model's files ({role: path}); downloads what is missing.

    `offline` (default: $SENET_HUB_OFFLINE) forbids the network; `progress` (default: stderr is a
    terminal) shows a progress bar; `urls` ({role: [url, ...]}) replaces the manifest's URLs.
    """
    return {r: v["path"] for r, v in fetch_files(model_id, offline, progress, urls, timeout).items()}


def cached(model_id: str) -> bool:
    """Whether every downloadable file of the model is in the cache (not hashed here)."""
    entry = manifest.get(model_id)
    return all((cache_dir() / entry["id"] / s["filename"]).is_file() for _, s in _downloadable(entry))


def _temporaries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if TMP_MARK in p.name)


def ls(model_id: str | None = None) -> list[dict[str, Any]]:
    """One row per downloadable file: model, role, file, path, cached, bytes, checksum kind."""
    entries = [manifest.get(model_id)] if model_id else manifest.list_models()
    rows = []
    for e in entries:
        folder = cache_dir() / e["id"]
        for role, spec in _downloadable(e):
            p = folder / spec["filename"]
            rows.append(
                {
                    "model": e["id"],
                    "role": role,
                    "file": spec["filename"],
                    "path": str(p),
                    "cached": p.is_file(),
                    "bytes": p.stat().st_size if p.is_file() else None,
                    "checksum": checksum_kind(spec),
                    "recorded_sha256": _safe_sidecar(p) if p.is_file() else None,
                    "partial_downloads": [str(t) for t in _temporaries(folder)],
                }
            )
    return rows


def _safe_sidecar(p: Path) -> str | None:
    try:
        return read_sidecar(p)
    except ChecksumError:
        return None


def verify_cache(model_id: str | None = None, log: Log | None = None) -> list[dict[str, Any]]:
    """Hash every cached file; rows with status ok / mismatch / recorded / error (missing files are skipped)."""
    entries = [manifest.get(model_id)] if model_id else manifest.list_models()
    rows = []
    for e in entries:
        for role, spec in _downloadable(e):
            p = cache_dir() / e["id"] / spec["filename"]
            if not p.is_file():
                continue
            row: dict[str, Any] = {"model": e["id"], "role": role, "path": str(p), "checksum": checksum_kind(spec)}
            had_record = _safe_sidecar(p) is not None
            try:
                row["sha256"] = check_file(e["id"], role, spec, p, log=log)
                row["status"] = "ok" if (spec.get("sha256") or spec.get("sha256_prefix") or had_record) else "recorded"
            except ChecksumError as err:
                row["status"], row["error"] = "mismatch", str(err)
            except SenetHubError as err:
                row["status"], row["error"] = "error", str(err)
            rows.append(row)
    return rows


def rm(model_id: str | None = None) -> list[Path]:
    """Delete a model's cached files, sidecars and partial downloads (all models when None)."""
    root = cache_dir()
    ids = [manifest.get(model_id)["id"]] if model_id else [e["id"] for e in manifest.list_models()]
    removed: list[Path] = []
    for mid in ids:
        folder = root / mid
        if not folder.is_dir():
            continue
        entry = manifest.get(mid)
        names = set()
        for _, s in _downloadable(entry):
            names |= {s["filename"], s["filename"] + SIDECAR}
        for _, s in entry["files"].items():
            if "bundled" in s:
                names.add(s["bundled"])
        for p in sorted(folder.iterdir()):
            if p.name in names or TMP_MARK in p.name:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                removed.append(p)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty: files a user put there are kept
    return removed


def model_from_cache(model_id: str, offline: bool | None = None, progress: bool | None = None) -> Any:
    """The canonical Model of a released model, from checksum-verified cached files.

    The entry's ``source_format`` names a registered source (senet_hub.formats); its file roles are
    that source's option names (prototxt, caffemodel, ckpt ...), and ``architecture`` is its --arch.
    """
    from ..sources import load_model

    entry = manifest.get(model_id)
    fmt = entry["source_format"]
    if fmt not in formats.source_names():
        raise SenetHubError(f"model {entry['id']}: loading source format '{fmt}' from the cache is not supported")
    files = fetch_files(entry["id"], offline=offline, progress=progress)
    values: dict[str, Any] = {r: str(v["path"]) for r, v in files.items()}
    values["arch"] = entry["architecture"]
    model = load_model(fmt, **values)
    meta = model.meta
    meta.pop("reader_notes", None)  # what a reader assumed is what this manifest entry states
    if entry.get("timm"):  # timm's weights: that tag's preprocessing (input size, crop_pct), not the default tag's
        from .. import zoo

        t = entry["timm"]
        head = meta.get("num_classes")
        meta.update({k: v for k, v in zoo.timm_meta(t["model"], t["tag"], head).items() if k != "arch"})
        size = int(meta["input_convention"]["size"])
        if int(model.graph.input_shape[-1]) != size:  # e.g. seresnet50.a3_in1k runs at 160: the same nodes
            from ..graph import validate

            model.graph = zoo.expand(model.arch, head, size)
            meta["input_size"] = size
            validate(model)
    meta.setdefault("input_convention", dict(entry["input_convention"]))
    if meta.get("class_order") in (None, "unknown"):
        meta["class_order"] = entry["class_order"]
    meta["model_id"] = entry["id"]
    meta["source_sha256"] = {r: v["sha256"] for r, v in files.items()}
    return model
