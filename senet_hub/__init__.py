"""senet-hub: convert and verify Squeeze-and-Excitation Networks across frameworks.

Importing this package loads numpy only; every framework is imported inside the builder that
needs it.
"""

from .errors import SenetHubError
from .graph import Graph, Model, Node

__version__ = "0.1.0"
__all__ = ["Graph", "Model", "Node", "SenetHubError", "__version__"]
