"""Input conventions in formats that hold only weights (.pth state_dict, MindSpore .ckpt).

Before: a state_dict has no place for the input_norm stage, and the writers dropped it silently
(the rgb01 .pth was byte-identical to the source-convention one). Now the stage is folded
Cadene-style into conv1 + its batch norm (transforms.fold_input_stage), the deviation from the
exact model is measured and said, --exact-input refuses an inexact fold (exit 6), the writers
themselves refuse a graph that still has a stage, and the file carries a metadata record.
Small synthetic nets keep this module fast; tests/test_timm_cadene.py covers the released ones.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from senet_hub import sources, transforms, zoo
from senet_hub.builders import numpy_ref
from senet_hub.builders.numpy_ref import conv2d
from senet_hub.converters import mindspore as msc
from senet_hub.converters import pth
from senet_hub.errors import InputFileError, UnsupportedError
from senet_hub.graph import Graph, Model, Node


def tiny(pad: int, seed: int = 0) -> Model:
    """conv1 (3 -> 8, 3x3, no bias) + bn1 + relu + global pool + linear, Caffe input convention."""
    rng = np.random.default_rng(seed)
    conv = {"out_channels": 8, "kernel": (3, 3), "stride": (1, 1), "pad": (pad,) * 4, "groups": 1, "bias": False}
    nodes = [
        Node("conv1", "conv", ["data"], conv),
        Node("bn1", "batch_norm", ["conv1"], {"eps": 1e-5}),
        Node("relu1", "relu", ["bn1"]),
        Node("pool", "global_avg_pool", ["relu1"]),
        Node("fc", "linear", ["pool"], {"out_features": 10, "bias": True}),
    ]
    w = {
        "conv1.weight": rng.normal(0, 0.05, (8, 3, 3, 3)),
        "bn1.weight": rng.uniform(0.5, 1.5, 8),
        "bn1.bias": rng.normal(0, 1, 8),
        "bn1.running_mean": rng.normal(0, 5, 8),
        "bn1.running_var": rng.uniform(50, 200, 8),
        "fc.weight": rng.normal(0, 0.3, (10, 8)),
        "fc.bias": rng.normal(0, 0.1, 10),
    }
    meta = {"arch": f"tiny-pad{pad}", "input_convention": dict(transforms.CONVENTIONS["caffe"], size=12)}
    return Model(Graph(nodes, "data", (1, 3, 12, 12)), {k: v.astype(np.float32) for k, v in w.items()}, meta)


def rgb01(model: Model) -> Model:
    return transforms.set_input_convention(model, "rgb01", fold=False)


X = np.random.default_rng(5).normal(0, 1, (2, 3, 12, 12)).astype(np.float32)  # rgb01-normalized input


def taps(model: Model, x: np.ndarray = X) -> dict[str, np.ndarray]:
    return numpy_ref.run(numpy_ref.build(model), x)


def test_fold_is_exact_when_conv1_pads_nothing():
    """pad 0: the folded model computes the exact one (weights rounded to float32 only), with the
    same parameters (the shift goes into bn1's running_mean: a consumer's strict load still fits)."""
    exact = rgb01(tiny(pad=0))
    assert exact.graph.nodes[0].op == "input_norm"
    folded, is_exact = transforms.fold_input_stage(exact)
    assert is_exact and all(n.op != "input_norm" for n in folded.graph.nodes)
    assert set(folded.weights) == set(tiny(0).weights) and not folded.graph.node("conv1").attrs["bias"]
    assert folded.meta["input_convention"]["channel_order"] == "RGB"
    assert folded.meta["input_fold"] == {"exact": True, "from": dict(transforms.CONVENTIONS["caffe"], size=12)}
    a, b = taps(exact)["fc"], taps(folded)["fc"]
    assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max()
    assert transforms.fold_deviation(exact, folded, X) <= 1e-6
    # no stage: unchanged, exact
    plain = tiny(0)
    assert transforms.fold_input_stage(plain) == (plain, True)


def test_fold_is_exact_inside_and_differs_by_the_padding_at_the_border():
    """pad 1: interior outputs of conv1 (seen through bn1) are exact; the border differs by exactly
    bn1's scale times conv(W, the shift image on the padding ring): a padded zero of the new input
    is the shift in the old one."""
    exact = rgb01(tiny(pad=1))
    folded, is_exact = transforms.fold_input_stage(exact)
    assert not is_exact and folded.meta["input_fold"]["exact"] is False
    e, f = taps(exact)["bn1"], taps(folded)["bn1"]
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert np.abs(f[inner] - e[inner]).max() <= 1e-6 * np.abs(e).max()
    shift = np.asarray(exact.graph.nodes[0].attrs["shift"])
    ring = np.zeros((1, 3, 14, 14))
    ring[:] = shift[None, :, None, None]
    ring[:, :, 1:-1, 1:-1] = 0
    w = exact.weights["conv1.weight"].astype(np.float64)
    a = {"stride": (1, 1), "pad": (0, 0, 0, 0)}
    bn = exact.weights["bn1.weight"] / np.sqrt(exact.weights["bn1.running_var"].astype(np.float64) + 1e-5)
    predicted = conv2d(ring, w, None, a) * bn[None, :, None, None]
    np.testing.assert_allclose(f - e, np.broadcast_to(predicted, e.shape), atol=1e-5 * np.abs(e).max())
    assert np.abs(predicted).max() > 1e-3 * np.abs(e).max()  # the border really differs (Caffe-space shift ~0.7)


def test_fold_deviation_is_measured_and_within_its_bound():
    """fold_deviation = max|d|/max|ref| of the outputs; relu is 1-Lipschitz and the pool averages,
    so |d logits| <= max_o sum_c |W_fc[o, c]| * mean_hw |d bn1[c]|: the measured figure is positive
    and within that bound."""
    exact = rgb01(tiny(pad=1))
    folded, _ = transforms.fold_input_stage(exact)
    dev = transforms.fold_deviation(exact, folded, X)
    te, tf = taps(exact), taps(folded)
    assert dev == pytest.approx(np.abs(tf["fc"] - te["fc"]).max() / np.abs(te["fc"]).max(), rel=1e-12)
    d_bn = np.abs(tf["bn1"] - te["bn1"]).mean(axis=(2, 3))  # N x C
    bound = (d_bn @ np.abs(exact.weights["fc.weight"].astype(np.float64)).T).max() / np.abs(te["fc"]).max()
    assert 0 < dev <= bound * (1 + 1e-9), (dev, bound)


def test_save_model_folds_says_and_records(tmp_path):
    """sources.save_model to .pth: the stage is folded (the file differs from the source-convention
    one, which it did not), one line says the measured deviation, and the record says so."""
    torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
    from senet_hub.builders import torch as tb  # ours: a broken module fails here, never skips

    src = tiny(pad=1)
    exact = rgb01(src)
    said: list[str] = []
    p = tmp_path / "m.pth"
    sources.save_model(exact, "pytorch", str(p), say=said.append)
    sources.save_model(src, "pytorch", str(tmp_path / "src.pth"), say=said.append)
    (line,) = said
    assert line.startswith("input convention rgb01 folded into conv1 (Cadene-style; inexact at the zero-padded")
    assert "--exact-input to refuse" in line and ".pt2" in line
    folded, _ = transforms.fold_input_stage(exact)
    x = np.random.default_rng(7).normal(0, 1, (2, 3, 12, 12)).astype(np.float32)  # verify.default_input(exact, 2, 7)
    assert f"= {transforms.fold_deviation(exact, folded, x):.1e} " in line
    assert p.read_bytes() != (tmp_path / "src.pth").read_bytes()
    # the file with its extra record loads strict, weights_only (and mmap), into a module of the graph
    for kw in ({}, {"mmap": True}):
        sd = torch.load(p, weights_only=True, **kw)
        module = tb.build(folded)
        module.load_state_dict(sd, strict=True)
        np.testing.assert_array_equal(sd["bn1.running_mean"].numpy(), folded.weights["bn1.running_mean"])
    got = tb.run(module, X, taps=False)["fc"]
    ref = taps(folded)["fc"]
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    meta = pth.read_metadata(str(p))
    assert meta["format"] == "senet-hub" and meta["arch"] == "tiny-pad1" and meta["version"]
    assert meta["input_convention"]["channel_order"] == "RGB" and meta["input_convention"]["range"] == [0, 1]
    assert meta["input_fold"]["exact"] is False and meta["input_fold"]["from"]["channel_order"] == "BGR"
    assert meta["input_fold"]["deviation"] > 0 and "source_sha256" in meta
    assert pth.read_metadata(str(tmp_path / "src.pth"))["input_fold"] is None


def test_read_metadata_reads_no_pickle_and_other_files(tmp_path):
    """read_metadata opens the zip member only (data.pkl is never unpickled), None for files
    without a record, one clear error for a non-regular path."""
    p = tmp_path / "m.pth"
    sources.save_model(tiny(0), "pytorch", str(p))
    with zipfile.ZipFile(p) as z:
        assert "archive/senet_hub.json" in z.namelist()
    evil = tmp_path / "evil.pth"  # a record beside a pickle that would run code if unpickled
    marker = tmp_path / "ran"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("archive/data.pkl", b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
        z.writestr("archive/senet_hub.json", b'{"format": "senet-hub", "arch": "x"}')
    assert pth.read_metadata(str(evil)) == {"format": "senet-hub", "arch": "x"} and not marker.exists()
    other = tmp_path / "plain.pth"
    with open(other, "wb") as f:
        pth.write_state_dict({"a": np.zeros(2, np.float32)}, f)
    assert pth.read_metadata(str(other)) is None
    (tmp_path / "text.pth").write_text("not a zip")
    assert pth.read_metadata(str(tmp_path / "text.pth")) is None
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.pth")
        with pytest.raises(InputFileError, match="not a regular file"):
            pth.read_metadata(str(tmp_path / "fifo.pth"))


@pytest.mark.parametrize("target,name", [("pytorch", "m.pth"), ("mindspore", "m.ckpt")])
def test_exact_input_refuses_an_inexact_fold(tmp_path, target, name):
    """--exact-input (exact_input=True): exit 6 naming the formats that hold the stage exactly,
    nothing written. An exact fold (conv1 pads nothing) is allowed."""
    with pytest.raises(UnsupportedError) as e:
        sources.save_model(rgb01(tiny(pad=1)), target, str(tmp_path / name), exact_input=True)
    assert e.value.exit_code == 6
    msg = str(e.value)
    assert "\n" not in msg and name in msg and "rgb01" in msg and "conv1" in msg
    assert ".pt2, .pt, ONNX, TensorFlow, MXNet, Chainer or Caffe" in msg
    assert os.listdir(tmp_path) == []
    sources.save_model(rgb01(tiny(pad=0)), target, str(tmp_path / name), exact_input=True)
    assert os.listdir(tmp_path) == [name]


def test_weights_only_writers_never_drop_a_stage(tmp_path):
    """Guards the silent drop itself: pth.save_model and save_ckpt refuse a graph that still has
    an input_norm node (exit 6) instead of writing the weights without it."""
    exact = rgb01(tiny(pad=1))
    with pytest.raises(UnsupportedError, match="input_norm"):
        pth.save_model(exact, str(tmp_path / "m.pth"))
    with pytest.raises(UnsupportedError, match="input_norm"):
        msc.save_ckpt(exact, tmp_path / "m.ckpt")
    pytest.importorskip("torch")
    from senet_hub.builders import torch as tb

    with pytest.raises(UnsupportedError, match="input stage"):  # a module's InputNorm buffers
        tb.save(tb.build(exact), str(tmp_path / "m.pth"))
    assert os.listdir(tmp_path) == []


def test_ckpt_gets_the_fold_and_the_record(tmp_path):
    """A MindCV model in the Caffe convention to .ckpt: the fold keeps MindCV's graph (the shift is
    in bn1's moving_mean), the checkpoint reads back, and its string entry holds the record."""
    src = zoo.synthetic_model("seresnet18", seed=1)
    exact = transforms.set_input_convention(src, "caffe", fold=False)
    said: list[str] = []
    p = tmp_path / "m.ckpt"
    sources.save_model(exact, "mindspore", str(p), say=said.append)
    assert len(said) == 1 and "folded into conv1" in said[0]
    back = msc.load_ckpt(p)
    folded, _ = transforms.fold_input_stage(exact)
    for k, v in folded.weights.items():
        np.testing.assert_array_equal(back.weights[k], v)
    meta = msc.read_metadata(p)
    assert meta["arch"] == "seresnet18" and meta["input_convention"]["channel_order"] == "BGR"
    assert meta["input_fold"]["from"]["channel_order"] == "RGB" and back.meta["ignored_entries"] == 1
    # read back, the model says what it takes: the record's convention, not MindCV's default
    assert back.meta["input_convention"]["channel_order"] == "BGR" and back.meta["input_fold"]["exact"] is False
    assert msc.read_metadata(msc.save_ckpt(src, tmp_path / "plain.ckpt")) is None


def test_caffe_holds_the_stage_exactly(tmp_path):
    """Caffe has no permute layer, so the writer refused the stage; as the 1x1 convolution with
    bias it is, a Caffe file holds it exactly (exact_input allowed), and reads back computing it."""
    from senet_hub.converters import caffe

    exact = rgb01(tiny(pad=1))
    files = sources.save_model(exact, "caffe", str(tmp_path / "m"), exact_input=True)
    back = caffe.load(*files)
    assert back.meta["input_convention"]["channel_order"] == "RGB"
    a, b = taps(exact)["fc"], numpy_ref.forward(back, X)
    assert np.abs(a - b).max() <= 1e-6 * np.abs(a).max()
