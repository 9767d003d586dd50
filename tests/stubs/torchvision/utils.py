"""Stub: torchvision.utils."""

from . import _unavailable

save_image = _unavailable("utils.save_image")
make_grid = _unavailable("utils.make_grid")
