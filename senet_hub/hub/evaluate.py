"""Top-1 / top-5 accuracy on an image folder, with each model's own preprocessing.

Data layouts:

* ImageFolder: ``DIR/<class>/<image>``; class subfolders in sorted order are class 0, 1, ...
  (torchvision's convention). With 1000 WordNet-id folders (``n01440764`` ...) the labels are in
  the sorted-synset order ("ilsvrc2012").
* ImageNet-val: a flat ``DIR`` of images plus ``--labels FILE`` with one ``name label`` per line
  (e.g. ``ILSVRC2017_val_senet_order.txt``, labels in the SENet order).

Preprocessing follows the model's input convention (from the manifest): resize the shorter side
(256 for the Caffe and MindCV models; timm's floor(size / crop_pct)) with PIL's bilinear filter, or
bicubic where timm's pretrained_cfg says so (the long side is ``int(short * long / short_side)``, as
torchvision computes it), centre-crop the input size (offsets rounded like torchvision), then channel order RGB or BGR,
scale 0..255 to the convention's range, subtract the mean and divide by the std per channel.

When the label order differs from the model's class order (SENet's ILSVRC2017 devkit order vs
sorted synsets) predictions are mapped with the shipped permutation before scoring.

Data-parallel: under ``torchrun`` (WORLD_SIZE > 1) every rank evaluates the disjoint shard
``samples[rank::world]``; counts are summed with ``torch.distributed.all_reduce`` (gloo, CPU)
and rank 0 reports. The counts equal a single-process run's.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..converters.wire import open_regular, read_bytes
from ..errors import FormatError, InputFileError, ModelError, SenetHubError

MAX_LABEL_BYTES = 64 << 20  # a label file is 'name label' lines: ImageNet's 50,000 take ~1 MB
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".webp", ".tif", ".tiff", ".gif")
LABEL_ORDERS = ("auto", "model", "senet", "ilsvrc2012")
_SYNSET = re.compile(r"^n\d{8}$")


# ------------------------------------------------------------------------------------ data


@dataclass
class Dataset:
    root: str
    layout: str  # "imagefolder" or "imagenet-val"
    samples: list[tuple[str, int]]
    classes: list[str] | None = None
    missing: int = 0  # labelled files not found under root
    label_file: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def natural_label_order(self) -> str:
        """The label order the layout implies: ilsvrc2012 for 1000 synset folders, else 'model'."""
        if self.classes and len(self.classes) == 1000 and all(_SYNSET.match(c) for c in self.classes):
            return "ilsvrc2012"
        return "model"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS) and not name.startswith(".")


def find_samples(data: str | os.PathLike, labels: str | os.PathLike | None = None) -> Dataset:
    """List (path, label) pairs for an ImageFolder, or for a flat folder plus a label file."""
    root = os.fspath(data)
    if not os.path.isdir(root):
        raise InputFileError(f"{root}: data folder not found; give --data DIR (ImageFolder or ImageNet-val layout)")
    if labels is not None:
        return _labelled(root, os.fspath(labels))
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise InputFileError(
            f"{root}: no class subfolders; give an ImageFolder (DIR/<class>/<image>) or a flat folder with --labels FILE"
        )
    samples: list[tuple[str, int]] = []
    for idx, c in enumerate(classes):
        for d, dirs, files in os.walk(os.path.join(root, c), followlinks=True):
            dirs.sort()
            samples.extend((os.path.join(d, f), idx) for f in sorted(files) if _is_image(f))
    if not samples:
        raise InputFileError(f"{root}: no images ({', '.join(IMAGE_EXTS)}) in its {len(classes)} class folders")
    return Dataset(root, "imagefolder", samples, classes)


def _labelled(root: str, label_file: str) -> Dataset:
    if not os.path.lexists(label_file):
        raise InputFileError(f"{label_file}: label file not found; give --labels FILE with 'name label' lines")
    # a regular file only (a FIFO would block forever), capped: ImageNet's 50,000 lines are ~1 MB
    lines = read_bytes(label_file, "label file", MAX_LABEL_BYTES).decode("utf-8", errors="replace").splitlines()
    samples: list[tuple[str, int]] = []
    missing = 0
    for i, line in enumerate(lines, 1):
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) != 2 or not re.fullmatch(r"\d+", parts[1]):
            raise FormatError(
                f"{label_file}: line {i}: expected 'name label' (label a non-negative integer), got {line[:80]!r}"
            )
        name = parts[0]
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise FormatError(f"{label_file}: line {i}: file name {name!r} must be relative to the data folder")
        path = os.path.join(root, name)
        if os.path.isfile(path):
            samples.append((path, int(parts[1])))
        else:
            missing += 1
    if not samples:
        raise InputFileError(
            f"{root}: none of the {missing} files named in {label_file} is there; check --data and --labels"
        )
    return Dataset(root, "imagenet-val", samples, None, missing, label_file)


# ------------------------------------------------------------------------------------ preprocessing


def resize_size(convention: dict) -> int:
    """Shorter-side resize: an int `resize`, 'shorter side N' in the text, else size / 0.875."""
    r = convention.get("resize")
    if isinstance(r, int) and not isinstance(r, bool):
        return r
    if isinstance(r, str):
        m = re.search(r"shorter side (\d+)", r)
        if m:
            return int(m.group(1))
    return int(round(int(convention.get("size", 224)) / 0.875))


def _filter(convention: dict) -> Any:
    """PIL's resampling filter: bicubic where the convention names it (timm's `interpolation`, or the
    '(bicubic)' of its resize text), else bilinear (the Caffe and MindCV models)."""
    from PIL import Image

    text = f"{convention.get('interpolation') or ''} {convention.get('resize') or ''}".lower()
    return Image.Resampling.BICUBIC if "bicubic" in text else Image.Resampling.BILINEAR


def preprocess(img: Any, convention: dict) -> np.ndarray:
    """PIL image -> float32 C x H x W in the model's input convention."""

    size = int(convention.get("size", 224))
    short = resize_size(convention)
    img = img.convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = short, int(short * h / w)
    else:
        nw, nh = int(short * w / h), short
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), _filter(convention))
    if nw < size or nh < size:
        raise InputFileError(f"image of {w}x{h} is too small for a {size} crop after resizing to {nw}x{nh}")
    left = int(round((nw - size) / 2.0))
    top = int(round((nh - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    a = np.asarray(img, dtype=np.float32)  # H x W x RGB, 0..255
    if str(convention.get("channel_order", "RGB")).upper() == "BGR":
        a = a[..., ::-1]
    lo, hi = (float(v) for v in convention.get("range", (0, 255)))
    if (lo, hi) != (0.0, 255.0):
        a = a * np.float32((hi - lo) / 255.0) + np.float32(lo)
    mean = np.asarray(convention.get("mean", (0, 0, 0)), np.float32)
    std = np.asarray(convention.get("std", (1, 1, 1)), np.float32)
    a = (a - mean) / std
    return np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32)


def load_image(path: str, convention: dict) -> np.ndarray:
    from PIL import Image

    # opened here, not by PIL: a FIFO or device named like an image in the data folder would
    # block or never end; open_regular refuses it (InputFileError naming the file)
    f, _ = open_regular(path, "image")
    try:
        with f, Image.open(f) as im:
            return preprocess(im, convention)
    except InputFileError as e:
        raise InputFileError(f"{path}: {e}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputFileError(
            f"{path}: cannot read the image ({' '.join(str(e).split())}); remove or replace it"
        ) from None


# ------------------------------------------------------------------------------------ class order


def class_map(model_order: str | None, label_order: str, num_classes: int) -> np.ndarray | None:
    """Array mapping the model's output index to the label index, or None when they agree."""
    if label_order in ("model", model_order):
        return None
    if model_order not in ("senet", "ilsvrc2012"):
        raise SenetHubError(
            f"the model's class order is '{model_order}', so labels in '{label_order}' order cannot be mapped; use --label-order model"
        )
    if num_classes != 1000:
        raise SenetHubError(f"class orders are defined for 1000 ImageNet classes; the model has {num_classes}")
    from ..transforms import class_permutation

    perm = class_permutation()  # perm[senet index] = sorted index
    return perm if model_order == "senet" else np.argsort(perm)


# ------------------------------------------------------------------------------------ distribution


class Dist:
    """Rank / world of this process; sums counts across ranks (torch.distributed, gloo)."""

    def __init__(self, rank: int = 0, world: int = 1, owned: bool = False) -> None:
        self.rank, self.world, self.owned = rank, world, owned

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        try:
            import torch.distributed as td
        except ImportError:
            from ..errors import MissingFrameworkError

            raise MissingFrameworkError(
                "WORLD_SIZE > 1 needs torch.distributed: pip install 'senet-hub[torch]'"
            ) from None
        owned = False
        if not td.is_initialized():
            td.init_process_group(backend="gloo")
            owned = True
        return cls(td.get_rank(), td.get_world_size(), owned)

    def reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        if self.world <= 1:
            return list(values)
        import torch
        import torch.distributed as td

        t = torch.tensor(list(values), dtype=torch.float64)
        td.all_reduce(t, op=td.ReduceOp.SUM if op == "sum" else td.ReduceOp.MAX)
        return t.tolist()

    def all_ok(self, ok: bool) -> bool:
        """True on every rank only when `ok` was true on every rank."""
        return self.reduce([0.0 if ok else 1.0])[0] == 0.0

    def close(self) -> None:
        if self.owned:
            import torch.distributed as td

            if td.is_initialized():
                td.destroy_process_group()
            self.owned = False


# ------------------------------------------------------------------------------------ evaluation


def evaluate(
    model: Any,
    samples: Sequence[tuple[str, int]],
    backend: str = "torch",
    convention: dict | None = None,
    batch_size: int = 32,
    limit: int | None = None,
    class_map: np.ndarray | None = None,
    progress: bool | None = None,
    workers: int | None = None,
    dist: Dist | None = None,
) -> dict[str, Any]:
    """Count top-1 / top-5 hits of `model` (a senet_hub Model) on (path, label) samples.

    Under `dist` each rank scores samples[rank::world] and the counts are summed; every rank
    returns the same totals.
    """
    from .. import builders

    if batch_size < 1:
        raise SenetHubError(f"--batch-size must be at least 1, got {batch_size}")
    conv = convention or model.meta.get("input_convention")
    if not conv:
        raise ModelError(f"{model.arch}: the model's input convention is unknown; cannot preprocess images for it")
    dist = dist or Dist()
    samples = list(samples)[: limit if limit is not None and limit >= 0 else None]
    shard = samples[dist.rank :: dist.world]
    builder = builders.get(backend)
    scored = _without_final_softmax(model)
    native = builder.build(scored)
    out_name = scored.graph.output
    if progress is None:
        progress = sys.stderr.isatty()
    workers = workers or min(8, os.cpu_count() or 1)
    from tqdm import tqdm

    bar = tqdm(
        total=len(shard),
        unit="img",
        file=sys.stderr,
        disable=not progress or dist.rank != 0,
        desc=f"evaluate{f' (rank 0 of {dist.world})' if dist.world > 1 else ''}",
        dynamic_ncols=True,
    )
    n = c1 = c5 = 0
    num_classes = None
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="senet-hub-decode")
    try:
        batches = [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]

        def submit(batch: list[tuple[str, int]]) -> list[Future]:
            return [pool.submit(load_image, p, conv) for p, _ in batch]

        futs = submit(batches[0]) if batches else []
        for i, batch in enumerate(batches):
            nxt = submit(batches[i + 1]) if i + 1 < len(batches) else []
            x = np.stack([f.result() for f in futs])
            futs = nxt
            out = np.asarray(builder.run(native, x, taps=False)[out_name])
            logits = out.reshape(len(batch), -1)
            if not np.isfinite(logits).all():
                bad = batch[int(np.flatnonzero(~np.isfinite(logits).all(axis=1))[0])][0]
                raise ModelError(f"{model.arch}: non-finite output for {bad}; the weights or the input are broken")
            num_classes = logits.shape[1]
            k = min(5, num_classes)
            top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
            if class_map is not None:
                top = class_map[top]
            labels = np.asarray([lab for _, lab in batch])
            c1 += int((top[:, 0] == labels).sum())
            c5 += int((top == labels[:, None]).any(axis=1).sum())
            n += len(batch)
            bar.update(len(batch))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    local_seconds = time.perf_counter() - t0
    n_all, c1_all, c5_all = (int(round(v)) for v in dist.reduce([n, c1, c5]))
    seconds = dist.reduce([local_seconds], op="max")[0]
    return {
        "model": model.meta.get("model_id", model.arch),
        "arch": model.arch,
        "backend": backend,
        "images": n_all,
        "top1_correct": c1_all,
        "top5_correct": c5_all,
        "top1": round(100.0 * c1_all / n_all, 4) if n_all else None,
        "top5": round(100.0 * c5_all / n_all, 4) if n_all else None,
        "num_classes": num_classes,
        "seconds": round(seconds, 3),
        "images_per_second": round(n_all / seconds, 2) if seconds > 0 else None,
        "world_size": dist.world,
        "batch_size": batch_size,
        "input_convention": conv,
    }


def _without_final_softmax(model: Any) -> Any:
    """Rank by the logits: a saturated float32 softmax ties classes at exactly 0 or 1."""
    g = model.graph
    last = g.nodes[-1] if g.nodes else None
    if last is None or last.op != "softmax" or g.output != last.name or last.attrs.get("axis", 1) != 1:
        return model
    if any(last.name in n.inputs for n in g.nodes):
        return model
    m = model.copy()
    m.graph.nodes = m.graph.nodes[:-1]
    m.graph.output = last.inputs[0]
    return m


def load_model(
    model_id: str, offline: bool | None = None, progress: bool | None = None, synthetic: bool = False, seed: int = 0
) -> tuple[Any, dict | None]:
    """(Model, manifest entry) for a released model: from the cache, or with synthetic weights."""
    from . import cache, manifest

    entry = manifest.get(model_id)
    if synthetic:
        from .. import zoo

        model = zoo.synthetic_model(entry["architecture"], seed=seed)
        model.meta.setdefault("input_convention", dict(entry["input_convention"]))
        if model.meta.get("class_order") in (None, "unknown"):
            model.meta["class_order"] = entry["class_order"]
        model.meta["model_id"] = entry["id"]
        return model, entry
    return cache.model_from_cache(entry["id"], offline=offline, progress=progress), entry


def _load_everywhere(
    model_id: str, dist: Dist, offline: bool | None, progress: bool | None, synthetic: bool, seed: int
):
    """Rank 0 loads first (it may download); the others then read the verified cache offline."""
    if dist.world <= 1:
        return load_model(model_id, offline, progress, synthetic, seed)
    if dist.rank == 0:
        try:
            result = load_model(model_id, offline, progress, synthetic, seed)
        except BaseException:
            dist.all_ok(False)
            raise
        dist.all_ok(True)
        return result
    if not dist.all_ok(True):
        raise SenetHubError(f"rank 0 could not load {model_id}; see its error")
    return load_model(model_id, True if not synthetic else offline, False, synthetic, seed)


def run(
    model_id: str,
    data: str,
    backend: str = "torch",
    labels: str | None = None,
    label_order: str = "auto",
    batch_size: int = 32,
    limit: int | None = None,
    workers: int | None = None,
    offline: bool | None = None,
    progress: bool | None = None,
    synthetic: bool = False,
    seed: int = 0,
) -> dict[str, Any] | None:
    """What `senet-hub evaluate` does; returns the report on rank 0 (None on other ranks)."""
    from . import manifest

    if label_order not in LABEL_ORDERS:
        raise SenetHubError(f"unknown label order '{label_order}'; choose one of {', '.join(LABEL_ORDERS)}")
    ds = find_samples(data, labels)  # a bad --data fails before any model is loaded
    dist = Dist.from_env()
    try:
        model, entry = _load_everywhere(model_id, dist, offline, progress, synthetic, seed)
        order = ds.natural_label_order if label_order == "auto" else label_order
        num_classes = _num_classes(model)
        cmap = class_map(model.meta.get("class_order"), order, num_classes)
        res = evaluate(model, ds.samples, backend, None, batch_size, limit, cmap, progress, workers, dist)
    finally:
        dist.close()
    res.update(
        {
            "data": os.path.abspath(ds.root),
            "layout": ds.layout,
            "labels": ds.label_file,
            "labelled_files_missing": ds.missing,
            "class_order": model.meta.get("class_order"),
            "label_order": order,
            "synthetic_weights": synthetic,
        }
    )
    if entry is not None:
        res["model"] = entry["id"]
        res["published"] = dict(manifest.published_accuracy(entry), protocol=entry["published"].get("protocol"))
    return res if dist.rank == 0 else None


def _num_classes(model: Any) -> int:
    from ..graph import infer_shapes

    shapes = infer_shapes(model)
    shp = shapes[model.graph.output]
    return int(np.prod(shp[1:]))


def format_report(res: dict[str, Any]) -> str:
    if not res.get("images"):
        return f"{res['model']} ({res['backend']}): no images evaluated"
    line = (
        f"{res['model']} ({res['backend']}, {res['images']} images, {res['layout']}): "
        f"top-1 {res['top1']:.2f}% ({res['top1_correct']}/{res['images']}), "
        f"top-5 {res['top5']:.2f}% ({res['top5_correct']}/{res['images']})"
    )
    pub = res.get("published")
    if pub and not res.get("synthetic_weights"):
        line += f"; published {pub['top1']:.2f}% / {pub['top5']:.2f}%"
    if res.get("synthetic_weights"):
        line += " [synthetic weights: a pipeline check, not an accuracy]"
    return line
