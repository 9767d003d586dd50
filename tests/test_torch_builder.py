"""PyTorch builder (senet_hub.builders.torch): every op against the numpy reference, node by node;
.pth / .pt2 / .pt files; canonical state_dict keys."""

from __future__ import annotations

import os

import numpy as np
import pytest
from all_ops import random_weights, senet_112

from senet_hub.builders import numpy_ref
from senet_hub.errors import ModelError, OutputError
from senet_hub.graph import Graph, Model, Node, pool_out

torch = pytest.importorskip("torch")
from senet_hub.builders import torch as tb  # noqa: E402  (ours: a broken module fails, never skips)

RTOL = 1e-5


def _conv(name, x, o, k, s=1, pad=(0, 0, 0, 0), groups=1, bias=True, dilation=(1, 1)):
    return Node(
        name,
        "conv",
        [x],
        dict(out_channels=o, kernel=(k, k), stride=(s, s), pad=pad, dilation=dilation, groups=groups, bias=bias),
    )


@pytest.fixture(scope="module")
def model() -> Model:
    return senet_112()  # the shared every-op fixture (tests/all_ops.py)


@pytest.fixture(scope="module")
def module(model):
    return tb.build(model)


def _x(m: Model, batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (batch, *m.graph.input_shape[1:])).astype(np.float32)


def _compare(ref: dict, got: dict, nodes) -> None:
    bad = []
    for n in nodes:
        r, g = ref[n], got[n]
        assert g.shape == r.shape, f"{n}: shape {g.shape} != {r.shape}"
        err, scale = float(np.max(np.abs(g - r))), float(np.max(np.abs(r)))
        if err > RTOL * max(scale, 1e-30):
            bad.append(f"{n}: max|d| {err:.3g} > {RTOL} * {scale:.3g}")
    assert not bad, "; ".join(bad)


def test_interface():
    assert tb.NAME == "torch" and tb.EXTRA == "torch"
    assert tb.available() == torch.__version__
    from senet_hub import builders

    assert builders.get("pytorch") is tb


def test_pool_cases_in_the_graph(model):
    # the corner cases the test graph is meant to cover
    assert pool_out(112, 3, 2, 0, 0, True) == 56 and pool_out(112, 3, 2, 0, 0, False) == 55
    assert pool_out(28, 3, 2, 0, 1, False) == 14
    assert pool_out(14, 3, 2, 2, 2, True) == 8
    steps = {s.name: s for s in tb.build(model)._senet_steps}
    # symmetric: torch's own pooling; otherwise the explicit canvas path
    assert steps["layer0.pool"].attrs.symmetric and steps["layer1.0.avg"].attrs.symmetric
    assert not steps["layer2.pool"].attrs.symmetric and not steps["layer3.clip"].attrs.symmetric
    assert not steps["layer3.avg_as_in"].attrs.symmetric


@pytest.mark.parametrize("batch", [1, 2])
def test_every_node_matches_reference(model, module, batch):
    x = _x(model, batch)
    ref = numpy_ref.run(numpy_ref.build(model, np.float64), x)
    got = tb.run(module, x, taps=True)
    assert list(got) == [n.name for n in model.graph.nodes]
    assert all(v.dtype == np.float32 for v in got.values())
    _compare(ref, got, got)
    final = tb.run(module, x, taps=False)
    assert list(final) == ["prob"]
    np.testing.assert_array_equal(final["prob"], got["prob"])


def test_module_structure(model, module):
    assert not module.training
    assert isinstance(module.get_submodule("layer0.conv1"), torch.nn.Conv2d)
    assert module.get_submodule("layer1.0.conv1").groups == 4
    bn = module.get_submodule("layer1.0.bn1")
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.eps == 1e-3 and bn.momentum == 0.1
    assert isinstance(module.get_submodule("last_linear"), torch.nn.Linear)
    keys = set(module.state_dict())
    canonical = set(model.weights)
    assert canonical <= keys
    assert keys - canonical == {k for k in keys if k.endswith(".num_batches_tracked")}
    assert all(p.dtype == torch.float32 for p in module.parameters())
    np.testing.assert_array_equal(
        module.state_dict()["layer0.conv1.weight"].numpy(), model.weights["layer0.conv1.weight"]
    )


def test_conflicting_names_fail_clearly():
    g = Graph([_conv("forward", "data", 4, 1)], "data", (1, 3, 8, 8))
    m = Model(g, random_weights(g, 0))
    with pytest.raises(ModelError, match="forward"):
        tb.build(m)


def test_pth_round_trip_strict(model, module, tmp_path):
    p = tmp_path / "m.pth"
    assert tb.save(model, p) == [str(p)]
    assert not [f for f in os.listdir(tmp_path) if f != "m.pth"]  # no temporaries left
    sd = torch.load(p, weights_only=True)
    assert set(sd) == set(module.state_dict())
    # into a fresh module built from the graph alone (random init), strict
    fresh = tb.load_state_dict(model.graph, p)
    x = _x(model, 1)
    np.testing.assert_array_equal(tb.run(fresh, x, taps=False)["prob"], tb.run(module, x, taps=False)["prob"])
    # plain torch strict load into the built module
    module.load_state_dict(sd, strict=True)
    # a state_dict missing a key is rejected with a one-line ModelError
    del sd["last_linear.bias"]
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(ModelError, match="last_linear.bias"):
        tb.load_state_dict(model.graph, bad)


def test_pth_is_byte_identical(model, tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    tb.save(model, a)
    tb.save(tb.build(model), b)
    assert a.read_bytes() == b.read_bytes()
    # the torch-free writer lists keys in the order torch's own state_dict() does
    assert list(torch.load(a, weights_only=True)) == list(tb.build(model).state_dict())


def test_pt2_reload_dynamic_batch(model, module, tmp_path):
    p = tmp_path / "m.pt2"
    tb.save(module, p)
    loaded = torch.export.load(str(p)).module()
    for batch in (1, 3):
        x = _x(model, batch, seed=batch)
        with torch.no_grad():
            got = loaded(torch.from_numpy(x)).numpy()
        want = tb.run(module, x, taps=False)["prob"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pt_torchscript(model, module, tmp_path):
    p = tmp_path / "m.pt"
    tb.save(module, p)
    loaded = torch.jit.load(str(p))
    x = _x(model, 3)
    with torch.no_grad():
        got = loaded(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, tb.run(module, x, taps=False)["prob"], rtol=1e-5, atol=1e-7)


def test_output_errors(model, tmp_path):
    with pytest.raises(OutputError, match=r"\.pth"):
        tb.save(model, tmp_path / "m.onnx")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write to read-only directories")
        with pytest.raises(OutputError, match="not writable"):
            tb.save(model, ro / "m.pth")
        assert os.listdir(ro) == []
    finally:
        ro.chmod(0o755)
    with pytest.raises(OutputError, match="does not exist"):
        tb.save(model, tmp_path / "missing" / "m.pth")


@pytest.mark.parametrize("name", ["m.pth", "m.pt2"])
def test_unwritable_directory_simulated(model, tmp_path, monkeypatch, name):
    # root ignores directory permissions: make the check and the final rename fail instead
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(tmp_path) else real_access(p, mode))
    with pytest.raises(OutputError, match="not writable"):
        tb.save(model, tmp_path / name)
    monkeypatch.setattr(os, "access", real_access)

    def deny(src, dst):
        raise PermissionError(13, "Permission denied", dst)

    monkeypatch.setattr(os, "replace", deny)
    with pytest.raises(OutputError, match="cannot write"):
        tb.save(model, tmp_path / name)
    assert os.listdir(tmp_path) == []


def test_failed_export_leaves_nothing(model, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.export, "save", boom)
    with pytest.raises(RuntimeError):
        tb.save(model, tmp_path / "m.pt2")
    assert os.listdir(tmp_path) == []


def test_zoo_state_dict_keys():
    from senet_hub import zoo

    m = zoo.synthetic_model("SE-ResNet-50")
    keys = set(tb.SENetModule(m.graph).state_dict())
    for k in ("layer0.conv1.weight", "layer1.0.se_module.fc1.weight", "last_linear.weight"):
        assert k in keys
    assert {k for k in keys if not k.endswith("num_batches_tracked")} == set(m.weights)


# test_missing_lowering_names_op_and_backend: tests/test_op_conformance.py (every table backend)


def test_every_op_has_a_torch_lowering():
    assert tb.LOWER.missing() == [] and not tb.LOWER.refused
    # the ops whose parameters or buffers live in submodules (state_dict keys, .to(), torch.export)
    assert {op for op in ("conv", "batch_norm", "linear", "input_norm") if op in tb.MAKE} == {
        "conv",
        "batch_norm",
        "linear",
        "input_norm",
    }
