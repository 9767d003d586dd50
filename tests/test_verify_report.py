"""verify on real images (--images, the evaluate preprocessing), the HTML/PNG report and the
progress output (issue: verify at scale, items 2-4)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

from senet_hub.cli import main
from senet_hub.hub import evaluate

PIL = pytest.importorskip("PIL", reason="Pillow is part of the report extra")  # third-party, not ours
from PIL import Image  # noqa: E402

ZOO = ["--from", "zoo", "--arch", "SE-BN-Inception", "--seed", "1", "--backends", "numpy"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """JPEG and PNG of odd sizes, grayscale, palette and RGBA files, a nested folder, a fake image."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    (root / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (301, 257, 3), np.uint8)).save(root / "a.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (240, 333, 3), np.uint8)).save(root / "b.png")
    Image.fromarray(rng.integers(0, 256, (256, 256), np.uint8), "L").save(root / "sub" / "c_gray.png")
    Image.fromarray(rng.integers(0, 256, (260, 300, 4), np.uint8), "RGBA").save(root / "sub" / "d_rgba.png")
    Image.fromarray(rng.integers(0, 256, (280, 250, 3), np.uint8)).convert("P").save(root / "sub" / "deeper" / "e.png")
    (root / "sub" / "broken.jpg").write_bytes(b"this is not a JPEG")
    (root / "notes.txt").write_text("not an image name: never listed")
    return root


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_images_use_the_evaluate_preprocessing(photos, tmp_path):
    r = run("verify", *ZOO, "--images", photos, "--json", tmp_path / "r.json", "--save-outputs", tmp_path / "outs")
    assert r.exit_code == 0, r.output
    assert "skipped 1 unreadable" in r.output and "broken.jpg" in r.output
    rep = json.loads((tmp_path / "r.json").read_text())
    files = rep["input"]["files"]
    assert rep["input"]["count"] == 5 and rep["input"]["skipped"] == 1
    names = [f["path"] for f in files]
    assert names == sorted(names, key=lambda p: (p.count("/"), p)) or len(names) == 5
    for f in files:
        assert f["sha256"] == hashlib.sha256((photos / f["path"]).read_bytes()).hexdigest()
    x = np.load(tmp_path / "outs" / "input.npy")
    assert x.shape == (5, 3, 224, 224)
    from senet_hub import zoo

    conv = zoo.synthetic_model("SE-BN-Inception", seed=1).meta["input_convention"]
    for i, f in enumerate(files):  # the same code path as `evaluate`, value for value
        assert np.array_equal(x[i], evaluate.load_image(str(photos / f["path"]), conv))


def test_limit_strict_and_bad_folders(photos, tmp_path):
    r = run("verify", *ZOO, "--images", photos, "--limit", 2, "--json", tmp_path / "r.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text())["input"]["count"] == 2
    r = run("verify", *ZOO, "--images", photos, "--strict")
    assert r.exit_code == 3 and "broken.jpg" in r.output and "--strict" in r.output, r.output
    (tmp_path / "empty").mkdir()
    r = run("verify", *ZOO, "--images", tmp_path / "empty")
    assert r.exit_code == 3 and "no images" in r.output, r.output
    r = run("verify", *ZOO, "--images", tmp_path / "nowhere")
    assert r.exit_code == 3 and "not found" in r.output, r.output
    for bad in (["--limit", "0"], ["--chunk", "0"]):
        r = run("verify", *ZOO, "--images", photos, *bad)
        assert r.exit_code == 2 and bad[0] in r.output, r.output
    r = run("verify", *ZOO, "--limit", "3")
    assert r.exit_code == 2 and "--images" in r.output


@pytest.fixture(scope="module")
def html_report(photos, tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    r = run("verify", "--from", "zoo", "--arch", "SE-BN-Inception", "--seed", "1", "--backends", "numpy,torch",
            "--images", photos, "--limit", 2, "--html", d / "report.html", "--plot", d / "chart.png")  # fmt: skip
    assert r.exit_code == 0, r.output
    return d


def test_html_is_self_contained_and_complete(html_report):
    page = (html_report / "report.html").read_text()
    assert "data:image/png;base64," in page
    for needle in ("id='stages'", "id='backends'", "id='versions'", "HOLDS", "torch",
                   "inception_4a", "sha256", "Tolerance"):  # fmt: skip
        assert needle in page, needle
    # nothing fetched at view time: no external scripts, styles or images
    for attr in ("src='http", 'src="http', "href='http", 'href="http', "<script", "<link"):
        assert attr not in page, attr
    img = Image.open(html_report / "chart.png")
    assert img.size[0] > 600 and img.size[1] > 300
    a = np.asarray(img.convert("RGB"))
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 20  # a drawn chart, not a blank canvas


def test_failing_report_marks_the_first_divergent_node(tmp_path, monkeypatch):
    from senet_hub import report_html, verify, zoo
    from senet_hub.verify import NodeResult

    model = zoo.synthetic_model("SE-BN-Inception", seed=1)
    rep = verify.Report(model, ["numpy", "fake"], {"fake": "1"}, (1, 3, 224, 224), "0" * 64, 1e-3)
    for i, n in enumerate(model.graph.nodes):
        rel = 1e-7 if i < 10 else 1e-1
        rep.rows.append({"node": n.name, "source": list(n.source), "shape": [1],
                         "results": {"fake": NodeResult(rel, rel, 1.0, rel <= 1e-3)}})  # fmt: skip
    rep.first_divergent["fake"] = model.graph.nodes[10].name
    rep.topk["fake"] = {"top1": 0.5, "top5": 0.9}
    page = report_html.to_html(rep)
    assert "FAILED" in page and f"class='l bad'>{model.graph.nodes[10].name}" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("SENET_HUB_REQUIRE_BROWSER"),
    reason="no Chromium here: `make report-check` installs it (Debian's package) and runs this test",
)
def test_report_renders_in_a_headless_browser(html_report):
    """The page in a real browser: the DOM has the tables, the screenshot shows the chart."""
    exe = _chromium()
    assert exe, "SENET_HUB_REQUIRE_BROWSER is set but no chromium is installed"
    page = (html_report / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1400"]
    dom = subprocess.run([exe, *flags, "--dump-dom", page], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="stages"' in dom.stdout and "<img" in dom.stdout and "HOLDS" in dom.stdout
    shot = html_report / "shot.png"
    r = subprocess.run([exe, *flags, f"--screenshot={shot}", page], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    a = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    top = a[: a.shape[0] // 2]  # the chart is at the top of the page
    colored = (np.abs(top - top.mean(axis=2, keepdims=True)).sum(axis=2) > 60).mean()
    assert colored > 0.001, colored  # the plotted lines (colored), not only black text on white
    assert (a.sum(axis=2) < 200).mean() > 0.001  # text and table borders rendered


def test_progress_is_silent_when_not_a_terminal_and_with_quiet(photos):
    r = run("verify", *ZOO, "--images", photos, "--limit", 1, "--quiet")
    assert r.exit_code == 0 and "running" not in r.output, r.output
    r = run("verify", *ZOO, "--images", photos, "--limit", 1)
    assert "[#" not in r.output  # CliRunner's stderr is not a terminal: no bar
