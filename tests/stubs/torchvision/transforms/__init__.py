"""Stub: torchvision.transforms; any transform raises (the tests feed tensors, not PIL images)."""

from .. import _unavailable
from . import functional  # noqa: F401


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _unavailable(f"transforms.{name}")
