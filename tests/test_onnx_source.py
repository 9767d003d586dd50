"""``--from onnx``: ONNX files read back into the canonical model (converters/onnx_source.py).

- senet-hub's own exports (Axpy as a model-local function, and ``--inline``) of SE-ResNet-50 and
  SE-BN-Inception read back with identical weights by canonical name and the identical graph
  (axpy nodes recovered, the zoo architecture recognised); opsets 13 and 21; an input stage.
- ``torch.onnx.export`` of timm's ``legacy_seresnet50`` and ``seresnet50`` (random weights,
  randomized batch-norm statistics; BatchNormalization folded into the convolutions by the
  exporter): the float64 numpy reference of what was read matches timm's own forward within
  1e-3 * max|ref|, and ``convert --to caffe`` from it writes Axpy layers that run in OpenCV DNN
  and match timm too.
- pools: ``ceil_mode`` windows (Caffe's clip rule) and ``count_include_pad`` divisors against
  onnxruntime on sizes where the clip rule applies.
- bad input: ops outside the vocabulary (exit 6, every op type listed once with counts), dynamic
  H, W where a pool depends on them (exit 2 asking for --input-shape), special files.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from senet_hub import transforms, zoo
from senet_hub.builders import numpy_ref
from senet_hub.cli import main
from senet_hub.errors import InputFileError, UnsupportedError
from senet_hub.graph import structure

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install 'senet-hub[onnx]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from senet_hub.builders import onnx as onnx_builder  # noqa: E402
from senet_hub.converters import onnx_source  # noqa: E402


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


def _ref(model, x: np.ndarray) -> np.ndarray:
    return numpy_ref.run(numpy_ref.build(model), x, taps=False)[model.graph.output]


# ------------------------------------------------------------------------ senet-hub's own exports


@pytest.mark.parametrize("inline", [False, True], ids=["function", "inline"])
@pytest.mark.parametrize("arch", ["SE-ResNet-50", "SE-BN-Inception"])
def test_own_export_reads_back_identical(tmp_path, arch, inline):
    m = zoo.synthetic_model(arch, seed=3)
    path = tmp_path / "m.onnx"
    onnx_builder.save(m, path, inline=inline)
    back = onnx_source.load(path)
    assert back.arch == arch  # recognised: canonical names
    assert structure(back.graph) == structure(m.graph)
    assert [n.name for n in back.graph.nodes] == [n.name for n in m.graph.nodes]
    assert back.graph.output == m.graph.output and back.graph.input_shape == m.graph.input_shape
    assert sorted(back.weights) == sorted(m.weights)
    for k, v in m.weights.items():
        assert back.weights[k].dtype == np.float32 and np.array_equal(back.weights[k], v), k
    ops = [n.op for n in back.graph.nodes]
    assert ops.count("axpy") == [n.op for n in m.graph.nodes].count("axpy")
    assert back.meta["input_convention"]["channel_order"] == m.meta["input_convention"]["channel_order"]
    assert back.meta["class_order"] == m.meta["class_order"]
    assert back.meta["onnx"]["batch_norm_folded"] is False


@pytest.mark.parametrize("opset", [13, 21])
def test_own_export_opsets_and_input_stage(tmp_path, opset):
    """Opsets 13 and 21; an exact input stage (Gather + Mul + Add on the input) is input_norm again."""
    m = transforms.set_input_convention(zoo.synthetic_model("SE-BN-Inception", seed=1), "rgb01", fold=False)
    assert m.graph.nodes[0].op == "input_norm"
    path = tmp_path / f"m{opset}.onnx"
    onnx_builder.save(m, path, opset=opset)
    assert onnx.load(str(path)).opset_import[0].version == opset
    back = onnx_source.load(path)
    # the file holds the stage's scale and shift as float32: equal at that precision, the rest identical
    stage, want = back.graph.nodes[0], m.graph.nodes[0]
    assert stage.attrs["perm"] == want.attrs["perm"]
    for k in ("scale", "shift"):
        assert np.array_equal(np.float32(stage.attrs[k]), np.float32(want.attrs[k]))
    assert structure(back.graph)[1:] == structure(m.graph)[1:]
    assert back.meta["onnx"]["opset"] == opset
    assert back.meta["input_convention"]["range"] == m.meta["input_convention"]["range"]
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    assert _rel(_ref(back, x), _ref(m, x)) < 1e-6  # the same computation, stage constants in float32


def test_convert_own_export_to_caffe_keeps_axpy(tmp_path):
    m = zoo.synthetic_model("SE-ResNet-50", seed=0)
    src = tmp_path / "r50.onnx"
    onnx_builder.save(m, src)
    r = CliRunner().invoke(main, ["convert", "--onnx", str(src), "--to", "caffe", "-o", str(tmp_path / "r50")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "r50.prototxt").read_text()
    assert len(re.findall(r'type:\s*"Axpy"', text)) == 16


# ------------------------------------------------------------------------ torch.onnx.export of timm

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
timm = pytest.importorskip("timm", reason="timm not installed (the test extra installs it --no-deps)")

SIZE = 64  # the SE nets pool globally: a small input keeps the export and every forward cheap


def _timm_model(name: str):
    net = timm.create_model(name, pretrained=False).eval()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):  # statistics a trained net has, not 0 / 1
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) * 0.5 + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
    return net


def _export(net, path, opset: int, dynamo: bool) -> None:
    x = torch.zeros(1, 3, SIZE, SIZE)
    kw = {"dynamo": True} if dynamo else {"dynamo": False, "dynamic_axes": {"x": {0: "N"}}}
    torch.onnx.export(net, (x,), str(path), input_names=["x"], output_names=["logits"], opset_version=opset, **kw)


def _opencv_run(prefix, x: np.ndarray) -> np.ndarray:
    from senet_hub.builders import opencv
    from senet_hub.converters import caffe

    model = caffe.load(f"{prefix}.prototxt", f"{prefix}.caffemodel")
    return opencv.run(opencv.build(model), x, taps=False)[model.graph.output]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,opset,dynamo",
    [("legacy_seresnet50", 13, False), ("seresnet50", 17, False), ("seresnet50", 18, True)],
    ids=["legacy_seresnet50-13", "seresnet50-17", "seresnet50-dynamo18"],
)
def test_torch_export_of_timm_matches_timm(tmp_path, name, opset, dynamo):
    pytest.importorskip("cv2", reason="opencv not installed (pip install 'senet-hub[opencv]')")
    net = _timm_model(name)
    path = tmp_path / f"{name}.onnx"
    _export(net, path, opset, dynamo)
    x = np.random.default_rng(1).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).double().numpy()

    r = CliRunner().invoke(main, ["convert", "--from", "onnx", "--onnx", str(path), "--to", "caffe",
                                  "-o", str(tmp_path / "caffe")])  # fmt: skip
    assert r.exit_code == 0, r.output
    model = onnx_source.load(path)
    ops = [n.op for n in model.graph.nodes]
    assert ops.count("axpy") == 16 and "channel_scale" not in ops  # every SE block's Mul + Add
    assert model.meta["onnx"]["batch_norm_folded"] is True and model.arch == "custom"
    if not dynamo:  # module paths from the exporter's scopes: timm's own names
        assert {"conv1" if name == "seresnet50" else "layer0.conv1", "layer1.0.se.fc1" if name == "seresnet50"
                else "layer1.0.se_module.fc1"} <= {n.name for n in model.graph.nodes}  # fmt: skip
    assert _rel(_ref(model, x.astype(np.float64)), want) < 1e-3

    text = (tmp_path / "caffe.prototxt").read_text()
    assert len(re.findall(r'type:\s*"Axpy"', text)) == 16
    if name == "seresnet50":  # timm's stem max pool: 3x3/2, pad 1, floor mode
        # BVLC Caffe's field; OpenCV 4.11 ignores it (reads its own `ceil_mode: false`), which the
        # OpenCV backend's prototxt patch supplies (builders.opencv.patch_for_opencv)
        assert "round_mode: FLOOR" in text
    assert _rel(_opencv_run(tmp_path / "caffe", x), want) < 1e-3


# ------------------------------------------------------------------------------------- pooling


def _graph(nodes, inits, in_dims, out_dims, opset=17, name="t"):
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _pool_model(in_dims):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("AveragePool", ["c"], ["a"], name="avg", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1),
        helper.make_node("MaxPool", ["a"], ["m"], name="max", kernel_shape=[1, 1], strides=[2, 2], ceil_mode=1),
        helper.make_node("Relu", ["m"], ["y"], name="relu"),
    ]  # fmt: skip
    return _graph(nodes, {"w": w}, in_dims, None)


def test_ceil_pools_are_the_clip_rule_like_onnxruntime(tmp_path):
    """11 -> avg 3/2 pad 1 ceil: 6 windows, the last one's divisor clipped to the end padding;
    6 -> max 1/2 ceil: the plain ceil formula gives 4, the clip rule (and onnxruntime) 3."""
    ort = pytest.importorskip("onnxruntime")
    path = tmp_path / "pools.onnx"
    onnx.save(_pool_model([1, 2, 11, 11]), str(path))
    model = onnx_source.load(path)
    pools = [n for n in model.graph.nodes if n.op.endswith("pool")]
    assert [n.attrs["ceil"] for n in pools] == [True, True]
    x = np.random.default_rng(2).standard_normal((1, 2, 11, 11)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ref = _ref(model, x.astype(np.float64))
    assert got.shape == ref.shape == (1, 4, 3, 3)
    assert _rel(got, ref) < 1e-6


def test_dynamic_hw_with_ceil_pool_asks_for_input_shape(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(_pool_model(["N", 2, "H", "W"]), str(path))
    r = CliRunner().invoke(main, ["convert", "--onnx", str(path), "--to", "caffe", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert "\n" not in line and "--input-shape" in line and "'avg'" in line and "ceil_mode" in line
    assert not list(tmp_path.glob("o.*"))
    model = onnx_source.load(path, input_shape="1,2,11,11")
    assert model.graph.input_shape == (1, 2, 11, 11)
    assert model.meta["onnx"]["input_shape"] == "given by --input-shape"
    with pytest.raises(onnx_source.InputShapeNeeded, match="disagrees"):
        onnx_source.load(path, input_shape="1,3,11,11")


def test_dynamic_hw_that_nothing_depends_on_reads_at_224(tmp_path):
    rng = np.random.default_rng(0)
    inits = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "fc": rng.standard_normal((5, 4)).astype(np.float32), "b": np.zeros(5, np.float32)}  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc", "b"], ["y"], name="fc", transB=1),
    ]
    path = tmp_path / "dyn.onnx"
    onnx.save(_graph(nodes, inits, ["N", 3, "H", "W"], None), str(path))
    model = onnx_source.load(path)
    assert model.graph.input_shape == (1, 3, 224, 224)
    assert [n.op for n in model.graph.nodes] == ["conv", "max_pool", "global_avg_pool", "linear"]
    assert any("dynamic" in s for s in model.meta["onnx"]["notes"])


# ----------------------------------------------------------------------------------- bad input


def test_unsupported_ops_listed_once_exit_6(tmp_path):
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("LeakyRelu", ["c"], ["l1"], name="leaky1"),
        helper.make_node("LeakyRelu", ["l1"], ["l2"], name="leaky2"),
        helper.make_node("HardSwish", ["l2"], ["y"], name="hswish"),
    ]
    path = tmp_path / "bad.onnx"
    onnx.save(_graph(nodes, {"w": rng.standard_normal((4, 3, 1, 1)).astype(np.float32)}, [1, 3, 8, 8], None), str(path))
    r = CliRunner().invoke(main, ["convert", "--onnx", str(path), "--to", "caffe", "-o", str(tmp_path / "o")])
    assert r.exit_code == UnsupportedError.exit_code == 6, r.output
    line = r.output.strip()
    assert "\n" not in line
    assert "LeakyRelu x2 (leaky1, leaky2)" in line and "HardSwish x1 (hswish)" in line and "3 nodes" in line


def test_unsupported_semantics_are_refused(tmp_path):
    """A Mul by a constant in the middle of the net has no canonical op: one line naming the node."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "k"], ["y"], name="scale_by_const"),
    ]
    inits = {"w": rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "k": np.full((1, 4, 1, 1), 2, np.float32)}
    path = tmp_path / "mul.onnx"
    onnx.save(_graph(nodes, inits, [1, 3, 8, 8], None), str(path))
    with pytest.raises(UnsupportedError, match="scale_by_const"):
        onnx_source.load(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_and_external_data_outside_refused(tmp_path):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    with pytest.raises(InputFileError, match="not a regular file"):
        onnx_source.load(fifo)  # refused before it is opened: no hang
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in {"location": "../secret.bin", "offset": "0", "length": "48"}.items():
        w.external_data.add(key=k, value=v)
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])  # fmt: skip
    path = tmp_path / "ext.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(Exception, match="only files beside the model"):
        onnx_source.load(path)


def test_registered_and_inferred_from_onnx_option():
    from senet_hub import formats, sources

    fmt = formats.source("onnx")
    assert fmt.suffixes == (".onnx",) and fmt.weights_option == "onnx"
    assert sources.infer_source(None, onnx="m.onnx") == "onnx"
    assert onnx_source.parse_input_shape("1x3x224x224") == (1, 3, 224, 224)
    with pytest.raises(onnx_source.InputShapeNeeded):
        onnx_source.parse_input_shape("224")
