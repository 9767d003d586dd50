"""ONNX consumers of a .onnx file: onnxruntime, OpenVINO, onnx2torch and ``onnx.reference``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FormatError, ModelError, SenetHubError, UnsupportedError
from ..graph import Model
from .core import Job, _dist_version, _first_line, _import_torchvision_user, _np, _torch_input, register


def _onnx_proto(job: Job) -> Any:
    """The file's ModelProto, checked against the source model's weights (names and shapes)."""
    import onnx

    from ..converters.wire import read_bytes

    try:
        proto = onnx.load_model_from_string(bytes(read_bytes(job.path, "ONNX file")))
    except SenetHubError:
        raise
    except Exception as e:  # DecodeError / ValueError variants for a corrupt file
        raise FormatError(f"{job.path}: not a readable ONNX model ({_first_line(e)})") from None
    if not proto.graph.node:  # protobuf parses many non-ONNX byte strings as an empty model
        raise FormatError(f"{job.path}: not an ONNX model (no graph nodes); pass the .onnx file senet-hub wrote")
    inits = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    want = {
        f"{n.name}.{p}": tuple(job.model.weights[f"{n.name}.{p}"].shape)
        for n in job.model.graph.nodes
        for p in n.param_names()
    }
    for k, shp in want.items():
        if k not in inits:
            raise ModelError(
                f"{job.path}: has no initializer '{k}' {shp} that the source model has; is it this model's file?"
            )
        if inits[k] != shp:
            raise ModelError(
                f"{job.path}: initializer '{k}' has shape {inits[k]}, the source model's is {shp} "
                "(another architecture or class count?)"
            )
    return proto


def _tap_names(proto: Any, model: Model) -> list[str]:
    values = {v for n in proto.graph.node for v in n.output}
    return [n.name for n in model.graph.nodes if n.name in values]


@register(
    "onnxruntime",
    formats=("onnx",),
    needs=("onnx", "onnxruntime"),
    install="pip install 'senet-hub[onnx]'",
    default_for=("onnx",),
    description="onnxruntime.InferenceSession(file); per node from extra graph outputs",
)
def _run_onnxruntime(job: Job) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    proto = _onnx_proto(job)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(job.path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UnsupportedError(f"{job.path}: onnxruntime refused the model: {_first_line(e)}") from None
    job.version = ort.__version__
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(job.x, np.float32)}
    final = sess.run([sess.get_outputs()[0].name], feed)[0]
    # per node: a copy in memory with every node's value as a graph output, optimizations off
    names = _tap_names(proto, job.model)
    so2 = ort.SessionOptions()
    so2.log_severity_level = 3
    so2.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    from ..builders.openvino import with_outputs  # onnx only: openvino itself is not imported

    taps = ort.InferenceSession(with_outputs(proto, names).SerializeToString(), so2, providers=["CPUExecutionProvider"])
    out = dict(zip(names, taps.run(names, feed)))
    out[job.final] = final  # the file as written, all optimizations on
    job.notes.append("per-node values from an in-memory copy with every node as a graph output (optimizations off)")
    return out


@register(
    "openvino",
    formats=("onnx",),
    needs=("onnx", "openvino"),
    install="pip install 'senet-hub[openvino]' onnx",
    description="openvino.Core().read_model(file) on CPU, f32; per node from extra graph outputs",
)
def _run_openvino(job: Job) -> dict[str, np.ndarray]:
    from ..builders import openvino as ovb

    proto = _onnx_proto(job)
    names = _tap_names(proto, job.model)
    job.version = ovb.available() or "?"
    got = ovb.run_onnx_file(job.path, job.x, outputs=names)
    out = {n: got[n] for n in names if n in got}
    out[job.final] = got[proto.graph.output[0].name]
    job.notes.append("per-node values as extra outputs of the file's graph (builders.openvino.run_onnx_file)")
    return out


@register(
    "onnx2torch",
    formats=("onnx",),
    needs=("onnx", "torch", "onnx2torch"),
    install="pip install --no-deps onnx2torch==1.5.15 (plus a CPU torchvision)",
    description="onnx2torch.convert(file); final output",
)
def _run_onnx2torch(job: Job) -> dict[str, np.ndarray]:
    import torch

    proto = _onnx_proto(job)
    o2t = _import_torchvision_user("onnx2torch")
    job.version = _dist_version("onnx2torch")
    try:
        mod = o2t.convert(proto)
    except NotImplementedError as e:
        if any(n.domain not in ("", "ai.onnx") for n in proto.graph.node):
            raise UnsupportedError(
                f"{job.path}: onnx2torch cannot convert the custom-domain Axpy node (it does not expand "
                "model-local functions); write the file with `senet-hub export-onnx --inline`"
            ) from None
        raise UnsupportedError(f"{job.path}: onnx2torch cannot convert it: {_first_line(e)}") from None
    mod.eval()
    with torch.no_grad():
        y = mod(_torch_input(job.x))
    return {job.final: _np(y)}


@register(
    "onnx.reference",
    formats=("onnx",),
    needs=("onnx",),
    install="pip install 'senet-hub[onnx]'",
    description="onnx.reference.ReferenceEvaluator(file); per node (intermediate results)",
)
def _run_onnx_reference(job: Job) -> dict[str, np.ndarray]:
    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = _onnx_proto(job)
    job.version = onnx.__version__
    ev = ReferenceEvaluator(proto)
    res: Any = ev.run(None, {proto.graph.input[0].name: np.ascontiguousarray(job.x, np.float32)}, intermediate=True)
    out = {n: np.asarray(res[n]) for n in _tap_names(proto, job.model) if n in res}
    out[job.final] = np.asarray(res[proto.graph.output[0].name])
    return out
