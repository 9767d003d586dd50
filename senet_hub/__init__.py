"""senet-hub: convert and verify Squeeze-and-Excitation Networks across frameworks.

Importing this package loads nothing (numpy when Graph/Model/Node are used); every framework is imported inside the builder that
needs it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Graph", "Model", "Node", "SenetHubError", "__version__"]


def __getattr__(name: str) -> Any:
    # lazy: the `senet-hub` entry point imports this package before it can catch Ctrl-C
    # (senet_hub.entry), so importing it must cost nothing, not numpy's import time
    if name in ("Graph", "Model", "Node"):
        from . import graph

        return getattr(graph, name)
    if name == "SenetHubError":
        from .errors import SenetHubError

        return SenetHubError
    raise AttributeError(f"module 'senet_hub' has no attribute {name!r}")
