"""The zoo's timm family (reference_models/timm_zoo.yaml), proved against timm 1.0.31 itself.

For every timm SE model with pretrained weights (resnet.py's ``seresne*`` / ``senet154`` and
senet.py's ``legacy_*``): timm builds the model with random weights and randomized BatchNorm
statistics (eval mode); its state_dict (``num_batches_tracked`` dropped) becomes the canonical
Model ``zoo.expand(arch)`` + weights by key. The key set and every shape must match exactly,
and the float64 numpy reference must match timm's own forward within 1e-3 * max|ref| (2e-3
for the SENet-154s) at every node whose timm module output a forward hook can take by the same
name, and at the final output. Full depth for the 18- to 50-layer nets; the 101- to 201-layer
ones (and the Caffe architectures timm serves as ``legacy_*``, whose pool5 needs 224 x 224) are
marked slow, and every architecture also runs at reduced depth (timm's own ``layers=`` argument
and the same depths in the description) so each stem / block / shortcut / anti-aliasing variant
is proved in the fast suite.

timm is installed ``--no-deps``; tests/conftest.py puts the test-only torchvision stub on sys.path.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import branch_end_bns, random_timm_net

from senet_hub import zoo
from senet_hub.builders import numpy_ref
from senet_hub.errors import SenetHubError
from senet_hub.graph import Graph, Model, validate
from senet_hub.zoo import timm as timm_family

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
timm = pytest.importorskip("timm", reason="timm not installed (the test extra installs it --no-deps)")

TIMM_ARCHS = zoo.list_archs("timm")
RESNET_FAST = ["timm/seresnet50", "timm/seresnext50_32x4d", "timm/seresnext26d_32x4d", "timm/seresnext26t_32x4d"]
LEGACY = ["legacy_seresnet18", "legacy_seresnet34", "legacy_seresnext26_32x4d"]
HEAVY = [a for a in TIMM_ARCHS if a not in RESNET_FAST + LEGACY]
CAFFE_ALIASES = list(zoo.aliases())  # legacy_seresnet50 ... legacy_senet154 -> the Caffe archs


def _tol(name: str) -> float:
    return 2e-3 if "senet154" in name else 1e-3


def _size(arch: str) -> int:
    """A small input: 40 gives odd stage maps (3x3 / 5x5), exercising the ceil-mode pools and the
    count_include_pad=False shortcut pools; the anti-aliased nets need even maps (64)."""
    return 64 if zoo.description(arch).get("aa") else 40


def _state_dict(net) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def _graph(arch: str, size: int, depths: list[int] | None = None) -> Graph:
    d = zoo.description(arch, input_size=size)
    if depths is not None:  # the same description at reduced depth, through the family's expander
        d["depths"] = list(depths)
    return zoo._family(d).expand(d)


def _assert_same_keys(graph: Graph, sd: dict[str, np.ndarray], name: str) -> None:
    want = zoo.graph_param_shapes(graph)
    assert set(want) == set(sd), (
        f"{name}: only zoo {sorted(set(want) - set(sd))[:4]}, only timm {sorted(set(sd) - set(want))[:4]}"
    )
    bad = [(k, want[k], tuple(sd[k].shape)) for k in want if tuple(sd[k].shape) != want[k]]
    assert not bad, f"{name}: shapes differ: {bad[:4]}"


def _logits_node(graph: Graph) -> str:
    """The node whose value is timm's output: the graph output, or the input of a trailing softmax."""
    out = graph.node(graph.output)
    return out.inputs[0] if out.op == "softmax" else out.name


def _check_parity(arch: str, name: str, size: int, layers: tuple[int, ...] | None = None) -> int:
    """timm's forward == the numpy reference of the canonical model, per hooked node and at the end.
    Returns the number of nodes compared by name."""
    graph = _graph(arch, size, list(layers) if layers else None)
    net = random_timm_net(name, layers, branch_ends=branch_end_bns(graph))
    sd = _state_dict(net)
    _assert_same_keys(graph, sd, name)
    model = Model(graph, sd, zoo.meta(arch))
    names = {n.name for n in graph.nodes}
    got: dict[str, np.ndarray] = {}

    def hook(module, inputs, output, node: str) -> None:
        # a clone now: the in-place ReLUs and `x += shortcut` overwrite these tensors later; a
        # module called several times (senet.py's one `relu` per block) keeps its last call, the
        # block output, which is the node of that name
        got[node] = output.detach().clone().numpy()

    handles = [
        m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, m in net.named_modules() if n in names
    ]
    x = np.random.default_rng(7).standard_normal((1, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    for h in handles:
        h.remove()
    ref = numpy_ref.run(numpy_ref.build(model), x.astype(np.float64), taps=True)
    tol = _tol(name)
    bad = []
    for node, v in got.items():
        r = ref[node]
        assert v.size == r.size, f"{name}: node {node}: timm {v.shape}, reference {r.shape}"
        err = float(np.abs(v.reshape(r.shape) - r).max() / max(np.abs(r).max(), 1e-30))
        if err > tol:
            bad.append((node, err))
    assert not bad, f"{name}: nodes off by more than {tol} * max|ref|: {bad[:5]}"
    logits = ref[_logits_node(graph)]
    assert y.shape == logits.shape
    assert float(np.abs(y - logits).max()) <= tol * float(np.abs(logits).max()), name
    assert np.isfinite(y).all() and y.std() > 1e-3  # the comparison is of something
    stream = max(float(np.abs(ref[n.name]).max()) for n in graph.nodes if n.op == "axpy")
    assert stream < 1e3, f"{name}: residual stream up to {stream:.0f}: the random net is ill-conditioned"
    return len(got)


# ------------------------------------------------------------------------------ what is covered


def _timm_se_models() -> set[str]:
    """timm 1.0.31's SE models with pretrained weights in resnet.py and senet.py."""
    out = set()
    for module in ("resnet", "senet"):
        for m in timm.list_models(module=module, pretrained=True):
            base = m.split(".")[0]
            if base.startswith(("seresne", "senet", "legacy_se")):
                out.add(base)
    return out


def test_every_pretrained_timm_se_model_is_described_once():
    described = [zoo.timm_name(a) for a in zoo.list_archs()]
    described = [n for n in described if n]
    assert len(described) == len(set(described))  # once
    assert set(described) == _timm_se_models()
    assert set(described) == {zoo.description(a)["timm_model"] for a in TIMM_ARCHS} | set(CAFFE_ALIASES)
    # the caffe descriptions name the same timm models (their `pytorch` key)
    for alias, arch in zoo.aliases().items():
        assert zoo.timm_name(arch) == alias == zoo.description(arch)["pytorch"]
    assert zoo.timm_name("SE-BN-Inception") is None and zoo.timm_name("seresnet50") is None  # MindCV


@pytest.mark.parametrize("name", sorted(_timm_se_models()))
def test_pretrained_cfg_facts_are_timms(name):
    """Every tag timm publishes, default first, with timm's pretrained_cfg facts."""
    tags = [m.split(".", 1)[1] for m in timm.list_models(name, pretrained=True)]
    default = timm.models.get_pretrained_cfg(name).tag
    mine = zoo.pretrained_cfg(name)
    assert mine["tag"] == default and mine["timm_model"] == name
    for tag in tags:
        t = timm.models.get_pretrained_cfg(f"{name}.{tag}")
        cfg = zoo.pretrained_cfg(f"{name}.{tag}")
        assert cfg == zoo.pretrained_cfg(name, tag)
        assert cfg["input_size"] == t.input_size[-1] and cfg["crop_pct"] == t.crop_pct
        assert cfg["interpolation"] == t.interpolation and cfg["num_classes"] == t.num_classes
        assert tuple(cfg["mean"]) == tuple(t.mean) and tuple(cfg["std"]) == tuple(t.std)
        assert cfg["license"] == t.license
        assert cfg.get("test_input_size") == (t.test_input_size[-1] if t.test_input_size else None)
        assert cfg.get("test_crop_pct") == t.test_crop_pct
        assert cfg.get("hf_hub_id") == t.hf_hub_id and cfg.get("url") == (t.url or None)
        assert cfg["class_order"] == ("ilsvrc2012" if t.num_classes == 1000 else "imagenet12k")
    with pytest.raises(SenetHubError, match="no pretrained tag 'nope'"):
        zoo.pretrained_cfg(name, "nope")


# ------------------------------------------------------------------------ keys, shapes, params


@pytest.mark.parametrize("arch", TIMM_ARCHS + CAFFE_ALIASES)
def test_state_dict_keys_and_shapes(arch):
    """timm's state_dict (built on the meta device: no weights) has exactly the zoo's keys and shapes,
    and the zoo's trainable parameter count is timm's."""
    name = zoo.timm_name(zoo.resolve_arch(arch))
    with torch.device("meta"):
        net = timm.create_model(name, pretrained=False)
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    graph = zoo.expand(zoo.resolve_arch(arch))
    _assert_same_keys(graph, sd, name)
    assert zoo.trainable_params(graph) == sum(p.numel() for p in net.parameters())
    if arch in TIMM_ARCHS:
        assert zoo.describe(arch)["params"] == zoo.trainable_params(graph)
        assert zoo.param_shapes(arch) == zoo.graph_param_shapes(graph)


# ------------------------------------------------------------------------------ forward parity


@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_reduced_depth_matches_timm(arch):
    """Every stem / block / shortcut / anti-aliasing variant, one or two blocks per stage."""
    layers = (1, 2, 1, 1)  # a strided first block and a plain second one in layer2
    n = _check_parity(arch, zoo.timm_name(arch), _size(arch), layers)
    assert n > 40


@pytest.mark.parametrize("arch", RESNET_FAST + LEGACY)
def test_full_depth_matches_timm(arch):
    assert _check_parity(arch, zoo.timm_name(arch), _size(arch)) > 80


@pytest.mark.slow
@pytest.mark.parametrize("arch", HEAVY)
def test_full_depth_matches_timm_heavy(arch):
    assert _check_parity(arch, zoo.timm_name(arch), _size(arch)) > 300


@pytest.mark.slow
@pytest.mark.parametrize("alias", CAFFE_ALIASES)
def test_legacy_alias_matches_timm(alias):
    """timm's legacy_* model computes its Caffe architecture (pool5 is a fixed 7x7 pool: 224 x 224)."""
    assert _check_parity(zoo.resolve_arch(alias), alias, 224) > 150


def test_node_names_are_timm_module_paths():
    """Every parametrised node, and every other node but the module-less mean and sum, is a timm module."""
    for arch, free in (("timm/seresnextaa101d_32x8d", (".se.pool", ".add")), ("legacy_seresnet18", ())):
        with torch.device("meta"):
            net = timm.create_model(zoo.timm_name(arch), layers=(1, 2, 1, 1))
        modules = dict(net.named_modules())
        g = _graph(arch, 64, [1, 2, 1, 1])
        for n in g.nodes:
            if n.name.endswith(free) or n.name.endswith(("relu1", "relu2", "se_module.avg_pool", "axpy")):
                continue  # the mean in SEModule.forward, the residual sum, senet.py's shared relu
            assert n.name in modules, n.name
            assert n.source == [n.name]


def test_anti_aliased_input_sizes():
    """The zoo refuses exactly the sizes timm's anti-aliased nets cannot run."""
    arch = "timm/seresnextaa101d_32x8d"
    net = random_timm_net(zoo.timm_name(arch), (1, 1, 1, 1))
    for size in (33, 40, 63):
        try:
            with torch.no_grad():
                net(torch.zeros(1, 3, size, size))
            timm_ok = True
        except RuntimeError:
            timm_ok = False
        try:
            zoo.expand(arch, input_size=size)
            zoo_ok = True
        except SenetHubError as e:
            assert "multiple of 32" in str(e)
            zoo_ok = False
        assert zoo_ok == timm_ok, size
    with pytest.raises(SenetHubError, match="odd 5x5 input map"):
        zoo.expand(arch, input_size=40)


# --------------------------------------------------------------------------------------- names


def test_resolve_arch():
    assert zoo.resolve_arch("seresnet50", prefer=("timm",)) == "timm/seresnet50"
    assert zoo.resolve_arch("seresnet50", prefer=("mindcv",)) == "seresnet50"
    assert zoo.resolve_arch("seresnet50", prefer=("timm", "caffe")) == "timm/seresnet50"
    assert zoo.resolve_arch("seresnext50_32x4d", prefer=("mindcv",)) == "seresnext50_32x4d"
    assert zoo.resolve_arch("seresnet152d") == "timm/seresnet152d"
    assert zoo.resolve_arch("seresnext26d_32x4d.bt_in1k") == "timm/seresnext26d_32x4d"
    assert zoo.resolve_arch("seresnet50.a1_in1k") == "timm/seresnet50"  # a tag: timm's weights, not MindCV's
    assert zoo.resolve_arch("SE-ResNet-50.in1k") == "SE-ResNet-50" == zoo.resolve_arch("legacy_seresnet50.in1k")
    assert zoo.resolve_arch("timm/seresnet50") == "timm/seresnet50"
    assert zoo.resolve_arch("mindcv/seresnet50") == "seresnet50"
    assert zoo.resolve_arch("legacy_seresnet50") == "SE-ResNet-50"
    assert zoo.resolve_arch("timm/legacy_senet154") == "SENet-154"
    assert zoo.resolve_arch("legacy_seresnet18.in1k") == "legacy_seresnet18"
    assert zoo.resolve_arch("senet154") == "timm/senet154"  # resnet.py's Gluon SENet-154, not Cadene's
    assert zoo.resolve_arch("SE-ResNet-50") == "SE-ResNet-50" == zoo.resolve_arch("se-resnet-50")
    assert zoo.resolve_arch("seresnet18") == "seresnet18"  # timm's seresnet18 has no pretrained weights
    shared = {"seresnet50", "seresnext50_32x4d"}  # MindCV ids that are timm model names too
    for arch in zoo.list_archs():
        if arch not in shared:  # an id names itself whatever is preferred
            assert zoo.resolve_arch(arch) == arch == zoo.resolve_arch(arch, prefer=("timm", "caffe"))
        # family/id always names exactly one
        assert zoo.resolve_arch(f"{zoo.description(arch)['family']}/{arch.removeprefix('timm/')}") == arch


def test_resolve_arch_errors():
    with pytest.raises(zoo.ArchNameError, match=r"^unknown architecture 'seresnet51'; closest: seresnet50") as e:
        zoo.resolve_arch("seresnet51")
    assert e.value.exit_code == 2
    with pytest.raises(
        zoo.ArchNameError,
        match="ambiguous: it names seresnet50 \\(mindcv\\), timm/seresnet50 \\(timm\\); "
        "name one as mindcv/seresnet50 or timm/seresnet50",
    ) as e:
        zoo.resolve_arch("seresnet50")
    assert e.value.exit_code == 2 and len(str(e.value).splitlines()) == 1
    with pytest.raises(zoo.ArchNameError, match="ambiguous"):
        zoo.resolve_arch("seresnet50", prefer=("caffe",))  # no preferred family has it
    with pytest.raises(zoo.ArchNameError, match="no pretrained tag 'a9_in1k'.*a1_in1k, a2_in1k, a3_in1k, ra2_in1k"):
        zoo.resolve_arch("seresnet50.a9_in1k")
    with pytest.raises(zoo.ArchNameError, match="unknown architecture 'mindcv/SE-ResNet-50'"):
        zoo.resolve_arch("mindcv/SE-ResNet-50")  # a family qualifier must be the arch's own
    with pytest.raises(SenetHubError, match="unknown architecture 'nope'"):
        zoo.timm_name("nope")


# ------------------------------------------------------------------------------ meta, synthetic


def test_meta_records_timms_preprocessing():
    m = zoo.meta("timm/seresnet152d")
    assert m["timm_name"] == "seresnet152d" and m["class_order"] == "ilsvrc2012" and m["num_classes"] == 1000
    conv = m["input_convention"]
    assert conv["channel_order"] == "RGB" and conv["range"] == [0, 1] and conv["size"] == 256
    assert conv["mean"] == [0.485, 0.456, 0.406] and conv["std"] == [0.229, 0.224, 0.225]
    assert conv["resize"].startswith("shorter side 269 (bicubic)")  # floor(256 / 0.95)
    assert zoo.expand("timm/seresnet152d").input_shape == (1, 3, 256, 256)
    assert zoo.meta("timm/seresnet50", num_classes=10)["class_order"] == "unknown"
    # the in12k tag: 11821 classes in timm's imagenet12k order
    m = zoo.timm_meta("seresnextaa101d_32x8d.sw_in12k", num_classes=11821)
    assert m["class_order"] == "imagenet12k" and m["arch"] == "timm/seresnextaa101d_32x8d"
    # timm serves the Caffe nets' weights refolded: RGB [0, 1] mean/std, sorted synsets
    m = zoo.timm_meta("legacy_seresnet50")
    assert m["arch"] == "SE-ResNet-50" and m["family"] == "caffe" and m["class_order"] == "ilsvrc2012"
    assert m["input_convention"]["range"] == [0, 1] and m["pretrained_cfg"]["interpolation"] == "bilinear"
    assert zoo.meta("SE-ResNet-50")["class_order"] == "senet"  # the Caffe release itself is unchanged
    assert zoo.timm_meta("SE-ResNet-50") == m
    assert zoo.pretrained_cfg("seresnet50")["timm_model"] == "seresnet50"  # timm's name space
    assert zoo.pretrained_cfg("SE-BN-Inception") is None
    with pytest.raises(zoo.ArchNameError, match="serves no pretrained weights as 'seresnet18'"):
        zoo.timm_meta("seresnet18")


def test_describe_and_identify():
    for arch in TIMM_ARCHS:
        d = zoo.describe(arch)
        assert d["id"] == arch and d["family"] in timm_family.TITLES.values() and d["source_format"] == "pytorch"
        assert d["default_tag"] == d["pretrained_tags"][0] and d["timm_model"] == zoo.timm_name(arch)
        assert zoo.identify(zoo.expand(arch)) == arch  # no two architectures share a structure
    d = zoo.describe("timm/seresnextaa201d_32x8d")
    assert d["stem"] == "deep" and d["anti_aliasing"] == "avg" and d["depths"] == [3, 24, 36, 4]
    assert zoo.expand("legacy_seresnet50").nodes[0].name == "layer0.conv1"  # an alias expands its arch


def test_graph_details():
    s154 = {n.name: n for n in zoo.expand("timm/senet154").nodes}
    assert [s154[f"conv1.{i}"].attrs["out_channels"] for i in (0, 3, 6)] == [64, 64, 128]
    assert s154["layer1.0.conv1"].attrs["out_channels"] == 128  # reduce_first 2: width 256 // 2
    a = s154["layer2.0.downsample.0"].attrs
    assert a["kernel"] == (3, 3) and a["stride"] == (2, 2) and a["pad"] == (1, 1, 1, 1)
    assert s154["layer1.0.downsample.0"].attrs["kernel"] == (1, 1)
    assert s154["maxpool"].attrs["pad"] == (1, 1, 1, 1) and s154["maxpool"].attrs["ceil"] is False
    d26 = {n.name: n for n in zoo.expand("timm/seresnext26d_32x4d").nodes}
    assert "layer1.0.downsample.0" not in d26  # stride 1: an Identity in timm, no node
    p = d26["layer2.0.downsample.0"]
    assert p.op == "avg_pool" and p.attrs["ceil"] is True and p.attrs["count_include_pad"] is False
    t26 = {n.name: n for n in zoo.expand("timm/seresnext26t_32x4d").nodes}
    assert [t26[f"conv1.{i}"].attrs["out_channels"] for i in (0, 3, 6)] == [24, 32, 64]
    aa = {n.name: n for n in zoo.expand("timm/seresnextaa101d_32x8d").nodes}
    assert aa["maxpool"].op == "avg_pool" and aa["maxpool"].attrs["kernel"] == (2, 2)
    assert aa["layer2.0.conv2"].attrs["stride"] == (1, 1) and aa["layer2.0.aa"].attrs["stride"] == (2, 2)
    assert "layer2.1.aa" not in aa
    add = aa["layer1.1.add"]
    assert add.op == "axpy" and add.inputs == ["layer1.1.se.gate", "layer1.1.bn3", "layer1.0.act3"]
    r18 = {n.name: n for n in zoo.expand("legacy_seresnet18").nodes}
    assert r18["layer1.0.se_module.avg_pool"].inputs == ["layer1.0.relu2"]  # Cadene: ReLU before the SE
    assert r18["layer1.0.se_module.fc1"].attrs["out_channels"] == 4  # 64 // 16, no divisor rounding
    assert r18["pool0"].attrs["ceil"] is True and r18["pool0"].attrs["pad"] == (0, 0, 0, 0)
    assert timm_family.make_divisible(64 / 16) == 8 and timm_family.make_divisible(2048 / 16) == 128


@pytest.mark.parametrize("arch", ["legacy_seresnet18", "timm/seresnext26t_32x4d", "timm/seresnextaa101d_32x8d"])
def test_synthetic_model(arch):
    m = zoo.synthetic_model(arch, seed=1)
    validate(m)
    assert m.meta["arch"] == arch and m.meta["source_format"] == "synthetic"
    assert set(m.weights) == set(zoo.param_shapes(arch))


def test_synthetic_forward_is_well_scaled():
    """Synthetic weights keep a timm net's activations O(1) (input: normalized pixels, N(0, 1))."""
    m = zoo.synthetic_model("timm/seresnext26d_32x4d")
    small = Model(zoo.expand("timm/seresnext26d_32x4d", input_size=64), m.weights, m.meta)
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
    outs = numpy_ref.run(numpy_ref.build(small, np.float32), x, taps=True)
    for name, v in outs.items():
        assert np.isfinite(v).all() and np.sqrt(np.mean(np.square(v, dtype=np.float64))) < 10, name
    gates = np.concatenate([outs[n.name].ravel() for n in small.graph.nodes if n.op == "sigmoid"])
    assert 0.3 < gates.mean() < 0.95 and gates.std() > 0.05
    assert 0.2 < outs["fc"].std() < 5
