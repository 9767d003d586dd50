"""The two hub targets (issue 14 item 4): ``-o X.safetensors`` (PyTorch) and ``--to timm -o DIR``.

Each file is checked where its users load it: the .safetensors with ``safetensors.torch.load_file`` +
``load_state_dict(strict=True)`` into timm's models, the directory with
``timm.create_model("local-dir:DIR", pretrained=True)`` and ``timm.data.resolve_data_config``. The
timm directory's claim of exactness (conv1's input channels permuted, mean/std in config.json, no
Cadene fold) is measured against senet-hub's float64 numpy reference of the source model fed the
same image in the source's own convention.

timm imports torchvision: these tests use the test-only stub tests/conftest.py puts on sys.path.
Models: synthetic SE-ResNet-50 / SE-ResNeXt-50 at 224 (Caffe's fixed 7x7 pool5 needs it), MindCV's
seresnet18 at 64.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import cli, have, needs

from senet_hub import consumers, transforms, verify, zoo
from senet_hub.builders import numpy_ref
from senet_hub.converters import pth, safetensors_writer, timm_dir
from senet_hub.errors import OutputError, UnsupportedError
from senet_hub.sources import save_model


@pytest.fixture(scope="module")
def r50():
    return zoo.synthetic_model("SE-ResNet-50", seed=0)


@pytest.fixture(scope="module")
def r18():
    m = zoo.synthetic_model("seresnet18", seed=0)
    m.graph.input_shape = (1, 3, 64, 64)  # MindCV's "same" stem pool pads (0, 0, 1, 1) at 64 too
    return m


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("targets")


def _logits(model, x: np.ndarray) -> np.ndarray:
    lm = transforms.logits_model(model)
    return numpy_ref.run(numpy_ref.build(lm, np.float64), x, taps=False)[lm.graph.output]


def _rel(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


def _load_st(path):
    import safetensors.torch

    return safetensors.torch.load_file(str(path))


# ---------------------------------------------------------------------------------- .safetensors


@needs("torch", "safetensors")
def test_safetensors_is_the_pth_state_dict(r18, out):
    """Same keys, values, dtypes and shapes as the .pth writer (num_batches_tracked a 0-d int64 0), and
    the same senet-hub record, in __metadata__ as JSON text beside format=pt."""
    import torch

    files = save_model(r18, "pytorch", str(out / "r18.safetensors"))
    save_model(r18, "pytorch", str(out / "r18.pth"))
    assert files == [str(out / "r18.safetensors")]
    a = torch.load(out / "r18.pth", weights_only=True)
    b = _load_st(out / "r18.safetensors")
    assert list(a) == list(pth.model_state_dict(r18)) and set(b) == set(a)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k
    nbt = b["bn1.num_batches_tracked"]
    assert nbt.dtype == torch.int64 and nbt.shape == () and int(nbt) == 0
    header = safetensors_writer.read_header(out / "r18.safetensors")["__metadata__"]
    assert header["format"] == "pt" and all(isinstance(v, str) for v in header.values())
    rec = safetensors_writer.read_metadata(out / "r18.safetensors")
    assert rec == pth.read_metadata(str(out / "r18.pth")) and rec["arch"] == "seresnet18"
    # deterministic: the bytes depend only on the tensors and the record (the library's metadata order does not)
    save_model(r18, "pytorch", str(out / "r18_again.safetensors"))
    assert (out / "r18_again.safetensors").read_bytes() == (out / "r18.safetensors").read_bytes()


def test_safetensors_written_without_torch(tmp_path):
    """The writer needs numpy and the safetensors library only: torch is never imported."""
    code = (
        "import sys\n"
        "from senet_hub import zoo\n"
        "from senet_hub.sources import save_model\n"
        "save_model(zoo.synthetic_model('seresnet18'), 'pytorch', sys.argv[1])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.safetensors")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert safetensors_writer.read_metadata(tmp_path / "m.safetensors")["arch"] == "seresnet18"


@needs("torch", "timm", "safetensors")
def test_caffe_safetensors_loads_strict_into_timm_legacy(r50, out):
    """SE-ResNet-50 (Caffe convention, no fold needed) -> .safetensors -> strict load into timm's
    legacy_seresnet50: its logits are senet-hub's module's (and the float64 reference's)."""
    import timm
    import torch

    from senet_hub.builders import torch as tb

    path = save_model(r50, "pytorch", str(out / "r50.safetensors"))[0]
    net = timm.create_model("legacy_seresnet50", pretrained=False).eval()
    net.load_state_dict(_load_st(path), strict=True)
    x = verify.default_input(r50, 1, 7)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    lm = transforms.logits_model(r50)
    mine = tb.run(tb.build(lm), x, taps=False)[lm.graph.output]
    assert _rel(np.asarray(mine, np.float64), got) < 1e-5


@needs("torch", "timm", "safetensors")
def test_mindcv_safetensors_loads_by_name_into_timm_and_back_into_senet_hub(r18, out):
    """A MindCV model's .safetensors loads strict by name into timm's seresnet18 (the note says timm pools
    differently) and is read back by senet-hub: its own module computes the source model."""
    import timm

    said: list[str] = []
    path = str(out / "r18_note.safetensors")
    save_model(r18, "pytorch", path, say=said.append)
    assert any("timm.create_model('seresnet18')" in s and "max|d|/max|ref|" in s for s in said), said
    timm.create_model("seresnet18", pretrained=False).load_state_dict(_load_st(path), strict=True)
    rep = consumers.verify_artifact(r18, path, x=verify.default_input(r18, 2, 7))
    assert rep.consumer == "senet-hub" and rep.passed, rep.to_text(5)
    if have("senet_hub.converters.pytorch"):  # the --from pytorch reader (issue 14 item 1)
        from senet_hub.sources import load_model

        back = load_model("pytorch", weights=path)
        assert back.arch == "seresnet18"
        for k, v in pth.model_state_dict(r18).items():
            if not k.endswith("num_batches_tracked"):
                np.testing.assert_array_equal(back.weights[k], v, err_msg=k)
    else:  # before it lands: the library's own reader
        sd = _load_st(path)
        for k, v in pth.model_state_dict(r18).items():
            np.testing.assert_array_equal(sd[k].numpy(), v, err_msg=k)


# ---------------------------------------------------------------------------------- timm directory


def _expected_caffe_cfg() -> dict:
    return {
        "input_size": (3, 224, 224),
        "interpolation": "bilinear",
        "mean": (123 / 255, 117 / 255, 104 / 255),  # the Caffe mean (BGR 104, 117, 123), RGB order, / 255
        "std": (1 / 255,) * 3,
        "crop_pct": 0.875,
        "crop_mode": "center",
    }


def _check_cfg(got: dict, want: dict) -> None:
    assert set(got) == set(want), got
    for k, v in want.items():
        if isinstance(v, tuple):
            np.testing.assert_allclose(np.asarray(got[k], float), np.asarray(v, float), rtol=1e-12, err_msg=k)
        else:
            assert got[k] == v, k


@pytest.fixture(scope="module")
def r50_dir(r50, out):
    said: list[str] = []
    path = str(out / "r50_timm")
    assert save_model(r50, "timm", path, say=said.append) == [path]
    assert not said  # an exact architecture: nothing to warn about
    return path


@needs("torch", "timm", "safetensors")
def test_timm_dir_layout_and_preprocessing(r50_dir):
    import timm

    assert sorted(os.listdir(r50_dir)) == [".senet-hub-output", "config.json", "model.safetensors"]
    cfg = json.loads(open(os.path.join(r50_dir, "config.json")).read())
    assert cfg["architecture"] == "legacy_seresnet50" and cfg["num_classes"] == 1000 and cfg["num_features"] == 2048
    pc = cfg["pretrained_cfg"]
    assert pc["first_conv"] == "layer0.conv1" and pc["classifier"] == "last_linear" and pc["pool_size"] == [7, 7]
    rec = cfg["senet_hub"]
    assert rec["class_order"] == "ilsvrc2012" and rec["timm"]["class_order_from"] == "senet"
    assert rec["timm"]["input_channels_from"] == "BGR" and rec["timm"]["computes_source_exactly"] is True
    assert rec["input_convention"]["channel_order"] == "RGB" and rec["input_fold"] is None
    assert safetensors_writer.read_metadata(os.path.join(r50_dir, "model.safetensors")) == rec
    net = timm.create_model(f"local-dir:{r50_dir}", pretrained=True)
    assert type(net).__name__ == "SENet" and net.num_classes == 1000
    _check_cfg(timm.data.resolve_data_config({}, model=net), _expected_caffe_cfg())


@needs("torch", "timm", "safetensors")
def test_timm_dir_is_exact_in_timm(r50, r50_dir):
    """The claim: the same image through timm's pipeline (pixel / 255, then (x - mean) / std with the
    written mean/std) into the local-dir model gives the source model's logits, to float32 precision
    (no fold, no border deviation), class for class in the sorted-synset order."""
    import timm
    import torch

    x = verify.default_input(r50, 1, 7)  # BGR 0-255 minus the mean: the Caffe net's input
    pixels = x[:, ::-1] + np.asarray([123.0, 117.0, 104.0], np.float32).reshape(1, 3, 1, 1)  # RGB 0..255
    net = timm.create_model(f"local-dir:{r50_dir}", pretrained=True).eval()
    data = timm.data.resolve_data_config({}, model=net)
    mean = np.asarray(data["mean"]).reshape(1, 3, 1, 1)
    std = np.asarray(data["std"]).reshape(1, 3, 1, 1)
    xt = ((pixels.astype(np.float64) / 255.0 - mean) / std).astype(np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(xt)).numpy()
    ref = _logits(r50, x)[:, np.argsort(transforms.class_permutation())]  # senet order -> sorted synsets
    rel = _rel(ref, got)
    assert rel < 1e-5, rel
    # the .pth route folds the stage Cadene-style: on the same image it deviates at the border by far more
    rgb = transforms.set_input_convention(r50, "rgb01")
    folded, exact = transforms.fold_input_stage(rgb)
    in_mean = np.asarray(transforms.IMAGENET_MEAN).reshape(1, 3, 1, 1)
    in_std = np.asarray(transforms.IMAGENET_STD).reshape(1, 3, 1, 1)
    x01 = ((pixels.astype(np.float64) / 255.0 - in_mean) / in_std).astype(np.float32)
    assert not exact and transforms.fold_deviation(rgb, folded, x01) > 100 * rel


@needs("torch", "timm", "safetensors")
def test_timm_dir_same_from_any_input_convention(r50, r50_dir, out):
    """The input stage of --input-convention rgb01 is composed into the same permutation and mean/std:
    the directory is byte-identical, and the consumer check passes against the rgb01 model."""
    rgb = transforms.set_input_convention(r50, "rgb01")
    path = str(out / "r50rgb_timm")
    save_model(rgb, "timm", path)
    for name in ("model.safetensors", "config.json"):
        with open(os.path.join(path, name), "rb") as a, open(os.path.join(r50_dir, name), "rb") as b:
            assert a.read() == b.read(), name
    rep = consumers.verify_artifact(rgb, path, x=verify.default_input(rgb, 1, 7))
    assert rep.consumer == "timm-local-dir" and rep.passed, rep.to_text(5)
    assert rep.final_result().rel < 1e-5 and len(rep.rows) > 100  # per conv / bn / linear, then the logits
    assert any("ilsvrc2012 order" in n for n in rep.notes)


@pytest.mark.slow
@needs("torch", "timm", "safetensors")
def test_seresnext50_both_targets(out):
    """SE-ResNeXt-50 (grouped convolutions): the timm directory loads as legacy_seresnext50_32x4d and
    computes the source; the .safetensors loads strict into the same timm model and computes it too."""
    import timm
    import torch

    m = zoo.synthetic_model("SE-ResNeXt-50", seed=3)
    path = str(out / "rx50_timm")
    save_model(m, "timm", path)
    assert json.loads(open(os.path.join(path, "config.json")).read())["architecture"] == "legacy_seresnext50_32x4d"
    x = verify.default_input(m, 1, 7)
    rep = consumers.verify_artifact(m, path, x=x)
    assert rep.passed and rep.final_result().rel < 1e-5, rep.to_text(5)
    st = save_model(m, "pytorch", str(out / "rx50.safetensors"))[0]
    net = timm.create_model("legacy_seresnext50_32x4d", pretrained=False).eval()
    net.load_state_dict(_load_st(st), strict=True)
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    assert _rel(rep.outputs["numpy"].astype(np.float64), got) < 1e-5  # the float64 reference's logits


@needs("torch", "timm", "safetensors")
def test_timm_dir_of_a_mindcv_model(r18, out):
    """MindCV seresnet18 -> timm's seresnet18: written with the measured-deviation note; timm holds
    exactly the MindCV weights (it computes the source with timm's stem pool), and the consumer check
    fails on the pooling, saying why."""
    import timm

    said: list[str] = []
    path = str(out / "r18_timm")
    save_model(r18, "timm", path, say=said.append)
    assert len(said) == 1 and "timm builds this directory as 'seresnet18'" in said[0] and "padding 1" in said[0]
    net = timm.create_model(f"local-dir:{path}", pretrained=True)
    data = timm.data.resolve_data_config({}, model=net)
    _check_cfg(data, {"input_size": (3, 64, 64), "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406),
                      "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"})  # fmt: skip
    x = verify.default_input(r18, 2, 7)
    pool_as_timm = transforms.timm_pool(r18)
    rep = consumers.verify_artifact(pool_as_timm, path, x=x)
    assert rep.passed and rep.final_result().rel < 1e-5, rep.to_text(5)
    rep = consumers.verify_artifact(r18, path, x=x)
    assert not rep.passed and any("padding=1" in h for h in rep.hints)


def test_timm_dir_refuses_se_bn_inception(tmp_path):
    """No timm model computes SE-BN-Inception: exit 6, one line naming the formats that hold it; nothing written."""
    path = tmp_path / "bni"
    r = cli("convert", "--from", "zoo", "--arch", "SE-BN-Inception", "--to", "timm", "-o", path)
    assert r.exit_code == UnsupportedError.exit_code, r.output
    line = r.output.strip().splitlines()[-1]
    assert (
        line.startswith("senet-hub: error: SE-BN-Inception: timm has no model")
        and "ONNX" in line
        and ".safetensors" in line
    )
    assert not path.exists() and os.listdir(tmp_path) == []
    with pytest.raises(UnsupportedError):
        timm_dir.timm_architecture(zoo.synthetic_model("SE-BN-Inception"))


def test_timm_dir_never_replaces_a_users_folder(tmp_path):
    """An existing folder senet-hub did not write is left untouched (exit 7); one it wrote is replaced."""
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    args = ["convert", "--from", "zoo", "--arch", "seresnet18", "--to", "timm", "-o", str(user)]
    r = cli(*args)
    assert r.exit_code == OutputError.exit_code, r.output
    assert os.listdir(user) == ["notes.txt"] and (user / "notes.txt").read_text() == "keep me"
    ours = tmp_path / "ours"
    for _ in range(2):  # the second run replaces the first one's directory
        r = cli(*args[:-1], ours)
        assert r.exit_code == 0, r.output
    assert sorted(os.listdir(ours)) == [".senet-hub-output", "config.json", "model.safetensors"]
    assert not [n for n in os.listdir(tmp_path) if ".senet-hub-tmp-" in n]


@needs("torch", "timm", "safetensors")
def test_convert_to_timm_verify_cli(tmp_path):
    """convert --to timm --verify: the default consumer loads the directory with timm and passes."""
    path = tmp_path / "lr18"
    r = cli("convert", "--from", "zoo", "--arch", "legacy_seresnet18", "--to", "timm", "-o", path, "--verify", "--json")
    assert r.exit_code == 0, r.output
    assert "consumer timm-local-dir loaded" in r.output and "— PASS" in r.output
    assert consumers.default_consumer(str(path)) == "timm-local-dir"


def test_formats_and_default_consumers(tmp_path):
    """.safetensors is a PyTorch weights-only container; a timm directory (before and after it is written)
    is verified by timm-local-dir by default."""
    from senet_hub import formats

    pt = formats.target("pytorch")
    assert pt.container("m.safetensors").kind == "safetensors" and not pt.holds_stage("m.safetensors")
    assert formats.target_for_path("m.safetensors")[0].name == "pytorch"
    assert "timm" in formats.target_names() and formats.target("timm").holds_stage(str(tmp_path / "d"))
    assert "timm" not in formats.exact_stage_formats()  # not every architecture has a timm model
    assert consumers.default_consumer(str(tmp_path / "m.safetensors")) == "senet-hub"
    assert consumers.default_consumer(str(tmp_path / "not_yet"), "timm") == "timm-local-dir"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "config.json").write_text("{}")
    assert consumers.default_consumer(str(tmp_path / "d")) == "timm-local-dir"
