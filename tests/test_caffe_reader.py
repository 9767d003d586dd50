"""Unit tests of the Caffe reader: text format, wire format variants, handlers."""

from __future__ import annotations

import numpy as np
import pytest
from all_ops import op_case

# TINY and _weights are imported from here by other test files (until they import from fuzzing)
from fuzzing import TINY, V1_NET, _varint
from fuzzing import tiny_weights as _weights

from senet_hub import ops
from senet_hub.builders import numpy_ref
from senet_hub.converters import caffe, caffe_writer
from senet_hub.converters.caffe_format import encode_layer, ld, parse_prototxt, read_caffemodel
from senet_hub.errors import FormatError, ModelError, UnsupportedError


def _write(tmp_path, text, blobs, layer_bytes=None):
    p = tmp_path / "m.prototxt"
    p.write_text(text)
    w = tmp_path / "m.caffemodel"
    types = {"conv": "Convolution", "conv/bn": "BatchNorm", "conv/scale": "Scale", "fc": "InnerProduct"}
    w.write_bytes(
        layer_bytes if layer_bytes is not None else b"".join(encode_layer(k, types[k], v) for k, v in blobs.items())
    )
    return p, w


def test_tiny_net_semantics(tmp_path):
    rng = np.random.default_rng(0)
    blobs = _weights(rng)
    p, w = _write(tmp_path, TINY, blobs)
    m = caffe.load(p, w)
    assert [n.op for n in m.graph.nodes] == ["conv", "batch_norm", "relu", "max_pool", "linear", "softmax"]
    bn = m.graph.nodes[1]
    assert bn.source == ["conv/bn", "conv/scale"]
    # BatchNorm blobs are divided by the scale factor (third blob)
    np.testing.assert_allclose(m.weights["conv/bn.running_mean"], blobs["conv/bn"][0] / 2)
    np.testing.assert_allclose(m.weights["conv/bn.running_var"], blobs["conv/bn"][1] / 2)
    np.testing.assert_array_equal(m.weights["conv/bn.weight"], blobs["conv/scale"][0])
    assert bn.attrs["eps"] == 1e-5
    # conv 9 -> 5; ceil max pool k3 s2: 5 -> 2
    x = rng.normal(size=(2, 3, 9, 9)).astype(np.float32)
    outs = numpy_ref.run(numpy_ref.build(m), x)
    assert outs["pool"].shape == (2, 4, 2, 2)
    # independent hand computation
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    W = blobs["conv"][0].astype(np.float64)
    conv = np.zeros((2, 4, 5, 5))
    for i in range(5):
        for j in range(5):
            conv[:, :, i, j] = np.einsum("ncij,ocij->no", xp[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3], W)
    mean, var = blobs["conv/bn"][0] / 2.0, blobs["conv/bn"][1] / 2.0
    g, b = blobs["conv/scale"]
    y = np.maximum(
        (conv - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * g[:, None, None] + b[:, None, None], 0
    )
    np.testing.assert_allclose(outs["relu"], y, rtol=1e-6, atol=1e-9)


def test_ceil_pool_clip_rule():
    from senet_hub.graph import pool_out

    assert pool_out(112, 3, 2, 0, 0, True) == 56
    assert pool_out(112, 3, 2, 0, 0, False) == 55
    # a last window starting inside size + pad is kept
    assert pool_out(6, 2, 2, 1, 1, True) == 4
    assert pool_out(5, 2, 2, 1, 1, True) == 3  # ceil gives 4, window 4 would start at 6 >= 5 + 1


def test_legacy_formats(tmp_path):
    """V1 `layers` with enum types, legacy num/channels/height/width shapes, double_data, unpacked floats."""
    rng = np.random.default_rng(1)
    blobs = _weights(rng)

    def legacy_blob(arr, double=False, unpacked=False):
        dims = (1,) * (4 - arr.ndim) + arr.shape
        body = b"".join(_varint(f << 3) + _varint(d) for f, d in zip((1, 2, 3, 4), dims))
        if double:
            body += ld(8, arr.astype("<f8").tobytes())
        elif unpacked:
            body += b"".join(_varint(5 << 3 | 5) + v.tobytes() for v in arr.astype("<f4").ravel())
        else:
            body += ld(5, arr.astype("<f4").tobytes())
        return body

    def v1_layer(name, enum, arrs, **kw):
        body = ld(4, name.encode()) + _varint(5 << 3) + _varint(enum)
        return ld(2, body + b"".join(ld(6, legacy_blob(a, **kw)) for a in arrs))

    data = v1_layer("conv", 4, blobs["conv"], double=True) + v1_layer("fc", 14, blobs["fc"], unpacked=True)
    p, w = _write(tmp_path, V1_NET, None, data)
    layers = read_caffemodel(w)
    assert layers["fc"][0] == "InnerProduct" and layers["fc"][1][0].shape == (1, 1, 5, 16)
    m = caffe.load(p, w)
    assert [n.op for n in m.graph.nodes] == ["conv", "relu", "max_pool", "linear", "softmax"]
    np.testing.assert_array_equal(m.weights["fc.weight"], blobs["fc"][0])
    np.testing.assert_array_equal(m.weights["conv.weight"], blobs["conv"][0])


def test_unsupported_types_listed_with_counts(tmp_path):
    text = (
        TINY
        + """
layer { name: "n1" type: "LRN" bottom: "prob" top: "n1" }
layer { name: "n2" type: "LRN" bottom: "n1" top: "n2" }
layer { name: "t" type: "TanH" bottom: "n2" top: "t" }
"""
    )
    p, w = _write(tmp_path, text, _weights(np.random.default_rng(0)))
    with pytest.raises(UnsupportedError) as e:
        caffe.load(p, w)
    msg = str(e.value)
    assert "LRN x2 (n1, n2)" in msg and "TanH x1 (t)" in msg and str(p) in msg and "\n" not in msg


def test_lone_scale_eltwise_and_inplace(tmp_path):
    text = """
input: "data" input_dim: 2 input_dim: 2 input_dim: 4 input_dim: 4
layer { name: "s" type: "Scale" bottom: "data" top: "s" scale_param { bias_term: true } }
layer { name: "r" type: "ReLU" bottom: "s" top: "s" }
layer { name: "e" type: "Eltwise" bottom: "s" bottom: "data" top: "e" }
layer { name: "split" type: "Split" bottom: "e" top: "e1" top: "e2" }
layer { name: "c" type: "Concat" bottom: "e1" bottom: "e2" top: "c" }
"""
    g, b = np.array([2.0, -1.0], np.float32), np.array([0.5, 0.25], np.float32)
    p, w = _write(tmp_path, text, None, encode_layer("s", "Scale", [g, b]))
    m = caffe.load(p, w)
    x = np.random.default_rng(0).normal(size=(2, 2, 4, 4)).astype(np.float32)
    y = numpy_ref.forward(m, x)
    s = np.maximum(x * g[:, None, None] + b[:, None, None], 0) + x
    np.testing.assert_allclose(y, np.concatenate([s, s], 1), rtol=1e-6)


def test_prototxt_errors_name_the_line():
    with pytest.raises(FormatError, match=r"x.prototxt:3"):
        parse_prototxt('name: "a"\nlayer {\n  }}\n', "x.prototxt")
    with pytest.raises(FormatError, match="missing '}'"):
        parse_prototxt("layer { name: 'a' ", "x.prototxt")
    assert parse_prototxt("a: [1, 2] b { c: 'x' }")["a"] == ["1", "2"]


def test_mismatch_errors(tmp_path):
    rng = np.random.default_rng(0)
    blobs = _weights(rng)
    missing = dict(blobs)
    del missing["conv/bn"]
    p, w = _write(tmp_path, TINY, missing)
    with pytest.raises(ModelError, match=r"layer 'conv/bn'.*does not match"):
        caffe.load(p, w)
    wrong = dict(blobs, conv=[np.zeros((4, 3, 5, 5), np.float32)])
    p, w = _write(tmp_path, TINY, wrong)
    with pytest.raises(ModelError, match=r"layer 'conv'.*\(4, 3, 5, 5\).*\(4, 3, 3, 3\)"):
        caffe.load(p, w)


def test_writer_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(3)
    p, w = _write(tmp_path, TINY, _weights(rng))
    m = caffe.load(p, w)
    out = caffe_writer.save(m, tmp_path / "rt")
    m2 = caffe.load(*out)
    assert [n.name for n in m2.graph.nodes] == [n.name for n in m.graph.nodes]
    for k, v in m.weights.items():
        np.testing.assert_array_equal(m2.weights[k], v)
    x = rng.normal(size=(1, 3, 9, 9)).astype(np.float32)
    np.testing.assert_array_equal(numpy_ref.forward(m, x), numpy_ref.forward(m2, x))


def test_every_op_has_a_caffe_writer_lowering():
    """The writer's table covers the vocabulary: every op has a lowering or a declared refusal."""
    missing = caffe_writer.LOWER.missing()
    assert not missing, f"caffe writer: no lowering (nor declared refusal) for {', '.join(missing)}"
    assert caffe_writer.LOWER.backend == "caffe"
    assert set(caffe_writer.LOWER.refused) == {"input_norm"}  # the one op Caffe has no layer for


def test_writer_refuses_an_op_by_name_and_writes_nothing(tmp_path, monkeypatch):
    """An op without a Caffe lowering is one MissingLowering (an UnsupportedError: exit 6) naming the
    op, the node and backend 'caffe', raised before anything is written."""
    with pytest.raises(
        ops.MissingLowering,
        match=r"^backend 'caffe' cannot express op 'input_norm' \(node 'n'\): .*--input-convention caffe",
    ) as e:
        caffe_writer.save(op_case("input_norm"), tmp_path / "m")
    assert isinstance(e.value, UnsupportedError) and e.value.exit_code == 6 and "\n" not in str(e.value)
    # as if 'sigmoid' had just been declared in ops.py and the writer had no lowering for it yet
    monkeypatch.delitem(caffe_writer.LOWER._fns, "sigmoid")
    model = op_case("sigmoid")
    for attempt in (
        lambda: caffe_writer.save(model, tmp_path / "m"),
        lambda: caffe_writer.write_caffemodel_for(model, tmp_path / "m.caffemodel"),
        lambda: caffe_writer.to_caffe(model),
    ):
        with pytest.raises(ops.MissingLowering, match=r"backend 'caffe' cannot express op 'sigmoid' \(node 's'\)$"):
            attempt()
    assert not list(tmp_path.iterdir())
