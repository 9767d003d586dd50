"""Stub: torchvision.models; pretrainedmodels binds a few constructors at import, none used by SE models."""

from .. import _unavailable


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _unavailable(f"models.{name}")
