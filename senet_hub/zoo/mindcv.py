"""The five MindCV SENets: compact descriptions (reference_models/mindcv_zoo.yaml) -> canonical Graphs.

``expand(arch)`` turns a description into a ``Graph`` whose node names follow timm's
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
floor rounding. ``expand(arch, input_size=H)`` computes the pads for other sizes.
Not torch's symmetric ``padding=1`` (timm's maxpool), which shifts every window by one pixel.
"""

from __future__ import annotations

import functools
import math
from importlib import resources
from typing import Any

import numpy as np
import yaml

from .errors import SenetHubError
from .graph import Graph, Model, Node, conv_out, infer_shapes

FAMILY = "mindcv"
YAML_NAME = "mindcv_zoo.yaml"


@functools.lru_cache(maxsize=1)
def _spec() -> dict[str, Any]:
    text = (resources.files("senet_hub.zoo_data") / YAML_NAME).read_text()
    return yaml.safe_load(text)


def list_archs() -> list[str]:
    return list(_spec()["models"])


def is_arch(arch: str | None) -> bool:
    return arch is not None and arch in _spec()["models"]


def description(arch: str | dict[str, Any]) -> dict[str, Any]:
    """The full description of one architecture (defaults merged in).

    A dict is taken as a description already (e.g. one that senet_hub.zoo merged from another
    ``*_zoo.yaml`` of the mindcv family); missing keys come from this file's defaults.
    """
    spec = _spec()
    if isinstance(arch, dict):
        return {**spec["defaults"], **arch}
    if arch not in spec["models"]:
        raise SenetHubError(f"unknown MindCV architecture '{arch}'; known: {', '.join(spec['models'])}")
    return {**spec["defaults"], **spec["models"][arch], "id": arch}


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


# ------------------------------------------------------------------------------------ expansion


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def add(self, name: str, op: str, inputs: list[str], attrs: dict | None = None, source: str | None = None) -> str:
        self.nodes.append(Node(name, op, list(inputs), dict(attrs or {}), [source] if source else []))
        return name

    def conv(
        self, name: str, x: str, out: int, k: int, s: int = 1, groups: int = 1, bias: bool = False, src: str = ""
    ) -> str:
        p = k // 2
        attrs = {
            "out_channels": out,
            "kernel": (k, k),
            "stride": (s, s),
            "pad": (p, p, p, p),
            "dilation": (1, 1),
            "groups": groups,
            "bias": bias,
        }
        return self.add(name, "conv", [x], attrs, src)

    def bn(self, name: str, x: str, eps: float, src: str) -> str:
        return self.add(name, "batch_norm", [x], {"eps": eps}, src)


def expand(arch: str | dict[str, Any], num_classes: int | None = None, input_size: int | None = None) -> Graph:
    """The canonical Graph of a MindCV SENet (num_classes defaults to the description's)."""
    d = description(arch)
    eps = float(d["bn_eps"])
    ncls = int(num_classes or d["num_classes"])
    size = int(input_size or d["input_convention"]["size"])
    basic = d["block"] == "basic"
    expansion = 1 if basic else 4
    groups = int(d.get("groups", 1))
    base_width = int(d.get("base_width", 64))
    b = _Builder()

    # stem (MindCV layer0 = SequentialCell[conv, bn, relu], pool0)
    stem = int(d["stem_width"])
    x = b.conv("conv1", "data", stem, 7, 2, src="layer0.0")
    x = b.bn("bn1", x, eps, "layer0.1")
    x = b.add("act1", "relu", [x], source="layer0.2")
    mp = d["max_pool"]
    k, s = int(mp["kernel"]), int(mp["stride"])
    if mp.get("pad_mode") != "same":
        raise SenetHubError(f"{d['id']}: only pad_mode 'same' max pooling is described")
    hw = conv_out(size, 7, 2, 3, 3)
    t, bt = same_pad(hw, k, s)
    pool_attrs = {"kernel": (k, k), "stride": (s, s), "pad": (t, t, bt, bt), "ceil": False, "count_include_pad": True}
    x = b.add("maxpool", "max_pool", [x], pool_attrs, "pool0")

    inplanes = stem
    for si, (planes, depth, stride) in enumerate(zip(d["stage_widths"], d["depths"], d["stage_strides"]), start=1):
        for bi in range(int(depth)):
            st = int(stride) if bi == 0 else 1
            p, mc = f"layer{si}.{bi}", f"layer{si}.{bi}"
            outc = planes * expansion
            inp = x
            if basic:
                y = b.conv(f"{p}.conv1", inp, planes, 3, st, src=f"{mc}.conv1")
                y = b.bn(f"{p}.bn1", y, eps, f"{mc}.bn1")
                y = b.add(f"{p}.act1", "relu", [y], source=f"{mc}.relu")
                y = b.conv(f"{p}.conv2", y, planes, 3, 1, groups, src=f"{mc}.conv2")
                last = b.bn(f"{p}.bn2", y, eps, f"{mc}.bn2")
                out_act = f"{p}.act2"
            else:
                width = (planes * base_width // 64) * groups
                y = b.conv(f"{p}.conv1", inp, width, 1, src=f"{mc}.conv1")
                y = b.bn(f"{p}.bn1", y, eps, f"{mc}.bn1")
                y = b.add(f"{p}.act1", "relu", [y], source=f"{mc}.relu")
                y = b.conv(f"{p}.conv2", y, width, 3, st, groups, src=f"{mc}.conv2")
                y = b.bn(f"{p}.bn2", y, eps, f"{mc}.bn2")
                y = b.add(f"{p}.act2", "relu", [y], source=f"{mc}.relu")
                y = b.conv(f"{p}.conv3", y, outc, 1, src=f"{mc}.conv3")
                last = b.bn(f"{p}.bn3", y, eps, f"{mc}.bn3")
                out_act = f"{p}.act3"
            # SE before the shortcut: MindCV registers se_module before downsample, so the
            # parameters come out in MindCV's (and mindspore.save_checkpoint's) order
            rd = make_divisible(outc / int(d["reduction"]), int(d["se_divisor"]))
            se = f"{mc}.se_module"
            g = b.add(f"{p}.se.pool", "global_avg_pool", [last], source=f"{se}.pool")
            g = b.conv(f"{p}.se.fc1", g, rd, 1, bias=True, src=f"{se}.conv_reduce")
            g = b.add(f"{p}.se.act", "relu", [g], source=f"{se}.act")
            g = b.conv(f"{p}.se.fc2", g, outc, 1, bias=True, src=f"{se}.conv_expand")
            g = b.add(f"{p}.se.gate", "sigmoid", [g], source=f"{se}.gate")
            shortcut = inp
            if st != 1 or inplanes != outc:
                sc = b.conv(f"{p}.downsample.0", inp, outc, 1, st, src=f"{mc}.downsample.0")
                shortcut = b.bn(f"{p}.downsample.1", sc, eps, f"{mc}.downsample.1")
            y = b.add(f"{p}.add", "axpy", [g, last, shortcut], source=f"{mc} (se_module(out) + shortcut)")
            x = b.add(out_act, "relu", [y], source=f"{mc}.relu")
            inplanes = outc

    x = b.add("global_pool", "global_avg_pool", [x], source="pool")
    b.add("fc", "linear", [x], {"out_features": ncls, "bias": True}, "classifier")
    return Graph(b.nodes, "data", (1, 3, size, size), "fc")


def param_shapes(arch: str | dict[str, Any], num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    """{canonical weight key: shape} of an architecture (no weights allocated)."""
    g = expand(arch, num_classes)
    return _param_shapes(g)


def _param_shapes(g: Graph) -> dict[str, tuple[int, ...]]:
    from .graph import expected_params, output_shape

    shapes: dict[str, tuple[int, ...]] = {g.input_name: tuple(g.input_shape)}
    out: dict[str, tuple[int, ...]] = {}
    for n in g.nodes:
        ins = [shapes[i] for i in n.inputs]
        for p, shp in expected_params(n, ins).items():
            out[f"{n.name}.{p}"] = shp
        shapes[n.name] = output_shape(n, ins)
    return out


def meta(arch: str | dict[str, Any], num_classes: int | None = None) -> dict[str, Any]:
    d = description(arch)
    ncls = int(num_classes or d["num_classes"])
    return {
        "arch": d["id"],
        "family": FAMILY,
        "input_convention": dict(d["input_convention"]),
        # the class order is known only for the ImageNet-1k head
        "class_order": d["class_order"] if ncls == int(d["num_classes"]) else "unknown",
        "num_classes": ncls,
    }


def synthetic_model(arch: str, seed: int = 0, num_classes: int | None = None) -> Model:
    """Deterministic random weights (He-normal convs, BN near identity) for tests and demos."""
    g = expand(arch, num_classes)
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for key, shp in _param_shapes(g).items():
        pname = key.rsplit(".", 1)[1]
        if pname == "weight" and len(shp) > 1:
            fan_in = math.prod(shp[1:])
            w = rng.normal(0.0, math.sqrt(2.0 / fan_in), shp)
        elif pname == "running_var":
            w = rng.uniform(0.5, 1.5, shp)
        elif pname == "weight":
            w = rng.uniform(0.5, 1.5, shp)
        else:
            w = rng.normal(0.0, 0.1, shp)
        weights[key] = w.astype(np.float32)
    m = Model(g, weights, {**meta(arch, num_classes), "source_format": "synthetic", "seed": seed})
    infer_shapes(m)
    return m


def describe(arch: str | dict[str, Any]) -> dict[str, Any]:
    """One row for `senet-hub list` / `info`."""
    d = description(arch)
    g = expand(d)
    shapes = _param_shapes(g)
    n_params = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))
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
