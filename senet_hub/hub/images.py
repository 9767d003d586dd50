"""`verify --images DIR`: real photos, through the same preprocessing as `evaluate`.

A folder is walked recursively (an ImageFolder, an ImageNet-val folder or any tree of photos),
in sorted order so a `--limit` takes the same files every run. Each file goes through
evaluate.load_image with the model's input convention (resize shorter side, centre crop, its
channel order, range and mean/std; grayscale, palette and RGBA files become RGB as PIL's
convert("RGB") makes them). A file that is not a readable image is skipped and counted, or
refused with `strict`. The sha256 of every file used is recorded for the report.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputFileError, MissingFrameworkError

MAX_IMAGE_BYTES = 256 << 20  # a photo is a few MB; a larger "image" is refused before it is read


@dataclass
class ImageSet:
    x: np.ndarray  # N x C x H x W float32 in the model's input convention
    files: list[dict[str, str]]  # [{"path", "sha256"}] of the images used, in order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    root: str = ""

    def provenance(self) -> dict:
        return {"images": self.root, "count": len(self.files), "skipped": len(self.skipped), "files": self.files}


def list_images(root: str | os.PathLike, limit: int | None = None) -> list[str]:
    """Every file under `root` whose name looks like an image, sorted, the first `limit` of them."""
    from .evaluate import _is_image

    root = os.fspath(root)
    if not os.path.isdir(root):
        raise InputFileError(
            f"{root}: image folder not found; give --images DIR (a folder of photos, searched recursively)"
        )
    paths: list[str] = []
    for d, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        paths.extend(os.path.join(d, f) for f in sorted(files) if _is_image(f))
        if limit is not None and len(paths) >= limit * 4 + 64:
            break  # enough candidates even if some are skipped; no walk of a whole disk
    if not paths:
        from .evaluate import IMAGE_EXTS

        raise InputFileError(f"{root}: no images ({', '.join(IMAGE_EXTS)}) in this folder or below; give --images DIR")
    return paths


def load_images(root: str | os.PathLike, convention: dict, limit: int | None = None, strict: bool = False) -> ImageSet:
    """The first `limit` readable images under `root`, preprocessed for a model with `convention`."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise MissingFrameworkError("--images needs Pillow: pip install 'senet-hub[report]'") from None
    from .evaluate import load_image

    arrays: list[np.ndarray] = []
    files: list[dict[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for path in list_images(root, limit):
        if limit is not None and len(arrays) >= limit:
            break
        try:
            size = os.stat(path).st_size
            if size > MAX_IMAGE_BYTES:
                raise InputFileError(f"{path}: {size} bytes is too large for an image (limit {MAX_IMAGE_BYTES})")
            a = load_image(path, convention)
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except (InputFileError, OSError) as e:
            if strict:
                raise InputFileError(f"{e} (--strict: every file must be a readable image)") from None
            skipped.append((path, str(e)))
            continue
        arrays.append(a)
        files.append({"path": os.path.relpath(path, os.fspath(root)), "sha256": digest})
    if not arrays:
        raise InputFileError(
            f"{os.fspath(root)}: none of the {len(skipped)} image files could be read (first: {skipped[0][1]})"
        )
    return ImageSet(np.stack(arrays), files, skipped, os.path.abspath(os.fspath(root)))
