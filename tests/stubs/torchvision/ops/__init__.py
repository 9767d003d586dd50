"""Stub: torchvision.ops (see the package docstring)."""

from .. import _unavailable
from . import misc  # noqa: F401

nms = _unavailable("ops.nms")
roi_align = _unavailable("ops.roi_align")
batched_nms = _unavailable("ops.batched_nms")
