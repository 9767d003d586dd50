"""torch.save's legacy (pre-1.6, non-zip) format, read without torch and without running a pickle.

Cadene's ports (``se_resnet50-ce0d4300.pth`` ...) and the files timm serves as ``legacy_*`` were
written by torch 0.3/0.4 in this format. Proof against torch itself: files written by
``torch.save(..., _use_new_zipfile_serialization=False)`` and a hand-made torch 0.3 file (tensors
rebuilt by ``torch._utils._rebuild_tensor``, CUDA storage types) read bit for bit as ``torch.load``
reads them; a timm legacy_* model read from its legacy file converts and matches timm's forward.
Hostile files: a pickle reducing to os.system is refused (exit 4, marker file never appears);
truncated, plain-pickle and storage-list mismatches are one line, exit 4.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from helpers import cli as _cli
from helpers import one_line as _one_line
from helpers import random_timm_net

from senet_hub.converters import pytorch
from senet_hub.converters.pytorch_format import LEGACY_MAGIC, LEGACY_PROTOCOL
from senet_hub.errors import FormatError

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")


def _torch_arrays(path: Path) -> dict[str, np.ndarray]:
    ref = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in ref.items()}


def test_legacy_files_read_as_torch_reads_them(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    sd = collections.OrderedDict(
        w=torch.randn(4, 3, 3, 3, generator=g),
        half=torch.randn(7, generator=g).half(),
        bf16=torch.randn(3, 2, generator=g).to(torch.bfloat16),
        double=torch.randn(2, 2, generator=g).double(),
        long=torch.arange(9),
        rows=base[2:4],  # a view at an offset into a shared storage
        cols=base.t(),  # a transposed view of the same storage
        scalar=torch.tensor(3.5),
        empty=torch.zeros(0, 4),
    )
    sd._metadata = collections.OrderedDict({"": {"version": 1}})  # what module.state_dict() attaches
    path = tmp_path / "legacy.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"  # really the legacy format, not a zip
    got = pytorch.read_state_dict(path)
    ref = _torch_arrays(path)
    assert list(got) == list(ref)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        assert np.array_equal(got[k], ref[k]), k


class _Rebuild:
    """Pickles as torch 0.3 wrote a tensor: torch._utils._rebuild_tensor(storage, offset, size, stride)."""

    def __init__(self, key: str, offset: int, size: tuple, stride: tuple):
        self.args = (key, offset, size, stride)

    def __reduce__(self):
        return (torch._utils._rebuild_tensor, (_StorageId(self.args[0]), *self.args[1:]))


class _StorageId:
    def __init__(self, key: str):
        self.key = key


def _torch03_file(path: Path, storages: dict[str, tuple[type, np.ndarray]], obj: object) -> None:
    """A file laid out as torch 0.3's torch.save wrote it (storages given as (storage type, data))."""

    class P(pickle.Pickler):
        def persistent_id(self, o):
            if isinstance(o, _StorageId):
                stype, data = storages[o.key]
                return ("storage", stype, o.key, "cuda:0", data.size, None)
            return None

    buf = io.BytesIO()
    for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}):
        pickle.dump(head, buf, protocol=2)
    P(buf, protocol=2).dump(obj)
    keys = sorted(storages)
    pickle.dump(keys, buf, protocol=2)
    for k in keys:
        data = storages[k][1]
        buf.write(int(data.size).to_bytes(8, "little") + data.astype(data.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(buf.getvalue())


def test_a_torch03_file_with_cuda_storages(tmp_path):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(24).astype(np.float32), np.arange(5, dtype=np.int64)
    storages = {"1": (torch.cuda.FloatStorage, a), "2": (torch.cuda.LongStorage, b)}
    sd = collections.OrderedDict(
        conv=_Rebuild("1", 0, (2, 3, 2, 2), (12, 4, 2, 1)),
        tail=_Rebuild("1", 20, (4,), (1,)),
        n=_Rebuild("2", 0, (5,), (1,)),
    )
    path = tmp_path / "torch03.pth"
    _torch03_file(path, storages, {"state_dict": sd})
    got = pytorch.read_state_dict(path)
    assert np.array_equal(got["conv"], a.reshape(2, 3, 2, 2)) and np.array_equal(got["tail"], a[20:])
    assert np.array_equal(got["n"], b)
    # torch itself reads the same numbers (its CUDA types mapped to the CPU)
    ref = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    for k in got:
        assert np.array_equal(got[k], ref[k].numpy()), k


def test_a_timm_legacy_model_from_its_legacy_file(tmp_path):
    pytest.importorskip("timm", reason="timm not installed (the test extra installs it --no-deps)")
    net = random_timm_net("legacy_seresnet18")
    path = tmp_path / "seresnet18-4bb0ce65.pth"
    torch.save(net.state_dict(), path, _use_new_zipfile_serialization=False)
    model = pytorch.load(path)
    assert model.arch == "legacy_seresnet18" and model.meta["source_container"] == "pth-legacy"
    for k, v in net.state_dict().items():
        if k in model.weights:
            assert np.array_equal(model.weights[k], v.numpy()), k
    out = tmp_path / "se18.onnx"
    r = _cli("export-onnx", "--from", "pytorch", "--weights", path, "-o", out, "--verify")
    assert r.exit_code == 0, r.output
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


class _System:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_and_damaged_legacy_files(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, {}):
        pickle.dump(head, buf, protocol=2)
    pickle.dump({"a": _System(marker)}, buf, protocol=2)
    (tmp_path / "evil.pth").write_bytes(buf.getvalue())
    r = _cli("convert", "--weights", tmp_path / "evil.pth", "--to", "onnx", "-o", tmp_path / "x.onnx")
    _one_line(r, FormatError.exit_code, "evil.pth", "system", "refused, nothing was run")
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()

    # a plain pickle is not a torch.save file; its globals are refused before that is known
    (tmp_path / "plain.pth").write_bytes(pickle.dumps({"a": 1}, protocol=2))
    with pytest.raises(FormatError, match="no torch magic number"):
        pytorch.read_state_dict(tmp_path / "plain.pth")

    good = tmp_path / "good.pth"
    torch.save({"a": torch.ones(1000)}, good, _use_new_zipfile_serialization=False)
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[:-100])
    r = _cli("convert", "--weights", tmp_path / "cut.pth", "--to", "onnx", "-o", tmp_path / "y.onnx")
    _one_line(r, FormatError.exit_code, "cut.pth", "truncated")
    assert not (tmp_path / "y.onnx").exists()
    (tmp_path / "cut2.pth").write_bytes(data[:60])  # inside the pickles
    with pytest.raises(FormatError, match="cut2.pth"):
        pytorch.read_state_dict(tmp_path / "cut2.pth")

    # a storage whose element count on disk disagrees with its declaration
    pos = data.rindex((1000).to_bytes(8, "little"))
    bad = data[:pos] + (999).to_bytes(8, "little") + data[pos + 8 :]
    (tmp_path / "count.pth").write_bytes(bad)
    with pytest.raises(FormatError, match="declares 1000 elements, the file holds 999"):
        pytorch.read_state_dict(tmp_path / "count.pth")


def test_cadene_file_to_mindspore_says_its_assumed_input(tmp_path):
    """The issue's `--weights se_resnet50-ce0d4300.pth --to mindspore`: a legacy file of a Caffe-release
    architecture, recognised from keys and shapes; the input convention it is read with is said."""
    timm = pytest.importorskip("timm", reason="timm not installed (the test extra installs it --no-deps)")
    torch.manual_seed(0)
    net = timm.create_model("legacy_seresnet50", pretrained=False).eval()
    src = tmp_path / "se_resnet50-ce0d4300.pth"
    torch.save(net.state_dict(), src, _use_new_zipfile_serialization=False)
    out = tmp_path / "se_resnet50.ckpt"
    r = _cli("convert", "--from", "pytorch", "--weights", src, "--to", "mindspore", "-o", out)
    assert r.exit_code == 0, r.output
    assert "note: se_resnet50-ce0d4300.pth has no senet-hub record of its input" in r.output
    assert "RGB in [0, 1], ImageNet mean/std, sorted-synset classes" in r.output
    back = __import__("senet_hub.converters.mindspore", fromlist=["load_ckpt"]).load_ckpt(
        out
    )  # the record names the arch
    assert back.arch == "SE-ResNet-50" and back.meta["class_order"] == "ilsvrc2012"
    sd = net.state_dict()
    assert all(np.array_equal(back.weights[k], sd[k].numpy()) for k in back.weights if k in sd)
    assert sum(k in sd for k in back.weights) == len(back.weights)
    # a timm-family file says nothing: its convention is timm's, a property of the architecture
    small = timm.create_model("legacy_seresnet18", pretrained=False).eval()
    torch.save(small.state_dict(), tmp_path / "se18.pth", _use_new_zipfile_serialization=False)
    r = _cli("convert", "--weights", tmp_path / "se18.pth", "--to", "pytorch", "-o", tmp_path / "se18.safetensors")
    assert r.exit_code == 0 and "no senet-hub record" not in r.output, r.output
