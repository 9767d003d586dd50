"""The weights timm serves, in the manifest and the cache: entries agree with timm, downloads are checked.

* Every timm entry agrees with reference_models/timm_zoo.yaml (via zoo.timm_meta) and with timm
  1.0.31's own pretrained_cfg: file URL (Hugging Face Hub or GitHub release), mean/std, input size,
  crop_pct, interpolation, license, class order.
* A local server on 127.0.0.1 plays the Hugging Face Hub (HEAD answers ``X-Linked-Etag`` /
  ``X-Linked-Size`` with a redirect, GET redirects to the bytes) and GitHub releases. timm's own
  models with random weights are served; ``download`` / ``--model`` fetch them through the
  checksum-verified cache, and the converted files, loaded by timm, compute timm's forward.
* A wrong stated sha256, a server that states none, and a GitHub file whose sha256 does not start
  with the prefix in its name leave nothing in the cache (exit 9 / 11).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse

import numpy as np
import pytest
import yaml
from helpers import cli as _cli
from helpers import random_timm_net as _net

from senet_hub import zoo
from senet_hub.errors import ChecksumError, DownloadError
from senet_hub.hub import cache, manifest

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
timm = pytest.importorskip("timm", reason="timm not installed (the test extra installs it --no-deps)")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors not installed")

HF = "https://huggingface.co/"
GH = "https://github.com/rwightman/pytorch-image-models/releases/download/"


def _timm_entries() -> list[dict]:
    return [m for m in manifest.list_models() if m.get("timm")]


def test_every_timm_entry_agrees_with_timm():
    entries = _timm_entries()
    assert len(entries) == 27
    described = set()
    for arch in zoo.list_archs("timm"):
        described |= {f"{zoo.timm_name(arch)}.{tag}" for tag in zoo.description(arch)["pretrained"]}
    for e in entries:
        name, tag = e["timm"]["model"], e["timm"]["tag"]
        assert e["id"] == f"{name}.{tag}" and e["source_format"] == "pytorch"
        assert zoo.resolve_arch(e["architecture"]) == zoo.resolve_arch(name, prefer=("timm", "caffe"))
        cfg = timm.models.get_pretrained_cfg(e["id"]).to_dict()
        conv = e["input_convention"]
        assert conv["mean"] == list(cfg["mean"]) and conv["std"] == list(cfg["std"]), e["id"]
        assert conv["size"] == cfg["input_size"][-1] and conv["crop_pct"] == cfg["crop_pct"], e["id"]
        assert conv["interpolation"] == cfg["interpolation"] and (conv["channel_order"], conv["range"]) == (
            "RGB",
            [0, 1],
        )
        assert {k: v for k, v in conv.items() if k not in ("interpolation", "crop_pct")} == zoo.timm_meta(name, tag)[
            "input_convention"
        ], e["id"]
        assert e["license"] == cfg["license"] and e["class_order"] == "ilsvrc2012" and cfg["num_classes"] == 1000
        f = e["files"]["weights"]
        if cfg.get("hf_hub_id"):  # what timm downloads first: the Hub's model.safetensors, sha256 stated by the Hub
            assert f["urls"] == [f"{HF}{cfg['hf_hub_id']}/resolve/main/model.safetensors"]
            assert f["sha256_from"] == "x-linked-etag" and not f.get("sha256_prefix")
        else:  # the GitHub release file, its sha256 prefix in its name (torch.hub's convention)
            assert f["urls"] == [cfg["url"]] and f["filename"] == cfg["url"].rsplit("/", 1)[-1]
            assert f["filename"].endswith(f"-{f['sha256_prefix']}.pth")
        assert 50 < e["published"]["top1"] < 100 and e["published"]["img_size"] == conv["size"]
        assert e["published"]["crop_pct"] == cfg["crop_pct"]
        described.discard(e["id"])
    # every pretrained tag of the timm zoo is listed but the two ImageNet-12k classifiers
    assert described == {"seresnextaa101d_32x8d.sw_in12k", "seresnextaa201d_32x8d.sw_in12k"}
    # Cadene's ports: timm's GitHub copy and Cadene's own server hold the same file (the same prefix)
    se50 = manifest.get("legacy_seresnet50.in1k")["files"]["weights"]
    assert se50["mirrors"] == ["http://data.lip6.fr/cadene/pretrainedmodels/se_resnet50-ce0d4300.pth"]
    assert manifest.get("SE-ResNet-50")["ports"][0]["sha256_prefix"] == se50["sha256_prefix"]


# ------------------------------------------------------------------------------------ the fake Hub


class _Hub(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):
        pass

    def _route(self) -> tuple[str, bytes | None]:
        path = urllib.parse.urlsplit(self.path).path
        self.server.log.append((self.command, path))
        return path, self.server.files.get(path)

    def _cdn(self, path: str) -> str:
        # the file's bytes live on another host, as the Hub's LFS/Xet CDN does (localhost, not 127.0.0.1)
        return f"http://localhost:{self.server.server_port}/cdn{path}"

    def _redirect(self, code: int, location: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Location", location)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):  # noqa: N802 - the Hub answers with the redirect and its statement of the file
        path, body = self._route()
        if path in self.server.moved:  # a renamed repository: a redirect on the Hub, no statement
            self._redirect(307, self.server.moved[path])
        elif body is None:
            self.send_error(404)
        elif path in self.server.silent:
            self._redirect(302, self._cdn(path))
        else:
            sha = self.server.etag.get(path) or hashlib.sha256(body).hexdigest()
            self._redirect(302, self._cdn(path), {"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(body))})

    def do_GET(self):  # noqa: N802
        path, body = self._route()
        if path.startswith("/cdn/"):
            body = self.server.files.get(path[4:])
        elif body is not None and path.startswith("/timm/"):
            self._redirect(302, self._cdn(path))
            return
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@pytest.fixture
def hub(monkeypatch, tmp_path):
    srv = _Server(("127.0.0.1", 0), _Hub)
    srv.files, srv.etag, srv.silent, srv.log, srv.moved = {}, {}, set(), [], {}
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    base = f"http://127.0.0.1:{srv.server_port}/"
    monkeypatch.setenv("SENET_HUB_URL_OVERRIDE", json.dumps({HF: base, GH: base + "gh/"}))
    monkeypatch.setenv("SENET_HUB_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SENET_HUB_OFFLINE", raising=False)
    yield srv
    srv.shutdown()
    srv.server_close()


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def test_a_hub_safetensors_through_the_cache_into_timm(hub, tmp_path):
    """seresnet50.a3_in1k: the one tag whose preprocessing (160 px, crop_pct 0.95) is not its arch's
    default tag's; download checks the Hub's stated sha256, --model carries the tag's preprocessing
    into the timm directory, and timm's loader computes the served net's forward."""
    net = _net("seresnet50")
    body = safetensors_torch.save({k: v.contiguous() for k, v in net.state_dict().items()})
    hub.files["/timm/seresnet50.a3_in1k/resolve/main/model.safetensors"] = body
    r = _cli("download", "seresnet50.a3_in1k")
    assert r.exit_code == 0, r.output
    cached = cache.cache_dir() / "seresnet50.a3_in1k" / "model.safetensors"
    sha = hashlib.sha256(body).hexdigest()
    assert cached.read_bytes() == body and f"the server states sha256 {sha}" in r.output
    assert (cached.parent / "model.safetensors.sha256").read_text().split()[0] == sha

    gets = len([x for x in hub.log if x[0] == "GET"])
    out = tmp_path / "se50_a3"
    r = _cli("convert", "--model", "seresnet50.a3_in1k", "--to", "timm", "-o", out)
    assert r.exit_code == 0, r.output
    assert len([x for x in hub.log if x[0] == "GET"]) == gets  # from the cache: no download
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "seresnet50"
    assert cfg["pretrained_cfg"]["input_size"] == [3, 160, 160] and cfg["pretrained_cfg"]["crop_pct"] == 0.95
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    data_cfg = timm.data.resolve_data_config({}, model=loaded)
    assert tuple(data_cfg["input_size"]) == (3, 160, 160) and data_cfg["interpolation"] == "bicubic"
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, 160, 160)).astype(np.float32))
    with torch.no_grad():
        ref, got = net(x).numpy(), loaded(x).numpy()
    assert _rel(got, ref) <= 1e-3

    # the model's meta is the tag's, for evaluate's preprocessing too
    model = cache.model_from_cache("seresnet50.a3_in1k", offline=True)
    assert (
        model.meta["input_convention"]["size"] == 160
        and "shorter side 168 (bicubic)" in (model.meta["input_convention"]["resize"])
    )

    # a cached file changed afterwards is refused on use
    cached.write_bytes(body[:-4] + b"\0\0\0\0")
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        cache.model_from_cache("seresnet50.a3_in1k", offline=True)


def test_a_wrong_or_missing_hub_statement_saves_nothing(hub):
    path = "/timm/seresnext26t_32x4d.bt_in1k/resolve/main/model.safetensors"
    hub.files[path] = b"\0" * 4096
    hub.etag[path] = "ab" * 32
    r = _cli("download", "seresnext26t_32x4d.bt_in1k")
    assert r.exit_code == ChecksumError.exit_code, r.output
    assert "the sha256 the server states for it" in r.output and "nothing was saved" in r.output
    folder = cache.cache_dir() / "seresnext26t_32x4d.bt_in1k"
    assert not folder.exists() or not any(folder.iterdir())

    hub.silent.add(path)  # a server that states nothing: not downloaded at all
    hub.log.clear()
    r = _cli("download", "seresnext26t_32x4d.bt_in1k")
    assert r.exit_code == DownloadError.exit_code, r.output
    assert "states no sha256 for the file (no X-Linked-Etag)" in r.output and "by hand" in r.output
    assert not [x for x in hub.log if x == ("GET", path)]
    assert not folder.exists() or not any(folder.iterdir())


def test_a_github_release_file_checked_by_its_name(hub, tmp_path, monkeypatch):
    """legacy_seresnet18.in1k: timm's GitHub release .pth (legacy torch.save format); the real entry
    refuses a file whose sha256 does not start with the prefix in its name; an entry naming the
    served file's prefix downloads it and converts it to a file onnxruntime runs like timm."""
    net = _net("legacy_seresnet18")
    blob = tmp_path / "served.pth"
    torch.save(net.state_dict(), blob, _use_new_zipfile_serialization=False)
    body = blob.read_bytes()
    hub.files["/gh/v0.1-weights/seresnet18-4bb0ce65.pth"] = body
    r = _cli("download", "legacy_seresnet18.in1k")
    assert r.exit_code == ChecksumError.exit_code and "expected one starting 4bb0ce65" in r.output, r.output

    entry = manifest.get("legacy_seresnet18.in1k")
    entry.pop("aliases", None)
    entry["files"]["weights"]["sha256_prefix"] = hashlib.sha256(body).hexdigest()[:8]
    doc = {"schema_version": 1, "models": [entry]}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("SENET_HUB_MANIFEST", str(tmp_path / "m.yaml"))
    onnx = tmp_path / "se18.onnx"
    r = _cli("export-onnx", "--model", "legacy_seresnet18.in1k", "-o", onnx)
    assert r.exit_code == 0, r.output
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert _rel(got, ref) <= 1e-3


def test_a_renamed_hub_repository_is_followed_on_the_hub_only(hub):
    from senet_hub.hub.download import hub_sha256

    body = b"weights" * 100
    hub.files["/timm/new/resolve/main/model.safetensors"] = body
    hub.moved["/timm/old/resolve/main/model.safetensors"] = "/timm/new/resolve/main/model.safetensors"
    base = f"http://127.0.0.1:{hub.server_port}"
    assert hub_sha256(f"{base}/timm/old/resolve/main/model.safetensors") == (hashlib.sha256(body).hexdigest(), 700)
    # a redirect to another host (the CDN) is not followed: what it says is no statement of the Hub's
    hub.moved["/timm/cdn/resolve/main/model.safetensors"] = "http://localhost:9/elsewhere"
    assert hub_sha256(f"{base}/timm/cdn/resolve/main/model.safetensors") == (None, None)
