"""The canonical graph: validation names the offending node; op semantics pinned by hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from senet_hub.builders import numpy_ref
from senet_hub.errors import ModelError
from senet_hub.graph import Graph, Model, Node, infer_shapes, pool_out, rename, structure, validate


def _model():
    rng = np.random.default_rng(0)
    nodes = [
        Node(
            "c",
            "conv",
            ["data"],
            {
                "out_channels": 4,
                "kernel": (3, 3),
                "stride": (1, 1),
                "pad": (1, 1, 1, 1),
                "dilation": (1, 1),
                "groups": 2,
                "bias": True,
            },
        ),
        Node("g", "global_avg_pool", ["c"]),
        Node("s", "sigmoid", ["g"]),
        Node("ax", "axpy", ["s", "c", "c"]),
        Node("fc", "linear", ["ax"], {"out_features": 3, "bias": False}),
    ]
    w = {
        "c.weight": rng.normal(size=(4, 1, 3, 3)).astype(np.float32),
        "c.bias": rng.normal(size=4).astype(np.float32),
        "fc.weight": rng.normal(size=(3, 4 * 5 * 5)).astype(np.float32),
    }
    return Model(Graph(nodes, "data", (1, 2, 5, 5)), w)


def test_shapes_and_validation():
    m = _model()
    shapes = validate(m)
    assert shapes["ax"] == (1, 4, 5, 5) and shapes["fc"] == (1, 3)
    bad = m.copy()
    bad.weights["c.weight"] = np.zeros((4, 2, 3, 3), np.float32)
    with pytest.raises(
        ModelError, match=r"node 'c' \(conv\): parameter 'weight' has shape \(4, 2, 3, 3\), expected \(4, 1, 3, 3\)"
    ):
        infer_shapes(bad)
    bad = m.copy()
    bad.graph.nodes[3].inputs = ["s", "c", "nowhere"]
    with pytest.raises(ModelError, match="node 'ax': input 'nowhere'"):
        infer_shapes(bad)
    bad = m.copy()
    del bad.weights["fc.weight"]
    with pytest.raises(ModelError, match="node 'fc' .*missing parameter 'weight'"):
        infer_shapes(bad)
    bad = m.copy()
    bad.weights["extra.weight"] = np.zeros(1)
    with pytest.raises(ModelError, match="not used"):
        validate(bad)
    with pytest.raises(ModelError, match="node 'c'.*empty"):
        infer_shapes(m, (1, 2, 0, 5))


def test_axpy_semantics_and_rename():
    m = _model()
    x = np.random.default_rng(1).normal(size=(2, 2, 5, 5))
    out = numpy_ref.run(numpy_ref.build(m), x)
    a = 1 / (1 + np.exp(-out["c"].mean(axis=(2, 3))))
    np.testing.assert_allclose(out["ax"], a[:, :, None, None] * out["c"] + out["c"])
    r = rename(m, {"c": "layer0.conv1", "fc": "last_linear"})
    assert "layer0.conv1.weight" in r.weights and r.graph.nodes[3].inputs == ["s", "layer0.conv1", "layer0.conv1"]
    assert structure(r.graph) == structure(m.graph)


@pytest.mark.parametrize(
    "size,k,s,p0,p1,ceil,expected",
    [
        (112, 3, 2, 0, 0, True, 56),
        (112, 3, 2, 0, 0, False, 55),
        (7, 7, 1, 0, 0, True, 1),
        (112, 3, 2, 0, 1, False, 56),
        (5, 2, 2, 1, 1, True, 3),
        (28, 3, 1, 1, 1, True, 28),
    ],
)
def test_pool_out(size, k, s, p0, p1, ceil, expected):
    assert pool_out(size, k, s, p0, p1, ceil) == expected


def test_avg_pool_counts_padding():
    x = np.ones((1, 1, 3, 3))
    node = Node(
        "p",
        "avg_pool",
        ["data"],
        {"kernel": (3, 3), "stride": (1, 1), "pad": (1, 1, 1, 1), "ceil": True, "count_include_pad": True},
    )
    y = numpy_ref.run_node(node, [x], {})
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9) and y[0, 0, 1, 1] == 1.0
    node.attrs["count_include_pad"] = False
    assert numpy_ref.run_node(node, [x], {})[0, 0, 0, 0] == 1.0


def test_input_norm_is_exact_affine_and_swap():
    node = Node("n", "input_norm", ["data"], {"perm": [2, 1, 0], "scale": [2.0, 3.0, 4.0], "shift": [1.0, 0.0, -1.0]})
    x = np.arange(3.0).reshape(1, 3, 1, 1)
    y = numpy_ref.run_node(node, [x], {})
    assert y.ravel().tolist() == [2 * 2 + 1, 1 * 3, 0 * 4 - 1]
