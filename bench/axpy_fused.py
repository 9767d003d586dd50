"""A fused Axpy kernel for onnxruntime, registered instead of the model-local function.

The kernel is a Python function registered through onnxruntime-extensions (``@onnx_op``):
``z = a * x + y`` in one numpy expression. onnxruntime-extensions serves Python kernels only
in its own domain ``ai.onnx.contrib``, so ``fused_proto`` moves each ``org.senet-hub::Axpy``
node there and drops the function (the model is otherwise unchanged); ``build`` opens a session
with the extensions library registered.

This is a benchmark experiment, not part of the package: the issue asked to keep a fused path
only if it pays, and it does not. Measured (bench/bench_onnx.py): the fused kernel is slower than the function, because
onnxruntime inlines the function into Mul + Add, which it runs multi-threaded and fuses into
the neighbouring convolutions, while a custom node runs alone in NCHW, costs a round trip
through Python and blocks those fusions. Keep the function for inference; this path exists to
show that a runtime that implements ``Axpy`` natively gets identical numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from senet_hub.builders import onnx as onnx_builder
from senet_hub.graph import Model

NAME = "onnxruntime-fused"
EXTRA = "onnx"
EXT_DOMAIN = "ai.onnx.contrib"  # the only domain onnxruntime-extensions serves Python kernels in

_registered = False


def available() -> str | None:
    try:
        import onnxruntime_extensions
    except ImportError:
        return None
    return onnxruntime_extensions.__version__


def axpy_kernel(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The fused kernel: z = a * x + y, a broadcast over H, W (N x C x 1 x 1)."""
    z = np.multiply(a, x)
    z += y
    return z


def register() -> None:
    """Register the Python Axpy kernel with onnxruntime-extensions (once per process)."""
    global _registered
    if _registered:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    f = PyCustomOpDef.dt_float
    onnx_op(op_type="Axpy", inputs=[f, f, f], outputs=[f])(axpy_kernel)
    _registered = True


def fused_proto(proto: Any) -> Any:
    """A copy of an exported model whose Axpy nodes run on the registered kernel (no function)."""
    from onnx import helper

    p = type(proto)()
    p.CopyFrom(proto)
    for n in p.graph.node:
        if n.domain == onnx_builder.DOMAIN and n.op_type == "Axpy":
            n.domain = EXT_DOMAIN
    kept = [f for f in p.functions if not (f.domain == onnx_builder.DOMAIN and f.name == "Axpy")]
    del p.functions[:]
    p.functions.extend(kept)
    opsets = [o for o in p.opset_import if o.domain not in (onnx_builder.DOMAIN, EXT_DOMAIN)]
    opsets.append(helper.make_opsetid(EXT_DOMAIN, 1))
    del p.opset_import[:]
    p.opset_import.extend(opsets)
    return p


def library() -> str:
    """The custom-op library to register with onnxruntime; registers the Python kernel first."""
    from onnxruntime_extensions import get_library_path

    register()
    return get_library_path()


def session_options(base: Any = None) -> Any:
    """onnxruntime SessionOptions with the extensions library (and the Axpy kernel) registered."""
    return onnx_builder._options(base, [library()])


def build(model: Model, opset: int = onnx_builder.DEFAULT_OPSET, session_options: Any = None) -> onnx_builder.OrtModel:
    """Like onnx.build, with every Axpy on the fused kernel instead of the function."""
    proto = fused_proto(onnx_builder.to_onnx(model, opset=opset, inline=False))
    libs = [library()]
    so = onnx_builder._options(session_options, libs)
    providers = ["CPUExecutionProvider"]
    sess = onnx_builder.session_for(proto, so, providers)
    nodes = [n.name for n in model.graph.nodes]
    return onnx_builder.OrtModel(
        proto, sess, model.graph.input_name, model.graph.output, nodes, providers, session_options, libs
    )


def run(native: onnx_builder.OrtModel, x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    return onnx_builder.run(native, x, taps)
