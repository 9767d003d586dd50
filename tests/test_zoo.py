"""The zoo: descriptions -> canonical graphs, recognition, canonical names, synthetic weights."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from conftest import PROTOTXT_DIR, RELEASED

from senet_hub import verify, zoo
from senet_hub.builders import numpy_ref
from senet_hub.errors import SenetHubError
from senet_hub.graph import Graph, Model, Node, infer_shapes, structure, validate

MINDCV = ["seresnet18", "seresnet34", "seresnet50", "seresnext26_32x4d", "seresnext50_32x4d"]

# per architecture: nodes, conv, batch_norm, relu, sigmoid, axpy, concat, max/avg/global pools,
# dropout; from the layer types of the released prototxts (BatchNorm + Scale = one batch_norm)
COUNTS = {
    "SE-BN-Inception": dict(nodes=302, conv=89, batch_norm=69, relu=79, sigmoid=10, axpy=0, concat=10, channel_scale=10, reshape=10, pools=23, dropout=0),
    "SE-ResNet-50": dict(nodes=255, conv=85, batch_norm=53, relu=65, sigmoid=16, axpy=16, concat=0, channel_scale=0, reshape=0, pools=18, dropout=0),
    "SE-ResNet-101": dict(nodes=510, conv=170, batch_norm=104, relu=133, sigmoid=33, axpy=33, concat=0, channel_scale=0, reshape=0, pools=35, dropout=0),
    "SE-ResNet-152": dict(nodes=765, conv=255, batch_norm=155, relu=201, sigmoid=50, axpy=50, concat=0, channel_scale=0, reshape=0, pools=52, dropout=0),
    "SE-ResNeXt-50": dict(nodes=255, conv=85, batch_norm=53, relu=65, sigmoid=16, axpy=16, concat=0, channel_scale=0, reshape=0, pools=18, dropout=0),
    "SE-ResNeXt-101": dict(nodes=510, conv=170, batch_norm=104, relu=133, sigmoid=33, axpy=33, concat=0, channel_scale=0, reshape=0, pools=35, dropout=0),
    "SENet-154": dict(nodes=772, conv=257, batch_norm=157, relu=203, sigmoid=50, axpy=50, concat=0, channel_scale=0, reshape=0, pools=52, dropout=1),
}  # fmt: skip
# trainable parameters (running statistics excluded): timm's legacy_* counts for the ResNets
PARAMS = {
    "SE-BN-Inception": 11_931_622,
    "SE-ResNet-50": 28_088_024,
    "SE-ResNet-101": 49_326_872,
    "SE-ResNet-152": 66_821_848,
    "SE-ResNeXt-50": 27_559_896,
    "SE-ResNeXt-101": 48_955_416,
    "SENet-154": 115_088_984,
}
CADENE_KEY = re.compile(
    r"layer0\.(conv|bn)[123]"
    r"|layer[1-4]\.\d+\.(conv[123]|bn[123]|se_module\.fc[12]|downsample\.[01])"
    r"|last_linear"
)


def _ops(g: Graph) -> Counter:
    return Counter(n.op for n in g.nodes)


def _param_nodes(g: Graph) -> list[Node]:
    return [n for n in g.nodes if n.op in ("conv", "batch_norm", "linear")]


# --------------------------------------------------------------------------- the descriptions


def test_list_archs():
    archs = zoo.list_archs()
    assert archs[:7] == RELEASED
    assert archs[7:12] == MINDCV
    assert archs[12:] == zoo.list_archs("timm")  # timm_zoo.yaml (tests/test_timm_zoo.py)
    assert "caffe" in zoo.families() and "mindcv" in zoo.families() and "timm" in zoo.families()


def test_unknown_arch():
    with pytest.raises(SenetHubError, match="unknown architecture 'SE-ResNet-18'"):
        zoo.expand("SE-ResNet-18")


@pytest.mark.parametrize("arch", RELEASED)
def test_expansion_validates(arch):
    """Every expansion validates with its synthetic weights; counts match the released nets."""
    m = zoo.synthetic_model(arch)
    shapes = validate(m)
    g = m.graph
    assert g.input_name == "data" and tuple(g.input_shape) == (1, 3, 224, 224)
    assert g.output == "prob" == g.nodes[-1].name
    assert shapes["prob"] == (1, 1000) and shapes["last_linear"] == (1, 1000)
    assert shapes["avg_pool"][2:] == (1, 1)  # pool5 7x7 on the 7x7 map
    ops = _ops(g)
    want = COUNTS[arch]
    assert len(g.nodes) == want["nodes"]
    for op in ("conv", "batch_norm", "relu", "sigmoid", "axpy", "concat", "channel_scale", "reshape", "dropout"):
        assert ops[op] == want[op], op
    assert ops["max_pool"] + ops["avg_pool"] + ops["global_avg_pool"] == want["pools"]
    assert ops["global_avg_pool"] == ops["sigmoid"]  # one squeeze per SE module
    assert ops["linear"] == ops["softmax"] == 1
    d = zoo.describe(arch)
    assert d["params"] == PARAMS[arch]
    n_params = sum(v.size for k, v in m.weights.items() if not k.endswith(("running_mean", "running_var")))
    assert n_params == PARAMS[arch]
    assert d["family"] == "Caffe SENet" and d["source_format"] == "caffe" and d["input_size"] == 224
    assert d["nodes"] == want["nodes"]


@pytest.mark.parametrize("arch", RELEASED)
def test_canonical_names(arch):
    """Unique, valid dotted module paths; a parameterised node is never another one's container."""
    g = zoo.expand(arch)
    names = [n.name for n in g.nodes]
    assert len(set(names)) == len(names)
    for name in names:
        assert all(part and part.strip() == part for part in name.split(".")), name
        assert "/" not in name
    params = {n.name for n in _param_nodes(g)}
    prefixes = {".".join(n.split(".")[:i]) for n in params for i in range(1, n.count(".") + 1)}
    assert not params & prefixes
    # Caffe sources: every layer once, BN + Scale pairs
    sources = [s for n in g.nodes for s in n.source]
    assert len(set(sources)) == len(sources)
    for n in g.nodes:
        if n.op == "batch_norm":
            base = n.source[0].removesuffix("/bn")
            assert n.source == [f"{base}/bn", f"{base}/bn/scale"]
        else:
            assert len(n.source) == 1
    if arch != "SE-BN-Inception":  # Cadene / timm legacy_* state_dict keys
        assert all(CADENE_KEY.fullmatch(p) for p in params), sorted(p for p in params if not CADENE_KEY.fullmatch(p))
        assert {n.name for n in g.nodes if "downsample" in n.name} == {
            f"layer{i}.0.downsample.{j}" for i in range(1, 5) for j in (0, 1)
        }


def test_inception_names():
    g = zoo.expand("SE-BN-Inception")
    names = {n.name: n for n in g.nodes}
    n = names["inception_3a.1x1.conv"]
    assert n.source == ["inception_3a/1x1"] and n.attrs["out_channels"] == 64
    assert names["inception_3a.1x1.relu"].source == ["inception_3a/relu_1x1"]
    assert names["inception_3a.se_module.fc1"].source == ["inception_3a_1x1_down"]
    assert names["inception_3a.se_module.reshape"].attrs == {"shape": [0, 0]}
    scale = names["inception_3a.scale"]
    assert scale.op == "channel_scale" and scale.inputs == ["inception_3a.concat", "inception_3a.se_module.reshape"]
    assert names["inception_3c.pool"].source == ["inception_3c/pool/3x3_s2"]
    assert names["inception_5b.pool"].op == "max_pool" and names["inception_5b.pool"].attrs["stride"] == (1, 1)
    assert names["inception_4e.double3x3b.conv"].attrs["stride"] == (2, 2)
    assert [
        names[f"{m}.se_module.fc1"].attrs["out_channels"] for m in ("inception_3a", "inception_3b", "inception_4e")
    ] == [16, 20, 66]


def test_stride_placement_and_shortcuts():
    """SE-ResNet strides the 1x1 reduce; SE-ResNeXt and SENet-154 the grouped 3x3."""
    r50 = {n.name: n.attrs for n in zoo.expand("SE-ResNet-50").nodes}
    assert r50["layer2.0.conv1"]["stride"] == (2, 2) and r50["layer2.0.conv2"]["stride"] == (1, 1)
    assert r50["layer1.0.conv1"]["stride"] == (1, 1) and r50["layer1.0.downsample.0"]["kernel"] == (1, 1)
    x50 = {n.name: n.attrs for n in zoo.expand("SE-ResNeXt-50").nodes}
    assert x50["layer2.0.conv1"]["stride"] == (1, 1) and x50["layer2.0.conv2"]["stride"] == (2, 2)
    assert x50["layer2.0.conv2"]["groups"] == 32 and x50["layer1.0.conv2"]["out_channels"] == 128
    s154 = {n.name: n.attrs for n in zoo.expand("SENet-154").nodes}
    assert [s154[f"layer0.conv{i}"]["out_channels"] for i in (1, 2, 3)] == [64, 64, 128]
    assert s154["layer0.conv1"]["stride"] == (2, 2) and s154["layer0.conv1"]["kernel"] == (3, 3)
    assert s154["layer3.0.conv2"]["groups"] == 64 and s154["layer3.0.conv2"]["stride"] == (2, 2)
    assert s154["layer1.0.conv1"]["out_channels"] == 128 and s154["layer1.0.conv2"]["out_channels"] == 256
    assert s154["layer1.0.downsample.0"]["kernel"] == (1, 1)
    for i in (2, 3, 4):
        a = s154[f"layer{i}.0.downsample.0"]
        assert a["kernel"] == (3, 3) and a["stride"] == (2, 2) and a["pad"] == (1, 1, 1, 1)
    assert s154["dropout"] == {"ratio": 0.2}
    for arch in ("SE-ResNet-50", "SENet-154"):
        g = zoo.expand(arch)
        for n in g.nodes:
            if n.name.endswith("se_module.fc1"):
                up = g.node(n.name.replace("fc1", "fc2"))
                assert n.attrs["out_channels"] * 16 == up.attrs["out_channels"] and n.attrs["bias"]
            elif n.op == "conv":
                assert n.attrs["bias"] is False or n.name.endswith("fc2")
        axpy = g.node("layer1.1.axpy")
        assert axpy.inputs == ["layer1.1.se_module.sigmoid", "layer1.1.bn3", "layer1.0.relu"]


def test_attr_types_are_canonical():
    """Tuples for geometry, ints, float eps/ratio, list for the reshape spec (as the converter)."""
    for arch in ("SE-BN-Inception", "SENet-154"):
        for n in zoo.expand(arch).nodes:
            a = n.attrs
            if n.op == "conv":
                assert list(a) == ["out_channels", "kernel", "stride", "pad", "dilation", "groups", "bias"]
                assert all(type(a[k]) is tuple for k in ("kernel", "stride", "pad", "dilation"))
                assert type(a["out_channels"]) is int and type(a["groups"]) is int and type(a["bias"]) is bool
            elif n.op in ("max_pool", "avg_pool"):
                assert a["ceil"] is True and a["count_include_pad"] is True and type(a["pad"]) is tuple
            elif n.op == "batch_norm":
                assert a == {"eps": 1e-05} and type(a["eps"]) is float
            elif n.op == "reshape":
                assert type(a["shape"]) is list


# ---------------------------------------------------------- the released prototxts (converter)


@pytest.mark.parametrize("arch", RELEASED)
def test_prototxt_matches_description(arch):
    """The released prototxt, parsed by the Caffe converter, is exactly its description's graph."""
    from senet_hub.converters.caffe import load_prototxt

    parsed = load_prototxt(PROTOTXT_DIR / f"{arch}.prototxt")
    expanded = zoo.expand(arch)
    assert structure(parsed) == structure(expanded)
    assert [n.source for n in parsed.nodes] == [n.source for n in expanded.nodes]
    assert [n.attrs for n in parsed.nodes] == [n.attrs for n in expanded.nodes]
    assert parsed.input_name == expanded.input_name
    assert tuple(parsed.input_shape) == tuple(expanded.input_shape)
    assert parsed.nodes.index(parsed.node(parsed.output)) == expanded.nodes.index(expanded.node(expanded.output))
    assert zoo.identify(parsed) == arch


@pytest.mark.parametrize("arch", ["SE-BN-Inception", "SE-ResNet-50"])
def test_canonicalize_by_position(arch):
    """A Caffe-named graph is renamed to the canonical names; weights follow; sources stay."""
    g = zoo.expand(arch)
    caffe_named = Graph(
        [Node(n.source[0], n.op, [], dict(n.attrs), list(n.source)) for n in g.nodes], "data", g.input_shape
    )
    rename = {n.name: c.name for n, c in zip(g.nodes, caffe_named.nodes)}
    for n, c in zip(g.nodes, caffe_named.nodes):
        c.inputs = [rename.get(i, i) for i in n.inputs]
    caffe_named.output = rename[g.output]
    weights = zoo.synthetic_weights(caffe_named, seed=3)
    model = Model(caffe_named, weights, {"arch": "custom", "source_format": "caffe"})
    out = zoo.canonicalize(model)
    assert out.arch == arch and out.meta["source_format"] == "caffe"
    assert [n.name for n in out.graph.nodes] == [n.name for n in g.nodes]
    assert [n.inputs for n in out.graph.nodes] == [n.inputs for n in g.nodes]
    assert [n.source for n in out.graph.nodes] == [n.source for n in g.nodes]
    assert out.graph.output == "prob"
    ref = zoo.synthetic_weights(g, seed=3)  # names do not change the arrays
    assert list(out.weights) == list(ref)
    for k, v in ref.items():
        assert np.array_equal(out.weights[k], v), k
    infer_shapes(out)
    assert [n.name for n in model.graph.nodes] == [n.name for n in caffe_named.nodes]  # input untouched


def test_custom_graph_is_left_alone():
    g = zoo.expand("SE-ResNet-50")
    g.node("layer3.2.bn2").attrs["eps"] = 1e-3  # one attribute off: not a released net
    assert zoo.identify(g) is None
    m = Model(g, zoo.synthetic_weights(g), {"source_format": "caffe"})
    out = zoo.canonicalize(m)
    assert out.arch == "custom" and out.graph is g and out.weights is m.weights
    g2 = zoo.expand("SE-ResNet-50")
    g2.nodes[5].inputs = [g2.nodes[3].name]  # rewired
    assert zoo.identify(g2) is None
    assert zoo.identify(Graph(zoo.expand("SENet-154").nodes[:-1])) is None


def test_mindcv_family_through_the_zoo():
    from senet_hub.zoo import mindcv as mindcv_family

    mindcv = ["seresnet18", "seresnet34", "seresnet50", "seresnext26_32x4d", "seresnext50_32x4d"]
    assert zoo.list_archs("mindcv") == mindcv and not any(zoo.is_arch(a, "caffe") for a in mindcv)
    assert zoo.list_archs("caffe") + mindcv + zoo.list_archs("timm") == zoo.list_archs()
    for arch in ("seresnet18", "seresnext26_32x4d"):
        # the zoo expands a MindCV arch through the family module's own function, once
        assert structure(zoo.expand(arch)) == structure(mindcv_family.expand(zoo.description(arch)))
        assert zoo.identify(zoo.expand(arch)) == arch
        assert zoo.describe(arch)["family"] == "MindCV SENet"
    m = zoo.synthetic_model("seresnet18")
    assert m.meta["input_convention"]["channel_order"] == "RGB" and m.meta["arch"] == "seresnet18"
    validate(m)


def test_register_family_and_add_descriptions(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "_FAMILIES", dict(zoo._FAMILIES))
    monkeypatch.setattr(zoo, "_DESCRIPTIONS", dict(zoo._DESCRIPTIONS))
    monkeypatch.setattr(zoo, "_STRUCTURES", {})

    @zoo.register_family("toy")
    def expand_toy(d):
        nodes = [Node("fc", "linear", ["data"], {"out_features": int(d["classes"]), "bias": True}, ["fc"])]
        return Graph(nodes, "data", (1, 3, 4, 4), "fc")

    f = tmp_path / "toy_zoo.yaml"
    f.write_text(
        "family: toy\ndefaults: {input_convention: {channel_order: RGB, range: [0, 1], size: 4},"
        " class_order: unknown, num_classes: 3}\nmodels:\n  toy-3: {classes: 3}\n  toy-5: {classes: 5}\n"
    )
    assert zoo.add_descriptions(f) == ["toy-3", "toy-5"]
    assert zoo.list_archs()[-2:] == ["toy-3", "toy-5"]
    m = zoo.synthetic_model("toy-5", seed=1)
    assert m.weights["fc.weight"].shape == (5, 48) and m.meta["class_order"] == "unknown"
    assert zoo.identify(zoo.expand("toy-3")) == "toy-3"
    assert zoo.describe("toy-5")["params"] == 5 * 48 + 5
    clash = tmp_path / "clash_zoo.yaml"
    clash.write_text("family: toy\nmodels:\n  SE-ResNet-50: {classes: 2}\n")
    with pytest.raises(SenetHubError, match="already described"):
        zoo.add_descriptions(clash)
    orphan = tmp_path / "orphan_zoo.yaml"
    orphan.write_text("family: nobody\nmodels:\n  lonely: {}\n")
    zoo.add_descriptions(orphan)
    with pytest.raises(SenetHubError, match="no module registered"):
        zoo.expand("lonely")
    assert zoo.identify(zoo.expand("toy-5")) == "toy-5"  # a broken family does not stop identify
    bad = tmp_path / "bad_zoo.yaml"
    bad.write_text("models: [1, 2]\n")
    with pytest.raises(SenetHubError, match="needs 'family'"):
        zoo.add_descriptions(bad)


# --------------------------------------------------------------------------- synthetic weights


def test_synthetic_weights_are_deterministic():
    g = zoo.expand("SE-BN-Inception")
    a, b, c = zoo.synthetic_weights(g, 0), zoo.synthetic_weights(g, 0), zoo.synthetic_weights(g, 1)
    assert list(a) == list(b)
    assert all(a[k].dtype == np.float32 and a[k].tobytes() == b[k].tobytes() for k in a)
    assert not np.array_equal(a["conv1.7x7_s2.conv.weight"], c["conv1.7x7_s2.conv.weight"])
    for k, v in a.items():
        if k.endswith("running_var"):
            assert v.min() > 0
        if k.endswith(".bn.weight"):
            assert 0.7 < v.mean() < 1.3
    # pinned values: the stream of numpy's PCG64 for seed 0 (catches accidental reordering)
    first = a["conv1.7x7_s2.conv.weight"].ravel()[:3] / np.sqrt(2 / 147)  # input_scale 1
    assert np.allclose(first, np.random.default_rng(0).standard_normal(3, dtype=np.float32), rtol=1e-6)


def test_synthetic_model_meta():
    m = zoo.synthetic_model("SE-ResNeXt-50", seed=2)
    assert m.meta["arch"] == "SE-ResNeXt-50" and m.meta["seed"] == 2 and m.meta["class_order"] == "senet"
    assert m.meta["input_convention"] == {
        "channel_order": "BGR",
        "range": [0, 255],
        "mean": [104.0, 117.0, 123.0],
        "std": [1.0, 1.0, 1.0],
        "size": 224,
    }


def test_se_resnet50_forward_is_well_scaled():
    """numpy reference, batch 1 at 224: finite, O(1) activations, SE gates and softmax not saturated."""
    m = zoo.synthetic_model("SE-ResNet-50")
    x = verify.default_input(m, batch=1)  # mean-free BGR pixels, N(0, 50)
    outs = numpy_ref.run(numpy_ref.build(m, np.float32), x, taps=True)
    for name, v in outs.items():
        assert np.isfinite(v).all(), name
        assert np.sqrt(np.mean(np.square(v, dtype=np.float64))) < 10, name
    stream = [np.sqrt(np.mean(outs[n.name] ** 2)) for n in m.graph.nodes if n.op == "axpy"]
    assert min(stream) > 0.3 and max(stream) < 6
    gates = np.concatenate([outs[n.name].ravel() for n in m.graph.nodes if n.op == "sigmoid"])
    assert 0.4 < gates.mean() < 0.9 and np.mean((gates < 0.02) | (gates > 0.98)) < 0.02
    assert gates.std() > 0.05  # the gates do something
    p = outs["prob"]
    assert p.shape == (1, 1000) and abs(float(p.sum()) - 1) < 1e-4
    assert 2e-3 < p.max() < 0.9
    logits = outs["last_linear"]
    assert 0.5 < logits.std() < 5


def test_caffe_roundtrip_is_canonical(tmp_path):
    """synthetic model -> .caffemodel (Caffe names from the sources) -> caffe.load: same model."""
    from senet_hub.converters import caffe, caffe_writer

    m = zoo.synthetic_model("SE-BN-Inception", seed=4)
    path = caffe_writer.write_caffemodel_for(m, tmp_path / "m.caffemodel")
    back = caffe.load(PROTOTXT_DIR / "SE-BN-Inception.prototxt", path)
    assert back.arch == "SE-BN-Inception"
    assert [(n.name, n.source) for n in back.graph.nodes] == [(n.name, n.source) for n in m.graph.nodes]
    assert set(back.weights) == set(m.weights)
    assert all(np.array_equal(back.weights[k], v) for k, v in m.weights.items())
