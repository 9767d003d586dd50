"""MindCV / MindSpore: the five architectures, the .ckpt reader and writer, the mindspore backend.

The reader and writer need no MindSpore; the parity tests run MindCV itself (skipped when
mindspore/mindcv are not installed) on small inputs (2 x 3 x 64 x 64) to stay fast on a CPU.
"""

from __future__ import annotations

import importlib.util
import math
import os
import stat

import numpy as np
import pytest

from senet_hub import zoo
from senet_hub.builders import numpy_ref
from senet_hub.converters import mindspore as msc
from senet_hub.converters import mindspore_format
from senet_hub.errors import FormatError, InputFileError, ModelError, OutputError
from senet_hub.zoo import mindcv as zoo_mindcv_family

ARCHS = ["seresnet18", "seresnet34", "seresnet50", "seresnext26_32x4d", "seresnext50_32x4d"]
HAVE_MS = importlib.util.find_spec("mindspore") is not None and importlib.util.find_spec("mindcv") is not None
HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_ms = pytest.mark.skipif(
    not HAVE_MS, reason="mindspore and mindcv are not installed (pip install 'senet-hub[mindspore]')"
)
X = np.random.default_rng(7).normal(0.0, 1.0, (2, 3, 64, 64)).astype(np.float32)


def close(ref: np.ndarray, got: np.ndarray, rtol: float = 1e-3) -> None:
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    assert ref.shape == got.shape
    err = np.abs(ref - got).max() / max(np.abs(ref).max(), 1e-30)
    assert err <= rtol, f"max |diff| = {err:.3g} x max|ref|"


def top1_same(ref: np.ndarray, got: np.ndarray) -> None:
    assert (np.argmax(ref, axis=1) == np.argmax(got, axis=1)).all()


# ------------------------------------------------------------------------ real MindCV models


def _randomize(net, seed: int) -> None:
    """Seeded random values for every parameter (BN statistics too), so nothing is an identity."""
    import mindspore as ms

    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():
        shp = tuple(p.shape)
        if name.endswith("moving_variance"):
            v = rng.uniform(0.5, 1.5, shp)
        elif name.endswith("gamma"):  # < 1 keeps deep residual sums (and the SE gates) in range
            v = rng.uniform(0.4, 1.0, shp)
        elif name.endswith(("beta", "moving_mean", "bias")):
            v = rng.normal(0.0, 0.1, shp)
        elif len(shp) == 2:  # Dense (SE, classifier)
            v = rng.normal(0.0, 1.0 / math.sqrt(shp[1]), shp)
        else:  # conv weights, He-normal
            v = rng.normal(0.0, math.sqrt(2.0 / math.prod(shp[1:])), shp)
        p.set_data(ms.Tensor(v.astype(np.float32)))


@pytest.fixture(scope="module")
def mindcv_ref(tmp_path_factory):
    """Factory: (checkpoint saved by MindSpore, MindCV's eval output on X) for an architecture."""
    cache: dict[str, tuple[str, np.ndarray]] = {}
    root = tmp_path_factory.mktemp("mindcv")

    def make(arch: str) -> tuple[str, np.ndarray]:
        if arch not in cache:
            import mindcv
            import mindspore as ms

            net = mindcv.create_model(arch, pretrained=False)
            _randomize(net, ARCHS.index(arch) + 1)
            net.set_train(False)
            y = net(ms.Tensor(X)).asnumpy()
            path = str(root / f"{arch}.ckpt")
            ms.save_checkpoint(net, path, crc_check=arch == "seresnet18")
            cache[arch] = (path, y)
        return cache[arch]

    return make


@needs_ms
@pytest.mark.parametrize("arch", ARCHS)
def test_reader_matches_mindcv(arch, mindcv_ref):
    path, y_ms = mindcv_ref(arch)
    assert not os.stat(path).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)  # MindSpore writes 0400
    model = msc.load_ckpt(path)  # architecture inferred from names and shapes
    assert model.arch == arch
    assert model.meta["input_convention"]["channel_order"] == "RGB"
    assert model.meta["class_order"] == "ilsvrc2012"
    ref = numpy_ref.run(numpy_ref.build(model, np.float64), X, taps=False)["fc"]
    close(ref, y_ms)
    top1_same(ref, y_ms)
    if HAVE_TORCH:
        from senet_hub.builders import torch as tb

        y_t = tb.run(tb.build(model), X, taps=False)["fc"]
        close(ref, y_t)
        top1_same(ref, y_t)


@needs_ms
@pytest.mark.parametrize("arch", ARCHS)
def test_writer_loads_into_mindcv(arch, mindcv_ref, tmp_path):
    import mindcv
    import mindspore as ms

    path, y_ms = mindcv_ref(arch)
    model = msc.load_ckpt(path, arch=arch)
    out = str(tmp_path / "out.ckpt")
    assert msc.save_ckpt(model, out, crc=arch == "seresnet18") == out
    # the same bytes mindspore.save_checkpoint wrote (names, order, dims, CRC trailer)
    with open(out, "rb") as f, open(path, "rb") as g:
        assert f.read() == g.read()
    net = mindcv.create_model(arch, pretrained=False)
    net.set_train(False)
    missing, unused = ms.load_param_into_net(net, ms.load_checkpoint(out), strict_load=True)
    assert not missing and not unused
    y = net(ms.Tensor(X)).asnumpy()
    np.testing.assert_allclose(y, y_ms, rtol=0, atol=1e-6 * np.abs(y_ms).max())


@needs_ms
def test_writer_from_other_weights(tmp_path):
    """A model whose weights never came from MindSpore (synthetic, float64 math) -> MindCV."""
    import mindcv
    import mindspore as ms

    model = zoo.synthetic_model("seresnext26_32x4d", seed=3)
    out = str(tmp_path / "syn.ckpt")
    msc.save_ckpt(model, out)
    net = mindcv.create_model("seresnext26_32x4d", pretrained=False)
    net.set_train(False)
    missing, unused = ms.load_param_into_net(net, ms.load_checkpoint(out), strict_load=True)
    assert not missing and not unused
    ref = numpy_ref.run(numpy_ref.build(model, np.float64), X, taps=False)["fc"]
    y = net(ms.Tensor(X)).asnumpy()
    close(ref, y)
    top1_same(ref, y)


@needs_ms
def test_mindspore_backend_taps(mindcv_ref):
    from senet_hub.builders import mindspore as msb

    path, y_ms = mindcv_ref("seresnet18")
    model = msc.load_ckpt(path)
    native = msb.build(model)
    outs = msb.run(native, X, taps=True)
    ref = numpy_ref.run(numpy_ref.build(model, np.float64), X, taps=True)
    assert {"conv1", "bn1", "act1", "maxpool", "layer1.0.se.fc1", "layer1.0.se.gate", "layer4.1.act2", "fc"} <= set(
        outs
    )
    for k, v in outs.items():
        close(ref[k], v)
    np.testing.assert_array_equal(outs["fc"], y_ms)
    assert set(msb.run(native, X, taps=False)) == {"fc"}
    # MindSpore's "same" pooling differs from the fixed graph pads at odd stem sizes: refused
    from senet_hub.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="same"):
        msb.run(native, np.zeros((1, 3, 66, 66), np.float32), taps=False)


@needs_ms
@pytest.mark.parametrize("arch", ARCHS)
def test_description_matches_mindcv_parameters(arch):
    import mindcv

    net = mindcv.create_model(arch, pretrained=False)
    want = {n: tuple(p.shape) for n, p in net.parameters_and_names()}
    _, exp = msc._expected(arch, None)
    assert list(exp) == list(want)  # same names, in MindCV's order
    assert {k: v[1] for k, v in exp.items()} == want
    trainable = sum(math.prod(p.shape) for p in net.trainable_params())
    assert zoo.describe(arch)["params"] == trainable


# ------------------------------------------------------------------------ zoo descriptions


def test_descriptions():
    assert zoo.list_archs("mindcv") == ARCHS
    g = zoo.expand("seresnet18")
    pool = g.node("maxpool")
    assert pool.op == "max_pool"
    assert pool.attrs == {
        "kernel": (3, 3),
        "stride": (2, 2),
        "pad": (0, 0, 1, 1),
        "ceil": False,
        "count_include_pad": True,
    }
    assert g.node("layer1.0.se.fc1").attrs["out_channels"] == 8  # make_divisible(64 / 16, 8), not 4
    assert g.node("layer2.0.conv1").attrs["stride"] == (2, 2)  # basic block: stride on the first 3x3
    assert g.node("bn1").attrs["eps"] == 1e-5
    g50 = zoo.expand("seresnext50_32x4d")
    c2 = g50.node("layer2.0.conv2")
    assert (c2.attrs["stride"], c2.attrs["groups"], c2.attrs["out_channels"]) == ((2, 2), 32, 256)
    assert g50.node("layer2.0.conv1").attrs["stride"] == (1, 1)
    assert g50.node("layer2.0.add").inputs == ["layer2.0.se.gate", "layer2.0.bn3", "layer2.0.downsample.1"]
    assert zoo_mindcv_family.same_pad(112, 3, 2) == (0, 1) and zoo_mindcv_family.same_pad(113, 3, 2) == (1, 1)
    shapes = zoo.param_shapes("seresnet50")
    # timm seresnet50 state_dict names
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.se.fc1.weight", "layer1.0.downsample.0.weight", "fc.bias"):
        assert key in shapes
    assert shapes["layer1.0.se.fc1.weight"] == (16, 256, 1, 1)


# ------------------------------------------------------------------------ reader / writer


def _small_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "a.f32": rng.normal(size=(5, 3, 2, 2)).astype(np.float32),
        "a.f16": rng.normal(size=(7, 4)).astype(np.float16),
        "a.f64": rng.normal(size=(3,)).astype(np.float64),
        "a.i32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "a.i64": np.array([1 << 40, -5], np.int64),
        "a.u8": np.arange(10, dtype=np.uint8),
        "a.bool": np.array([True, False, True]),
        "global_step": np.array(12, np.int32),  # scalar: no dims
        "note": np.array("hello ckpt"),
    }


def test_roundtrip_dtypes(tmp_path):
    t = _small_tensors()
    p = msc.write_ckpt_tensors(t, tmp_path / "t.ckpt")
    got = msc.read_ckpt_tensors(p)
    assert list(got) == list(t)
    for k, v in t.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)


@needs_ms
def test_reader_agrees_with_mindspore_on_dtypes(tmp_path):
    import mindspore as ms

    t = {k: v for k, v in _small_tensors().items() if k != "note"}
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in t.items()], str(tmp_path / "m.ckpt"))
    got = msc.read_ckpt_tensors(tmp_path / "m.ckpt")
    for k, v in t.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)
    # and MindSpore reads what we write, float16 included
    msc.write_ckpt_tensors(t, tmp_path / "w.ckpt")
    back = ms.load_checkpoint(str(tmp_path / "w.ckpt"))
    for k, v in t.items():
        np.testing.assert_array_equal(back[k].asnumpy(), v)


def test_split_tensors(tmp_path, monkeypatch):
    t = {"big": np.arange(40 * 6, dtype=np.float32).reshape(40, 6), "small": np.ones(3, np.float32)}
    monkeypatch.setattr(mindspore_format, "SLICE_BYTES", 100)  # 960 bytes -> 10 slices along axis 0 (the writer's)
    p = msc.write_ckpt_tensors(t, tmp_path / "split.ckpt")
    raw = open(p, "rb").read()
    assert raw.count(b"\n\x03big") == 10  # ten Values tagged "big"
    got = msc.read_ckpt_tensors(p)
    np.testing.assert_array_equal(got["big"], t["big"])
    np.testing.assert_array_equal(got["small"], t["small"])
    if HAVE_MS:
        import mindspore as ms

        np.testing.assert_array_equal(ms.load_checkpoint(p)["big"].asnumpy(), t["big"])


def test_crc_trailer(tmp_path):
    t = _small_tensors()
    p = msc.write_ckpt_tensors(t, tmp_path / "crc.ckpt", crc=True)
    raw = bytearray(open(p, "rb").read())
    assert raw[-17:-10] == b"crc_num"
    np.testing.assert_array_equal(msc.read_ckpt_tensors(p)["a.f32"], t["a.f32"])
    raw[40] ^= 0xFF  # damage a data byte: the CRC catches it
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="CRC"):
        msc.read_ckpt_tensors(bad)


def test_truncated_and_garbage(tmp_path):
    p = msc.write_ckpt_tensors(_small_tensors(), tmp_path / "ok.ckpt")
    raw = open(p, "rb").read()
    for cut in (1, 3, 17, len(raw) // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.ckpt"
        bad.write_bytes(raw[:cut])
        with pytest.raises(FormatError) as e:
            msc.read_ckpt_tensors(bad)
        msg = str(e.value)
        assert str(bad) in msg and "\n" not in msg
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(FormatError):
        msc.read_ckpt_tensors(junk)
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        msc.read_ckpt_tensors(empty)
    with pytest.raises(InputFileError):
        msc.read_ckpt_tensors(tmp_path / "missing.ckpt")


def test_declared_length_checked_before_allocating(tmp_path):
    # a Value that claims 2**40 bytes: rejected from the header, nothing allocated
    bad = tmp_path / "huge.ckpt"
    bad.write_bytes(b"\x0a" + msc._varint(1 << 40) + b"\x0a\x01x")
    with pytest.raises(FormatError, match="declares"):
        msc.read_ckpt_tensors(bad)
    # dims that do not match the content
    t = {"w": np.zeros((4, 4), np.float32)}
    raw = b"".join(msc._encode("w", t["w"]))
    wrong = raw.replace(b"\x08\x04\x08\x04", b"\x08\x04\x08\x05")
    (tmp_path / "dims.ckpt").write_bytes(wrong)
    with pytest.raises(FormatError, match="needs 80 bytes but has 64"):
        msc.read_ckpt_tensors(tmp_path / "dims.ckpt")


def test_readonly_file(tmp_path):
    p = msc.write_ckpt_tensors(_small_tensors(), tmp_path / "ro.ckpt")
    os.chmod(p, 0o400)
    assert "a.f32" in msc.read_ckpt_tensors(p)


def _ckpt_of(model) -> dict[str, np.ndarray]:
    return msc.to_mindcv(model)


def test_load_float16_and_training_extras(tmp_path):
    model = zoo.synthetic_model("seresnet18", seed=1)
    t = {k: v.astype(np.float16) for k, v in _ckpt_of(model).items()}
    t |= {"moments.layer0.0.weight": t["layer0.0.weight"], "learning_rate": np.array(0.1, np.float32)}
    t["global_step"] = np.array([100], np.int32)
    p = msc.write_ckpt_tensors(t, tmp_path / "f16.ckpt")
    m = msc.load_ckpt(p)
    assert m.arch == "seresnet18" and m.meta["source_dtype"] == ["float16"] and m.meta["ignored_entries"] == 3
    assert m.weights["conv1.weight"].dtype == np.float32
    np.testing.assert_array_equal(
        m.weights["layer1.0.se.fc1.weight"], t["layer1.0.se_module.conv_reduce.weight"][:, :, None, None]
    )
    # a training wrapper's prefix
    p2 = msc.write_ckpt_tensors({f"network.{k}": v for k, v in _ckpt_of(model).items()}, tmp_path / "wrapped.ckpt")
    assert msc.load_ckpt(p2).arch == "seresnet18"


def test_wrong_arch_lists_mismatches(tmp_path):
    model = zoo.synthetic_model("seresnet18", seed=1)
    p = msc.write_ckpt_tensors(_ckpt_of(model), tmp_path / "r18.ckpt")
    with pytest.raises(ModelError) as e:
        msc.load_ckpt(p, arch="seresnet50")
    msg = str(e.value)
    assert "does not fit seresnet50" in msg and "mismatches" in msg and "\n" not in msg
    assert "layer1.0.conv3.weight" in msg  # the bottleneck's conv3 is missing
    # names that fit no architecture: inference asks for --arch
    t = _ckpt_of(model)
    del t["layer4.1.conv2.weight"]
    p2 = msc.write_ckpt_tensors(t, tmp_path / "broken.ckpt")
    with pytest.raises(ModelError, match=r"closest is seresnet18 .*missing layer4\.1\.conv2\.weight.*--arch"):
        msc.load_ckpt(p2)
    # a shape that does not fit
    t = _ckpt_of(model)
    t["layer1.0.conv2.weight"] = np.zeros((64, 2, 3, 3), np.float32)
    p3 = msc.write_ckpt_tensors(t, tmp_path / "shape.ckpt")
    with pytest.raises(
        ModelError, match=r"layer1\.0\.conv2\.weight has shape \(64, 2, 3, 3\), expected \(64, 64, 3, 3\)"
    ):
        msc.load_ckpt(p3, arch="seresnet18")


def test_other_num_classes(tmp_path):
    model = zoo.synthetic_model("seresnet34", seed=2, num_classes=10)
    p = msc.save_ckpt(model, tmp_path / "ten.ckpt")
    m = msc.load_ckpt(p)
    assert m.arch == "seresnet34" and m.meta["num_classes"] == 10 and m.meta["class_order"] == "unknown"
    for k, v in model.weights.items():
        np.testing.assert_array_equal(m.weights[k], v)


def test_save_refuses_changed_graph_and_writes_atomically(tmp_path):
    from senet_hub.graph import Node

    model = zoo.synthetic_model("seresnet18", seed=1)
    bad = model.copy()
    bad.graph.nodes.insert(
        0, Node("input_norm", "input_norm", ["data"], {"perm": [2, 1, 0], "scale": [1.0] * 3, "shift": [0.0] * 3})
    )
    bad.graph.node("conv1").inputs = ["input_norm"]
    with pytest.raises(ModelError, match="input_norm"):
        msc.save_ckpt(bad, tmp_path / "x.ckpt")
    with pytest.raises(OutputError):
        msc.save_ckpt(model, tmp_path / "no" / "such" / "dir.ckpt")
    msc.save_ckpt(model, tmp_path / "ok.ckpt")
    assert sorted(os.listdir(tmp_path)) == ["ok.ckpt"]  # no temporaries left


def test_generic_model_gets_mindspore_bn_names(tmp_path):
    model = zoo.synthetic_model("seresnet18", seed=1)
    model.meta["arch"] = "custom"
    t = msc.read_ckpt_tensors(msc.save_ckpt(model, tmp_path / "g.ckpt"))
    assert "bn1.gamma" in t and "bn1.moving_variance" in t and "layer1.0.se.fc1.weight" in t
    assert t["layer1.0.se.fc1.weight"].shape == (8, 64, 1, 1)


@needs_ms
def test_safetensors_from_mindspore(tmp_path):
    import mindspore as ms

    t = {"layer0.0.weight": np.random.default_rng(0).normal(size=(4, 3, 7, 7)).astype(np.float32)}
    ms.save_checkpoint(
        [{"name": k, "data": ms.Tensor(v)} for k, v in t.items()], str(tmp_path / "m.safetensors"), format="safetensors"
    )
    got = msc.read_ckpt_tensors(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(got["layer0.0.weight"], t["layer0.0.weight"])


@needs_ms
def test_parity_check_is_sensitive(mindcv_ref):
    """torch-style symmetric max-pool padding, or the stride on the wrong conv, is caught."""
    path, y_ms = mindcv_ref("seresnet50")
    model = msc.load_ckpt(path)
    sym = model.copy()
    sym.graph.node("maxpool").attrs.update(pad=(1, 1, 1, 1))
    moved = model.copy()
    moved.graph.node("layer2.0.conv2").attrs.update(stride=(1, 1))
    moved.graph.node("layer2.0.conv1").attrs.update(stride=(2, 2))
    for bad in (sym, moved):
        y = numpy_ref.run(numpy_ref.build(bad, np.float64), X, taps=False)["fc"]
        assert np.abs(y - y_ms).max() > 1e-2 * np.abs(y_ms).max()
