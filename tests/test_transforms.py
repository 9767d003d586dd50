"""Input convention and class order rewrites are exact: the rewritten model on rewritten input
equals the original model on the original input, class for class."""

from __future__ import annotations

import numpy as np
import pytest

from senet_hub.builders import numpy_ref
from senet_hub.graph import Graph, Model, Node
from senet_hub.transforms import CONVENTIONS, class_permutation, set_class_order, set_input_convention


def _model(pad: int, classes: int = 1000) -> Model:
    rng = np.random.default_rng(pad)
    conv = {
        "out_channels": 8,
        "kernel": (3, 3),
        "stride": (2, 2),
        "pad": (pad,) * 4,
        "dilation": (1, 1),
        "groups": 1,
        "bias": False,
    }
    nodes = [
        Node("conv1", "conv", ["data"], conv),
        Node("relu", "relu", ["conv1"]),
        Node("pool", "global_avg_pool", ["relu"]),
        Node("fc", "linear", ["pool"], {"out_features": classes, "bias": True}),
        Node("prob", "softmax", ["fc"]),
    ]
    w = {
        "conv1.weight": rng.normal(0, 0.02, (8, 3, 3, 3)).astype(np.float32),
        "fc.weight": rng.normal(size=(classes, 8)).astype(np.float32),
        "fc.bias": rng.normal(size=classes).astype(np.float32),
    }
    meta = {"arch": "tiny", "input_convention": dict(CONVENTIONS["caffe"], size=16), "class_order": "senet"}
    return Model(Graph(nodes, "data", (1, 3, 16, 16)), w, meta)


def _caffe_input_from_rgb01(x01: np.ndarray) -> np.ndarray:
    """What the Caffe model is fed for an RGB [0,1] image: BGR, x255, minus 104/117/123."""
    return (x01[:, ::-1] * 255.0 - np.array([104.0, 117.0, 123.0])[None, :, None, None]).astype(np.float64)


@pytest.mark.parametrize("pad", [0, 1])
def test_rgb01_convention_is_exact(pad):
    m = _model(pad)
    m2 = set_input_convention(m, "rgb01")
    folded = m2.graph.nodes[0].op != "input_norm"
    assert folded == (pad == 0), "folding must happen exactly when the first conv pads nothing"
    rng = np.random.default_rng(5)
    x01 = rng.uniform(0, 1, (2, 3, 16, 16))
    mean, std = (
        np.array([0.485, 0.456, 0.406])[None, :, None, None],
        np.array([0.229, 0.224, 0.225])[None, :, None, None],
    )
    ref = numpy_ref.run(numpy_ref.build(m), _caffe_input_from_rgb01(x01))
    got = numpy_ref.run(numpy_ref.build(m2), (x01 - mean) / std)
    np.testing.assert_allclose(got["fc"], ref["fc"], rtol=0, atol=1e-6 * np.abs(ref["fc"]).max())  # float32 weights
    assert m2.meta["input_convention"]["channel_order"] == "RGB"
    # and back again
    m3 = set_input_convention(m2, "caffe")
    got3 = numpy_ref.run(numpy_ref.build(m3), _caffe_input_from_rgb01(x01))
    np.testing.assert_allclose(got3["fc"], ref["fc"], rtol=0, atol=1e-6 * np.abs(ref["fc"]).max())  # float32 weights


def test_class_order_is_a_permutation_class_for_class():
    perm = class_permutation()
    assert sorted(perm.tolist()) == list(range(1000))
    m = _model(1)
    m2 = set_class_order(m, "ilsvrc2012")
    x = np.random.default_rng(0).normal(0, 50, (2, 3, 16, 16))
    a = numpy_ref.forward(m, x)
    b = numpy_ref.forward(m2, x)
    for s in range(1000):  # SENet class s is sorted class perm[s]
        np.testing.assert_array_equal(a[:, s], b[:, perm[s]])
    back = set_class_order(m2, "senet")
    np.testing.assert_array_equal(back.weights["fc.weight"], m.weights["fc.weight"])
    assert m2.meta["class_order"] == "ilsvrc2012"
