"""Manifest and download cache, against a local HTTP server on 127.0.0.1 only (never the internet)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner

from senet_hub.errors import ChecksumError, DownloadError, FormatError, SenetHubError
from senet_hub.hub import cache, download, integrity, manifest

DATA = os.urandom(150_000) + b"end-of-weights"
OTHER = b"x" * 1000
SHA = hashlib.sha256(DATA).hexdigest()
GD_TOKEN, GD_UUID = "t-Ab_9", "0f1e2d3c-uuid"


# ------------------------------------------------------------------------------------ server


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):  # quiet
        pass

    def _send(self, body: bytes, ctype: str = "application/octet-stream", length: int | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        parts = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(parts.query))
        self.server.log.append(self.path)
        route = parts.path
        if route == "/full.bin":
            self._send(DATA)
        elif route == "/other.bin":
            self._send(OTHER)
        elif route == "/trunc.bin":  # announces all bytes, sends half, closes
            self._send(DATA[: len(DATA) // 2], length=len(DATA))
            self.close_connection = True
        elif route == "/uc":  # Google Drive: the virus-scan warning page for a large file
            page = f"""<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="http://127.0.0.1:{self.server.server_port}/download" method="get">
<input type="submit" id="uc-download-link" class="goog-inline-block" value="Download anyway"/>
<input type="hidden" name="id" value="{q.get("id", "")}"><input type="hidden" name="export" value="download">
<input type="hidden" name="confirm" value="{GD_TOKEN}"><input type="hidden" name="uuid" value="{GD_UUID}">
</form></body></html>"""
            self._send(page.encode(), "text/html; charset=utf-8")
        elif route == "/download":
            if q.get("confirm") == GD_TOKEN and q.get("uuid") == GD_UUID and q.get("id") == "FILEID":
                self._send(DATA)
            else:
                self.send_error(403)
        elif route == "/login.html":
            self._send(b"<!DOCTYPE html><html><body>Sign in</body></html>", "text/html")
        else:
            self.send_error(404)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    log: list[str]


@pytest.fixture(scope="module")
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    srv.log = []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv, path: str) -> str:
    return f"http://127.0.0.1:{srv.server_port}{path}"


MANIFEST = """\
schema_version: 1
common: &common
  architecture: SE-ResNet-50
  source_format: caffe
  published: {{metric: error, top1: 22.37, top5: 6.36, protocol: test}}
  input_convention: {{channel_order: BGR, range: [0, 255], mean: [104.0, 117.0, 123.0], std: [1.0, 1.0, 1.0], size: 224}}
  class_order: senet
  license: Apache-2.0
  origin: test
models:
  - id: T-Full
    <<: *common
    files:
      prototxt: {{bundled: SE-ResNet-50.prototxt}}
      weights: {{filename: full.bin, urls: ["{base}/full.bin"], sha256: "{sha}", size_mb: 0.15}}
  - id: T-Wrong
    <<: *common
    files:
      weights: {{filename: w.bin, urls: ["{base}/other.bin"], sha256: "{sha}"}}
  - id: T-Trunc
    <<: *common
    files:
      weights: {{filename: t.bin, urls: ["{base}/trunc.bin"], sha256: "{sha}"}}
  - id: T-TruncNoSum
    <<: *common
    files:
      weights: {{filename: t.bin, urls: ["{base}/trunc.bin"], sha256: null}}
  - id: T-Prefix
    <<: *common
    files:
      weights: {{filename: p.bin, urls: ["{base}/full.bin"], sha256: null, sha256_prefix: "{sha8}"}}
  - id: T-PrefixBad
    <<: *common
    files:
      weights: {{filename: p.bin, urls: ["{base}/other.bin"], sha256_prefix: "{sha8}"}}
  - id: T-None
    <<: *common
    files:
      weights: {{filename: n.bin, urls: ["{base}/full.bin"], sha256: null}}
  - id: T-GDrive
    <<: *common
    files:
      weights: {{filename: g.bin, urls: ["{base}/uc?export=download&id=FILEID"], sha256: "{sha}"}}
  - id: T-Mirror
    <<: *common
    files:
      weights:
        filename: m.bin
        urls: ["{base}/missing.bin"]
        mirrors: ["{base}/trunc.bin", "{base}/login.html", "https://pan.baidu.com/s/manual", "{base}/full.bin"]
        sha256: "{sha}"
  - id: T-Manual
    <<: *common
    files:
      weights: {{filename: x.bin, urls: ["https://pan.baidu.com/s/1abc"], sha256: null}}
"""


@pytest.fixture
def env(server, tmp_path, monkeypatch):
    base = _url(server, "")
    path = tmp_path / "manifest.yaml"
    path.write_text(MANIFEST.format(base=base, sha=SHA, sha8=SHA[:8]))
    home = tmp_path / "cache"
    monkeypatch.setenv("SENET_HUB_MANIFEST", str(path))
    monkeypatch.setenv("SENET_HUB_HOME", str(home))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in (
        "SENET_HUB_OFFLINE",
        "SENET_HUB_URL_OVERRIDE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    server.log.clear()
    return home


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ------------------------------------------------------------------------------------ manifest


def test_packaged_manifest():
    m = manifest.load(None) if not os.environ.get("SENET_HUB_MANIFEST") else None
    models = manifest.list_models()
    assert m is not None and len(models) == 12 + 27  # the Caffe release, MindCV, the weights timm serves
    assert manifest.get("se_resnet50")["id"] == "SE-ResNet-50"
    assert manifest.get("legacy_seresnext50_32x4d")["id"] == "SE-ResNeXt-50"
    assert manifest.get("SERESNET50")["id"] == "seresnet50"  # MindCV's, not the Caffe one
    assert manifest.get("seresnet50.A1_in1k")["id"] == "seresnet50.a1_in1k"  # timm's, by its timm name
    assert manifest.get("SENet-154")["input_convention"]["channel_order"] == "BGR"  # YAML alias resolved
    assert manifest.published_accuracy(manifest.get("SE-ResNet-50")) == {"top1": 77.63, "top5": 93.64}
    with pytest.raises(SenetHubError, match="unknown model 'seresnet51'; did you mean seresnet50"):
        manifest.get("seresnet51")


@pytest.mark.parametrize(
    "text, match",
    [
        ("schema_version: 2\nmodels: []\n", "newer than this senet-hub"),
        ("models: []\n", "missing key 'schema_version'"),
        ("a: &a [*a]\n", "recursive alias"),
        ("x: " + "[" * 60 + "]" * 60 + "\n", "nested deeper"),
        ("!!python/object/apply:os.system ['true']\n", "not a valid manifest"),
        (
            "a: &a [1,1,1,1,1,1,1,1,1,1]\n"
            + "".join(f"{c}: &{c} [{','.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdef", "bcdefg")),
            "aliases are expanded",
        ),
    ],
)
def test_bad_manifest(tmp_path, monkeypatch, text, match):
    p = tmp_path / "m.yaml"
    p.write_text(text)
    monkeypatch.setenv("SENET_HUB_MANIFEST", str(p))
    with pytest.raises(FormatError, match=match) as e:
        manifest.list_models()
    assert "\n" not in str(e.value)


def test_manifest_missing_key_names_model(tmp_path, monkeypatch):
    good = (resources.files("senet_hub.hub") / "weights_manifest.yaml").read_text()
    text = good.replace("    license: Apache-2.0\n    origin: MindCV", "    origin: MindCV", 1)
    p = tmp_path / "m.yaml"
    p.write_text(text)
    monkeypatch.setenv("SENET_HUB_MANIFEST", str(p))
    with pytest.raises(FormatError, match=r"model 'seresnet18': missing key 'license'"):
        manifest.get("seresnet18")
    p.write_text(good.replace("filename: seresnet34-8179d3c9.ckpt", "filename: ../../etc/passwd"))
    with pytest.raises(FormatError, match="plain file name"):
        manifest.get("seresnet34")
    p.write_bytes(b"#" * (manifest.MAX_BYTES + 10))
    with pytest.raises(FormatError, match="byte limit"):
        manifest.get("seresnet34")


# ------------------------------------------------------------------------------------ downloads


def test_download_checksum_ok_and_reuse(env, server):
    paths = cache.fetch("t-full", progress=False)  # case-insensitive id
    assert paths["weights"].read_bytes() == DATA
    assert paths["weights"] == env / "T-Full" / "full.bin"
    assert paths["prototxt"].name == "SE-ResNet-50.prototxt" and paths["prototxt"].is_file()  # bundled
    assert _files(env) == ["full.bin"]  # no temporaries, no sidecar (sha256 is published)
    assert cache.cached("T-Full")
    n = len(server.log)
    cache.fetch("T-Full", progress=False)  # cached: verified, not downloaded again
    assert len(server.log) == n


def test_wrong_checksum_leaves_nothing(env, server):
    with pytest.raises(ChecksumError) as e:
        cache.fetch("T-Wrong", progress=False)
    msg = str(e.value)
    assert SHA in msg and hashlib.sha256(OTHER).hexdigest() in msg and "\n" not in msg
    assert _files(env) == []
    assert not cache.cached("T-Wrong")


@pytest.mark.parametrize("model", ["T-Trunc", "T-TruncNoSum"])
def test_truncated_transfer_leaves_nothing(env, server, model):
    with pytest.raises((DownloadError, ChecksumError)) as e:
        cache.fetch(model, progress=False, timeout=10)
    assert "truncated" in str(e.value) or "sha256" in str(e.value)
    assert _files(env) == []


def test_offline_never_touches_network(env, server, monkeypatch):
    monkeypatch.setenv("SENET_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError) as e:
        cache.fetch("T-Full")
    assert "offline" in str(e.value) and str(env / "T-Full" / "full.bin") in str(e.value)
    monkeypatch.delenv("SENET_HUB_OFFLINE")
    with pytest.raises(DownloadError):
        cache.fetch("T-Manual", offline=True)
    r = CliRunner().invoke(_main(), ["download", "T-Full", "--offline"])
    assert r.exit_code == DownloadError.exit_code and "place it at" in r.output
    assert server.log == []  # not one request
    # once cached, offline use works and is still verified
    cache.fetch("T-Full", progress=False)
    n = len(server.log)
    assert cache.fetch("T-Full", offline=True)["weights"].read_bytes() == DATA
    assert len(server.log) == n


def test_google_drive_confirmation(env, server):
    paths = cache.fetch("T-GDrive", progress=False)
    assert paths["weights"].read_bytes() == DATA
    assert [urllib.parse.urlsplit(p).path for p in server.log] == ["/uc", "/download"]
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(server.log[1]).query))
    assert q == {"id": "FILEID", "export": "download", "confirm": GD_TOKEN, "uuid": GD_UUID}


def test_confirm_url_variants():
    old = '<html><a id="uc-download-link" href="/uc?export=download&amp;confirm=AbC1&amp;id=XYZ">Download anyway</a></html>'
    assert download.confirm_url("https://drive.google.com/uc?export=download&id=XYZ", old) == (
        "https://drive.google.com/uc?export=download&confirm=AbC1&id=XYZ"
    )
    bare = "<html>... download_warning ... confirm=t0k&uuid=u-1 ...</html>"
    got = urllib.parse.urlsplit(download.confirm_url("https://h/uc?export=download&id=Q", bare))
    assert dict(urllib.parse.parse_qsl(got.query)) == {"export": "download", "id": "Q", "confirm": "t0k", "uuid": "u-1"}
    assert download.confirm_url("https://h/x", "<html>sign in</html>") is None
    assert (
        download.normalize_url("https://drive.google.com/file/d/0BwHV3/view")
        == "https://drive.google.com/uc?export=download&id=0BwHV3"
    )


def test_mirror_fallback(env, server):
    paths = cache.fetch("T-Mirror", progress=False, timeout=10)
    assert paths["weights"].read_bytes() == DATA
    assert [urllib.parse.urlsplit(p).path for p in server.log] == [
        "/missing.bin",
        "/trunc.bin",
        "/login.html",
        "/full.bin",
    ]
    assert _files(env) == ["m.bin"]


def test_all_mirrors_fail_one_line(env, server):
    with pytest.raises(DownloadError) as e:
        cache.fetch(
            "T-Mirror", progress=False, urls={"weights": [_url(server, "/missing.bin"), _url(server, "/login.html")]}
        )
    msg = str(e.value)
    assert "HTTP 404" in msg and "web page" in msg and "\n" not in msg
    assert _files(env) == []


def test_url_override(monkeypatch):
    monkeypatch.setenv("SENET_HUB_URL_OVERRIDE", json.dumps({"https://drive.google.com/": "http://127.0.0.1:9/gd/"}))
    auto, manual = download.candidate_urls(
        {"urls": ["https://drive.google.com/file/d/ID1/view"], "mirrors": ["https://pan.baidu.com/s/1x"]}
    )
    assert auto == ["http://127.0.0.1:9/gd/uc?export=download&id=ID1"] and manual == ["https://pan.baidu.com/s/1x"]
    monkeypatch.setenv("SENET_HUB_URL_OVERRIDE", "{bad")
    with pytest.raises(SenetHubError, match="not valid JSON"):
        download.candidate_urls({"urls": []})


def test_corrupted_cached_file_detected(env, server):
    p = cache.fetch("T-Full", progress=False)["weights"]
    p.write_bytes(DATA[:-1] + b"X")
    with pytest.raises(ChecksumError, match=r"expected .* got .*cache rm T-Full"):
        cache.fetch("T-Full")


def test_prefix_and_first_download_record(env, server, capsys):
    p = cache.fetch("T-Prefix", progress=False)["weights"]
    assert integrity.read_sidecar(p) == SHA  # full hash recorded after the prefix matched
    with pytest.raises(ChecksumError, match=f"starting {SHA[:8]}"):
        cache.fetch("T-PrefixBad", progress=False)
    capsys.readouterr()
    p = cache.fetch("T-None", progress=False)["weights"]
    err = capsys.readouterr().err
    assert err.count("no checksum was published") == 1 and SHA in err
    assert (p.parent / "n.bin.sha256").read_text().split()[0] == SHA
    cache.fetch("T-None")
    assert "no checksum" not in capsys.readouterr().err  # said once
    p.write_bytes(OTHER)
    with pytest.raises(ChecksumError, match="recorded at first download"):
        cache.fetch("T-None")


def _main():
    from senet_hub.cli import main

    return main


def test_cache_cli_ls_verify_rm(env, server):
    cache.fetch("T-Full", progress=False)
    cache.fetch("T-None", progress=False)
    runner = CliRunner()
    r = runner.invoke(_main(), ["cache", "ls", "--json"])
    assert r.exit_code == 0, r.output
    rows = {x["model"]: x for x in json.loads(r.stdout)["files"]}
    assert rows["T-Full"]["cached"] and rows["T-Full"]["bytes"] == len(DATA) and not rows["T-Wrong"]["cached"]
    assert rows["T-None"]["checksum"] == "first-download" and rows["T-None"]["recorded_sha256"] == SHA
    r = runner.invoke(_main(), ["cache", "verify", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"]
    (env / "T-Full" / "full.bin").write_bytes(OTHER)
    r = runner.invoke(_main(), ["cache", "verify", "T-Full"])
    assert r.exit_code == ChecksumError.exit_code and "mismatch" in r.output
    assert runner.invoke(_main(), ["cache", "rm"]).exit_code == 2  # MODEL or --all
    r = runner.invoke(_main(), ["cache", "rm", "T-Full"])
    assert r.exit_code == 0 and not (env / "T-Full").exists()
    r = runner.invoke(_main(), ["download", "T-Full", "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["T-Full"]["weights"]["sha256"] == SHA
    r = runner.invoke(_main(), ["cache", "rm", "--all"])
    assert r.exit_code == 0 and _files(env) == []


def test_cli_help_stays_light():
    code = (
        "import sys; from click.testing import CliRunner; from senet_hub.cli import main;"
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0 and 'evaluate' in r.output;"
        "r = CliRunner().invoke(main, ['cache', '--help']); assert r.exit_code == 0;"
        "heavy = [m for m in ('torch', 'pooch', 'requests', 'PIL', 'tqdm') if m in sys.modules]; assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
