"""The download cache for the released weights named in the manifest.

Layout: ``<cache>/<model id>/<file name>`` plus ``<file name>.sha256`` sidecars, where ``<cache>``
is ``$SENET_HUB_HOME``, else ``$XDG_CACHE_HOME/senet-hub``, else ``~/.cache/senet-hub``.

Transfers use pooch's ``HTTPDownloader`` (requests + a tqdm progress bar on stderr), wrapped by
``ConfirmingDownloader``, which follows Google Drive's "can't scan this file for viruses"
confirmation page. ``pooch.retrieve`` itself is not used: it cannot check the 8-hex sha256
prefixes MindCV publishes nor record the hash of a file nobody published a checksum for before
the file is moved into place, and its temporaries (``tmpXXXX``) cannot be told apart from user
files. Instead each transfer is streamed into a temporary in the model's cache folder (hashed as
it arrives), checked, fsynced and renamed into place with ``os.replace``: a failed, truncated or
wrong download leaves nothing under the final name.

Checksums are checked on download and on every use:

* ``sha256`` in the manifest: the file must match it;
* ``sha256_prefix`` only (MindCV, the torch.hub convention): the file's sha256 must start with it;
  the full hash is then recorded in the sidecar and later uses must match that too;
* neither (the Caffe release published none): the hash of the first download is recorded in
  ``<file>.sha256`` (said once on stderr) and every later use is checked against it.

``SENET_HUB_OFFLINE=1`` (or ``offline=True``) never touches the network. ``SENET_HUB_URL_OVERRIDE``
is a JSON object mapping URL prefixes to replacements (a local mirror, or a test server).
"""

from __future__ import annotations

import contextlib
import hashlib
import html.parser
import json
import os
import re
import shutil
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from . import manifest
from .atomic import TMP_MARK, clean_stale_temps, temp_name
from .errors import ChecksumError, DownloadError, InputFileError, OutputError, SenetHubError

ENV_HOME = "SENET_HUB_HOME"
ENV_OFFLINE = "SENET_HUB_OFFLINE"
ENV_URL_OVERRIDE = "SENET_HUB_URL_OVERRIDE"
DEFAULT_TIMEOUT = 60.0  # seconds: connect and per-read
MANUAL_HOSTS = ("pan.baidu.com",)  # web pages a person downloads from; never fetched automatically
MAX_CONFIRM_HOPS = 3
SIDECAR = ".sha256"
_CHUNK = 1 << 20

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(f"senet-hub: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ settings


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


def _url_overrides() -> list[tuple[str, str]]:
    raw = os.environ.get(ENV_URL_OVERRIDE, "").strip()
    if not raw:
        return []
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SenetHubError(
            f'{ENV_URL_OVERRIDE}: not valid JSON ({e.msg}); give an object {{"url prefix": "replacement"}}'
        ) from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SenetHubError(f"{ENV_URL_OVERRIDE}: must be a JSON object mapping URL prefixes to replacement prefixes")
    return sorted(data.items(), key=lambda kv: -len(kv[0]))  # longest prefix first


def _override(url: str, rules: list[tuple[str, str]]) -> str:
    for prefix, repl in rules:
        if url.startswith(prefix):
            return repl + url[len(prefix) :]
    return url


_GDRIVE_VIEW = re.compile(r"^https?://drive\.google\.com/file/d/([A-Za-z0-9_-]+)(?:/[^?#]*)?(?:[?#].*)?$")


def normalize_url(url: str) -> str:
    """A Google Drive viewer link becomes its direct-download form; other URLs are kept."""
    m = _GDRIVE_VIEW.match(url)
    return f"https://drive.google.com/uc?export=download&id={m.group(1)}" if m else url


def is_manual(url: str) -> bool:
    return urllib.parse.urlsplit(url).hostname in MANUAL_HOSTS


def candidate_urls(spec: dict, urls: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
    """(URLs to try in order, web pages for a manual download) for one manifest file entry."""
    raw = list(urls) if urls is not None else [*(spec.get("urls") or []), *(spec.get("mirrors") or [])]
    rules = _url_overrides()
    auto: list[str] = []
    manual: list[str] = []
    for u in raw:
        if is_manual(u):
            manual.append(u)
            continue
        u = _override(normalize_url(u), rules)
        if u not in auto:
            auto.append(u)
    return auto, manual


# ------------------------------------------------------------------------------------ hashing


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
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
    return "first-download"


def _fix(model_id: str) -> str:
    return f"run `senet-hub cache rm {model_id}` and download again (`senet-hub download {model_id}`)"


def check_file(model_id: str, role: str, spec: dict, path: Path, log: Log | None = _stderr, record: bool = True) -> str:
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


# ------------------------------------------------------------------------------------ transfer


class _HashingWriter:
    """File-like sink for pooch's HTTPDownloader: writes, hashes and keeps the head for sniffing."""

    HEAD = 1 << 20

    def __init__(self, path: str) -> None:
        self.f = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.h = hashlib.sha256()
        self.size = 0
        self.head = bytearray()

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.h.update(data)
        self.size += len(data)
        if len(self.head) < self.HEAD and (len(self.head) < 512 or _looks_like_html(bytes(self.head[:512]))):
            self.head += data[: self.HEAD - len(self.head)]
        return len(data)

    def flush(self) -> None:  # pooch flushes after every chunk; the OS buffers anyway
        pass

    def finish(self) -> str:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return self.h.hexdigest()

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


def _looks_like_html(head: bytes) -> bool:
    s = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return s.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<form"))


class _PageParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[dict[str, Any]] = []
        self.links: list[str] = []
        self._form: dict[str, Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._form = {"action": a.get("action", ""), "id": a.get("id", ""), "inputs": {}}
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None and a.get("name"):
            if a.get("type", "text").lower() not in ("submit", "button", "image", "reset"):
                self._form["inputs"][a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urllib.parse.urlsplit(url)
    q = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    q.update(params)
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(q)))


def confirm_url(page_url: str, page: str) -> str | None:
    """The URL that confirms a Google Drive large-file download, from its warning page; None if absent.

    Handles the current page (a GET form to drive.usercontent.google.com with hidden id, export,
    confirm and uuid fields), the older one (a link with ``confirm=TOKEN``), and bare tokens.
    """
    p = _PageParser()
    with contextlib.suppress(Exception):
        p.feed(page)
        p.close()
    for form in p.forms:
        if "confirm" in form["inputs"] or form["id"] == "download-form":
            action = urllib.parse.urljoin(page_url, form["action"] or page_url)
            new = _with_query(action, form["inputs"])
            break
    else:
        if p.links:
            new = urllib.parse.urljoin(page_url, p.links[0])
        else:
            m = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
            if not m:
                return None
            params = {"confirm": m.group(1)}
            u = re.search(r"uuid=([0-9A-Za-z_-]+)", page)
            if u:
                params["uuid"] = u.group(1)
            new = _with_query(page_url, params)
    if urllib.parse.urlsplit(new).scheme not in ("http", "https"):
        return None
    return new


class ConfirmingDownloader:
    """A pooch downloader: pooch.HTTPDownloader, plus Google Drive's large-file confirmation step.

    Call signature is pooch's ``(url, output_file, pooch, check_only=False)``. When the server
    answers with an HTML page instead of the file, the page is searched for the confirmation
    form/link and the download is repeated with its parameters (at most MAX_CONFIRM_HOPS times);
    a page without one is a DownloadError. After a call, ``sha256`` and ``size`` describe the file.
    """

    def __init__(
        self, progressbar: bool = False, timeout: float = DEFAULT_TIMEOUT, desc: str | None = None, **kwargs: Any
    ) -> None:
        self.progressbar = progressbar
        self.desc = desc
        self.timeout = timeout
        self.kwargs = kwargs
        self.sha256: str | None = None
        self.size = 0
        self.final_url: str | None = None

    def _http(self, bar: Any = False) -> Any:
        import pooch

        return pooch.HTTPDownloader(progressbar=bar, chunk_size=_CHUNK, timeout=self.timeout, **self.kwargs)

    def _bar(self, url: str) -> Any:
        if not self.progressbar:
            return False
        from tqdm import tqdm

        name = self.desc or urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]) or "download"
        return tqdm(  # total > 0: pooch tests the bar's truthiness, which tqdm ties to its total
            total=1,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=name[:40],
            file=sys.stderr,
            leave=True,
            dynamic_ncols=True,
        )

    def __call__(self, url: str, output_file: str, pooch_obj: Any = None, check_only: bool = False) -> Any:
        if check_only:
            return self._http()(url, output_file, pooch_obj, check_only=True)
        for _hop in range(MAX_CONFIRM_HOPS + 1):
            w = _HashingWriter(os.fspath(output_file))
            bar = self._bar(url)
            try:
                self._http(bar)(url, w, pooch_obj)
                digest = w.finish()
            finally:
                w.close()
                if bar is not False:
                    bar.close()
            if not _looks_like_html(bytes(w.head[:512])):
                self.sha256, self.size, self.final_url = digest, w.size, url
                return None
            page = bytes(w.head).decode("utf-8", errors="replace")
            nxt = confirm_url(url, page)
            if nxt is None or nxt == url:
                raise DownloadError(
                    f"{url}: the server sent a web page instead of the file (login, quota or a removed file?)"
                )
            url = nxt
        raise DownloadError(f"{url}: more than {MAX_CONFIRM_HOPS} confirmation pages; download the file by hand")


def _reason(e: BaseException) -> str:
    import requests

    if isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason or ''}".strip()
    if isinstance(e, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(e, (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError)):
        return "transfer broken off before the end (truncated)"
    if isinstance(e, requests.exceptions.ConnectionError):
        return "cannot connect"
    if isinstance(e, requests.exceptions.RequestException):
        return f"{type(e).__name__}"
    return " ".join(str(e).split())


def download_to(
    url: str,
    dest: Path,
    check: Callable[[str], None] | None = None,
    progress: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> str:
    """Download `url` to `dest` atomically: temp file in dest's folder, `check(sha256)`, os.replace.

    Returns the sha256. Network failures raise DownloadError, `check` may raise ChecksumError;
    either way no file (partial or wrong) is left behind.
    """
    import requests

    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(dest.parent)  # partial downloads of killed runs
    tmp = temp_name(str(dest))
    dl = ConfirmingDownloader(progressbar=progress, timeout=timeout, desc=dest.name)
    try:
        try:
            dl(url, tmp, None)
        except requests.exceptions.RequestException as e:
            raise DownloadError(f"{url}: {_reason(e)}") from None
        except OSError as e:
            raise OutputError(
                f"{dest}: cannot write the download ({e.strerror or e}); check free space and permissions"
            ) from None
        assert dl.sha256 is not None
        if check is not None:
            check(dl.sha256)
        os.replace(tmp, dest)
        return dl.sha256
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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

        def check(digest: str, url: str = url) -> None:
            full = (spec.get("sha256") or "").lower()
            prefix = (spec.get("sha256_prefix") or "").lower()
            if full and digest != full:
                raise ChecksumError(
                    f"{url}: downloaded {mid} {role} has sha256 {digest}, expected {full}; nothing was saved; "
                    f"retry `senet-hub download {mid}` (if it persists, the server serves another file)"
                )
            if prefix and not digest.startswith(prefix):
                raise ChecksumError(
                    f"{url}: downloaded {mid} {role} has sha256 {digest}, expected one starting {prefix}; nothing was saved; "
                    f"retry `senet-hub download {mid}` (if it persists, the server serves another file)"
                )

        try:
            digest = download_to(url, dest, check=check, progress=progress, timeout=timeout)
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
            if log and not spec.get("sha256_prefix"):
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
    """The canonical Model of a released model, from checksum-verified cached files."""
    from .sources import load_model

    entry = manifest.get(model_id)
    files = fetch_files(entry["id"], offline=offline, progress=progress)
    paths = {r: str(v["path"]) for r, v in files.items()}
    fmt = entry["source_format"]
    if fmt == "caffe":
        model = load_model("caffe", prototxt=paths.get("prototxt"), caffemodel=paths.get("caffemodel"))
    elif fmt == "mindspore":
        model = load_model("mindspore", ckpt=paths.get("ckpt"), arch=entry["architecture"])
    else:
        raise SenetHubError(f"model {entry['id']}: loading source format '{fmt}' from the cache is not supported")
    meta = model.meta
    meta.setdefault("input_convention", dict(entry["input_convention"]))
    if meta.get("class_order") in (None, "unknown"):
        meta["class_order"] = entry["class_order"]
    meta["model_id"] = entry["id"]
    meta["source_sha256"] = {r: v["sha256"] for r, v in files.items()}
    return model
