"""MXNet and Chainer builders: every op against the numpy reference node by node, artifacts reloaded
with the framework alone, atomic writes."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from all_ops import conv as _conv  # the shared every-op fixture and its helpers (tests/all_ops.py)
from all_ops import mixed_14
from all_ops import random_weights as _fixture_weights
from conftest import WITH_CAFFE_REFERENCE, needs_shared

from senet_hub import (
    ops,
    zoo,  # ours: a broken module fails here, never skips
)
from senet_hub.builders import compat, numpy_ref
from senet_hub.errors import OutputError
from senet_hub.graph import Graph, Model, Node, pool_out, validate

TOL = 1e-4  # per node, relative to max |reference|


def random_weights(graph: Graph, seed: int) -> Model:
    """The graph with the shared fixture's deterministic weights (tests/all_ops.py's rule)."""
    model = Model(graph, _fixture_weights(graph, seed), {"arch": "test"})
    validate(model)
    return model


def _input(model: Model, seed: int = 1, shape=None) -> np.ndarray:
    shape = shape or model.graph.input_shape
    return np.random.default_rng(seed).normal(100, 50, shape).astype(np.float32)


def assert_matches_reference(model: Model, outs: dict, x: np.ndarray, tol: float = TOL) -> None:
    ref = numpy_ref.run(numpy_ref.build(model, np.float64), x)
    assert set(outs) == set(ref)
    for name, r in ref.items():
        got = outs[name]
        assert got.shape == r.shape, f"{name}: shape {got.shape} != {r.shape}"
        err = np.abs(got.astype(np.float64) - r).max() / max(np.abs(r).max(), 1e-12)
        assert err <= tol, f"{name}: max abs diff / max|ref| = {err:.2e}"


def test_model_covers_every_op_and_pool_case():
    from senet_hub.graph import OPS

    m = mixed_14()
    assert {n.op for n in m.graph.nodes} == set(OPS)
    a = m.graph.node("mix.clip").attrs
    # the clip rule removes a window here: without it ceil((7 + 2 - 2) / 2) + 1 = 5
    assert pool_out(7, a["kernel"][0], a["stride"][0], 1, 1, True) == 4
    assert pool_out(14, 3, 2, 0, 0, True) == 7 and pool_out(14, 3, 2, 0, 1, False) == 7


# ------------------------------------------------------------------------------------------ compat


def test_import_senet_hub_loads_no_framework():
    code = (
        "import senet_hub, senet_hub.builders.compat, senet_hub.builders.mxnet, senet_hub.builders.chainer, sys; "
        + ("print(sorted(m for m in ('mxnet', 'chainer') if m in sys.modules))")
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_available_reports_versions_or_none(monkeypatch):
    from senet_hub.builders import chainer as cb
    from senet_hub.builders import mxnet as mb

    for mod in (mb, cb):
        v = mod.available()
        assert v is None or isinstance(v, str)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n in ("mxnet", "chainer") else real(n, *a))
    assert mb.available() is None and cb.available() is None


def test_compat_shims_only_when_called():
    code = textwrap.dedent(
        """
        import sys, numpy as np
        import senet_hub.builders.compat as c
        assert "bool" not in np.__dict__ or np.__version__ >= "2"
        assert "chainer._environment_check" not in sys.modules
        mx = c.import_mxnet(); ch = c.import_chainer()
        print(mx.__version__, ch.__version__)
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode and "No module named" in r.stderr:
        pytest.skip("mxnet or chainer not installed")
    assert r.returncode == 0, r.stderr[-2000:]


# ------------------------------------------------------------------------------------------- mxnet


def _need(framework: str) -> None:
    """Skip when the framework is not installed (imported through the compat shims, never directly)."""
    if compat.version_of(framework) is None:
        pytest.skip(f"{framework} not installed")


@pytest.fixture(scope="module")
def mxb():
    _need("mxnet")
    from senet_hub.builders import mxnet as mb

    return mb


@pytest.fixture(scope="module")
def chb():
    _need("chainer")
    from senet_hub.builders import chainer as cb

    return cb


@pytest.fixture(scope="module")
def model():
    return mixed_14()


def test_mxnet_every_node_matches_reference(mxb, model):
    x = _input(model)
    native = mxb.build(model)
    assert_matches_reference(model, mxb.run(native, x, taps=True), x)
    out = mxb.run(native, x, taps=False)
    assert list(out) == [model.graph.output]


def test_mxnet_explicit_parameters(mxb, model):
    import json

    sym, _ = mxb.to_symbol(model)
    nodes = {n["name"]: n for n in json.loads(sym.tojson())["nodes"]}
    bn = nodes["layer1.0.bn1"]["attrs"]
    assert bn["fix_gamma"] == "False" and bn["use_global_stats"] == "True" and float(bn["eps"]) == 1e-3
    assert nodes["layer1.0.conv1"]["attrs"]["num_group"] == "4"
    assert nodes["layer0.pool_ceil"]["attrs"]["pooling_convention"] == "full"
    assert nodes["mix.avg"]["attrs"]["count_include_pad"] == "True"
    assert nodes["mix.clip"]["op"] == "slice"  # MXNet's 'full' has no clip rule: the extra window is sliced off
    arg, aux = mxb.params(model)
    assert "layer1.0.bn1_gamma" in arg and "layer1.0.bn1_moving_var" in aux and "layer1.0.conv1_weight" in arg


def test_mxnet_other_batch_and_size(mxb):
    # a fully convolutional prefix of the model runs at other sizes (the clip slice is rebuilt)
    m = mixed_14()
    keep = [n for n in m.graph.nodes if n.name.startswith(("layer0", "conv1/", "layer1", "mix.clip", "mix.avg"))]
    g = Graph(keep, input_shape=(1, 3, 14, 14), output="mix.clip")
    sub = Model(g, {k: v for k, v in m.weights.items() if k.rsplit(".", 1)[0] in {n.name for n in keep}})
    native = mxb.build(sub)
    for shape in [(3, 3, 14, 14), (1, 3, 17, 15)]:
        x = _input(sub, shape=shape)
        assert_matches_reference(_with_input(sub, shape), mxb.run(native, x), x)


def _with_input(m: Model, shape) -> Model:
    c = m.copy()
    c.graph.input_shape = tuple(shape)
    return c


def test_mxnet_save_reload_with_mxnet_alone(mxb, model, tmp_path):
    prefix = str(tmp_path / "net")
    files = mxb.save(model, prefix)
    assert sorted(os.listdir(tmp_path)) == ["net-0000.params", "net-symbol.json"]
    assert files == [prefix + "-symbol.json", prefix + "-0000.params"]
    x = _input(model)
    expected = mxb.run(mxb.build(model), x, taps=False)[model.graph.output]
    code = textwrap.dedent(
        f"""
        import numpy as np
        np.bool = bool
        import mxnet as mx
        net = mx.gluon.SymbolBlock.imports({prefix + "-symbol.json"!r}, ["data"], {prefix + "-0000.params"!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "y.npy")!r}, net(mx.nd.array(x)).asnumpy())
        """
    )
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    y = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-6)
    assert_close_to_ref(model, y, x)


def assert_close_to_ref(model: Model, y: np.ndarray, x: np.ndarray) -> None:
    ref = numpy_ref.forward(model, x)
    assert np.abs(y - ref).max() <= TOL * np.abs(ref).max()


def test_mxnet_unwritable_output(mxb, model, tmp_path, monkeypatch):
    with pytest.raises(OutputError) as e:
        mxb.save(model, tmp_path / "missing" / "net")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "missing").exists()

    def boom(*a, **k):
        raise mxb.import_mxnet().base.MXNetError("disk full")

    monkeypatch.setattr(mxb.import_mxnet().nd, "save", boom)
    with pytest.raises(OutputError) as e:
        mxb.save(model, tmp_path / "net")
    assert "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------- chainer


def test_chainer_every_node_matches_reference(chb, model):
    x = _input(model)
    native = chb.build(model)
    assert_matches_reference(model, chb.run(native, x, taps=True), x)
    assert list(chb.run(native, x, taps=False)) == [model.graph.output]


def test_chainer_links_and_explicit_parameters(chb, model):
    chain = chb.build(model)
    bn = chain["layer1.0.bn1"]
    assert bn.eps == 1e-3 and bn.gamma is not None and bn.beta is not None
    assert chain["layer1.0.conv1"].groups == 4
    names = {name for name, _ in chain.namedparams()}
    assert "/layer1/0/conv1/W" in names and "/layer1/0/downsample/0/W" in names and "/last_linear/b" in names


def test_chainer_other_batch_and_size(chb):
    m = mixed_14()
    keep = [n for n in m.graph.nodes if n.name.startswith(("layer0", "conv1/", "layer1", "mix.clip", "mix.avg"))]
    g = Graph(keep, input_shape=(1, 3, 14, 14), output="mix.clip")
    sub = Model(g, {k: v for k, v in m.weights.items() if k.rsplit(".", 1)[0] in {n.name for n in keep}})
    native = chb.build(sub)
    for shape in [(3, 3, 14, 14), (1, 3, 17, 15)]:
        x = _input(sub, shape=shape)
        assert_matches_reference(_with_input(sub, shape), chb.run(native, x), x)


def test_chainer_save_load(chb, model, tmp_path):
    path = tmp_path / "net.npz"
    assert chb.save(model, path) == [str(path)]
    assert os.listdir(tmp_path) == ["net.npz"]
    keys = set(np.load(path).files)
    assert {"layer1/0/conv1/W", "layer1/0/bn1/avg_mean", "layer1/0/bn1/gamma", "last_linear/b"} <= keys
    x = _input(model)
    expected = chb.run(chb.build(model), x, taps=False)[model.graph.output]
    for src in (model, model.graph, None):  # the graph travels in the npz too
        chain = chb.load(src, path)
        assert isinstance(chain, chb.SENetChain)
        y = chb.run(chain, x, taps=False)[model.graph.output]
        np.testing.assert_array_equal(y, expected)
    assert_close_to_ref(model, expected, x)


def test_chainer_npz_loads_with_chainer_serializers(chb, model, tmp_path):
    chainer = compat.import_chainer()
    path = tmp_path / "net.npz"
    chb.save(model, path)
    chain = chb.SENetChain(model.graph)  # fresh random-free links, filled by chainer's own loader
    chainer.serializers.load_npz(str(path), chain)
    x = _input(model)
    with chainer.using_config("train", False), chainer.no_backprop_mode():
        y = chain(x).array
    assert_close_to_ref(model, y, x)


def test_chainer_unwritable_output(chb, model, tmp_path, monkeypatch):
    with pytest.raises(OutputError) as e:
        chb.save(model, tmp_path / "missing" / "net.npz")
    assert "\n" not in str(e.value)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", boom)
    with pytest.raises(OutputError, match="No space left"):
        chb.save(model, tmp_path / "net.npz")
    assert os.listdir(tmp_path) == []


def test_every_op_has_a_chainer_lowering():
    """Both Chainer tables cover the vocabulary (checked without importing Chainer): every op has a
    forward lowering, and exactly the ops with parameters have a link (load_weights fills it)."""
    from senet_hub.builders import chainer as cb

    missing = cb.LOWER.missing()
    assert not missing, f"chainer: no forward lowering for {', '.join(missing)}"
    assert not cb.LOWER.refused and cb.LOWER.backend == cb.LINKS.backend == "chainer"
    with_params = {name for name, op in ops.OPS.items() if op.params}
    linked = {op for op in ops.OPS if op in cb.LINKS}
    assert linked == with_params, (
        f"chainer links missing for {sorted(with_params - linked)}, extra {sorted(linked - with_params)}"
    )


def test_chainer_missing_lowering_fails_before_anything_is_built(chb, model, tmp_path, monkeypatch):
    """As if 'sigmoid' had just been declared in ops.py: build, the Chain, save and load of a stored
    graph raise the one MissingLowering naming op, node and backend; no file is written."""
    stored = tmp_path / "stored.npz"
    chb.save(model, stored)
    monkeypatch.delitem(chb.LOWER._fns, "sigmoid")
    out = tmp_path / "out"
    out.mkdir()
    for attempt in (
        lambda: chb.build(model),
        lambda: chb.SENetChain(model.graph),
        lambda: chb.save(model, out / "net.npz"),
        lambda: chb.load(None, stored),
    ):
        with pytest.raises(ops.MissingLowering, match=r"backend 'chainer' cannot express op 'sigmoid' \(node '") as e:
            attempt()
        assert e.value.backend == "chainer" and e.value.op == "sigmoid"
        assert e.value.node == "layer1.0.se_module.sigmoid"  # the first sigmoid node of the graph
    assert os.listdir(out) == []


def test_chainer_uses_the_vocabulary_defaults(chb):
    """Attributes a node leaves out take ops.py's defaults (BN eps 1e-5, not Chainer's 2e-5; conv
    stride 1, no dilation, one group, a bias; dropout 0.5; concat along channels)."""
    g = Graph(
        [
            Node("c", "conv", ["data"], dict(out_channels=4, kernel=(3, 3))),
            Node("bn", "batch_norm", ["c"]),
            Node("d", "dropout", ["bn"]),
            Node("cat", "concat", ["d", "c"]),
        ],
        input_shape=(2, 3, 8, 8),
    )
    m = random_weights(g, 0)
    chain = chb.build(m)
    conv = chain["c"]
    assert chain["bn"].eps == ops.BatchNormAttrs().eps == 1e-5
    assert conv.stride == (1, 1) and conv.dilate == (1, 1) and conv.groups == 1 and conv.b is not None
    x = _input(m)
    outs = chb.run(chain, x)
    assert outs["cat"].shape == (2, 8, 6, 6)
    assert_matches_reference(m, outs, x)


# ------------------------------------------------------------------------- pooling and conv sweeps

POOL_CASES = [
    (h, k, s, pads, ceil)
    for h in (5, 7, 8)
    for k, s in ((1, 2), (2, 2), (3, 2), (3, 3), (3, 1))
    for pads in ((0, 0, 0, 0), (1, 1, 1, 1), (0, 0, 1, 1), (1, 0, 1, 2))
    for ceil in (True, False)
    if max(pads) < k
]


@pytest.mark.parametrize("backend", ["mxnet", "chainer"])
def test_pool_sweep_matches_pool_out_and_reference(backend):
    """Every pooling variant (ceil with Caffe's clip rule, asymmetric pads, divisors) on odd sizes."""
    _need(backend)
    from senet_hub import builders

    b = builders.get(backend)
    rng = np.random.default_rng(3)
    variants = (("max_pool", True), ("avg_pool", True), ("avg_pool", False))
    for (h, k, s, pads, ceil), (op, inc) in itertools.product(POOL_CASES, variants):
        a = dict(kernel=(k, k), stride=(s, s), pad=pads, ceil=ceil)
        if op == "avg_pool":
            a["count_include_pad"] = inc
        m = Model(Graph([Node("p", op, ["data"], a)], input_shape=(2, 3, h, h + 1)), {})
        x = rng.normal(size=m.graph.input_shape).astype(np.float32)
        ref = numpy_ref.run(numpy_ref.build(m), x)["p"]
        y = b.run(b.build(m), x)["p"]
        case = f"{op} size {h} k{k} s{s} pad {pads} ceil={ceil} count_include_pad={inc}"
        assert y.shape == ref.shape, f"{case}: {y.shape} != {ref.shape}"
        assert np.abs(y - ref).max() <= 1e-5, case


def test_pool_sweep_has_clip_cases():
    def clipped(h, k, s, p0, p1):
        span = h + p0 + p1 - k
        return pool_out(h, k, s, p0, p1, True) < -(-span // s) + 1

    assert sum(clipped(h, k, s, p[0], p[2]) for h, k, s, p, ceil in POOL_CASES if ceil) >= 5


@pytest.mark.parametrize("backend", ["mxnet", "chainer"])
def test_conv_sweep(backend):
    _need(backend)
    from senet_hub import builders

    b = builders.get(backend)
    for i, (k, s, pads, groups, dil) in enumerate(
        [
            (3, 2, (1, 1, 1, 1), 4, 1),
            (3, 2, (0, 0, 1, 1), 8, 1),
            (1, 2, (0, 0, 0, 0), 1, 1),
            (3, 1, (2, 1, 2, 3), 2, 2),
            (7, 2, (3, 3, 3, 3), 1, 1),
            (2, 3, (1, 0, 0, 1), 2, 1),
        ]  # fmt: skip
    ):
        g = Graph(
            [_conv("c", "data", 16, k, s, pads, groups, bias=i % 2 == 0, dilation=(dil, dil))],
            input_shape=(2, 8, 9, 10),
        )
        m = random_weights(g, i)
        x = _input(m)
        assert_matches_reference(m, b.run(b.build(m), x), x)


# ------------------------------------------------------------------------------------ real Caffe


@needs_shared
@pytest.mark.parametrize(
    "arch", [a if a == "SE-BN-Inception" else pytest.param(a, marks=pytest.mark.slow) for a in WITH_CAFFE_REFERENCE]
)
@pytest.mark.parametrize("backend", ["mxnet", "chainer"])
def test_matches_real_caffe(backend, arch, caffemodel):
    """Every node against real Caffe's per-layer outputs (1e-3 of each layer's max |value|), same top-1."""
    _need(backend)
    from conftest import PROTOTXT_DIR, load_caffe_reference
    from test_caffe_reference import RTOL, check_against_caffe

    from senet_hub import builders
    from senet_hub.converters import caffe

    ref = load_caffe_reference(arch)
    model = caffe.load(PROTOTXT_DIR / f"{arch}.prototxt", caffemodel(arch), canonical=zoo is not None)
    b = builders.get(backend)
    outs = b.run(b.build(model), ref["input"], taps=True)
    assert check_against_caffe(model, outs, ref, f"{arch}/{backend}") == len(model.graph.nodes)
    logits = outs[model.graph.node(model.graph.output).inputs[0]]
    assert np.abs(logits - ref["logits"]).max() <= RTOL * np.abs(ref["logits"]).max()
    assert (logits.argmax(1) == ref["logits"].argmax(1)).all()


# --------------------------------------------------------------------------------------------- zoo

# the Caffe release and MindCV at full size; the timm family is checked against timm's own forward
# (tests/test_timm_zoo.py) and, reduced in depth, on these backends through verify there
ZOO_ARCHS = zoo.list_archs("caffe") + zoo.list_archs("mindcv")


def _zoo_check(builder, arch: str, batch: int = 1) -> None:
    model = zoo.synthetic_model(arch)
    shape = (batch, *model.graph.input_shape[1:])  # 3 x 224 x 224 for the released models
    model = _with_input(model, shape)
    x = _input(model, shape=shape)
    outs = builder.run(builder.build(model), x, taps=True)
    assert_matches_reference(model, outs, x)


@pytest.mark.parametrize("backend", ["mxnet", "chainer"])
def test_se_resnext50_matches_reference(backend):
    _need(backend)
    from senet_hub import builders

    _zoo_check(builders.get(backend), "SE-ResNeXt-50")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ZOO_ARCHS)
@pytest.mark.parametrize("backend", ["mxnet", "chainer"])
def test_all_archs_match_reference(backend, arch):
    _need(backend)
    from senet_hub import builders

    _zoo_check(builders.get(backend), arch, batch=2)
