"""Any canonical model (Caffe or MindCV) written to Caffe reads back with identical weights and
outputs. (The .pth of every released architecture loading strict into senet-hub's module is the
`*-torch-vs-numpy` column of tests/test_parity_matrix.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from senet_hub import zoo
from senet_hub.builders import numpy_ref
from senet_hub.converters import caffe, caffe_writer


@pytest.mark.parametrize("arch", ["seresnet18", "seresnext26_32x4d", "SE-BN-Inception", "SE-ResNet-50"])
def test_to_caffe_reads_back_identical(arch, tmp_path):
    model = zoo.synthetic_model(arch, seed=2)
    prototxt, caffemodel = caffe_writer.save(model, tmp_path / arch)
    back = caffe.load(prototxt, caffemodel)
    assert len(back.graph.nodes) == len(model.graph.nodes)
    for a, b in zip(model.graph.nodes, back.graph.nodes):
        assert a.op == b.op or {a.op, b.op} == {"max_pool"}, (a.name, a.op, b.op)
        for p in a.param_names():
            np.testing.assert_array_equal(back.weights[f"{b.name}.{p}"], model.weights[f"{a.name}.{p}"])
    if arch.startswith("SE-"):  # a released Caffe architecture is recognised again
        assert back.arch == arch and [n.name for n in back.graph.nodes] == [n.name for n in model.graph.nodes]
    x = np.random.default_rng(3).normal(0, 1, (2, *model.graph.input_shape[1:]))
    np.testing.assert_array_equal(numpy_ref.forward(back, x), numpy_ref.forward(model, x))
