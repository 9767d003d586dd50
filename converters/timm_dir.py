"""Write a timm model directory: ``model.safetensors`` + ``config.json`` in timm's hub layout.

``timm.create_model("local-dir:DIR", pretrained=True)`` (timm 1.0.31: ``_factory.parse_model_name``
-> ``_hub.load_model_config_from_path`` -> ``_builder.load_pretrained`` with source ``local-dir``,
which loads ``DIR/model.safetensors`` strictly) builds ``config.json``'s ``architecture`` with its
``num_classes`` and loads the weights; ``timm.data.resolve_data_config({}, model=m)`` returns the
``pretrained_cfg`` written here (input size, interpolation, crop, mean/std). timm takes the
``pretrained_cfg`` as a whole (``PretrainedCfg(**cfg)``): every field it needs is written, and
nothing that is not a PretrainedCfg field goes in it (senet-hub's record sits beside it, at the
top level, where timm ignores it).

The input convention is carried exactly, with no fold: timm's pipeline gives RGB in [0, 1] and
then ``(x - mean) / std`` per channel. Any senet-hub convention (channel order, range, mean, std)
is ``x[c] = (pixel01[col(c)] - M_c) / S_c`` (pixel01 = pixel / 255), an affine map of one colour per
channel, like timm's, so the model's input is a *permutation* of timm's normalised input when timm's
mean/std of colour col(c) are M_c/S_c: the first convolution's input channels are permuted (RGB <- BGR
for the Caffe release) and mean/std are written as those values (Caffe: mean = (123, 117, 104) / 255,
std = 1 / 255). Both nets zero-pad in the same (normalised) space, so this is exact, unlike the
Cadene fold a ``.pth`` needs (transforms.fold_input_stage). A leading input_norm stage (from
``--input-convention``) is composed into that same permutation and mean/std, so the directory is
the same whatever convention the model was given in.

Classes: timm labels a 1000-way head with ImageNet-1k's sorted WordNet ids (timm.data.ImageNetInfo,
chosen by num_classes), so a model in the SENet release's class order is written in the sorted
(ilsvrc2012) order: an exact permutation of the classifier's rows (transforms.set_class_order).

Architectures: the timm model that computes the zoo architecture exactly (``zoo.timm_name``: the
Caffe release -> timm's Cadene ``legacy_*``). A MindCV model loads by name into timm's
``seresnet*``, which pools the stem differently: written with a measured-deviation note (as a MindCV
``.pth`` is). An architecture timm has no model for (SE-BN-Inception) is refused (exit 6).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from senet_hub.graph import Model, Node

WEIGHTS_NAME = "model.safetensors"  # timm's _hub.HF_SAFE_WEIGHTS_NAME, the first file load_state_dict_from_path tries
CONFIG_NAME = "config.json"
RGB = "RGB"

# The timm model for each Caffe release architecture (Cadene's ports, timm's legacy_* models compute
# the Caffe nets exactly); used until senet_hub.zoo provides timm_name.
_CAFFE_TIMM = {
    "SE-ResNet-50": "legacy_seresnet50",
    "SE-ResNet-101": "legacy_seresnet101",
    "SE-ResNet-152": "legacy_seresnet152",
    "SE-ResNeXt-50": "legacy_seresnext50_32x4d",
    "SE-ResNeXt-101": "legacy_seresnext101_32x4d",
    "SENet-154": "legacy_senet154",
}


def _other_formats() -> str:
    from senet_hub import formats

    names = []
    for t in formats.targets():
        if t.name == "timm":
            continue
        named = [c.suffix for c in t.containers if c.suffix]
        names.append(f"{t.title} ({'/'.join(named)})" if len(named) > 1 else t.title)
    return ", ".join(names[:-1]) + " or " + names[-1]


def timm_architecture(model: Model) -> tuple[str, bool]:
    """(timm model name, whether it computes the model exactly) for the model's architecture.

    UnsupportedError (exit 6) for an architecture timm has no model for."""
    from senet_hub import sources, zoo
    from senet_hub.errors import UnsupportedError

    arch = model.arch
    timm_name = getattr(zoo, "timm_name", None)  # the zoo's table where it has one
    name = timm_name(arch) if timm_name is not None and zoo.is_arch(arch) else _CAFFE_TIMM.get(arch)
    if name:
        return name, True
    if zoo.is_arch(arch, "mindcv") and arch in sources.TIMM_OF_MINDCV:
        return arch, False  # same names and shapes; the stem pool differs (said by `notes`)
    raise UnsupportedError(
        f"{arch}: timm has no model that computes this architecture, so a timm directory cannot hold it; "
        f"write {_other_formats()}"
    )


# ------------------------------------------------------------------------------ input convention


def _affine(conv: dict, n: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(colour of each input channel as an RGB index, M, S) with input[c] = (pixel01[col[c]] - M[c]) / S[c],
    pixel01 = the 0..255 pixel / 255 (the range's ends folded into M and S: timm's own form)."""
    from senet_hub.errors import UnsupportedError

    order = str(conv.get("channel_order", "")).upper()
    if len(order) != n or sorted(order) != sorted(RGB):
        raise UnsupportedError(
            f"input channel order '{order}' is not a permutation of RGB; a timm directory takes RGB images"
        )
    lo, hi = (float(v) for v in conv.get("range", (0, 255)))
    mean = np.asarray(conv.get("mean", [0.0] * n), np.float64)
    std = np.asarray(conv.get("std", [1.0] * n), np.float64)
    # (p01 * (hi - lo) + lo - mean) / std = (p01 - (mean - lo) / (hi - lo)) / (std / (hi - lo))
    return [RGB.index(ch) for ch in order], (mean - lo) / (hi - lo), std / (hi - lo)


def timm_input(model: Model) -> tuple[Model, list[int], list[float], list[float]]:
    """(the model without an input stage, col, mean, std): the stripped model's input channel c reads
    colour col[c] (RGB index) of timm's normalised input, whose per-colour mean/std these are."""
    from senet_hub.errors import UnsupportedError

    g = model.graph
    conv = model.meta.get("input_convention")
    if not conv:
        raise UnsupportedError(
            f"{model.arch}: the model's input convention is unknown, so timm's preprocessing (mean/std) cannot be "
            "written; give the source's convention"
        )
    n = int(g.input_shape[1])
    col, mean, std = _affine(conv, n)
    m = model
    if g.nodes and g.nodes[0].op == "input_norm":
        # x_old[c] = scale[c] * x_new[perm[c]] + shift[c] = (p01[col[perm[c]]] - M') / S': still one colour
        # per channel, affine, with S' = S[perm[c]] / scale[c] and M' = M[perm[c]] - shift[c] * S'
        st = g.nodes[0].attrs
        perm, scale, shift = list(st["perm"]), np.asarray(st["scale"], np.float64), np.asarray(st["shift"], np.float64)
        col = [col[perm[c]] for c in range(n)]
        std = std[perm] / scale
        mean = mean[perm] - shift * std
        m = _strip_stage(model)
        src = model.meta.get("input_stage_from")  # the weights' own convention, as set_input_convention records it
        if src:
            col_s, mean_s, std_s = _affine(src, n)
            if col_s == col and np.allclose(mean_s, mean, rtol=1e-9, atol=1e-12) and np.allclose(std_s, std, rtol=1e-9):
                mean, std = mean_s, std_s  # the same values without the composition's rounding
    if sorted(col) != list(range(n)):
        raise UnsupportedError(f"{model.arch}: the input stage reads one colour twice; timm cannot express it")
    std_t, mean_t = [0.0] * n, [0.0] * n
    for c in range(n):
        std_t[col[c]] = float(std[c])
        mean_t[col[c]] = float(mean[c])
    return m, col, mean_t, std_t


def to_timm_input(x: np.ndarray, conv: dict, mean: Any, std: Any) -> np.ndarray:
    """The tensor timm's pipeline makes of the same image: x (N x C x H x W in convention `conv`) back to
    its pixels / 255 per colour, then (pixel01 - mean) / std in RGB order (float64 math, float32 out)."""
    n = int(x.shape[1])
    col, m_src, s_src = _affine(conv, n)
    xs = np.asarray(x, np.float64)
    rgb = np.empty_like(xs)
    for c in range(n):
        rgb[:, col[c]] = xs[:, c] * s_src[c] + m_src[c]
    mean = np.asarray(mean, np.float64).reshape(1, n, 1, 1)
    std = np.asarray(std, np.float64).reshape(1, n, 1, 1)
    return np.ascontiguousarray((rgb - mean) / std, np.float32)


def _strip_stage(model: Model) -> Model:
    m = model.copy()
    first = m.graph.nodes.pop(0)
    for node in m.graph.nodes:
        node.inputs = [m.graph.input_name if i == first.name else i for i in node.inputs]
    m.meta.pop("input_stage_from", None)
    return m


def _first_conv(model: Model) -> Node:
    """The one node reading the input, a convolution with one group (whose input channels are permuted)."""
    from senet_hub.errors import UnsupportedError

    g = model.graph
    readers = [n for n in g.nodes if g.input_name in n.inputs]
    if len(readers) != 1 or readers[0].op != "conv" or readers[0].attrs.get("groups", 1) != 1:
        raise UnsupportedError(
            f"{model.arch}: the input is read by {', '.join(n.name for n in readers) or 'nothing'}, not one "
            "ungrouped convolution: the input channels cannot be permuted into timm's RGB order"
        )
    return readers[0]


# ------------------------------------------------------------------------------------- config


def _classifier(model: Model) -> Node:
    from senet_hub.errors import UnsupportedError

    linears = [n for n in model.graph.nodes if n.op == "linear"]
    if not linears:
        raise UnsupportedError(f"{model.arch}: no classifier (linear) node; timm's models end in one")
    return linears[-1]


def _pool_size(model: Model, shapes: dict) -> list[int] | None:
    """The spatial size of the feature map the classifier's pooling reads (timm's pool_size)."""
    g = model.graph
    name = _classifier(model).inputs[0]
    for _ in range(len(g.nodes)):
        node = g.node(name)
        if node.op in ("global_avg_pool", "avg_pool", "max_pool", "global_max_pool"):
            return [int(v) for v in shapes[node.inputs[0]][2:]]
        if not node.inputs or node.inputs[0] == g.input_name:
            return None
        name = node.inputs[0]
    return None


def _data_config(model: Model, conv: dict) -> dict[str, Any]:
    """interpolation / crop_pct / crop_mode: the zoo's record of timm's published values where it has
    one, else the source's own evaluation pipeline (resize the shorter side, centre crop, bilinear)."""
    from senet_hub.hub.evaluate import resize_size

    # the convention's crop / resize (224 of 256): a ratio, kept when the graph's input size differs
    size = int(conv.get("size", model.graph.input_shape[-1]))
    cfg = {
        "interpolation": str(conv.get("interpolation", "bilinear")),
        "crop_pct": size / resize_size({**conv, "size": size}),
        "crop_mode": "center",
    }
    known = model.meta.get("pretrained_cfg")
    if isinstance(known, dict):  # timm's own values, for the archs the zoo describes from timm
        cfg.update({k: known[k] for k in ("interpolation", "crop_pct", "crop_mode", "license") if k in known})
        if known.get("input_size") == int(model.graph.input_shape[-1]):  # test-time values at timm's own size
            if known.get("test_input_size"):
                cfg["test_input_size"] = [int(model.graph.input_shape[1]), *_pair(known["test_input_size"])]
            if known.get("test_crop_pct"):
                cfg["test_crop_pct"] = float(known["test_crop_pct"])
    return cfg


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, (int, float)) else [int(x) for x in list(v)[-2:]]


def build(model: Model) -> tuple[dict[str, np.ndarray], dict[str, Any], Model]:
    """(state_dict, config.json contents, the model the files hold) for a model; nothing written."""
    from senet_hub import __version__, transforms
    from senet_hub.graph import infer_shapes

    from .pth import metadata_record, model_state_dict

    name, exact = timm_architecture(model)
    m, col, mean_t, std_t = timm_input(model)
    m = m.copy()
    conv1 = _first_conv(m)
    w = np.asarray(m.weights[f"{conv1.name}.weight"])
    permuted = np.empty_like(w)
    permuted[:, col] = w  # timm's channel col[c] carries what channel c carried
    m.weights[f"{conv1.name}.weight"] = permuted
    classes_from = None
    if m.meta.get("class_order") == "senet":  # timm labels 1000 classes in sorted-synset order
        m = transforms.set_class_order(m, "ilsvrc2012")
        classes_from = "senet"
    src_conv = dict(model.meta["input_convention"])
    size = int(m.graph.input_shape[-1])
    m.meta["input_convention"] = {"channel_order": RGB, "range": [0, 1], "mean": mean_t, "std": std_t, "size": size}
    shapes = infer_shapes(m)
    fc = _classifier(m)
    ncls = int(fc.attrs["out_features"])
    record = metadata_record(m)
    record["timm"] = {
        "architecture": name,
        "computes_source_exactly": exact,
        "input_channels_from": "".join(RGB[c] for c in col),  # the model's channel c was colour RGB[col[c]]
        "class_order_from": classes_from,
    }
    pretrained_cfg: dict[str, Any] = {
        "custom_load": False,
        "input_size": [int(v) for v in m.graph.input_shape[1:]],
        "fixed_input_size": False,
        **_data_config(m, src_conv),
        "mean": mean_t,
        "std": std_t,
        "num_classes": ncls,
        "pool_size": _pool_size(m, shapes),
        "first_conv": conv1.name,
        "classifier": fc.name,
        "description": f"{model.arch} written by senet-hub {__version__}",
    }
    for key in ("license", "origin_url", "paper_ids"):
        if model.meta.get(key) and key not in pretrained_cfg:
            pretrained_cfg[key] = model.meta[key]
    config = {
        "architecture": name,
        "num_classes": ncls,
        "num_features": int(shapes[fc.inputs[0]][1]),
        "global_pool": "avg",
        "pretrained_cfg": pretrained_cfg,
        "senet_hub": record,
    }
    return model_state_dict(m), config, m


def save(model: Model, path: str | os.PathLike, **_opts: Any) -> list[str]:
    """Write the timm directory `path` atomically (never replacing a folder senet-hub did not write)."""
    from senet_hub.atomic import atomic_outputs

    from .safetensors_writer import _library, write_tensors

    p = os.fspath(path)
    _library()  # a missing safetensors package is said before any work
    sd, config, m = build(model)
    with atomic_outputs([p]) as (tmp,):
        os.mkdir(tmp)
        write_tensors(sd, os.path.join(tmp, WEIGHTS_NAME), config["senet_hub"])
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
    return [p]


def notes(model: Model, say: Callable[[str], None]) -> None:
    """What a user of the directory should know before it is written: a MindCV model in timm's seresnet*."""
    from senet_hub import sources

    name, exact = timm_architecture(model)
    if exact:
        return
    dev = sources.timm_pool_deviation(model)
    say(
        f"note: timm builds this directory as '{name}', which computes another model: timm max-pools the stem "
        "with padding 1 on every side, MindCV with 'same' padding (bottom/right only); there its logits deviate "
        f"by max|d|/max|ref| = {dev:.1e} (verify input); senet-hub's own module or MindCV compute the source model"
    )


def read_config(path: str | os.PathLike) -> dict:
    """config.json of a timm directory (FormatError when it is not one)."""
    from senet_hub.errors import FormatError, InputFileError

    cfg = os.path.join(os.fspath(path), CONFIG_NAME)
    try:
        with open(cfg, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise InputFileError(f"{path}: no {CONFIG_NAME}; not a timm model directory") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise FormatError(f"{cfg}: unreadable ({e}); not a timm config") from None
    if not isinstance(data, dict) or "architecture" not in data:
        raise FormatError(f"{cfg}: has no 'architecture'; not a timm config")
    return data
