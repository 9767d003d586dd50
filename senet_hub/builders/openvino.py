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

from ..errors import FormatError, MissingFrameworkError, ModelError, UnsupportedError
from ..graph import Model

NAME = "openvino"
EXTRA = "openvino"
# The CPU plugin's default precision on hosts with bf16/f16 support is reduced precision: ask
# for f32 so parity is float32 parity (and what a user gets matches what verify measured).
F32 = {"INFERENCE_PRECISION_HINT": "f32"}


def _ov() -> Any:
    """The openvino module, or MissingFrameworkError naming the extra (one line, exit 8)."""
    try:
        import openvino
    except ImportError:
        raise MissingFrameworkError(f"OpenVINO is not installed: pip install 'senet-hub[{EXTRA}]'") from None
    return openvino


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
            proto = with_outputs(self.proto, self.nodes) if taps else self.proto
            self._compiled[taps] = _compile(proto.SerializeToString(), self.config)
        return self._compiled[taps]


def with_outputs(proto: Any, names: list[str]) -> Any:
    """A copy of proto whose graph outputs also include ``names`` (those not already outputs)."""
    from onnx import TensorProto, helper

    p = type(proto)()
    p.CopyFrom(proto)
    have = {o.name for o in p.graph.output}
    p.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n not in have)
    return p


def _compile(data: bytes, config: dict[str, Any] | None = None) -> Any:
    core = _ov().Core()
    # read_model(model=bytes) parses the ONNX bytes with OpenVINO's ONNX frontend (weights inline)
    return core.compile_model(core.read_model(model=data), "CPU", config or {})


def build(model: Model, config: dict[str, Any] | None = None) -> OvModel:
    """Export (inlined) and compile on CPU; config: OpenVINO properties, e.g.
    ``{"INFERENCE_NUM_THREADS": 2}``. The CPU plugin's default precision on hosts with bf16
    support is bf16: f32 is asked for explicitly, so parity is float32 parity."""
    from . import onnx as ox

    _ov()  # before the export: a missing OpenVINO is one line, not an ImportError later
    proto = ox.to_onnx(model, inline=True)
    cfg = {**F32, **(config or {})}
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


def custom_ops(proto: Any) -> list[str]:
    """``domain::op`` of every graph node outside the standard ONNX domains, in graph order."""
    seen: dict[str, None] = {}
    for n in proto.graph.node:
        if n.domain not in ("", "ai.onnx"):
            seen.setdefault(f"{n.domain}::{n.op_type}", None)
    return list(seen)


def run_onnx_file(path: str | os.PathLike, x: np.ndarray, outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """Run a user's ``.onnx`` FILE as OpenVINO users do (``Core().read_model`` + CPU compile, f32).

    Returns {output name: array} for the graph's outputs, plus ``outputs`` (value names of the
    graph, added as extra outputs) when given. Errors are one line: a file that is not ONNX
    (FormatError, 4), a value name the graph lacks (ModelError, 5: the file is not this model's),
    a file OpenVINO refuses (UnsupportedError, 6; the default export's custom-domain Axpy names
    ``--inline``), OpenVINO not installed (MissingFrameworkError, 8).
    """
    import onnx

    from ..converters.wire import read_bytes
    from .onnx import DOMAIN

    _ov()
    path = os.fspath(path)
    # regular files only (a FIFO must not block the read); one immutable copy for onnx and OpenVINO
    data = bytes(read_bytes(path, "ONNX file"))
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as e:  # onnx raises DecodeError / ValueError variants for a corrupt file
        raise FormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not proto.graph.node:
        raise FormatError(f"{path}: not an ONNX model (no graph nodes); pass the .onnx file senet-hub wrote")
    if outputs:
        known = {v for n in proto.graph.node for v in n.output} | {i.name for i in proto.graph.input}
        missing = [o for o in outputs if o not in known]
        if missing:
            # the file does not belong to the model the caller compares it with
            raise ModelError(f"{path}: the ONNX graph has no value named '{missing[0]}' (is it this model's file?)")
        proto = with_outputs(proto, outputs)
    try:
        # the bytes as read (not re-serialized) unless taps were added: what a user's read_model sees
        compiled = _compile(proto.SerializeToString() if outputs else data, F32)
    except Exception as e:  # OpenVINO raises a generic RuntimeError / OpConversionFailure
        custom = custom_ops(proto)
        if any(c.startswith(f"{DOMAIN}::") for c in custom):
            # OpenVINO 2026.4 does not expand model-local functions (and first reports a misleading
            # "input rank has to be known" for the node after the custom op)
            raise UnsupportedError(
                f"{path}: OpenVINO cannot run the custom op {', '.join(custom)} (it does not expand "
                "model-local functions); write the file with `senet-hub export-onnx --inline` "
                "(or `convert --to onnx --inline`)"
            ) from None
        # OpenVINO's report starts with source locations ("Exception from src/...", "Check 'false'
        # failed at ..."): the first line after those says what is wrong
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        plain = [ln for ln in lines if not ln.startswith(("Exception from", "Check '", "FrontEnd API failed"))]
        first = " ".join((plain or lines or [type(e).__name__])[:2])  # e.g. '...log: -- Op-17 with a message: ...'
        why = f"custom op(s) {', '.join(custom)}: " if custom else ""
        raise UnsupportedError(f"{path}: OpenVINO refused the model: {why}{first[:300]}") from None
    inp = compiled.inputs[0].get_any_name()
    res = compiled({inp: np.ascontiguousarray(x, np.float32)})
    got = _by_name(compiled, res)
    want = [o.name for o in proto.graph.output]
    return {n: got[n] for n in want if n in got}
