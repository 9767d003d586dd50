"""`--from pytorch --weights FILE`: torch.save archives read without torch or any pickle run,
.safetensors through the safetensors library, architectures recognised from keys and shapes.

Proof against torch itself: torch.save'd tensors (dtypes, views, strides) read bit for bit; timm's
own models (random init, randomised BatchNorm statistics) saved as .pth and .safetensors, read,
recognised, converted to ONNX / verified through the CLI, and compared with timm's forward within
1e-3 * max|ref|. Hostile files: a pickle reducing to os.system is refused (exit 4) and its marker
file never appears; unknown state_dicts and a wrong --arch are one line naming the closest
architecture and the first disagreeing key (exit 5).
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, one_line

from senet_hub import sources, transforms, zoo
from senet_hub.builders import numpy_ref
from senet_hub.converters import pth, pytorch
from senet_hub.errors import FormatError, InputFileError, ModelError

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
timm = pytest.importorskip("timm", reason="timm not installed (the test extra installs it --no-deps)")
safetensors_torch = pytest.importorskip("safetensors.torch", reason="safetensors not installed")

ROOT = Path(__file__).resolve().parent.parent


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _logits(model, x: np.ndarray) -> np.ndarray:
    """float64 numpy reference of the model's logits (the value before a trailing softmax)."""
    lm = transforms.logits_model(model)
    return numpy_ref.run(numpy_ref.build(lm), x, taps=False)[lm.graph.output]


def _timm(name: str, seed: int = 0):
    """timm's model with its own random init and randomised BatchNorm statistics (eval mode)."""
    torch.manual_seed(seed)
    net = timm.create_model(name, pretrained=False).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return net


def _forward(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).double().numpy()


X = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)

# ------------------------------------------------------------------------ the archive reader vs torch


def test_torch_save_tensors_read_bit_for_bit(tmp_path):
    """Every dtype, and views: a transpose, a slice with an offset, a strided column, a scalar, an empty
    tensor, two tensors sharing one storage; bfloat16 widened to float32 exactly."""
    g = torch.Generator().manual_seed(0)
    big = torch.randn(10, 7, generator=g)
    sd = {
        "a": torch.randn(3, 4, generator=g),
        "transposed": big.t(),
        "rows": big[2:5],
        "column": big[:, 3],
        "half": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(6, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, dtype=torch.float64, generator=g),
        "i64": torch.arange(5),
        "scalar": torch.tensor(3.0),
        "empty": torch.empty(0, 3),
        "conv": torch.randn(4, 3, 3, 3, generator=g).permute(0, 2, 3, 1),  # channels-last strides
        "bn.num_batches_tracked": torch.tensor(7),
    }
    torch.save(sd, tmp_path / "t.pth")
    got = pytorch.read_state_dict(tmp_path / "t.pth")
    assert set(got) == set(sd) - {"bn.num_batches_tracked"}
    for k, v in sd.items():
        if k in got:
            ref = (v.float() if v.dtype == torch.bfloat16 else v).contiguous().numpy()
            assert got[k].dtype == ref.dtype and got[k].shape == ref.shape, k
            assert got[k].tobytes() == ref.tobytes(), k
            assert got[k].flags.c_contiguous, k


def test_big_endian_archive(tmp_path):
    """A `byteorder` record of "big" (torch.save on a big-endian host): read in native order."""
    import fuzzing

    a = (np.arange(6) * 1.5).astype(">f4")
    entries = [("w", "FloatStorage", "0", 6, 0, (2, 3), (3, 1))]
    members = [
        ("archive/data.pkl", fuzzing.torch_pickle(entries)),
        ("archive/byteorder", b"big"),
        ("archive/data/0", a.tobytes()),
    ]
    (tmp_path / "be.pth").write_bytes(fuzzing.torch_archive(members))
    got = pytorch.read_state_dict(tmp_path / "be.pth")["w"]
    assert got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(got, a.astype(np.float32).reshape(2, 3))


def test_fuzz_seeds_read_as_torch_reads_them(tmp_path):
    """The crafted archives of the fuzz corpus (explicit strides, offsets, shared storages, a
    wrapped and prefixed dict) mean to torch what they mean to us."""
    import fuzzing

    for j, seed in enumerate(fuzzing.torch_seeds()):
        p = tmp_path / f"s{j}.pth"
        p.write_bytes(seed.archive())
        ref = torch.load(p, weights_only=True)
        for w in seed.wrappers:
            ref = ref[w]
        got = pytorch.read_state_dict(p)
        ref = {k.removeprefix(seed.prefix): v for k, v in ref.items() if not k.endswith("num_batches_tracked")}
        assert set(got) == set(ref)
        for k, v in ref.items():
            r = (v.float() if v.dtype == torch.bfloat16 else v).contiguous().numpy()
            assert got[k].tobytes() == r.tobytes(), k


# ------------------------------------------------------------------- timm's models, end to end


@pytest.fixture(scope="module")
def legacy50(tmp_path_factory):
    """timm legacy_seresnet50 (Cadene's layout = the Caffe SE-ResNet-50): .pth and .safetensors, and its logits."""
    d = tmp_path_factory.mktemp("legacy50")
    net = _timm("legacy_seresnet50")
    sd = net.state_dict()
    torch.save(sd, d / "legacy50.pth")
    safetensors_torch.save_file({k: v.contiguous() for k, v in sd.items()}, d / "legacy50.safetensors")
    return d / "legacy50.pth", d / "legacy50.safetensors", _forward(net, X)


@pytest.mark.parametrize("container", ["pth", "safetensors"])
def test_timm_legacy_state_dict_recognised_and_exact(legacy50, container):
    pth_path, st_path, ref = legacy50
    model = pytorch.load(pth_path if container == "pth" else st_path)
    assert model.arch == "SE-ResNet-50" and model.meta["family"] == "caffe"
    # Cadene's port takes timm's input (RGB [0, 1], ImageNet mean/std) and sorted-synset classes
    assert model.meta["input_convention"]["channel_order"] == "RGB" and model.meta["class_order"] == "ilsvrc2012"
    assert model.meta["source_format"] == "pytorch" and model.meta["source_container"] == container
    assert model.meta["ignored_entries"] == 53  # the BatchNorms' num_batches_tracked
    got = _logits(model, X)
    assert _rel(got, ref) < 1e-3, _rel(got, ref)


def test_cli_convert_to_onnx_matches_timm(legacy50, tmp_path):
    """`convert --weights F.pth --to onnx` (source inferred from --weights): the ONNX file's logits
    are timm's forward, within 1e-3 * max|ref|."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pth_path, _, ref = legacy50
    r = cli("convert", "--weights", pth_path, "--to", "onnx", "-o", tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    assert "loaded SE-ResNet-50" in r.output
    m = onnx.load(tmp_path / "m.onnx")
    m.graph.output.append(onnx.helper.make_tensor_value_info("last_linear", onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["last_linear"], {"data": X})[0]
    assert _rel(got, ref) < 1e-3, _rel(got, ref)


def test_cli_verify_safetensors_numpy_and_torch(legacy50):
    _, st_path, _ = legacy50
    r = cli("verify", "--from", "pytorch", "--weights", st_path, "--backends", "numpy,torch", "--batch", "1")
    assert r.exit_code == 0, r.output[-2000:]
    assert "PARITY HOLDS (SE-ResNet-50" in r.output


def test_wrong_arch_is_one_line_with_the_first_mismatch(legacy50):
    pth_path, _, _ = legacy50
    r = cli("convert", "--weights", pth_path, "--arch", "seresnet50", "--to", "onnx", "-o", "unused.onnx")
    line = one_line(r, ModelError.exit_code, "does not fit timm/seresnet50", "it fits SE-ResNet-50", "first:")
    assert "missing conv1.weight" in line
    assert not os.path.exists("unused.onnx")
    # the alias of the arch it is: accepted
    model = pytorch.load(pth_path, arch="legacy_seresnet50")
    assert model.arch == "SE-ResNet-50"


def test_timm_resnet_se_model_safetensors(tmp_path):
    """A timm resnet.py SE model (deep stem, average-pool downsample) from .safetensors: recognised
    as timm/seresnext26d_32x4d and computing timm's forward."""
    if not zoo.is_arch("timm/seresnext26d_32x4d"):
        pytest.skip("the zoo has no timm family")
    net = _timm("seresnext26d_32x4d", seed=3)
    safetensors_torch.save_file(net.state_dict(), tmp_path / "model.safetensors")
    model = pytorch.load(tmp_path / "model.safetensors")
    assert model.arch == "timm/seresnext26d_32x4d" and model.meta["family"] == "timm"
    got, ref = _logits(model, X), _forward(net, X)
    assert _rel(got, ref) < 1e-3, _rel(got, ref)


def test_timm_first_then_the_recorded_arch(tmp_path):
    """timm's seresnet50 and MindCV's seresnet50 have the same keys and shapes (they pool the stem
    differently): a plain state_dict is timm's; a file senet-hub wrote from MindCV's stays MindCV's."""
    if not zoo.is_arch("timm/seresnet50"):
        pytest.skip("the zoo has no timm family")
    shapes = zoo.param_shapes("seresnet50")
    assert shapes == zoo.param_shapes("timm/seresnet50")
    sd = {k: np.zeros(s, np.float32) for k, s in shapes.items()}
    with open(tmp_path / "plain.pth", "wb") as f:
        pth.write_state_dict(sd, f)
    with open(tmp_path / "mindcv.pth", "wb") as f:
        pth.write_state_dict(sd, f, metadata={"format": "senet-hub", "arch": "seresnet50"})
    with pytorch.StateDict(str(tmp_path / "plain.pth")) as s:
        assert pytorch.recognise(s, None)[0] == "timm/seresnet50"
    with pytorch.StateDict(str(tmp_path / "mindcv.pth")) as s:
        assert pytorch.recognise(s, None)[0] == "seresnet50"
        assert pytorch.recognise(s, "mindcv/seresnet50")[0] == "seresnet50"


# ------------------------------------------------------------------ senet-hub's own files, read back


@pytest.mark.parametrize("arch", ["SE-BN-Inception", "seresnet18"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_round_trip_of_senet_hub_files(tmp_path, arch, suffix):
    """A Caffe and a MindCV arch written by senet-hub come back with identical weights, the same
    arch and the recorded input convention and class order."""
    model = zoo.synthetic_model(arch, seed=2)
    path = str(tmp_path / f"m{suffix}")
    sources.save_model(model, "pytorch", path)
    back = pytorch.load(path)
    assert back.arch == arch
    for k in ("input_convention", "class_order"):
        assert back.meta[k] == model.meta[k], k
    assert list(back.weights) == list(model.weights)
    for k, v in model.weights.items():
        assert back.weights[k].dtype == np.float32 and np.array_equal(back.weights[k], v), k


def test_round_trip_through_the_cli(tmp_path):
    """zoo -> .pth -> --from pytorch -> .ckpt: the MindSpore file holds the same weights."""
    from senet_hub.converters import mindspore as msc

    r = cli("convert", "--from", "zoo", "--arch", "seresnet18", "--to", "pytorch", "-o", tmp_path / "a.pth")
    assert r.exit_code == 0, r.output
    r = cli("convert", "--weights", tmp_path / "a.pth", "--to", "mindspore", "-o", tmp_path / "b.ckpt")
    assert r.exit_code == 0, r.output
    a, b = zoo.synthetic_model("seresnet18"), msc.load_ckpt(tmp_path / "b.ckpt")
    assert b.arch == "seresnet18"
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)


# ----------------------------------------------------------------------- wrappers, prefixes, dtypes


@pytest.fixture(scope="module")
def small_sd():
    """A seresnet18 state_dict as torch tensors (timm/MindCV names), with num_batches_tracked."""
    model = zoo.synthetic_model("seresnet18", seed=4)
    return {k: torch.from_numpy(np.array(v)) for k, v in pth.model_state_dict(model).items()}, model


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3, "best": 0.5},
        lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}},
        lambda sd: {"model_state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}},
        lambda sd: {f"model.{k}": v for k, v in sd.items()},
        # timm's training checkpoint (timm.utils.CheckpointSaver): args, optimizer state, EMA weights
        lambda sd: {
            "epoch": 3,
            "arch": "seresnet18",
            "state_dict": sd,
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]},
            "args": argparse.Namespace(model="seresnet18", lr=0.1, sched="cosine"),
            "state_dict_ema": {k: v + 1 for k, v in sd.items()},
            "metric": 71.25,
        },
    ],
    ids=["state_dict+module.", "model", "model_state_dict+_orig_mod.", "model.", "timm-training-checkpoint"],
)
def test_wrapped_and_prefixed_state_dicts(tmp_path, small_sd, wrap):
    sd, model = small_sd
    torch.save(wrap(sd), tmp_path / "ckpt.pth")
    back = pytorch.load(tmp_path / "ckpt.pth")
    assert back.arch == "seresnet18"
    assert all(np.array_equal(back.weights[k], v) for k, v in model.weights.items())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_safetensors(tmp_path, small_sd, dtype):
    sd, _ = small_sd
    low = {k: (v.to(getattr(torch, dtype)) if v.is_floating_point() else v) for k, v in sd.items()}
    safetensors_torch.save_file(low, tmp_path / "m.safetensors")
    back = pytorch.load(tmp_path / "m.safetensors", arch="seresnet18")
    assert back.meta["source_dtype"] == [dtype]
    for k, w in back.weights.items():
        assert w.dtype == np.float32
        assert np.array_equal(w, low[k].float().numpy()), k  # widened exactly


# ------------------------------------------------------------------------------- hostile files


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _with_pickle(src: Path, dst: Path, pkl: bytes) -> None:
    """`src` (a torch.save archive) with its data.pkl replaced."""
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            out.writestr(info, pkl if info.filename.endswith("/data.pkl") else z.read(info))


def test_pickle_payload_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"a": torch.zeros(2)}, tmp_path / "good.pth")
    _with_pickle(tmp_path / "good.pth", tmp_path / "evil.pth", pickle.dumps({"a": _System(marker)}, protocol=2))
    # the payload works: unpickled by Python it creates the marker (in a child, and removed again)
    subprocess.run(
        [sys.executable, "-c", f"import pickle; pickle.loads({pickle.dumps(_System(marker))!r})"], check=True
    )
    assert marker.exists()
    marker.unlink()
    r = cli("convert", "--weights", tmp_path / "evil.pth", "--to", "onnx", "-o", tmp_path / "x.onnx")
    one_line(r, FormatError.exit_code, "evil.pth", "system", "refused, nothing was run")
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()
    # a whole pickled module is refused the same way, naming its class
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pth")
    with pytest.raises(FormatError, match=r"torch\.nn\.modules\.linear\.Linear.*refused"):
        pytorch.load(tmp_path / "module.pth")


def test_unknown_state_dict_names_the_closest_arch(tmp_path):
    """SE-ResNet-50 without its SE modules (a plain ResNet-50 in Cadene's layout)."""
    sd = {k: np.zeros(s, np.float32) for k, s in zoo.param_shapes("SE-ResNet-50").items() if "se_module" not in k}
    with open(tmp_path / "resnet.pth", "wb") as f:
        pth.write_state_dict(sd, f)
    r = cli("convert", "--weights", tmp_path / "resnet.pth", "--to", "onnx", "-o", tmp_path / "x.onnx")
    one_line(r, ModelError.exit_code, "closest is SE-ResNet-50", "missing layer1.0.se_module.fc1.weight")


def test_other_files_are_one_line(tmp_path):
    # a legacy (pre-1.6) file is read (tests/test_pytorch_legacy.py); this one is no zoo state_dict
    torch.save({"a": torch.zeros(2)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    with pytest.raises(ModelError, match="not a state_dict of any zoo architecture"):
        pytorch.load(tmp_path / "legacy.pth")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 3)), tmp_path / "script.pt")
    with pytest.raises(FormatError, match="TorchScript"):
        pytorch.load(tmp_path / "script.pt")
    torch.save({"epoch": 3, "note": "no tensors"}, tmp_path / "none.pth")
    with pytest.raises(FormatError, match="holds no state_dict"):
        pytorch.load(tmp_path / "none.pth")
    for junk in (b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": {"dtype": "F32", ', b"\x10\x00\x00\x00\x00\x00\x00\x00{x"):
        (tmp_path / "junk.safetensors").write_bytes(junk + b"x" * 30)
        with pytest.raises(FormatError, match="junk.safetensors: not a valid safetensors file"):
            pytorch.load(tmp_path / "junk.safetensors")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        pytorch.load(tmp_path / "empty.pth")
    with pytest.raises(InputFileError, match="not found"):
        pytorch.load(tmp_path / "missing.pth")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "in.pth")
    code = "from senet_hub.cli import main\nmain(prog_name='senet-hub')"
    args = ["convert", "--weights", str(tmp_path / "in.pth"), "--to", "onnx", "-o", str(tmp_path / "x.onnx")]
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == InputFileError.exit_code and "not a regular file" in r.stderr, r.stderr


def test_output_that_is_the_weights_file_is_refused(tmp_path, small_sd):
    sd, _ = small_sd
    torch.save(sd, tmp_path / "w.pth")
    before = (tmp_path / "w.pth").read_bytes()
    r = cli("convert", "--weights", tmp_path / "w.pth", "--to", "pytorch", "-o", tmp_path / "w.pth")
    one_line(r, 7, "same file")
    assert (tmp_path / "w.pth").read_bytes() == before
