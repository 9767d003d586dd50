"""Import shims for frameworks that predate numpy 1.24 / Python 3.12's distutils removal.

Applied only when the framework is asked for (never at ``import senet_hub``):

- MXNet 1.9.1 uses ``np.bool``, removed in numpy 1.24: alias it to ``bool`` before importing.
- Chainer 7.8.1 runs ``chainer._environment_check`` at import, which imports
  ``numpy.distutils`` (broken with recent setuptools) and ``pkg_resources``; it only warns about
  optional dependencies, so a stub module with a no-op ``check()`` replaces it.

Builders import these frameworks only through this module.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
import warnings
from collections.abc import Iterator
from types import ModuleType

import numpy as np


def import_mxnet() -> ModuleType:
    """Return the ``mxnet`` module, aliasing ``np.bool`` first when numpy lacks it."""
    if "mxnet" not in sys.modules and "bool" not in np.__dict__:
        np.bool = bool  # type: ignore[attr-defined]
    with _quiet():
        import mxnet

    return mxnet


def import_chainer() -> ModuleType:
    """Return the ``chainer`` module, with its import-time environment check stubbed out."""
    name = "chainer._environment_check"
    if "chainer" not in sys.modules and name not in sys.modules:
        stub = types.ModuleType(name)
        stub.check = lambda: None  # type: ignore[attr-defined]
        sys.modules[name] = stub
    with _quiet():
        import chainer

    return chainer


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hide the framework's import-time deprecation warnings (numpy / scipy / distutils APIs)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def version_of(module: str) -> str | None:
    """A framework's version when it is installed and imports, else None (never raises)."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        mod = {"mxnet": import_mxnet, "chainer": import_chainer}[module]()
    except Exception:  # a broken install is "not available", not a crash
        return None
    return str(getattr(mod, "__version__", "unknown"))
