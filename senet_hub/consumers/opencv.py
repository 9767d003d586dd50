"""OpenCV DNN consumer of a Caffe prefix (.prototxt + .caffemodel), Axpy and floor-mode pools rewritten in a
patched copy (builders.opencv.patch_for_opencv)."""

from __future__ import annotations

import os
import tempfile

import numpy as np

from ..errors import FormatError, ModelError, SenetHubError
from ..graph import infer_shapes
from .core import Job, _first_line, register


@register(
    "opencv",
    formats=("caffe",),
    needs=("cv2",),
    install="pip install 'senet-hub[opencv]'",
    default_for=("caffe",),
    description="cv2.dnn.readNetFromCaffe(prototxt, caffemodel), Axpy rewritten (OpenCV's is a*y+x); per layer",
)
def _run_opencv(job: Job) -> dict[str, np.ndarray]:
    import cv2

    from ..builders.opencv import patch_for_opencv
    from ..converters import caffe_writer

    prototxt, caffemodel = job.files
    from ..converters.caffe_format import MAX_PROTOTXT_BYTES
    from ..converters.wire import read_bytes

    text = read_bytes(prototxt, "prototxt", MAX_PROTOTXT_BYTES).decode("utf-8", errors="replace")
    try:
        patched = patch_for_opencv(text)
    except SenetHubError:
        raise
    except Exception as e:
        raise FormatError(f"{prototxt}: not a Caffe prototxt OpenCV can read ({_first_line(e)})") from None
    with tempfile.TemporaryDirectory(prefix="senet-hub-consumer-") as tmp:
        p = os.path.join(tmp, "patched.prototxt")
        with open(p, "w") as f:
            f.write(patched)
        try:
            net = cv2.dnn.readNetFromCaffe(p, caffemodel)
        except cv2.error as e:
            raise FormatError(f"{prototxt}: OpenCV DNN cannot read it with {caffemodel} ({_first_line(e)})") from None
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)  # each tapped layer's own output, not a fused conv + bn + relu
    if hasattr(net, "enableWinograd"):  # Winograd 3x3 convs drift past 1e-3 of scale in deep nets
        net.enableWinograd(False)
    job.version = cv2.__version__
    have = set(net.getLayerNames())
    taps = {k: v[-1] for k, v in caffe_writer.layer_names(job.model).items()}
    if taps.get(job.final) not in have:
        raise ModelError(
            f"{prototxt}: has no layer '{taps.get(job.final)}' (the source model's output); is it this model's file?"
        )
    nodes = [n for n in taps if taps[n] in have]
    net.setInput(np.ascontiguousarray(job.x, np.float32))
    ys = net.forward([taps[n] for n in nodes])
    shapes = infer_shapes(job.model, tuple(job.x.shape))
    out = {}
    for n, y in zip(nodes, ys):
        y = np.array(y, np.float32)
        out[n] = y.reshape(shapes[n]) if y.size == int(np.prod(shapes[n])) else y
    job.notes.append(
        "OpenCV's built-in Axpy computes a*y + x: its Axpy layers were rewritten as Reshape + Scale + "
        "Eltwise SUM in a patched copy of the prototxt (builders.opencv.patch_for_opencv), and round_mode: FLOOR "
        "pools (a field OpenCV ignores) given OpenCV's ceil_mode: false; the caffemodel is read as written"
    )
    return out
