"""TensorFlow consumers: ``tf.saved_model.load`` (a SavedModel directory) and
``keras.models.load_model`` (a .keras file)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FormatError
from ..graph import Model
from .core import Job, _first_line, register


def _layout(shape: Any, model: Model) -> str:
    """The serving layout of a TensorFlow file from its input shape ([N, H, W, C] or [N, C, H, W])."""
    c = int(model.graph.input_shape[1])
    dims = list(shape)
    return "nhwc" if len(dims) == 4 and dims[-1] == c and dims[1] != c else "nchw"


def _nchw(v: np.ndarray) -> np.ndarray:
    return v.transpose(0, 3, 1, 2) if v.ndim == 4 else v


@register(
    "tensorflow",
    formats=("savedmodel",),
    needs=("tensorflow",),
    install="pip install 'senet-hub[tensorflow]'",
    default_for=("savedmodel",),
    description="tf.saved_model.load(dir).signatures['serving_default'] (its NHWC/NCHW layout); final output",
)
def _run_tensorflow(job: Job) -> dict[str, np.ndarray]:
    from ..builders import tensorflow as tfb

    try:
        fn = tfb.load(job.path)
    except Exception as e:
        raise FormatError(f"{job.path}: tf.saved_model.load cannot read it ({_first_line(e)})") from None
    import tensorflow as tf

    job.version = tf.__version__
    specs = fn.structured_input_signature[1]
    key, spec = next(iter(specs.items()))
    layout = _layout(spec.shape, job.model)
    feed = job.x if layout == "nchw" else job.x.transpose(0, 2, 3, 1)
    res = fn(**{key: tf.constant(np.ascontiguousarray(feed, np.float32))})
    y = np.asarray(next(iter(res.values())))
    job.notes.append(f"SavedModel serving_default signature, {layout.upper()} input")
    return {job.final: _nchw(y)}


@register(
    "keras",
    formats=("keras",),
    needs=("tensorflow", "keras"),
    install="pip install 'senet-hub[tensorflow]'",
    default_for=("keras",),
    description="keras.models.load_model(file) (its layout); per node from the layers named like the nodes",
)
def _run_keras(job: Job) -> dict[str, np.ndarray]:
    import keras

    from ..builders import tensorflow as tfb

    try:
        net = keras.models.load_model(job.path, safe_mode=True)  # safe mode: no lambdas / code
    except Exception as e:
        raise FormatError(f"{job.path}: keras.models.load_model cannot read it ({_first_line(e)})") from None
    job.version = keras.__version__
    layout = _layout(net.input_shape, job.model)
    feed = np.ascontiguousarray(job.x if layout == "nchw" else job.x.transpose(0, 2, 3, 1), np.float32)
    # per node: the layer named like the node (names unique after Keras' character mapping only)
    layers = {layer.name for layer in net.layers}
    keyed: dict[str, list[str]] = {}
    for n in job.model.graph.nodes:
        keyed.setdefault(tfb.keras_name(n.name), []).append(n.name)
    taps = [v[0] for k, v in keyed.items() if len(v) == 1 and k in layers and v[0] != job.final]
    tapped = keras.Model(net.input, [net.get_layer(tfb.keras_name(n)).output for n in taps] + [net.output])
    ys = tapped(feed, training=False)
    ys = ys if isinstance(ys, (list, tuple)) else [ys]
    out = {n: _nchw(np.asarray(y)) for n, y in zip(taps, ys[:-1])}
    out[job.final] = _nchw(np.asarray(ys[-1]))
    job.notes.append(
        f"keras.models.load_model, {layout.upper()} input; per-node values from the layers named like the nodes"
    )
    return out
