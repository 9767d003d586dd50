"""Where a canonical Model comes from (Caffe files, a MindSpore checkpoint, the zoo) and where it goes."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from . import formats
from .errors import SenetHubError, UnsupportedError
from .graph import Model

# Names kept for callers of the old tables; the registry (senet_hub.formats) is their one source.
SOURCES = tuple(formats.source_names())
TARGETS = tuple(formats.target_names())
TARGET_BACKEND = {t.name: t.backend for t in formats.targets() if t.backend and not t.without_framework}


def infer_source(
    source: str | None,
    prototxt: str | None = None,
    ckpt: str | None = None,
    arch: str | None = None,
    **options: Any,
) -> str:
    """--from, else the first registered source whose `infer_from` option is given."""
    if source:
        return source
    given = {"prototxt": prototxt, "ckpt": ckpt, "arch": arch, **options}
    for fmt in formats.sources():
        if fmt.inferred(given):
            return fmt.name
    hints = [s.hint for s in formats.sources()]
    raise SenetHubError(f"no input model: give {', '.join(hints[:-1])}, or {hints[-1]}")


def load_model(
    source: str | None = None,
    prototxt: str | None = None,
    caffemodel: str | None = None,
    ckpt: str | None = None,
    arch: str | None = None,
    seed: int = 0,
    **options: Any,
) -> Model:
    """The canonical Model a source's reader makes of the option values (`options`: other sources' options)."""
    values = {"prototxt": prototxt, "caffemodel": caffemodel, "ckpt": ckpt, "arch": arch, "seed": seed, **options}
    return formats.source(infer_source(source, **values)).read(values)


def ensure_hashes(model: Model) -> Model:
    """Fill meta["source_sha256"] from the source files (done only for outputs that record it)."""
    if "source_sha256" not in model.meta and model.meta.get("source_paths"):
        from .hub.integrity import sha256_file

        model.meta["source_sha256"] = {
            k: sha256_file(p) for k, p in model.meta["source_paths"].items() if os.path.exists(p)
        }
    return model


# Formats that write the input stage (input_norm) as part of the model, exactly.
EXACT_STAGE_FORMATS = formats.exact_stage_formats()
# timm's own SE-ResNets that a MindCV state_dict loads into by name (same keys and shapes)
TIMM_OF_MINDCV = {"seresnet18", "seresnet34", "seresnet50", "seresnext50_32x4d"}


def weights_only_format(target: str, path: str) -> str | None:
    """The name of the target format when it holds only weights (no input stage), else None."""
    return formats.target(target).weights_only_label(path)


def _convention_name(conv: dict | None) -> str:
    from .transforms import CONVENTIONS

    keys = ("channel_order", "range", "mean", "std")
    for name, c in CONVENTIONS.items():
        if conv and all(conv.get(k) == c[k] for k in keys):
            return name
    return "custom"


def fold_for_weights_only(
    model: Model, fmt: str, path: str, exact_input: bool = False, say: Callable[[str], None] | None = None
) -> Model:
    """The model a weights-only format can hold: its input stage folded into conv1 (Cadene-style),
    the deviation from the exact model measured and said; with exact_input an inexact fold is refused."""
    from . import transforms

    if not model.graph.nodes or model.graph.nodes[0].op != "input_norm":
        return model
    name = _convention_name(model.meta.get("input_convention"))
    folded, exact = transforms.fold_input_stage(model)
    conv = folded.graph.nodes[0].name
    if exact:
        if say:
            say(f"input convention {name} folded into {conv} exactly ({conv} pads nothing)")
        return folded
    if exact_input:
        raise UnsupportedError(
            f"{path}: {fmt} cannot hold the input convention {name} exactly ({conv} zero-pads its input, so the "
            f"stage does not fold into weights exactly); write {formats.exact_stage_formats()} for an exact input stage, "
            "or leave out --exact-input to fold it Cadene-style"
        )
    from .verify import default_input

    dev = transforms.fold_deviation(model, folded, default_input(model, 2, 7))
    folded.meta["input_fold"]["deviation"] = dev
    if say:
        say(
            f"input convention {name} folded into {conv} (Cadene-style; inexact at the zero-padded border): "
            f"logits deviate by max|d|/max|ref| = {dev:.1e} from the exact model; use {formats.exact_stage_formats()} "
            "for an exact input stage, --exact-input to refuse"
        )
    return folded


def stage_as_conv(model: Model) -> Model:
    """The input_norm stage as the 1x1 convolution with bias it is (weight[c, perm[c]] = scale[c],
    bias = shift): Caffe has no channel-permute layer, but this one Convolution computes the stage
    exactly (the other products are exact zeros), so a Caffe file holds the convention exactly."""
    g = model.graph
    if not g.nodes or g.nodes[0].op != "input_norm":
        return model
    import numpy as np

    from .graph import Node, infer_shapes

    m = model.copy()
    norm = m.graph.nodes[0]
    c = len(norm.attrs["perm"])
    w = np.zeros((c, c, 1, 1), np.float64)
    for o, i in enumerate(norm.attrs["perm"]):
        w[o, int(i), 0, 0] = norm.attrs["scale"][o]
    attrs = {"out_channels": c, "kernel": (1, 1), "stride": (1, 1), "pad": (0, 0, 0, 0), "dilation": (1, 1),
             "groups": 1, "bias": True}  # fmt: skip
    m.graph.nodes[0] = Node(norm.name, "conv", list(norm.inputs), attrs, [norm.name])
    m.weights[f"{norm.name}.weight"] = w.astype(np.float32)
    m.weights[f"{norm.name}.bias"] = np.asarray(norm.attrs["shift"], np.float32)
    infer_shapes(m)
    return m


def timm_pool_deviation(model: Model) -> float:
    """max|d|/max|ref| of the logits between a MindCV model and the same weights with timm's stem pool."""
    from . import transforms
    from .verify import default_input

    return transforms.output_deviation(model, transforms.timm_pool(model), default_input(model, 2, 7))


def warn_timm_mismatch(model: Model, say: Callable[[str], None]) -> None:
    """A MindCV .pth loads by name into timm's seresnet* but pools differently there: say how much."""
    from . import zoo

    if not zoo.is_arch(model.arch, "mindcv") or model.arch not in TIMM_OF_MINDCV:
        return
    dev = timm_pool_deviation(model)
    say(
        f"note: this .pth loads by name into timm.create_model('{model.arch}'), which computes another model: "
        "timm max-pools the stem with padding 1 on every side, MindCV with 'same' padding (bottom/right only); "
        f"there its logits deviate by max|d|/max|ref| = {dev:.1e} (verify input); senet-hub's own module "
        "(senet_hub.builders.torch) or MindCV compute the source model"
    )


def save_model(
    model: Model,
    target: str,
    path: str,
    *,
    exact_input: bool = False,
    say: Callable[[str], None] | None = None,
    **opts: Any,
) -> list[str]:
    """Write the model in the target's native format (its registry entry says how); returns the files written.

    Formats that hold only weights (.pth, .ckpt) cannot hold an input stage: it is folded into
    conv1 and the deviation said (`say`), or refused with exact_input (UnsupportedError, exit 6).
    They get a metadata record (see pth.metadata_record) saying the convention and the fold.
    """
    fmt = formats.target(target)
    label = fmt.weights_only_label(path)
    if label:
        model = fold_for_weights_only(model, label, path, exact_input=exact_input, say=say)
        ensure_hashes(model)
        from .converters.pth import metadata_record

        opts["metadata"] = metadata_record(model)
        if say and fmt.notes:
            formats.resolve(fmt.notes)(model, say)
    elif fmt.records_source_hashes:
        ensure_hashes(model)
    container = fmt.container(path)
    if say and container is not None and container.notes:
        formats.resolve(container.notes)(model, say)
    if fmt.needs_framework(path):
        from . import builders

        assert fmt.backend is not None  # needs_framework says so
        builders.get(fmt.backend)  # a missing framework: MissingFrameworkError naming the extra
    if fmt.prepare:
        model = formats.resolve(fmt.prepare)(model)
    writer: formats.Writer = formats.resolve(fmt.writer_for(path))
    out = writer(model, path, **opts)
    return list(out) if isinstance(out, (list, tuple)) else [str(out or path)]
