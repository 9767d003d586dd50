"""Every released architecture: its .pth loads strict into senet-hub's module, and any canonical
model (Caffe or MindCV) written to Caffe reads back with identical weights and outputs."""

from __future__ import annotations

import numpy as np
import pytest

from senet_hub import zoo
from senet_hub.builders import numpy_ref
from senet_hub.converters import caffe, caffe_writer
from senet_hub.converters.pth import save_model as save_pth

BIG = {"SE-ResNet-152", "SE-ResNeXt-101", "SENet-154"}
ARCHS = [pytest.param(a, marks=pytest.mark.slow) if a in BIG else a for a in zoo.list_archs()]


@pytest.mark.parametrize("arch", ARCHS)
def test_pth_loads_strict_into_senet_hub_module(arch, tmp_path):
    pytest.importorskip("torch", reason="torch not installed (pip install 'senet-hub[torch]')")
    from senet_hub.builders import torch as tb

    model = zoo.synthetic_model(arch, seed=1)
    path = tmp_path / "m.pth"
    save_pth(model, str(path))
    module = tb.load_state_dict(zoo.expand(arch), path)  # a module built from the architecture alone, strict=True
    x = np.random.default_rng(0).normal(0, 1, (1, *model.graph.input_shape[1:])).astype(np.float32)
    got = tb.run(module, x, taps=False)[model.graph.output]
    ref = numpy_ref.forward(model, x)
    assert np.abs(got - ref).max() <= 1e-3 * np.abs(ref).max()


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
