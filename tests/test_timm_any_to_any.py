"""Any to any, proved against timm itself (issue 14 item 6).

timm builds an SE model with random weights and randomized BatchNorm statistics; its state_dict is
saved the two ways people get timm weights (``torch.save`` -> ``.pth``, ``safetensors`` ->
``.safetensors``), read with ``--from pytorch`` (architecture recognised from keys and shapes),
written to every target, and each written file is loaded *with the tool its users load it with*
(timm's own model class, torch.export, onnxruntime, OpenVINO, Keras, TensorFlow, MXNet gluon,
Chainer, OpenCV DNN for the Caffe files, timm's ``local-dir:`` hub loader). The consumer's final
output must match timm's own forward on the same input within 1e-3 * max|timm| — not only
senet-hub's reference (which test_timm_zoo.py proves equal to timm node by node).

Architectures: two full-depth nets that cover the families' blocks cheaply (senet.py's basic
block; resnet.py's deep stem and average-pool shortcut). timm is installed ``--no-deps`` and imported with the
test-only torchvision stub (tests/stubs, put on sys.path by tests/conftest.py).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from senet_hub import consumers, sources, zoo
from senet_hub.converters import pytorch as pytorch_source

torch = pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
timm = pytest.importorskip("timm", reason="timm not installed (the test extra installs it --no-deps)")

SIZE = 64  # timm's SE nets pool globally: any size from 32 up (multiples of 32 for the aa nets)
# senet.py's basic block and Cadene names; resnet.py's deep stem, floor-mode stem max pool and
# average-pool shortcut. The other stems and blocks (tiered, anti-aliased, SENet-154) are matched
# with timm node by node in test_timm_zoo.py and are the same ops on every backend
# (test_op_conformance.py), so they are not run through every target again (CI time).
FAST = ["legacy_seresnet18", "timm/seresnext26d_32x4d"]
SLOW: list[str] = []

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


def _timm_net(name: str, seed: int = 0):
    """timm's model with random weights, randomized BN statistics (and small gammas closing the
    residual branches, so a deep net's SE gates stay off their saturated tails), eval mode."""
    torch.manual_seed(seed)
    net = timm.create_model(name, pretrained=False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                closing = n.startswith("layer") and n.endswith(("bn2", "bn3"))  # a bottleneck's bn2 too: harmless
                m.weight.uniform_(*((0.1, 0.3) if closing else (0.5, 1.5)), generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    return net.eval()


@pytest.fixture(scope="module", params=[*FAST, *(pytest.param(a, marks=pytest.mark.slow) for a in SLOW)])
def source(request, tmp_path_factory):
    """(arch, timm name, the .pth and .safetensors timm's state_dict was saved as, x, timm's output)."""
    from safetensors.torch import save_file

    arch = request.param
    name = zoo.timm_name(arch)
    net = _timm_net(name)
    d = tmp_path_factory.mktemp(arch.replace("/", "_"))
    sd = net.state_dict()
    torch.save(sd, d / "weights.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "weights.safetensors"))
    x = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy().astype(np.float64)
    assert np.isfinite(y).all() and y.std() > 1e-3
    return arch, name, d, x, y


def _read(source, kind: str):
    arch, _, d, _, _ = source
    path = d / ("weights.safetensors" if kind == "safetensors" else "weights.pth")
    model = pytorch_source.load(path)  # no --arch: recognised from the keys and shapes
    assert model.arch == arch
    return sources.ensure_hashes(model)


def _at_size(model):
    """The model at the test's input size (TensorFlow and MXNet fix the spatial size when built)."""
    model.graph.input_shape = (model.graph.input_shape[0], 3, SIZE, SIZE)
    return model


@pytest.mark.parametrize("kind", list(TARGETS))
def test_every_target_computes_timms_forward(source, kind, tmp_path):
    to, consumer, probe = TARGETS[kind]
    if importlib.util.find_spec(probe) is None:
        pytest.skip(f"{probe} is not installed")
    arch, name, _, x, want = source
    model = _at_size(_read(source, kind))
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
