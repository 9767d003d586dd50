"""Test-only stand-in for torchvision (NOT a real torchvision; never installed by senet-hub).

PyPI's torchvision 0.28 (the release for torch 2.13) is CUDA-linked and fails to import beside the
pinned CPU torch ("operator torchvision::nms does not exist"). timm 1.0.31, Cadene's
pretrainedmodels 0.7.4 and onnx2torch 1.5.15 import a few torchvision names at import time but use
none of them to build or run the SE models the tests load. The tests put this folder on sys.path
(tests/conftest.py, and PYTHONPATH for CLI subprocesses) so those packages import; any use of a
name provided here beyond that raises, so a test cannot silently run stub code.
"""

__version__ = "0.0.0+senet-hub-test-stub"


def _unavailable(name):
    """A class (timm subclasses some transforms at import) whose construction or call raises."""

    def fail(*_a, **_k):
        raise RuntimeError(f"torchvision.{name} is not available: this is senet-hub's test-only torchvision stub")

    return type(name.rsplit(".", 1)[-1], (), {"__init__": fail, "__call__": fail})
