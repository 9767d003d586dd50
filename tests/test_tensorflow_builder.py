"""TensorFlow builder: every op against the numpy reference node by node, the exact pooling rules,
NCHW/NHWC layouts, SavedModel and .keras artifacts reloaded with TensorFlow alone, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import all_ops  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from all_ops import conv as _conv  # noqa: E402
from all_ops import pool as _pool  # noqa: E402
from conftest import WITH_CAFFE_REFERENCE, needs_shared  # noqa: E402

from senet_hub import ops, zoo  # noqa: E402
from senet_hub.builders import numpy_ref  # noqa: E402
from senet_hub.errors import ModelError, OutputError, UnsupportedError  # noqa: E402
from senet_hub.graph import OPS, Graph, Model, Node, pool_out, validate  # noqa: E402

pytest.importorskip("tensorflow", reason="tensorflow is not installed")  # third-party: may skip
from senet_hub.builders import tensorflow as tfb  # noqa: E402

TOL = 1e-4  # per node, relative to max |reference|


def random_weights(graph: Graph, seed: int) -> Model:
    """The graph with the shared fixture's deterministic weights (tests/all_ops.py's rule)."""
    model = Model(graph, all_ops.random_weights(graph, seed), {"arch": "test"})
    validate(model)
    return model


def _input(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 50, shape).astype(np.float32)


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


def assert_matches_reference(model: Model, outs: dict, x: np.ndarray, tol: float = TOL, names=None) -> None:
    ref = numpy_ref.run(numpy_ref.build(model, np.float64), x)
    assert set(outs) == set(ref) if names is None else set(names) <= set(outs)
    for name in names or ref:
        got, r = outs[name], ref[name]
        assert got.shape == r.shape, f"{name}: shape {got.shape} != {r.shape}"
        assert _rel_err(got, r) <= tol, f"{name}: max abs diff / max|ref| = {_rel_err(got, r):.2e}"


@pytest.fixture(scope="module")
def model() -> Model:
    return all_ops.mixed_14()  # the shared every-op fixture (tests/all_ops.py)


@pytest.fixture(scope="module")
def built(model):
    return tfb.build(model)


# ------------------------------------------------------------------------------------- parity


def test_model_covers_every_op_and_pool_case(model):
    assert {n.op for n in model.graph.nodes} == set(OPS)
    shapes = validate(model)
    assert shapes["layer0.pool_ceil"][2:] == (7, 7) and pool_out(14, 3, 2, 0, 0, False) == 6
    assert shapes["mix.clip"][2:] == (4, 4) and -(-(7 + 2 - 2) // 2) + 1 == 5  # clip rule drops one


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_every_node_matches_reference(model, built, layout):
    native = built if layout == "nhwc" else tfb.build(model, layout="nchw")
    x = _input(model.graph.input_shape)
    outs = tfb.run(native, x, taps=True)
    assert_matches_reference(model, outs, x)
    final = tfb.run(native, x, taps=False)
    assert list(final) == ["prob"]
    np.testing.assert_array_equal(final["prob"], outs["prob"])


def test_layout_corner_cases():
    """Identity input_norm (Rescaling), concat along W, reshapes to 3-D and back to 4-D, a 4-D
    channel_scale gate, softmax over channels of a 4-D map, linear on a 3-D value."""
    nodes = [
        Node("norm", "input_norm", ["data"], dict(perm=[0, 1, 2, 3], scale=[0.5, 2.0, 1.0, 0.25], shift=[1, 0, -1, 2])),
        _conv("conv", "norm", 6, 3, pad=(1, 1, 1, 1)),
        Node("cat_w", "concat", ["conv", "norm"], dict(axis=1)),
        Node("cat_x", "concat", ["cat_w", "cat_w"], dict(axis=3)),  # N x 10 x 5 x 12
        Node("gate_pool", "global_avg_pool", ["cat_x"]),
        Node("gate", "sigmoid", ["gate_pool"]),
        Node("scaled", "channel_scale", ["cat_x", "gate"]),  # N x C x 1 x 1 gate
        Node("sm", "softmax", ["scaled"]),
        Node("to3d", "reshape", ["sm"], dict(shape=[0, 0, -1])),  # N x 10 x 60
        Node("back4d", "reshape", ["to3d"], dict(shape=[0, 5, 12, -1])),  # N x 5 x 12 x 10
        Node("relu", "relu", ["back4d"]),
        Node("flat", "flatten", ["relu"]),
        Node("to4d", "reshape", ["flat"], dict(shape=[0, 12, 5, 10])),
        Node("pool", "max_pool", ["to4d"], dict(kernel=(2, 2), stride=(2, 2), pad=(0, 0, 0, 0), ceil=True)),
        Node("to3d_b", "reshape", ["pool"], dict(shape=[0, 12, -1])),
        Node("fc", "linear", ["to3d_b"], dict(out_features=7, bias=True)),
    ]
    m = random_weights(Graph(nodes, input_shape=(2, 4, 5, 6)), 11)
    x = _input(m.graph.input_shape)
    assert_matches_reference(m, tfb.run(tfb.build(m), x), x)


def test_native_layers_and_explicit_settings(model, built):
    import keras

    names = tfb.layer_names(built)
    assert names["conv1/7x7_s2"] == "conv1_7x7_s2"
    assert names["layer1.0.conv1"] == "layer1.0.conv1"  # canonical names kept where Keras allows them
    layers = {layer.name: layer for layer in built.layers}
    assert all(layer.__class__.__module__.startswith("keras.") for layer in built.layers)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in built.layers)
    conv = layers["layer1.0.conv1"]
    assert isinstance(conv, keras.layers.Conv2D) and conv.groups == 4 and conv.padding == "valid"
    assert conv.kernel.shape == (3, 3, 2, 16)  # grouped: HW x (I / groups) x O
    assert layers["layer1.0.conv1__pad"].padding == ((1, 1), (1, 1))
    assert isinstance(layers["layer0.bn1"], keras.layers.BatchNormalization)
    assert layers["layer0.bn1"].epsilon == 1e-5 and layers["layer1.0.bn1"].epsilon == 1e-3
    np.testing.assert_array_equal(layers["layer0.bn1"].moving_variance.numpy(), model.weights["layer0.bn1.running_var"])
    assert isinstance(layers["layer0.pool_ceil"], keras.layers.MaxPooling2D)
    assert layers["layer0.pool_ceil"].padding == "valid"  # ceil mode: explicit bottom/right padding
    assert isinstance(layers["layer0.pool_ceil__pad"], keras.layers.ZeroPadding2D)
    assert isinstance(layers["layer1.0.se_module.avg_pool"], keras.layers.GlobalAveragePooling2D)
    assert isinstance(layers["last_linear"], keras.layers.Dense)
    assert isinstance(layers["drop"], keras.layers.Dropout)
    # every canonical value is produced by the layer named after its node
    for node, lname in names.items():
        assert lname in layers, node


def test_flatten_order_is_canonical_nchw(model, built):
    """A linear layer after a spatial tensor must read it in C, H, W order: permuting the weight
    rows at build time is exact, the wrong (NHWC) order would be far off."""
    x = _input(model.graph.input_shape, seed=5)
    outs = tfb.run(built, x)
    ref = numpy_ref.run(numpy_ref.build(model), x)
    feat = ref["drop"]  # N x C x 4 x 4
    w, b = model.weights["last_linear.weight"], model.weights["last_linear.bias"]
    wrong = feat.transpose(0, 2, 3, 1).reshape(feat.shape[0], -1) @ w.T + b
    assert _rel_err(outs["last_linear"], ref["last_linear"]) <= TOL
    assert _rel_err(wrong, ref["last_linear"]) > 0.1


def test_other_batch_and_size(model, built):
    m = model.copy()
    m.graph.input_shape = (3, 3, 15, 14)  # 15: no ceil padding needed, 14: one extra row
    x = _input(m.graph.input_shape, seed=2)
    outs = tfb.run(built, x)  # rebuilt for 15 x 14 (pool padding depends on the size)
    assert_matches_reference(m, outs, x)


# ----------------------------------------------------------------------- pooling and conv sweeps

POOL_CASES = [
    (k, s, pads, ceil)
    for k, s in ((1, 2), (2, 2), (3, 2), (3, 3), (3, 1))
    for pads in ((0, 0, 0, 0), (1, 1, 1, 1), (0, 0, 1, 1), (1, 0, 1, 2))
    for ceil in (True, False)
    if max(pads) < k
]


@pytest.mark.parametrize("size", [(5, 6), (7, 8), (8, 9), (14, 14)])
def test_pool_sweep(size):
    """Every pooling variant (ceil with Caffe's clip rule, asymmetric pads, both divisors), as
    parallel nodes of one graph per input size."""
    nodes, i = [], 0
    for k, s, pads, ceil in POOL_CASES:
        for op, inc in (("max_pool", None), ("avg_pool", True), ("avg_pool", False)):
            kw = {} if inc is None else {"count_include_pad": inc}
            nodes.append(_pool(f"p{i}", op, "data", k, s, pads, ceil, **kw))
            i += 1
    m = Model(Graph(nodes, input_shape=(2, 3, *size)), {})
    x = np.random.default_rng(3).normal(size=m.graph.input_shape).astype(np.float32)
    ref = numpy_ref.run(numpy_ref.build(m), x)
    outs = tfb.run(tfb.build(m), x)
    for n in nodes:
        case = f"{n.op} {size} {n.attrs}"
        assert outs[n.name].shape == ref[n.name].shape, case
        assert np.abs(outs[n.name] - ref[n.name]).max() <= 1e-5, case


def test_pool_sweep_has_clip_cases():
    def clipped(h, k, s, p0, p1):
        return pool_out(h, k, s, p0, p1, True) < -(-(h + p0 + p1 - k) // s) + 1

    assert sum(clipped(h, k, s, p[0], p[2]) for h in (5, 7, 8, 14) for k, s, p, c in POOL_CASES if c) >= 5


def test_max_pool_pads_with_minus_infinity():
    """Negative inputs: zero padding would win the max; the padding must not."""
    m = Model(Graph([_pool("p", "max_pool", "data", 3, 2, (1, 1, 1, 1), True)], input_shape=(1, 2, 6, 6)), {})
    x = -1 - np.random.default_rng(0).random((1, 2, 6, 6)).astype(np.float32)
    y = tfb.run(tfb.build(m), x)["p"]
    assert (y < 0).all()
    np.testing.assert_array_equal(y, numpy_ref.run(numpy_ref.build(m, np.float32), x)["p"])


def test_conv_sweep():
    cases = [
        (3, 2, (1, 1, 1, 1), 4, 1),
        (3, 2, (0, 0, 1, 1), 8, 1),
        (1, 2, (0, 0, 0, 0), 1, 1),
        (3, 1, (2, 1, 2, 3), 2, 2),
        (7, 2, (3, 3, 3, 3), 1, 1),
        (2, 3, (1, 0, 0, 1), 2, 1),
        (3, 2, (2, 2, 2, 2), 1, 2),
    ]
    nodes = [
        _conv(f"c{i}", "data", 16, k, s, pads, groups, bias=i % 2 == 0, dilation=(d, d))
        for i, (k, s, pads, groups, d) in enumerate(cases)
    ]
    m = random_weights(Graph(nodes, input_shape=(2, 8, 9, 10)), 4)
    x = _input(m.graph.input_shape)
    assert_matches_reference(m, tfb.run(tfb.build(m), x), x)


# ------------------------------------------------------------------------------------ artifacts

RELOAD = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    import numpy as np
    import tensorflow as tf
    import keras
    args = json.loads(sys.argv[1])
    out = {}
    for key, path, x in args["jobs"]:
        x = np.load(x)
        if path.endswith(".keras"):
            y = keras.models.load_model(path)(x, training=False)
        else:
            sig = tf.saved_model.load(path).signatures["serving_default"]
            (name, spec), = sig.structured_input_signature[1].items()
            assert name == "data" and spec.dtype == tf.float32, (name, spec)
            out[key + ".input_shape"] = [d for d in spec.shape.as_list()]
            res = sig(data=tf.constant(x))
            (k, y), = res.items()
            out[key + ".key"] = k
        np.save(os.path.join(args["dir"], key + ".npy"), np.asarray(y))
    assert not any(m.startswith("senet_hub") for m in sys.modules), "senet_hub was imported"
    print(json.dumps(out))
    """
)


def test_artifacts_reload_with_tensorflow_alone(model, built, tmp_path):
    x = _input(model.graph.input_shape, seed=9)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    np.save(tmp_path / "x_nchw.npy", x)
    np.save(tmp_path / "x_nhwc.npy", nhwc)
    expected = tfb.run(built, x, taps=False)["prob"]
    jobs = []
    for key, name, layout in (
        ("sm_nhwc", "sm_nhwc/", "nhwc"),  # trailing slash, as a user would type a directory
        ("sm_nchw", "sm_nchw", "nchw"),
        ("keras_nhwc", "model.keras", "nhwc"),
        ("keras_nchw", "model_nchw.keras", "nchw"),
    ):
        path = str(tmp_path / name)
        src = model if key != "keras_nhwc" else built  # a Model or the native model
        assert tfb.save(src, path, layout=layout) == [path.rstrip("/")]
        jobs.append([key, path.rstrip("/"), str(tmp_path / f"x_{layout}.npy")])
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["model.keras", "model_nchw.keras", "sm_nchw", "sm_nhwc", "x_nchw.npy", "x_nhwc.npy"]
    )
    # every weight stored once (tracking the Keras model as well would store each one twice)
    weight_bytes = sum(4 * v.size for v in model.weights.values())
    data = [f for f in os.listdir(tmp_path / "sm_nhwc" / "variables") if f.startswith("variables.data")]
    stored = sum(os.path.getsize(tmp_path / "sm_nhwc" / "variables" / f) for f in data)
    assert weight_bytes <= stored < 1.2 * weight_bytes + 4096
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", RELOAD, json.dumps({"jobs": jobs, "dir": str(tmp_path)})],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["sm_nhwc.input_shape"] == [None, 14, 14, 3]
    assert info["sm_nchw.input_shape"] == [None, 3, 14, 14]
    assert info["sm_nhwc.key"] == info["sm_nchw.key"] == "prob"
    for key, *_ in jobs:
        y = np.load(tmp_path / f"{key}.npy")
        assert y.shape == expected.shape, key
        np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6, err_msg=key)


def test_savedmodel_replaces_existing_directory(model, built, tmp_path):
    """An old SavedModel is replaced whole; a user's folder that is not one is refused untouched."""
    path = tmp_path / "sm"
    path.mkdir()
    (path / "saved_model.pb").write_bytes(b"old")
    (path / "stale.txt").write_text("old")
    tfb.save(built, path)
    assert not (path / "stale.txt").exists() and (path / "saved_model.pb").read_bytes() != b"old"
    assert os.listdir(tmp_path) == ["sm"]
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="untouched"):
        tfb.save(built, user)
    assert os.listdir(user) == ["notes.txt"]


def test_unwritable_output_raises_output_error(model, built, tmp_path, monkeypatch):
    missing = tmp_path / "no" / "such" / "dir" / "m.keras"
    with pytest.raises(OutputError, match="does not exist"):
        tfb.save(built, missing)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(OutputError):
        tfb.save(built, blocker / "sm")
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]

    import keras
    import tensorflow as tf

    def boom(native, model, layout, export_dir):  # fails half way: something written, then the disk is full
        os.makedirs(export_dir, exist_ok=True)
        with open(os.path.join(export_dir, "partial"), "w") as f:
            f.write("x")
        raise OSError(28, "No space left on device", export_dir)

    monkeypatch.setattr(tfb, "_savedmodel", boom)
    with pytest.raises(OutputError, match="No space left"):
        tfb.save(built, tmp_path / "sm")
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]  # no temporary left behind

    def tf_boom(native, model, layout, export_dir):  # TensorFlow's own I/O errors are not OSErrors
        os.makedirs(export_dir, exist_ok=True)
        raise tf.errors.PermissionDeniedError(None, None, f"{export_dir}; Permission denied\nmore")

    monkeypatch.setattr(tfb, "_savedmodel", tf_boom)
    with pytest.raises(OutputError, match="Permission denied; check") as err:
        tfb.save(built, tmp_path / "sm")
    assert "\n" not in str(err.value) and "tmp" not in str(err.value).replace(str(tmp_path), "")
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]

    def boom_keras(self, filepath, *a, **k):
        with open(filepath, "w") as f:
            f.write("partial")
        raise OSError(28, "No space left on device", filepath)

    monkeypatch.setattr(keras.Model, "save", boom_keras)
    with pytest.raises(OutputError, match="No space left"):
        tfb.save(built, tmp_path / "m.keras")
    assert sorted(os.listdir(tmp_path)) == ["file.txt"]


def test_registry_and_available():
    from senet_hub import builders

    assert builders.get("tf") is tfb
    assert tfb.NAME == "tensorflow" and tfb.EXTRA == "tensorflow"
    assert tfb.available()


def test_every_op_has_a_tensorflow_lowering():
    assert tfb.LOWER.missing() == [] and not tfb.LOWER.refused
    assert tfb.LOWER.backend == "tensorflow"


def test_keras_refusal_and_wrong_shape_name_the_node(model, monkeypatch):
    """The walk attributes a Keras refusal (ValueError) and a value of the wrong shape to the node
    being lowered, not to its neighbours."""
    import keras

    def refuse(c, s, ins):
        raise ValueError("no such configuration")

    def cropped(c, s, ins):
        return keras.layers.Cropping2D(((1, 0), (0, 0)), name=c.name(s))(ins[0])

    monkeypatch.setitem(tfb.LOWER._fns, "relu", refuse)
    with pytest.raises(UnsupportedError, match=r"^node 'layer0.relu1' \(relu\): no TensorFlow mapping: no such conf"):
        tfb.build(model)
    monkeypatch.setitem(tfb.LOWER._fns, "relu", cropped)
    with pytest.raises(ModelError, match=r"^node 'layer0.relu1' \(relu\): TensorFlow shape \(13, 14, 8\) != expected"):
        tfb.build(model)


def test_missing_lowering_fails_before_anything_is_built(model, tmp_path, monkeypatch):
    """As if 'sigmoid' had just been declared in ops.py: build and both save formats (the SavedModel
    directory too; tests/test_op_conformance.py covers build and .keras for every table backend)
    raise the one MissingLowering naming op, node and backend, before any layer or file is made."""
    monkeypatch.delitem(tfb.LOWER._fns, "sigmoid")
    for attempt in (
        lambda: tfb.build(model),
        lambda: tfb.save(model, tmp_path / "m.keras"),
        lambda: tfb.save(model, tmp_path / "sm"),
    ):
        with pytest.raises(ops.MissingLowering, match=r"backend 'tensorflow' cannot express op 'sigmoid' \(node '"):
            attempt()
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ real Caffe


@needs_shared
@pytest.mark.parametrize(
    "arch", [a if a == "SE-BN-Inception" else pytest.param(a, marks=pytest.mark.slow) for a in WITH_CAFFE_REFERENCE]
)
def test_matches_real_caffe(arch, caffemodel):
    """Every node against real Caffe's per-layer outputs (1e-3 of each layer's max |value|), same
    top-1. SE-BN-Inception keeps its Caffe layer names ('/' included), the others are canonical."""
    from conftest import PROTOTXT_DIR, load_caffe_reference
    from parity import RTOL, check_against_caffe

    from senet_hub.converters import caffe

    ref = load_caffe_reference(arch)
    canonical = arch != "SE-BN-Inception" and zoo is not None
    model = caffe.load(PROTOTXT_DIR / f"{arch}.prototxt", caffemodel(arch), canonical=canonical)
    outs = tfb.run(tfb.build(model), ref["input"], taps=True)
    assert check_against_caffe(model, outs, ref, f"{arch}/tensorflow") == len(model.graph.nodes)
    logits = outs[model.graph.node(model.graph.output).inputs[0]]
    assert np.abs(logits - ref["logits"]).max() <= RTOL * np.abs(ref["logits"]).max()
    assert (logits.argmax(1) == ref["logits"].argmax(1)).all()


# --------------------------------------------------------------------------------------------- zoo

# the Caffe release and MindCV at full size; the timm family is checked against timm's own forward
# (tests/test_timm_zoo.py) and, reduced in depth, on these backends through verify there
ZOO_ARCHS = zoo.list_archs("caffe") + zoo.list_archs("mindcv")


def assert_as_close_as_float32(model: Model, outs: dict, x: np.ndarray, names=None) -> None:
    """Full-size nets: each node within TOL of the float64 reference, or within 20x of numpy
    float32's own error there. The Caffe zoo's calibrated weights stay near 1e-6; MindCV's He-normal
    synthetic weights drive deep SE gates onto the steep part of the sigmoid, where every float32
    run drifts (numpy float32 itself reaches 5e-5 in seresnext50_32x4d)."""
    ref = numpy_ref.run(numpy_ref.build(model, np.float64), x)
    r32 = numpy_ref.run(numpy_ref.build(model, np.float32), x)
    for name in names or ref:
        got, r = outs[name], ref[name]
        assert got.shape == r.shape, f"{name}: shape {got.shape} != {r.shape}"
        tol = max(TOL, 20 * _rel_err(r32[name], r))
        assert _rel_err(got, r) <= tol, f"{name}: max abs diff / max|ref| = {_rel_err(got, r):.2e} > {tol:.2e}"


def _check_full_size(model: Model, batch: int = 1, size: int = 224, names=None) -> None:
    import warnings

    model.graph.input_shape = (batch, 3, size, size)
    x = np.random.default_rng(7).normal(0, 50, model.graph.input_shape).astype(np.float32)
    outs = tfb.run(tfb.build(model), x, taps=True)
    with warnings.catch_warnings():  # numpy's sigmoid overflows to exactly 0 for saturated gates
        warnings.filterwarnings("ignore", "overflow encountered in exp", RuntimeWarning)
        assert_as_close_as_float32(model, outs, x, names)


def _some_nodes(model: Model) -> list[str]:
    pick = [n.name for n in model.graph.nodes if n.op in ("conv", "max_pool", "avg_pool", "axpy")][::10]
    return [*pick, model.graph.output]


def test_se_resnext50_matches_reference():
    model = zoo.synthetic_model("SE-ResNeXt-50")
    _check_full_size(model, names=_some_nodes(model))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ZOO_ARCHS)
def test_all_archs_match_reference(arch):
    _check_full_size(zoo.synthetic_model(arch), batch=2)


def test_mindcv_seresnext26_matches_reference():
    """A MindCV net at 224: MindSpore's "same" max pool (0, 0, 1, 1), grouped convs, Dense SE
    (all MindCV nets run in test_all_archs_match_reference)."""
    model = zoo.synthetic_model("seresnext26_32x4d")
    _check_full_size(model, names=_some_nodes(model))
