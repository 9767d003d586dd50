"""OpenCV DNN as an independent Caffe implementation (a verify backend).

OpenCV reads the Caffe files itself, so it also checks senet-hub's own Caffe reader. Its built-in
Axpy is wrong (it computes a*y + x and fails at batch > 1), so each Axpy layer is rewritten in the
prototxt text as Reshape(a -> N x C) -> two-bottom Scale(axis 0) -> Eltwise SUM, which is a*x + y
in layers OpenCV implements correctly, and every floor-mode pool (Caffe's `round_mode: FLOOR`, a
field OpenCV ignores) gets OpenCV's own `ceil_mode: false` (`patch_for_opencv`). Models that did
not come from Caffe files are first written to Caffe by senet-hub's writer.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..graph import Model

NAME = "opencv"
EXTRA = "opencv"


def available() -> str | None:
    try:
        import cv2
    except ImportError:
        return None
    return cv2.__version__


def patch_for_opencv(text: str) -> str:
    """Rewrite every Axpy layer of a prototxt as Reshape + Scale(axis 0) + Eltwise SUM, and every
    ``round_mode: FLOOR`` pooling as ``ceil_mode: false``.

    The second rewrite: OpenCV 4.x's Caffe importer ignores BVLC Caffe's ``round_mode`` field and
    always pools in ceil mode unless its own ``ceil_mode: false`` is given, so a floor-mode pool
    (timm's stem max pool 3x3/2 pad 1) came out one row and column larger. BVLC Caffe rejects
    ``ceil_mode``, so the Caffe writer must keep ``round_mode`` and only OpenCV's copy is changed.
    """
    from senet_hub.converters.caffe_format import Quoted, format_prototxt, parse_prototxt

    net = parse_prototxt(text)
    for key in ("layer", "layers"):
        out = []
        for layer in net.get(key, []):
            for p in layer.get("pooling_param", []):
                if isinstance(p, dict) and str(p.get("round_mode", ["CEIL"])[0]).upper() in ("FLOOR", "1"):
                    del p["round_mode"]
                    p["ceil_mode"] = ["false"]
            if str(layer.get("type", [""])[0]) != "Axpy":
                out.append(layer)
                continue
            name, (a, x, y), top = layer["name"][0], layer["bottom"], layer["top"][0]
            r, s = Quoted(f"{name}/axpy_a"), Quoted(f"{name}/axpy_ax")
            out.append(
                {
                    "name": [r],
                    "type": [Quoted("Reshape")],
                    "bottom": [a],
                    "top": [r],
                    "reshape_param": [{"shape": [{"dim": [0, 0]}]}],
                }
            )
            out.append(
                {
                    "name": [s],
                    "type": [Quoted("Scale")],
                    "bottom": [x, r],
                    "top": [s],
                    "scale_param": [{"axis": [0], "bias_term": ["false"]}],
                }
            )
            out.append(
                {
                    "name": [name],
                    "type": [Quoted("Eltwise")],
                    "bottom": [s, y],
                    "top": [top],
                    "eltwise_param": [{"operation": ["SUM"]}],
                }
            )
        if key in net:
            net[key] = out
    return format_prototxt(net)


@dataclass
class OpenCVNet:
    net: Any  # cv2.dnn.Net
    taps: dict[str, str]  # canonical node -> Caffe layer whose output it is
    output: str


def build(model: Model) -> OpenCVNet:
    import cv2

    from senet_hub.converters import caffe_writer
    from senet_hub.converters.caffe_format import MAX_PROTOTXT_BYTES

    from ..converters.wire import read_bytes

    src = model.meta.get("source_paths") or {}
    with tempfile.TemporaryDirectory(prefix="senet-hub-opencv-") as tmp:
        untouched = model.meta.get("source_format") == "caffe" and not model.meta.get("transforms")
        # the sources are reused only while they are still regular files: OpenCV reads them by
        # path itself and would block forever on a FIFO put in their place (issue 11 item 8)
        if untouched and all(os.path.isfile(src.get(k, "")) for k in ("prototxt", "caffemodel")):
            prototxt, caffemodel = src["prototxt"], src["caffemodel"]
            taps = {n.name: n.source[-1] for n in model.graph.nodes if n.source}
        else:
            prototxt, caffemodel = caffe_writer.save(model, os.path.join(tmp, "model"))
            taps = {k: v[-1] for k, v in caffe_writer.layer_names(model).items()}
        # read like every input (regular file, size cap); it parsed as UTF-8 when the model was
        # loaded, so a bad byte now means it was edited since: parse what is there, never crash
        text = read_bytes(prototxt, "prototxt", MAX_PROTOTXT_BYTES).decode("utf-8", errors="replace")
        patched = patch_for_opencv(text)
        patched_path = os.path.join(tmp, "patched.prototxt")
        with open(patched_path, "w") as f:
            f.write(patched)
        net = cv2.dnn.readNetFromCaffe(patched_path, caffemodel)
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)  # per-layer outputs must be each layer's own, not a fused conv+bn+relu
    if hasattr(net, "enableWinograd"):  # Winograd 3x3 convs drift past 1e-3 of scale in 150-layer nets
        net.enableWinograd(False)
    return OpenCVNet(net, taps, model.graph.output)


def run(native: OpenCVNet, x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    nodes = list(native.taps) if taps else [native.output]
    layers = [native.taps[n] for n in nodes]
    native.net.setInput(np.ascontiguousarray(x, np.float32))
    outs = native.net.forward(layers)
    return {n: np.array(o, np.float32) for n, o in zip(nodes, outs)}
