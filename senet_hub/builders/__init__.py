"""Builders: one module per framework, each with the same small interface.

    NAME: str                 backend name used by the CLI (``--to`` / ``--backends``)
    EXTRA: str | None         the pip extra that installs the framework
    available() -> str|None   the framework's version, or None when it is not installed
    build(model) -> native    the framework's own model (imports the framework)
    run(native, x, taps=True) -> {node name: ndarray}
                              x is float32 NCHW; outputs are NCHW numpy arrays keyed by canonical
                              node name (every node when taps, else only the graph output)
    save(model, path, **opts) -> list[str]   (only for builders with an artifact format)

Modules are imported lazily, so ``import senet_hub`` loads no framework.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from ..errors import MissingFrameworkError

# backend name -> (module, extra, the python module whose presence means "installed")
BACKENDS: dict[str, tuple[str, str | None, str | None]] = {
    "numpy": ("numpy_ref", None, None),
    "torch": ("torch", "torch", "torch"),
    "opencv": ("opencv", "opencv", "cv2"),
    "onnxruntime": ("onnx", "onnx", "onnxruntime"),
    "openvino": ("openvino", "openvino", "openvino"),
    "tensorflow": ("tensorflow", "tensorflow", "tensorflow"),
    "mxnet": ("mxnet", "mxnet", "mxnet"),
    "chainer": ("chainer", "chainer", "chainer"),
    "mindspore": ("mindspore", "mindspore", "mindspore"),
}
ALIASES = {
    "pytorch": "torch",
    "tf": "tensorflow",
    "ort": "onnxruntime",
    "cv2": "opencv",
    "numpy_ref": "numpy",
    "ov": "openvino",
}


def canonical_backend(name: str) -> str:
    return ALIASES.get(name.lower(), name.lower())


def get(name: str) -> ModuleType:
    """Import a builder module, or raise MissingFrameworkError naming the extra to install."""
    name = canonical_backend(name)
    if name not in BACKENDS:
        raise MissingFrameworkError(f"unknown backend '{name}'; known: {', '.join(BACKENDS)}")
    module, extra, probe = BACKENDS[name]
    if probe is not None and importlib.util.find_spec(probe) is None:
        raise MissingFrameworkError(
            f"backend '{name}' needs {probe}, which is not installed: pip install 'senet-hub[{extra}]'"
        )
    return importlib.import_module(f"{__name__}.{module}")
