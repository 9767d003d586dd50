"""The five MindCV SENets: compact descriptions (reference_models/mindcv_zoo.yaml) -> canonical Graphs.

The "mindcv" family of senet_hub.zoo: ``zoo.expand(arch)`` turns a description into a ``Graph`` whose node names follow timm's
(non-legacy) ``seresnet*`` / ``seresnext*`` modules, so the PyTorch builder's state_dict has
timm's keys (``conv1``, ``bn1``, ``layer1.0.conv1`` ... ``layer1.0.se.fc1``, ``layer1.0.se.fc2``,
``layer1.0.downsample.0``/``.1``, ``fc``). Each parametrised node keeps, as ``source[0]``, the
MindCV cell it comes from (``layer0.0``, ``layer1.0.se_module.conv_reduce``, ``classifier``): the
``.ckpt`` converter derives its name mapping from that, never from a second table.

The SE block in canonical ops::

    se.pool   global_avg_pool(bnK)                 MindCV: ops.mean over H, W
    se.fc1    conv 1x1 + bias                      MindCV: Dense(C, r)  (weight (r, C) -> (r, C, 1, 1))
    se.act    relu
    se.fc2    conv 1x1 + bias                      MindCV: Dense(r, C)
    se.gate   sigmoid
    add       axpy(se.gate, bnK, shortcut)         x * s + shortcut (SE scale fused with the sum)
    actN      relu                                 the block output

MindSpore's ``MaxPool2d(3, 2, pad_mode="same")`` pads ``total = (ceil(H/2) - 1) * 2 + 3 - H`` rows:
``total // 2`` on top, the rest at the bottom. For an even stem output (inputs of 224, 64, any
H with ceil(H/2) even) that is ``(0, 1)``: the canonical ``max_pool`` has pad (0, 0, 1, 1),
floor rounding. ``zoo.expand(arch, input_size=H)`` computes the pads for other sizes.
Not torch's symmetric ``padding=1`` (timm's maxpool), which shifts every window by one pixel.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from ..errors import SenetHubError
from ..graph import Graph, conv_out
from . import register_family
from .builder import GraphBuilder

FAMILY = "mindcv"


def make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """MindCV's (and timm's) rounding of SE widths: nearest multiple, never 10 % below v."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def same_pad(size: int, k: int, s: int) -> tuple[int, int]:
    """MindSpore pad_mode="same": (before, after) with the odd pixel after."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _bn(b: GraphBuilder, name: str, src: str, x: str, eps: float) -> str:
    return b.add(name, "batch_norm", [x], {"eps": eps}, [src])


# ------------------------------------------------------------------------------------ expansion


@register_family("mindcv", describe=lambda d: describe(d))
def expand(d: dict[str, Any]) -> Graph:
    """The canonical Graph of a MindCV SENet description (``input_size`` overrides the convention's size)."""
    eps = float(d["bn_eps"])
    ncls = int(d["num_classes"])
    size = int(d.get("input_size") or d["input_convention"]["size"])
    basic = d["block"] == "basic"
    expansion = 1 if basic else 4
    groups = int(d.get("groups", 1))
    base_width = int(d.get("base_width", 64))
    b = GraphBuilder("data", 3)
    bn = functools.partial(_bn, b, eps=eps)

    # stem (MindCV layer0 = SequentialCell[conv, bn, relu], pool0)
    stem = int(d["stem_width"])
    x = b.conv("conv1", "layer0.0", "data", stem, 7, 2)
    x = bn("bn1", "layer0.1", x)
    x = b.add("act1", "relu", [x], None, ["layer0.2"])
    mp = d["max_pool"]
    k, s = int(mp["kernel"]), int(mp["stride"])
    if mp.get("pad_mode") != "same":
        raise SenetHubError(f"{d['id']}: only pad_mode 'same' max pooling is described")
    hw = conv_out(size, 7, 2, 3, 3)
    t, bt = same_pad(hw, k, s)
    pool_attrs = {"kernel": (k, k), "stride": (s, s), "pad": (t, t, bt, bt), "ceil": False, "count_include_pad": True}
    x = b.add("maxpool", "max_pool", [x], pool_attrs, ["pool0"])

    inplanes = stem
    for si, (planes, depth, stride) in enumerate(zip(d["stage_widths"], d["depths"], d["stage_strides"]), start=1):
        for bi in range(int(depth)):
            st = int(stride) if bi == 0 else 1
            p, mc = f"layer{si}.{bi}", f"layer{si}.{bi}"
            outc = planes * expansion
            inp = x
            if basic:
                y = b.conv(f"{p}.conv1", f"{mc}.conv1", inp, planes, 3, st)
                y = bn(f"{p}.bn1", f"{mc}.bn1", y)
                y = b.add(f"{p}.act1", "relu", [y], None, [f"{mc}.relu"])
                y = b.conv(f"{p}.conv2", f"{mc}.conv2", y, planes, 3, 1, groups=groups)
                last = bn(f"{p}.bn2", f"{mc}.bn2", y)
                out_act = f"{p}.act2"
            else:
                width = (planes * base_width // 64) * groups
                y = b.conv(f"{p}.conv1", f"{mc}.conv1", inp, width, 1)
                y = bn(f"{p}.bn1", f"{mc}.bn1", y)
                y = b.add(f"{p}.act1", "relu", [y], None, [f"{mc}.relu"])
                y = b.conv(f"{p}.conv2", f"{mc}.conv2", y, width, 3, st, groups=groups)
                y = bn(f"{p}.bn2", f"{mc}.bn2", y)
                y = b.add(f"{p}.act2", "relu", [y], None, [f"{mc}.relu"])
                y = b.conv(f"{p}.conv3", f"{mc}.conv3", y, outc, 1)
                last = bn(f"{p}.bn3", f"{mc}.bn3", y)
                out_act = f"{p}.act3"
            # SE before the shortcut: MindCV registers se_module before downsample, so the
            # parameters come out in MindCV's (and mindspore.save_checkpoint's) order
            rd = make_divisible(outc / int(d["reduction"]), int(d["se_divisor"]))
            se = f"{mc}.se_module"
            g = b.add(f"{p}.se.pool", "global_avg_pool", [last], None, [f"{se}.pool"])
            g = b.conv(f"{p}.se.fc1", f"{se}.conv_reduce", g, rd, 1, bias=True)
            g = b.add(f"{p}.se.act", "relu", [g], None, [f"{se}.act"])
            g = b.conv(f"{p}.se.fc2", f"{se}.conv_expand", g, outc, 1, bias=True)
            g = b.add(f"{p}.se.gate", "sigmoid", [g], None, [f"{se}.gate"])
            shortcut = inp
            if st != 1 or inplanes != outc:
                sc = b.conv(f"{p}.downsample.0", f"{mc}.downsample.0", inp, outc, 1, st)
                shortcut = bn(f"{p}.downsample.1", f"{mc}.downsample.1", sc)
            y = b.add(f"{p}.add", "axpy", [g, last, shortcut], None, [f"{mc} (se_module(out) + shortcut)"])
            x = b.add(out_act, "relu", [y], None, [f"{mc}.relu"])
            inplanes = outc

    x = b.add("global_pool", "global_avg_pool", [x], None, ["pool"])
    b.add("fc", "linear", [x], {"out_features": ncls, "bias": True}, ["classifier"], ncls)
    return Graph(b.nodes, "data", (1, 3, size, size), "fc")


def describe(d: dict[str, Any]) -> dict[str, Any]:
    """One row for `senet-hub list` / `info` (zoo.describe of a MindCV architecture)."""
    from . import trainable_params

    g = expand(d)
    n_params = trainable_params(g)
    return {
        "id": d["id"],
        "family": "MindCV SENet",
        "source_format": "mindspore",
        "input_size": int(g.input_shape[-1]),
        "input_shape": list(g.input_shape),
        "nodes": len(g.nodes),
        "block": d["block"],
        "depths": list(d["depths"]),
        "groups": d.get("groups", 1),
        "params": n_params,
        "checkpoint": d.get("checkpoint"),
        "url": f"{d['url_base']}{d['checkpoint']}" if d.get("checkpoint") else None,
        "published_top1": d.get("published", {}).get("top1"),
        "published_top5": d.get("published", {}).get("top5"),
        "input_convention": d["input_convention"],
        "class_order": d["class_order"],
    }
