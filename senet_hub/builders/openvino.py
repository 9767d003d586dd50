"""OpenVINO: the model exported to ONNX in memory, read by ``openvino.Core().read_model`` and
compiled on CPU, the way OpenVINO users run an ``.onnx`` file.

The export is the inlined one (``senet_hub.builders.onnx.to_onnx(inline=True)``): OpenVINO does
not expand model-local functions of a custom domain, so the default file with its
``org.senet-hub::Axpy`` node is refused ("No conversion rule found for operations:
org.senet-hub.Axpy"; FIELD_NOTES section 10). For per-node taps every node's output is added as an
extra graph output before the read, so OpenVINO computes (and may fuse around) each value the
canonical graph names; the taps are what the compiled CPU plugin produces for those tensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError, InputFileError, ModelError, UnsupportedError
from ..graph import Model

NAME = "openvino"
EXTRA = "openvino"


def available() -> str | None:
    try:
        import openvino
    except ImportError:
        return None
    full = getattr(openvino, "__version__", None) or openvino.get_version()
    return full.split("-")[0]  # "2026.4.1-22982-<hash>-releases/..." -> the release number


@dataclass
class OvModel:
    """OpenVINO compiled models for the exported graph: plain (final output) and with taps."""

    proto: Any  # the inlined onnx.ModelProto
    input_name: str
    output: str
    nodes: list[str]
    config: dict[str, Any] = field(default_factory=dict)
    _compiled: dict[bool, Any] = field(default_factory=dict, repr=False)

    def compiled(self, taps: bool) -> Any:
        if taps not in self._compiled:
            proto = _with_outputs(self.proto, self.nodes) if taps else self.proto
            self._compiled[taps] = _compile(proto.SerializeToString(), self.config)
        return self._compiled[taps]


def _with_outputs(proto: Any, names: list[str]) -> Any:
    """A copy of proto whose graph outputs also include ``names`` (those not already outputs)."""
    from onnx import TensorProto, helper

    p = type(proto)()
    p.CopyFrom(proto)
    have = {o.name for o in p.graph.output}
    p.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    return p


def _compile(data: bytes, config: dict[str, Any] | None = None) -> Any:
    import openvino as ov

    core = ov.Core()
    # read_model(model=bytes) parses the ONNX bytes with OpenVINO's ONNX frontend (weights inline)
    return core.compile_model(core.read_model(model=data), "CPU", config or {})


def build(model: Model, config: dict[str, Any] | None = None) -> OvModel:
    """Export (inlined) and compile on CPU; config: OpenVINO properties, e.g.
    ``{"INFERENCE_NUM_THREADS": 2}``. The CPU plugin's default precision on hosts with bf16
    support is bf16: f32 is asked for explicitly, so parity is float32 parity."""
    from . import onnx as ox

    proto = ox.to_onnx(model, inline=True)
    cfg = {"INFERENCE_PRECISION_HINT": "f32", **(config or {})}
    return OvModel(proto, model.graph.input_name, model.graph.output, [n.name for n in model.graph.nodes], cfg)


def _by_name(compiled: Any, result: Any) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for port in compiled.outputs:
        for name in port.get_names():
            out.setdefault(name, np.asarray(result[port]))
    return out


def run(native: OvModel, x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    """Run; with taps every canonical node's output, else only the graph output."""
    compiled = native.compiled(taps)
    res = compiled({native.input_name: np.ascontiguousarray(x, np.float32)})
    got = _by_name(compiled, res)
    names = native.nodes if taps else [native.output]
    return {n: got[n] for n in names}


def run_onnx_file(path: str, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run a user's ``.onnx`` FILE as OpenVINO users do (``Core().read_model`` + CPU compile).

    Returns {output name: array} for the graph's outputs, plus ``outputs`` (value names of the
    graph, added as extra outputs) when given. A file OpenVINO refuses (the default export's
    custom-domain Axpy, for one) raises UnsupportedError naming the file and the fix.
    """
    import onnx

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputFileError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(path)
    except Exception as e:  # onnx raises DecodeError / ValueError variants for a corrupt file
        raise FormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if outputs:
        known = {v for n in proto.graph.node for v in n.output} | {i.name for i in proto.graph.input}
        missing = [o for o in outputs if o not in known]
        if missing:
            # the file does not belong to the model the caller compares it with
            raise ModelError(f"{path}: the ONNX graph has no value named '{missing[0]}' (is it this model's file?)")
        proto = _with_outputs(proto, outputs)
    try:
        compiled = _compile(proto.SerializeToString(), {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception as e:  # OpenVINO raises a generic RuntimeError / OpConversionFailure
        msg = str(e)
        if "org.senet-hub" in msg or any(
            n.domain not in ("", "ai.onnx") for n in proto.graph.node
        ):  # the default export: model-local functions are not expanded by OpenVINO
            raise UnsupportedError(
                f"{path}: OpenVINO cannot run the custom-domain Axpy node (it does not expand model-local "
                "functions); write the file with `senet-hub export-onnx --inline`"
            ) from None
        first = msg.strip().splitlines()[0] if msg.strip() else type(e).__name__
        raise UnsupportedError(f"{path}: OpenVINO refused the model: {first}") from None
    inp = compiled.inputs[0].get_any_name()
    res = compiled({inp: np.ascontiguousarray(x, np.float32)})
    got = _by_name(compiled, res)
    want = [o.name for o in proto.graph.output]
    return {n: got[n] for n in want if n in got}
