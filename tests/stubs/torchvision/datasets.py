"""Stub: torchvision.datasets; every dataset class raises when used."""

from . import _unavailable


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _unavailable(f"datasets.{name}")
