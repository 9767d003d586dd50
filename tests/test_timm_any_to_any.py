"""Any to any, proved against timm itself (issue 14 item 6).

timm builds an SE model with random weights and randomized BatchNorm statistics; its state_dict is
saved the two ways people get timm weights (``torch.save`` -> ``.pth``, ``safetensors`` ->
``.safetensors``), read with ``--from pytorch`` (architecture recognised from keys and shapes),
written to every target, and each written file is loaded *with the tool its users load it with*
(timm's own model class, torch.export, onnxruntime, OpenVINO, Keras, TensorFlow, MXNet gluon,
Chainer, OpenCV DNN for the Caffe files, timm's ``local-dir:`` hub loader). The consumer's final
output must match timm's own forward on the same input within 1e-3 * max|timm| — not only
senet-hub's reference (which test_timm_zoo.py proves equal to timm node by node).

Architectures (full depth, 64 x 64 input, batch 2): every stem and block layout of the two families.
In test-fast: senet.py's basic block and Cadene names (legacy_seresnet18); resnet.py's deep stem,
floor-mode stem max pool and average-pool shortcut (seresnext26d_32x4d). Slow (CI runs them): the
tiered stem (seresnext26t_32x4d); the anti-aliased blocks (seresnextaa101d_32x8d, 93M parameters:
AvgPool2d(2) after act2 in strided blocks and as the stem pool); the gluon SENet-154 layout
(senet154, 115M: deep stem, 3x3 stride-2 projection shortcuts, reduce_first 2). The plain ResNet
layout (seresnet50: 7x7 stem, 1x1 stride-2 projection shortcuts) adds no stem, block or shortcut
the nets above lack, so it does not go through all 11 (CI time). Every other architecture of the timm family (BREADTH: seresnet50, the ResNeXt widths,
seresnet152d, seresnext101d, seresnextaa201d, legacy_seresnet34, legacy_seresnext26_32x4d) goes
through timm's own class (from the .safetensors) and onnxruntime. The Caffe release's legacy_*
architectures are proven in timm by test_timm_cadene.py (the .pth strict in timm's and Cadene's
classes) and test_timm_zoo.py (node by node), not here: their Caffe graphs pool with a fixed 7x7
window, equal to timm's global pool only at 224. Each architecture's timm net, files and read
models are made once and shared by its targets (the consumers then reuse one float64 reference).
timm is installed ``--no-deps`` and imported with the test-only torchvision stub (tests/stubs, put on sys.path by tests/conftest.py).
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Iterator

import numpy as np
import pytest
from helpers import branch_end_bns, random_timm_net

from senet_hub import consumers, sources, zoo
from senet_hub.converters import pytorch as pytorch_source
from senet_hub.errors import ModelError

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
timm = pytest.importorskip("timm", reason="timm not installed (the test extra installs it --no-deps)")

SIZE = 64  # timm's SE nets pool globally: any size from 32 up (multiples of 32 for the aa nets)
FAST = ["legacy_seresnet18", "timm/seresnext26d_32x4d"]
# measured on the shared 2-core machine (--durations, setup + all 11 targets): 26t 28 s, aa ~130 s,
# senet154 172 s
SLOW = ["timm/seresnext26t_32x4d", "timm/seresnextaa101d_32x8d", "timm/senet154"]

# target output name -> (--to, consumer that loads it, python module that must be installed)
TARGETS = {
    "pth": ("pytorch", "timm:{timm}", "torch"),
    "safetensors": ("pytorch", "timm:{timm}", "safetensors"),
    "pt2": ("pytorch", "torch.export", "torch"),
    "onnx": ("onnx", "onnxruntime", "onnxruntime"),
    "inline.onnx": ("onnx", "openvino", "openvino"),
    "keras": ("tensorflow", "keras", "tensorflow"),
    "savedmodel": ("tensorflow", "tensorflow", "tensorflow"),
    "mxnet": ("mxnet", "mxnet", "mxnet"),
    "npz": ("chainer", "chainer", "chainer"),
    "caffe": ("caffe", "opencv", "cv2"),
    "timmdir": ("timm", "timm-local-dir", "timm"),
}
# anti-aliasing has no parameters: these two state_dicts are exactly alike, so their users name the
# architecture (--arch), as the reader's refusal (naming the other) asks
NAMED = {
    "timm/seresnextaa101d_32x8d": "timm/seresnext101d_32x8d",
    "timm/seresnext101d_32x8d": "timm/seresnextaa101d_32x8d",
}

# every other timm architecture repeats the stems and blocks above at other depths and widths: each
# goes through its users' two main loaders (timm's own class from a .safetensors, onnxruntime), so
# every architecture the zoo describes is proven against timm in a written file (slow: ~10-30 s each)
BREADTH = [a for a in zoo.list_archs("timm") if a not in FAST + SLOW]
BREADTH_TARGETS = ("safetensors", "onnx")

CASES = [
    pytest.param(arch, kind, id=f"{arch}-{kind}", marks=[pytest.mark.slow] if arch in SLOW else [])
    for arch in FAST + SLOW
    for kind in TARGETS
] + [
    pytest.param(arch, kind, id=f"{arch}-{kind}", marks=[pytest.mark.slow])
    for arch in BREADTH
    for kind in BREADTH_TARGETS
]


@pytest.fixture(scope="module")
def held() -> Iterator[dict]:
    """The one architecture's source the module holds (see `source`), released at its end."""
    sources_held: dict = {}
    yield sources_held
    sources_held.clear()


@pytest.fixture
def source(request, held, tmp_path_factory):
    """(arch, timm name, the folder of the .pth and .safetensors timm's state_dict was saved as, x,
    timm's output, the models read from those files: filled by _read).

    Made once per architecture and shared by its targets: the CASES run architecture by
    architecture (function-scoped parameters keep their order; a module-scoped parametrization
    would be regrouped by target too), and only the current architecture's nets and files are held
    (the two models read from a 115M-parameter net's files are ~1 GB)."""
    arch = request.param
    if arch not in held:
        held.clear()
        held[arch] = _make_source(arch, tmp_path_factory)
    return held[arch]


def _make_source(arch: str, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from safetensors.torch import save_file

    name = zoo.timm_name(arch)
    net = random_timm_net(name, branch_ends=branch_end_bns(zoo.expand(arch)))
    d = tmp_path_factory.mktemp(arch.replace("/", "_"))
    sd = net.state_dict()
    torch.save(sd, d / "weights.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "weights.safetensors"))
    x = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy().astype(np.float64)
    assert np.isfinite(y).all() and y.std() > 1e-3
    if arch in NAMED:  # without --arch: one line naming both architectures and the option
        with pytest.raises(ModelError, match=f"fits several architectures.*{NAMED[arch]}.*--arch") as e:
            pytorch_source.load(d / "weights.pth")
        assert arch in str(e.value) and "\n" not in str(e.value)
    return arch, name, d, x, y, {}


def _fingerprint(model) -> tuple:
    """What a writer or consumer could change in the model it is given: graph, meta, every weight."""
    return (
        pickle.dumps((model.graph, model.meta)),
        {k: (id(v), float(np.sum(v, dtype=np.float64))) for k, v in model.weights.items()},
    )


def _read(source, kind: str):
    """The model read from the .safetensors (kind "safetensors") or the .pth (every other kind),
    once per file: the targets share it, and with it the consumers' cached float64 reference (a
    93M-parameter net's costs seconds); each test asserts that its writer and consumer left it unchanged."""
    arch, _, d, _, _, models = source
    path = d / ("weights.safetensors" if kind == "safetensors" else "weights.pth")
    if path not in models:
        # --arch only where the file cannot tell (NAMED); else recognised from the keys and shapes
        model = pytorch_source.load(path, arch if arch in NAMED else None)
        assert model.arch == arch
        models[path] = sources.ensure_hashes(model)
    return models[path]


def _at_size(model):
    """The model at the test's input size (TensorFlow and MXNet fix the spatial size when built)."""
    model.graph.input_shape = (model.graph.input_shape[0], 3, SIZE, SIZE)
    return model


@pytest.mark.parametrize(("source", "kind"), CASES, indirect=["source"])
def test_every_target_computes_timms_forward(source, kind, tmp_path):
    to, consumer, probe = TARGETS[kind]
    if importlib.util.find_spec(probe) is None:
        pytest.skip(f"{probe} is not installed")
    arch, name, _, x, want, _ = source
    model = _at_size(_read(source, kind))
    before = _fingerprint(model)
    out = str(
        tmp_path / {"savedmodel": "tf", "mxnet": "net", "caffe": "net", "timmdir": "timm_dir"}.get(kind, f"m.{kind}")
    )
    opts = {"inline": True} if kind == "inline.onnx" else {}
    notes: list[str] = []
    sources.save_model(model, to, out, say=notes.append, **opts)
    report = consumers.verify_artifact(model, out, consumer.format(timm=name), x=x)
    shown = report.backends[0]
    got = np.asarray(report.outputs[shown], np.float64).reshape(want.shape)
    err = float(np.abs(got - want).max() / np.abs(want).max())
    assert err <= 1e-3, f"{arch} -> {kind} in {shown}: max|d|/max|timm| {err:.2e}"
    assert (got.argmax(1) == want.argmax(1)).all()
    assert report.passed, consumers.summary_line(report)
    assert _fingerprint(model) == before, f"{arch} -> {kind} changed the model it was given"


@pytest.mark.parametrize("source", FAST, indirect=True)  # the same rule for every timm architecture
def test_a_timm_arch_in_mindspore_is_refused_or_warned(source, tmp_path):
    """Architecture limits are stated, not discovered: MindCV has none of these timm models, so a
    .ckpt of one either is refused or says that MindCV cannot load it (never silently written as if
    mindcv.create_model would load it)."""
    from senet_hub.errors import SenetHubError

    model = _read(source, "pth")
    notes: list[str] = []
    try:
        sources.save_model(model, "mindspore", str(tmp_path / "m.ckpt"), say=notes.append)
    except SenetHubError as e:
        assert "\n" not in str(e) and ("MindCV" in str(e) or "mindspore" in str(e).lower())
        assert not (tmp_path / "m.ckpt").exists()
        return
    assert any("MindCV" in n for n in notes), notes
