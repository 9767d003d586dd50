"""Caffe deploy prototxt + caffemodel -> canonical Model.

Each Caffe layer type has one handler in ``HANDLERS`` (``@handles("Type")``, ``caffe_layers``) that
turns a layer into canonical nodes. Handlers see the layer's params, its blobs and the shapes of
their bottoms; in-place layers (top == bottom) are resolved by tracking which node currently
produces each blob. Which layers a TEST net keeps follows Caffe's NetState rules (``caffe_rules``).
This module assembles them: the layers of a prototxt, their caffemodel blobs by Caffe's matching
rule, the graph and weights, and the canonical Model. The result is a generic graph named after the
Caffe layers; recognising a released architecture and renaming to canonical names is a separate
step (``senet_hub.zoo.canonicalize``).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np

from senet_hub.errors import FormatError, ModelError, UnsupportedError
from senet_hub.graph import Graph, Model, validate

from .caffe_format import V1_TYPE_NAMES, read_caffemodel, read_prototxt, show

# the handlers and the NetState rules, importable from here as before the split
from .caffe_layers import (  # noqa: F401
    HANDLERS,
    PARAM_LAYERS,
    Context,
    Handler,
    Layer,
    _bool,
    _dims,
    _get,
    _hw,
    _int,
    handles,
)
from .caffe_rules import (  # noqa: F401
    PHASES,
    TEST,
    NetState,
    NetStateRule,
    _rule,
    layer_included,
    net_state,
    state_meets_rule,
)

CAFFE_INPUT_CONVENTION = {
    "channel_order": "BGR",
    "range": [0, 255],
    "mean": [104.0, 117.0, 123.0],
    "std": [1.0, 1.0, 1.0],
    "size": 224,
}


# ------------------------------------------------------------------------------------ driver
def net_layers(net: dict[str, list[Any]], path: str) -> list[Layer]:
    """TEST-phase layers in order (Caffe's NetState rules), V1 `layers` and the legacy `input:` header included."""
    layers: list[Layer] = []
    if "input" in net:
        try:
            dims = [_int(d, "input_dim") for d in net.get("input_dim", [])]
            shapes = [_dims([s], "input_shape") for s in net.get("input_shape", [])]
        except FormatError as e:
            raise FormatError(f"{path}: {e}") from None
        for j, name in enumerate(net["input"]):
            shape = shapes[j] if j < len(shapes) else dims[4 * j : 4 * j + 4]
            layers.append(Layer(name, "Input", [], [name], {"input_param": [{"shape": [{"dim": shape}]}]}))
    if net.get("layer") and net.get("layers"):
        # upgrade_proto.cpp: "Refusing to upgrade inconsistent NetParameter input"
        raise FormatError(
            f"{path}: uses both 'layer' and V1 'layers' fields, which Caffe refuses to read; keep one of the two"
        )
    state, file_level = net_state(net, path)
    changed_by_level: list[str] = []
    for key, v1 in (("layer", False), ("layers", True)):
        for i, raw in enumerate(net.get(key, [])):
            if not isinstance(raw, dict):
                raise FormatError(f"{path}: '{key}' must be a message")
            name, ltype = _get(raw, "name", None), str(_get(raw, "type", ""))
            where = f"{path}: layer '{show(str(name))}'" if name else f"{path}: layer #{i + 1}"
            include = [_rule(r, f"{where}: include rule") for r in raw.get("include", [])]
            exclude = [_rule(r, f"{where}: exclude rule") for r in raw.get("exclude", [])]
            if include and exclude:
                # net.cpp FilterNet: CHECK(include_size() == 0 || exclude_size() == 0)
                raise FormatError(
                    f"{where} has both include and exclude rules, which Caffe refuses ('Specify either include "
                    "rules or exclude rules; not both'); keep one kind"
                )
            kept = layer_included(state, include, exclude)
            if file_level and kept != layer_included(NetState(TEST, file_level, state.stages), include, exclude):
                changed_by_level.append(str(name or f"#{i + 1}"))
            if not kept:
                continue
            if v1:
                ltype = V1_TYPE_NAMES.get(ltype.upper().replace("_", ""), ltype)
            if not name or not ltype:
                raise FormatError(f"{path}: a layer without a name or type (layer #{len(layers) + 1})")
            layers.append(
                Layer(
                    str(name), ltype, [str(b) for b in raw.get("bottom", [])], [str(t) for t in raw.get("top", [])], raw
                )
            )
    if changed_by_level:
        raise UnsupportedError(
            f"{path}: state {{ level: {file_level} }} decides which layers Caffe keeps ({_names(changed_by_level)}), "
            "and Caffe versions disagree on it (since 2016 Net(prototxt, TEST) uses level 0, older ones the file's "
            "level): remove the level from the state or the min_level/max_level rules that depend on it"
        )
    return layers


def _check_supported(layers: list[Layer], path: str) -> None:
    missing: dict[str, list[str]] = {}
    for layer in layers:
        if layer.type not in HANDLERS:
            missing.setdefault(layer.type, []).append(layer.name)
    if missing:
        parts = []
        for t, names in sorted(missing.items()):
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            parts.append(f"{t} x{len(names)} ({shown})")
        raise UnsupportedError(
            f"{path}: unsupported layer types: {'; '.join(parts)}. Supported: {', '.join(sorted(HANDLERS))}"
        )


def _mean_comment(text: str) -> list[float] | None:
    m = re.search(r"#\s*mean_value\s*:\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)", text)
    return [float(v) for v in m.groups()] if m else None


def expected_blobs(layer: Layer) -> tuple[int, str]:
    """How many blobs Caffe's layer owns in a TEST net (what CopyTrainedLayersFrom requires of the
    caffemodel's layer of that name), and the parameters that decide it, for messages."""
    if layer.type in ("Convolution", "InnerProduct"):
        param = "convolution_param" if layer.type == "Convolution" else "inner_product_param"
        bias = _bool(layer.param(param), "bias_term", True)
        return 1 + bias, f"{layer.type}, bias_term: {str(bias).lower()}"
    if layer.type == "BatchNorm":
        return 3, "BatchNorm"
    if layer.type == "Scale":  # ScaleLayer: a scale blob unless it comes from a second bottom, then the bias
        bias = _bool(layer.param("scale_param"), "bias_term", False)
        n_bottoms = "" if len(layer.bottoms) == 1 else f", {len(layer.bottoms)} bottoms"
        return (len(layer.bottoms) == 1) + bias, f"Scale, bias_term: {str(bias).lower()}{n_bottoms}"
    return 0, layer.type


def _names(names: list[str], cap: int = 5) -> str:
    shown = ", ".join(f"'{show(n)}'" for n in names[:cap])
    return shown + (f" and {len(names) - cap} more" if len(names) > cap else "")


def _layer_blobs(
    layer: Layer, blobs: dict[str, tuple[str, list[np.ndarray]]], unmatched: list[str], seen: set[str], wpath: str
) -> list[np.ndarray] | None:
    """The caffemodel's blobs for a layer, with Caffe's rule (Net::CopyTrainedLayersFrom): matched by
    name, exactly as many as the layer owns ("Incompatible number of blobs for layer ...")."""
    need, what = expected_blobs(layer)
    found = blobs.get(layer.name)
    if need and layer.name in seen:
        # Caffe copies a source layer into the first layer of that name; a second one keeps its
        # random initialisation
        raise ModelError(
            f"{wpath}: layer name '{show(layer.name)}' ({what}) is used twice in the prototxt: Caffe loads the "
            "caffemodel's weights into the first one only; rename one of them"
        )
    if found is None:
        if not need:
            return None
        if unmatched:
            raise ModelError(
                f"{wpath}: prototxt layer '{show(layer.name)}' ({what}) has no weights; the caffemodel has unmatched "
                f"weighted layers: {_names(unmatched)} (renamed? the caffemodel does not match the prototxt)"
            )
        raise ModelError(
            f"{wpath}: prototxt layer '{show(layer.name)}' ({what}) has no weights in the caffemodel, which has no "
            "other weighted layers: the caffemodel does not match the prototxt"
        )
    if len(found[1]) != need:
        raise ModelError(
            f"{wpath}: layer '{show(layer.name)}' ({what}) has {len(found[1])} blobs in the caffemodel; Caffe requires "
            f"exactly {need} (Incompatible number of blobs)"
        )
    return found[1]


def build_graph(
    net: dict[str, list[Any]],
    path: str,
    blobs: dict[str, tuple[str, list[np.ndarray]]] | None = None,
    weights_path: str | None = None,
) -> tuple[Graph, dict[str, np.ndarray]]:
    """The generic graph and weights of a parsed prototxt; blobs=None reads it without weights
    (placeholders of the right shapes). weights_path names the caffemodel in messages."""
    layers = net_layers(net, path)
    _check_supported(layers, path)
    if not any(layer.type == "Input" for layer in layers):
        raise UnsupportedError(f"{path}: no input declared (Input layer or input/input_shape): pass a deploy prototxt")
    ctx = Context(path)
    kept = {layer.name for layer in layers}
    unmatched = [n for n in blobs if n not in kept] if blobs is not None else []  # the caffemodel's order
    seen: set[str] = set()
    for layer in layers:
        try:
            if blobs is None:
                layer.blobs = _placeholder_blobs(ctx, layer)
            else:
                layer.blobs = _layer_blobs(layer, blobs, unmatched, seen, weights_path or path)
            seen.add(layer.name)
            HANDLERS[layer.type](ctx, layer)
        except FormatError as e:
            if str(e).startswith(path):
                raise
            raise FormatError(f"{path}: layer '{layer.name}': {e}") from None
        except (ValueError, TypeError, KeyError, IndexError, ZeroDivisionError, OverflowError, AttributeError) as e:
            # Fuzzing safety net: handlers interpret untrusted parameters; what they still trip over
            # (a zero stride, an axis out of range, an impossible shape) is a bad model, said as one.
            raise ModelError(
                f"{path}: layer '{layer.name}' ({layer.type}): cannot use its parameters ({type(e).__name__}: {e})"
            ) from None
    for n in ctx.nodes:
        n.attrs.pop("_affine_pending", None)
    if not ctx.nodes:
        raise ModelError(f"{path}: the network has no computing layers")
    graph = Graph(ctx.nodes, ctx.input_name, ctx.shapes[ctx.input_name], ctx.nodes[-1].name)
    return graph, ctx.weights


# Per-channel vectors a prototxt read without weights materialises (BatchNorm/Scale), in all:
# SENet-154 needs about 0.3 M. Fuzzing fix: declared sizes alone used to allocate any amount.
MAX_PLACEHOLDER_CHANNELS = 1 << 22


def _placeholder_blobs(ctx: Context, layer: Layer) -> list[np.ndarray] | None:
    """Blobs of the right shapes, for reading a prototxt without weights.

    They are read-only zero-stride views (no memory whatever the declared shape); only the
    per-channel vectors of BatchNorm/Scale get real arrays, within MAX_PLACEHOLDER_CHANNELS.
    """
    if layer.type not in PARAM_LAYERS and not (layer.type == "Scale" and len(layer.bottoms) == 1):
        return None
    shape = ctx.shape(ctx.src(layer)) if layer.bottoms else ()
    c = shape[1] if len(shape) > 1 else 0

    def const(value: float, *dims: int) -> np.ndarray:
        return np.broadcast_to(np.float32(value), dims)

    if layer.type == "Convolution":
        p = layer.param("convolution_param")
        out, g = _get(p, "num_output", 0, int), _get(p, "group", 1, int)
        return [const(0, out, c // max(g, 1), *_hw(p, "kernel", 1)), const(0, out)]
    if layer.type == "InnerProduct":
        out = _get(layer.param("inner_product_param"), "num_output", 0, int)
        return [const(0, out, math.prod(shape[1:])), const(0, out)]
    ctx.placeholder_channels += c
    if ctx.placeholder_channels > MAX_PLACEHOLDER_CHANNELS:
        raise ModelError(
            f"{ctx.path}: layer '{layer.name}': more than {MAX_PLACEHOLDER_CHANNELS} channels in normalisation "
            "layers: not a SENet deploy prototxt"
        )
    if layer.type == "BatchNorm":
        return [const(0, c), const(1, c), const(1, 1)]
    return [const(1, c), const(0, c)]


def load_prototxt(path: str | os.PathLike) -> Graph:
    """The generic graph of a prototxt (node names = Caffe layer names), no weights needed."""
    net, _ = read_prototxt(path)
    graph, _ = build_graph(net, str(path), None)
    return graph


def load(prototxt: str | os.PathLike, caffemodel: str | os.PathLike, canonical: bool = True) -> Model:
    """Read a Caffe model into a validated canonical Model.

    With canonical=True a released architecture is recognised and renamed to canonical names.
    """
    net, text = read_prototxt(prototxt)
    blobs = read_caffemodel(caffemodel)
    graph, weights = build_graph(net, str(prototxt), blobs, str(caffemodel))
    conv = dict(CAFFE_INPUT_CONVENTION, size=graph.input_shape[-1])
    mean = _mean_comment(text)
    if mean:
        conv["mean"] = mean
    meta = {
        "arch": "custom",
        "source_format": "caffe",
        "source_files": {"prototxt": os.path.basename(prototxt), "caffemodel": os.path.basename(caffemodel)},
        # hashing 460 MB costs more than converting it: sources.ensure_hashes() fills
        # "source_sha256" from these paths when an output records it
        "source_paths": {"prototxt": os.path.abspath(prototxt), "caffemodel": os.path.abspath(caffemodel)},
        "input_convention": conv,
        "class_order": "unknown",
    }
    model = Model(graph, weights, meta)
    try:
        validate(model)
    except ModelError as e:
        raise ModelError(f"{caffemodel}: {e} (does the caffemodel belong to {os.path.basename(prototxt)}?)") from None
    written = _senet_hub_comments(text)  # metadata a senet-hub writer left in the prototxt
    if "input_convention" in written:
        model.meta["input_convention"] = written["input_convention"]
    if canonical:
        from senet_hub import zoo

        model = zoo.canonicalize(model)
        if model.arch != "custom":
            model.meta["class_order"] = "senet"
    model.meta["class_order"] = written.get("class_order", model.meta["class_order"])
    if model.arch == "custom" and written.get("arch"):
        model.meta["written_from_arch"] = written["arch"]
    return model


def _senet_hub_comments(text: str) -> dict:
    import json

    out: dict = {}
    for m in re.finditer(r"^#\s*senet-hub (input_convention|class_order|arch):\s*(.+)$", text, re.M):
        key, val = m.group(1), m.group(2).strip()
        if key == "input_convention":
            try:
                val = json.loads(val)
            except ValueError:
                continue
            if not isinstance(val, dict) or not {"channel_order", "range", "mean", "std"} <= set(val):
                continue
        out[key] = val
    return out
