"""Downloads: URL rules (overrides, Google Drive links, manual-only hosts) and the atomic transfer.

Transfers use pooch's ``HTTPDownloader`` (requests + a tqdm progress bar on stderr), wrapped by
``ConfirmingDownloader``, which follows Google Drive's "can't scan this file for viruses"
confirmation page. ``pooch.retrieve`` itself is not used: it cannot check the 8-hex sha256
prefixes MindCV publishes nor record the hash of a file nobody published a checksum for before
the file is moved into place, and its temporaries (``tmpXXXX``) cannot be told apart from user
files. Instead each transfer is streamed into a temporary in the destination's folder (hashed as
it arrives), checked, fsynced and renamed into place with ``os.replace``: a failed, truncated or
wrong download leaves nothing under the final name.

``SENET_HUB_URL_OVERRIDE`` is a JSON object mapping URL prefixes to replacements (a local mirror,
or a test server).
"""

from __future__ import annotations

import contextlib
import hashlib
import html.parser
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..atomic import clean_stale_temps, temp_name
from ..errors import DownloadError, OutputError, SenetHubError
from .integrity import CHUNK

ENV_URL_OVERRIDE = "SENET_HUB_URL_OVERRIDE"
DEFAULT_TIMEOUT = 60.0  # seconds: connect and per-read
MANUAL_HOSTS = ("pan.baidu.com",)  # web pages a person downloads from; never fetched automatically
MAX_CONFIRM_HOPS = 3

# ------------------------------------------------------------------------------------ URLs


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

        return pooch.HTTPDownloader(progressbar=bar, chunk_size=CHUNK, timeout=self.timeout, **self.kwargs)

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


_HEX64 = re.compile(r"[0-9a-f]{64}")


def hub_sha256(url: str, timeout: float = DEFAULT_TIMEOUT) -> tuple[str | None, int | None]:
    """(sha256, size) the Hugging Face Hub states for a file, or None for what it does not state.

    A Hub ``resolve`` URL of an LFS file answers a HEAD request (redirects not followed) with
    ``X-Linked-Etag`` = the LFS object id, which is the file's sha256, and ``X-Linked-Size``: the
    statement huggingface_hub checks its downloads against. A mirror that does not send them gets
    (None, None). Network failures raise DownloadError.
    """
    import requests

    at = url
    for _hop in range(MAX_CONFIRM_HOPS + 1):
        try:
            r = requests.head(at, allow_redirects=False, timeout=timeout, headers={"Accept-Encoding": "identity"})
        except requests.exceptions.RequestException as e:
            raise DownloadError(f"{url}: {_reason(e)}") from None
        if r.status_code >= 400:
            raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason or ''}".strip())
        nxt = urllib.parse.urljoin(at, r.headers.get("Location") or "")
        # a renamed repository answers with a redirect on the Hub itself, without the statement:
        # follow it there (as huggingface_hub does), never to another host (the CDN states nothing)
        same_host = urllib.parse.urlsplit(nxt).netloc == urllib.parse.urlsplit(at).netloc
        if "X-Linked-Etag" in r.headers or not (300 <= r.status_code < 400 and same_host and nxt != at):
            break
        at = nxt
    etag = (r.headers.get("X-Linked-Etag") or "").strip().removeprefix("W/").strip('"').lower()
    size = (r.headers.get("X-Linked-Size") or "").strip()
    return (etag if _HEX64.fullmatch(etag) else None, int(size) if size.isdigit() else None)


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
