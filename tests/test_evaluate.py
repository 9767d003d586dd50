"""evaluate: data layouts, preprocessing, counts, class-order mapping, and 2-process torchrun (gloo)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from senet_hub.errors import FormatError, InputFileError
from senet_hub.graph import Graph, Model, Node
from senet_hub.hub import evaluate as ev

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

CAFFE = {"channel_order": "BGR", "range": [0, 255], "mean": [104.0, 117.0, 123.0], "std": [1.0, 1.0, 1.0], "size": 224,
         "resize": "shorter side 256, centre crop 224"}  # fmt: skip
RGB01 = {
    "channel_order": "RGB",
    "range": [0, 1],
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "size": 224,
}
COLORS = {"a_red": (0, 2), "b_green": (1, 1), "c_blue": (2, 0)}  # class -> (RGB index, BGR index)
SIZES = [(300, 200), (200, 333), (257, 411), (480, 256)]  # (w, h), none square


def color_model(num_classes: int = 10, gain: float = 1.0, other_bias: float = -1000.0, softmax: bool = False) -> Model:
    """Global average of the BGR input, then a classifier whose class c reads colour c's channel.

    A red image scores highest on class 0 only when preprocessing delivers BGR minus the mean:
    the model checks the channel order. Classes 3..9 get a large negative bias, so the true class
    of a three-colour image set is always in the top 3.
    """
    nodes = [
        Node("pool", "global_avg_pool", ["data"]),
        Node("fc", "linear", ["pool"], {"out_features": num_classes, "bias": True}),
    ]
    if softmax:
        nodes.append(Node("prob", "softmax", ["fc"]))
    w = np.zeros((num_classes, 3), np.float32)
    for c, (_, bgr) in enumerate(COLORS.values()):
        w[c, bgr] = gain
    b = np.full(num_classes, other_bias, np.float32)
    b[:3] = 0
    meta = {"arch": "color-probe", "input_convention": dict(CAFFE), "class_order": "unknown"}
    return Model(Graph(nodes, "data", (1, 3, 224, 224)), {"fc.weight": w, "fc.bias": b}, meta)


def _image(w: int, h: int, rgb_index: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
    a[..., rgb_index] = rng.integers(180, 256, (h, w))
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """12 JPEGs in 3 class folders; the last image of each folder has the next class's colour."""
    root = tmp_path_factory.mktemp("imagefolder")
    names = list(COLORS)
    for k, cls in enumerate(names):
        (root / cls).mkdir()
        for i, (w, h) in enumerate(SIZES):
            colour = COLORS[names[(k + 1) % 3] if i == 3 else cls][0]
            _image(w, h, colour, seed=10 * k + i).save(root / cls / f"img{i}.jpg", quality=95)
    (root / "a_red" / "notes.txt").write_text("not an image")
    return root


# ------------------------------------------------------------------------------------ preprocessing


def test_preprocess_matches_hand_computation():
    img = _image(300, 200, 0, seed=1)
    x = ev.preprocess(img, CAFFE)
    # by hand: shorter side 200 -> 256, long side int(256 * 300 / 200) = 384, bilinear (PIL);
    # centre crop 224: left round((384 - 224) / 2) = 80, top round((256 - 224) / 2) = 16
    r = np.asarray(img.resize((384, 256), Image.BILINEAR), np.float32)[16:240, 80:304]
    want = np.stack([r[..., 2] - 104.0, r[..., 1] - 117.0, r[..., 0] - 123.0])
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    np.testing.assert_array_equal(x, want)

    tall = _image(200, 333, 1, seed=2)  # 256 x int(256 * 333 / 200) = 426; top round(101) = 101
    y = ev.preprocess(tall, RGB01)
    r = np.asarray(tall.resize((256, 426), Image.BILINEAR), np.float32)[101:325, 16:240] / 255.0
    want = (r - np.float32(RGB01["mean"])) / np.float32(RGB01["std"])
    np.testing.assert_allclose(y, want.transpose(2, 0, 1), rtol=0, atol=1e-6)

    assert ev.resize_size({"size": 224}) == 256 and ev.resize_size({"resize": "shorter side 288", "size": 256}) == 288
    grey = Image.fromarray(np.full((260, 300), 7, np.uint8), "L")  # grayscale is converted to RGB
    np.testing.assert_array_equal(ev.preprocess(grey, CAFFE)[:, 0, 0], [7 - 104.0, 7 - 117.0, 7 - 123.0])


# ------------------------------------------------------------------------------------ layouts


def test_layouts(image_folder, tmp_path):
    ds = ev.find_samples(image_folder)
    assert ds.layout == "imagefolder" and ds.classes == list(COLORS) and len(ds.samples) == 12
    assert [lab for _, lab in ds.samples] == [0] * 4 + [1] * 4 + [2] * 4 and ds.natural_label_order == "model"

    flat = tmp_path / "val"
    flat.mkdir()
    lines = []
    for i, (p, lab) in enumerate(ds.samples[:5]):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        (flat / name).write_bytes(Path(p).read_bytes())
        lines.append(f"{name} {lab}")
    lines.append("ILSVRC2012_val_00000099.JPEG 2")  # listed but absent
    (tmp_path / "labels.txt").write_text("\n".join(lines) + "\n")
    v = ev.find_samples(flat, tmp_path / "labels.txt")
    assert v.layout == "imagenet-val" and len(v.samples) == 5 and v.missing == 1
    (tmp_path / "bad.txt").write_text("a.JPEG 1\nb.JPEG x\n")
    with pytest.raises(FormatError, match="line 2"):
        ev.find_samples(flat, tmp_path / "bad.txt")
    with pytest.raises(InputFileError, match="no class subfolders"):
        ev.find_samples(flat)


def test_class_map():
    from senet_hub.transforms import class_permutation

    perm = class_permutation()
    assert ev.class_map("senet", "model", 1000) is None and ev.class_map("senet", "senet", 1000) is None
    np.testing.assert_array_equal(ev.class_map("senet", "ilsvrc2012", 1000), perm)
    inv = ev.class_map("ilsvrc2012", "senet", 1000)
    np.testing.assert_array_equal(inv[perm], np.arange(1000))


# ------------------------------------------------------------------------------------ evaluation


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_evaluate_counts(image_folder, backend):
    if backend == "torch":
        pytest.importorskip("torch")
    ds = ev.find_samples(image_folder)
    res = ev.evaluate(color_model(), ds.samples, backend=backend, batch_size=5, progress=False, workers=2)
    # three images per class carry their class colour, one carries the next class's colour
    assert (res["images"], res["top1_correct"], res["top5_correct"]) == (12, 9, 12)
    assert res["top1"] == 75.0 and res["top5"] == 100.0 and res["num_classes"] == 10
    lim = ev.evaluate(color_model(), ds.samples, backend=backend, batch_size=4, limit=7, progress=False)
    assert (lim["images"], lim["top1_correct"]) == (7, 6)  # a_red 0-3 (one wrong), b_green 0-2


def test_ranks_by_logits_not_saturated_softmax(image_folder):
    """A float32 softmax that saturates ties every other class at exactly 0; ranking must not
    then favour low class indices (which would count the mislabelled images as top-5 hits)."""
    ds = ev.find_samples(image_folder)
    probe = color_model(gain=1000.0, other_bias=-10.0, softmax=True)
    res = ev.evaluate(probe, ds.samples, backend="numpy", progress=False)
    assert (res["top1_correct"], res["top5_correct"]) == (9, 9)


def test_wrong_channel_order_is_caught(image_folder):
    """The same images fed as RGB put red on the blue class: the probe notices."""
    ds = ev.find_samples(image_folder)
    rgb = dict(CAFFE, channel_order="RGB", mean=[123.0, 117.0, 104.0])
    res = ev.evaluate(color_model(), ds.samples, backend="numpy", convention=rgb, progress=False)
    # red and blue swap places; right only for the 3 green images in b_green and the red one in c_blue
    assert res["top1_correct"] == 4


def test_corrupt_image_names_file(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = ev.find_samples(tmp_path)
    with pytest.raises(InputFileError, match="broken.jpg: cannot read the image"):
        ev.evaluate(color_model(), ds.samples, backend="numpy", progress=False)


def _patch_loader(monkeypatch):
    monkeypatch.setattr(ev, "load_model", lambda *a, **k: (color_model(), None))


def test_cli_evaluate(image_folder, monkeypatch):
    pytest.importorskip("torch")
    from senet_hub.cli import main

    _patch_loader(monkeypatch)
    args = ["evaluate", "--model", "probe", "--data", str(image_folder), "--batch-size", "3", "--no-progress"]
    r = CliRunner().invoke(main, [*args, "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert (res["images"], res["top1_correct"], res["top5_correct"], res["world_size"]) == (12, 9, 12, 1)
    assert res["layout"] == "imagefolder" and res["label_order"] == "model"
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "top-1 75.00% (9/12), top-5 100.00% (12/12)" in r.stdout
    r = CliRunner().invoke(main, ["evaluate", "--model", "probe", "--data", str(image_folder / "nope")])
    assert r.exit_code == InputFileError.exit_code


TORCHRUN_SCRIPT = """\
import sys
sys.path.insert(0, {tests!r})
import test_evaluate as te
from senet_hub.hub import evaluate as ev
ev.load_model = lambda *a, **k: (te.color_model(), None)
from senet_hub.cli import main
main({args!r}, prog_name="senet-hub")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("limit", [None, 11])
def test_torchrun_two_processes_match_one(image_folder, tmp_path, monkeypatch, limit):
    pytest.importorskip("torch.distributed")
    from senet_hub.cli import main

    args = ["evaluate", "--model", "probe", "--data", str(image_folder), "--batch-size", "2", "--no-progress", "--json"]
    args += ["--limit", str(limit)] if limit else []
    _patch_loader(monkeypatch)
    single = json.loads(CliRunner().invoke(main, args).stdout)

    script = tmp_path / "run_eval.py"
    script.write_text(TORCHRUN_SCRIPT.format(tests=str(Path(__file__).parent), args=args))
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script)]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    start = p.stdout.index("{")
    dist = json.loads(p.stdout[start:])  # only rank 0 prints
    assert dist["world_size"] == 2 and single["world_size"] == 1
    for k in ("images", "top1_correct", "top5_correct", "top1", "top5"):
        assert dist[k] == single[k], k
    assert dist["images"] == (limit or 12)
