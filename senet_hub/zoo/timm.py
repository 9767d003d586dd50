"""timm's SE models with pretrained weights: compact descriptions (reference_models/timm_zoo.yaml) -> canonical Graphs.

The "timm" family of senet_hub.zoo. Node names are the PyTorch module paths of the timm model
(so ``<node>.<param>`` is its state_dict key; ``num_batches_tracked`` aside); nodes with no module
of their own get a name inside the module that computes them (``layer1.0.se.pool``: the mean in
``SEModule.forward``; ``layer1.0.add``: ``x += shortcut``). ``source[0]`` of every node is that
same path: a PyTorch state_dict needs no second name table.

Two layouts (timm_zoo.yaml documents the facts):

- ``resnet``: timm/models/resnet.py ``ResNet`` with ``attn_layer='se'`` (plain, ``d`` deep stem +
  average-pool shortcut, ``t`` tiered stem, ResNeXt widths, the Gluon SENet-154, ``aa``
  average-pool anti-aliasing); names ``conv1`` (``conv1.0`` .. ``conv1.6`` for a deep stem),
  ``bn1``, ``act1``, ``maxpool``, ``layerL.i.{conv1..3,bn1..3,act1..3,aa}``,
  ``layerL.i.se.{pool,fc1,act,fc2,gate}``, ``layerL.i.downsample.{0,1[,2]}``, ``layerL.i.add``,
  ``global_pool``, ``fc``;
- ``legacy``: timm/models/senet.py ``SENet`` (Cadene's layout) for the basic-block and
  SE-ResNeXt-26 models the Caffe release lacks; names as the caffe family's
  (``layer0.conv1``, ``layerL.i.relu1``, ``se_module.avg_pool`` ..., ``axpy``) except ``pool0``,
  ``global_pool`` and no softmax, which are timm's.

The SE gate times the branch plus the shortcut is one ``axpy(gate, branch, shortcut)``.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import SenetHubError
from ..graph import Graph
from . import register_family
from .builder import GraphBuilder

FAMILY = "timm"
TITLES = {"resnet": "timm SE-ResNet (resnet.py)", "legacy": "timm legacy SENet (senet.py)"}


def make_divisible(v: float, divisor: int = 8) -> int:
    """timm.layers.make_divisible with round_limit=0 (what SEModule passes): the nearest multiple
    of `divisor`, at least `divisor`, never bumped up (MindCV's and timm's default 0.9 limit would)."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


def conv_pad(k: int, s: int) -> int:
    """timm resnet.py get_padding(k, s): ((s - 1) + (k - 1)) // 2 (1 for the 3x3/2 shortcuts)."""
    return ((s - 1) + (k - 1)) // 2


class _Builder(GraphBuilder):
    """GraphBuilder plus batch norm and pooling nodes named by their module path (= source)."""

    def __init__(self, eps: float) -> None:
        super().__init__("data", 3)
        self.eps = eps

    def bn(self, name: str, x: str) -> str:
        return self.add(name, "batch_norm", [x], {"eps": self.eps}, [name])

    def relu(self, name: str, x: str, src: str | None = None) -> str:
        return self.simple(name, "relu", src or name, x)

    def conv_(self, name: str, x: str, out: int, k: int, s: int = 1, groups: int = 1, pad: int | None = None) -> str:
        return self.conv(name, name, x, out, k, s, pad=pad, groups=groups)

    def pool(self, name: str, op: str, x: str, k: int, s: int, p: int, ceil: bool, include_pad: bool = True) -> str:
        attrs = {
            "kernel": (k, k),
            "stride": (s, s),
            "pad": (p, p, p, p),
            "ceil": ceil,
            "count_include_pad": include_pad,
        }
        return self.simple(name, op, name, x, attrs)

    def se(self, prefix: str, x: str, rd: int, names: tuple[str, str, str, str, str]) -> str:
        """mean -> fc1 (rd) + bias -> ReLU -> fc2 (C) + bias -> sigmoid; returns the gate."""
        pool, fc1, act, fc2, gate = (f"{prefix}.{n}" for n in names)
        c = self.channels[x]
        g = self.simple(pool, "global_avg_pool", pool, x)
        g = self.conv(fc1, fc1, g, rd, 1, bias=True)
        g = self.relu(act, g)
        g = self.conv(fc2, fc2, g, c, 1, bias=True)
        return self.simple(gate, "sigmoid", gate, g)


def _input_size(d: dict[str, Any]) -> int:
    """The graph's input size: an override, else the default pretrained tag's input size."""
    if d.get("input_size"):
        return int(d["input_size"])
    return int(next(iter(d["pretrained"].values()))["input_size"])


def _check(d: dict[str, Any], key: str, allowed: tuple[Any, ...]) -> Any:
    v = d.get(key)
    if v not in allowed:
        raise SenetHubError(f"{d['_file']}: {d['id']}: {key} must be one of {', '.join(map(str, allowed))}, not {v!r}")
    return v


# ------------------------------------------------------------------------------- resnet.py layout


def _resnet_stem(b: _Builder, d: dict[str, Any]) -> tuple[str, int]:
    stem = _check(d, "stem", ("plain", "deep", "deep_tiered"))
    w = int(d["stem_width"])
    if stem == "plain":
        inplanes = 64  # timm: a plain stem is 64 wide whatever stem_width says
        x = b.conv_("conv1", "data", inplanes, 7, 2)
    else:
        inplanes = 2 * w
        c0, c1 = (3 * (w // 4), w) if stem == "deep_tiered" else (w, w)
        x = b.conv_("conv1.0", "data", c0, 3, 2)
        x = b.relu("conv1.2", b.bn("conv1.1", x))
        x = b.conv_("conv1.3", x, c1, 3)
        x = b.relu("conv1.5", b.bn("conv1.4", x))
        x = b.conv_("conv1.6", x, inplanes, 3)
    x = b.relu("act1", b.bn("bn1", x))
    if d.get("aa") == "avg":  # AvgPool2d(2) replaces the max pool (module name kept: maxpool)
        x = b.pool("maxpool", "avg_pool", x, 2, 2, 0, ceil=False)
    else:
        x = b.pool("maxpool", "max_pool", x, 3, 2, 1, ceil=False)
    return x, inplanes


def _check_aa_size(d: dict[str, Any], size: int) -> None:
    """An anti-aliased strided block halves its map twice over: floor in ``aa`` (AvgPool2d(2)),
    ceil in the average-pool shortcut; on an odd map the two differ and timm's own forward fails
    at ``x += shortcut``. Say so up front rather than as a shape error deep in the graph."""
    h = (size + 1) // 2 // 2  # deep stem conv 3x3/2 pad 1, then the 2x2/2 stem pool
    for si in range(2, 5):
        if h % 2:
            raise SenetHubError(
                f"{d['id']}: input size {size} gives layer{si} an odd {h}x{h} input map, which timm's anti-aliased "
                "blocks cannot halve consistently; use a multiple of 32 (e.g. 224, 256, 288)"
            )
        h //= 2


def _resnet_stages(b: _Builder, d: dict[str, Any], x: str, inplanes: int) -> str:
    _check(d, "block", ("bottleneck",))
    aa = _check(d, "aa", (None, "avg"))
    groups, base_width = int(d["groups"]), int(d["base_width"])
    reduce_first, down_kernel = int(d["reduce_first"]), int(d["down_kernel"])
    avg_down = bool(d["avg_down"])
    for si, (planes, depth) in enumerate(zip((64, 128, 256, 512), d["depths"]), start=1):
        stage_stride = 1 if si == 1 else 2
        for bi in range(int(depth)):
            p = f"layer{si}.{bi}"
            s = stage_stride if bi == 0 else 1
            width = math.floor(planes * base_width / 64) * groups
            outc = planes * 4
            inp = x
            y = b.conv_(f"{p}.conv1", inp, width // reduce_first, 1)
            y = b.relu(f"{p}.act1", b.bn(f"{p}.bn1", y))
            use_aa = aa is not None and s == 2
            y = b.conv_(f"{p}.conv2", y, width, 3, 1 if use_aa else s, groups=groups)
            y = b.relu(f"{p}.act2", b.bn(f"{p}.bn2", y))
            if use_aa:
                y = b.pool(f"{p}.aa", "avg_pool", y, 2, 2, 0, ceil=False)
            y = b.conv_(f"{p}.conv3", y, outc, 1)
            last = b.bn(f"{p}.bn3", y)
            gate = b.se(f"{p}.se", last, make_divisible(outc / 16), ("pool", "fc1", "act", "fc2", "gate"))
            shortcut = inp
            if bi == 0 and (s != 1 or inplanes != outc):
                if avg_down:
                    sc = inp
                    if s != 1:
                        sc = b.pool(f"{p}.downsample.0", "avg_pool", sc, 2, s, 0, ceil=True, include_pad=False)
                    sc = b.conv_(f"{p}.downsample.1", sc, outc, 1)
                    shortcut = b.bn(f"{p}.downsample.2", sc)
                else:
                    k = down_kernel if s != 1 else 1
                    sc = b.conv_(f"{p}.downsample.0", inp, outc, k, s, pad=conv_pad(k, s))
                    shortcut = b.bn(f"{p}.downsample.1", sc)
            y = b.add(f"{p}.add", "axpy", [gate, last, shortcut], None, [f"{p} (x = se(x); x += shortcut)"], outc)
            x = b.relu(f"{p}.act3", y)
            inplanes = outc
    return x


# ------------------------------------------------------------------------------- senet.py layout


def _legacy_stages(b: _Builder, d: dict[str, Any], x: str) -> str:
    block = _check(d, "block", ("basic", "resnext"))
    groups, base_width = int(d["groups"]), int(d["base_width"])
    expansion = 1 if block == "basic" else 4
    inplanes = 64
    for si, (planes, depth) in enumerate(zip((64, 128, 256, 512), d["depths"]), start=1):
        for bi in range(int(depth)):
            p = f"layer{si}.{bi}"
            s = 1 if si == 1 or bi else 2
            outc = planes * expansion
            inp = x
            # the block's one `relu` module runs three times: relu1 / relu2 are its first two calls
            if block == "basic":
                y = b.conv_(f"{p}.conv1", inp, planes, 3, s)
                y = b.relu(f"{p}.relu1", b.bn(f"{p}.bn1", y), f"{p}.relu")
                y = b.conv_(f"{p}.conv2", y, planes, 3)
                last = b.relu(f"{p}.relu2", b.bn(f"{p}.bn2", y), f"{p}.relu")  # Cadene: ReLU before the SE
            else:
                width = math.floor(planes * base_width / 64) * groups
                y = b.conv_(f"{p}.conv1", inp, width, 1)
                y = b.relu(f"{p}.relu1", b.bn(f"{p}.bn1", y), f"{p}.relu")
                y = b.conv_(f"{p}.conv2", y, width, 3, s, groups=groups)
                y = b.relu(f"{p}.relu2", b.bn(f"{p}.bn2", y), f"{p}.relu")
                y = b.conv_(f"{p}.conv3", y, outc, 1)
                last = b.bn(f"{p}.bn3", y)
            gate = b.se(f"{p}.se_module", last, outc // 16, ("avg_pool", "fc1", "relu", "fc2", "sigmoid"))
            shortcut = inp
            if bi == 0 and (s != 1 or inplanes != outc):
                sc = b.conv_(f"{p}.downsample.0", inp, outc, 1, s, pad=0)
                shortcut = b.bn(f"{p}.downsample.1", sc)
            y = b.add(f"{p}.axpy", "axpy", [gate, last, shortcut], None, [f"{p} (se_module(out) + shortcut)"], outc)
            x = b.relu(f"{p}.relu", y)
            inplanes = outc
    return x


# ------------------------------------------------------------------------------------ expansion


@register_family(FAMILY, describe=lambda d: describe(d), meta=lambda d: meta(d))
def expand(d: dict[str, Any]) -> Graph:
    """The canonical Graph of a timm description (``input_size`` overrides the default tag's size)."""
    layout = _check(d, "layout", ("resnet", "legacy"))
    b = _Builder(float(d["bn_eps"]))
    ncls = int(d["num_classes"])
    size = _input_size(d)
    if layout == "resnet":
        if d.get("aa"):
            _check_aa_size(d, size)
        x, inplanes = _resnet_stem(b, d)
        x = _resnet_stages(b, d, x, inplanes)
        head = "fc"
    else:
        x = b.conv_("layer0.conv1", "data", 64, 7, 2)
        x = b.relu("layer0.relu1", b.bn("layer0.bn1", x))
        x = b.pool("pool0", "max_pool", x, 3, 2, 0, ceil=True)  # Caffe's rule: ceil, no pad
        x = _legacy_stages(b, d, x)
        head = "last_linear"
    x = b.simple("global_pool", "global_avg_pool", "global_pool", x)
    b.add(head, "linear", [x], {"out_features": ncls, "bias": True}, [head], ncls)
    return Graph(b.nodes, "data", (1, 3, size, size), head)


# ---------------------------------------------------------------------------- facts and meta


def pretrained_cfg(d: dict[str, Any], tag: str | None = None) -> dict[str, Any]:
    """timm's pretrained_cfg facts for one tag (the default, first, when None) of a description
    or alias entry: model, tag, input_size, crop_pct, interpolation, mean, std, num_classes, class
    order, license, and test_input_size / test_crop_pct / hf_hub_id / url where timm has them."""
    tags = d.get("pretrained") or {}
    if not tags:
        raise SenetHubError(f"{d.get('id', d.get('timm_model'))}: no pretrained tags are described")
    tag = tag or next(iter(tags))
    if tag not in tags:
        raise SenetHubError(f"{d['timm_model']}: timm 1.0.31 has no pretrained tag '{tag}' (it has {', '.join(tags)})")
    t = tags[tag]
    out: dict[str, Any] = {
        "timm_model": d["timm_model"],
        "tag": tag,
        "input_size": int(t["input_size"]),
        "crop_pct": float(t["crop_pct"]),
        "interpolation": t["interpolation"],
        "mean": [float(v) for v in d["mean"]],
        "std": [float(v) for v in d["std"]],
        "num_classes": int(t.get("num_classes", 1000)),
        "class_order": t.get("class_order", d["class_order"]),
        "license": d["license"],
    }
    for k in ("test_input_size", "test_crop_pct", "hf_hub_id", "url"):
        if t.get(k):
            out[k] = t[k]
    return out


def input_convention(cfg: dict[str, Any], size: int | None = None) -> dict[str, Any]:
    """The input convention of a pretrained cfg: RGB in [0, 1], (x - mean) / std; timm's eval
    transform resizes the shorter side to floor(size / crop_pct) and centre-crops `size`."""
    size = int(size or cfg["input_size"])
    short = math.floor(size / cfg["crop_pct"])
    return {
        "channel_order": "RGB",
        "range": [0, 1],
        "mean": list(cfg["mean"]),
        "std": list(cfg["std"]),
        "size": size,
        "resize": f"shorter side {short} ({cfg['interpolation']}), centre crop {size} (crop_pct {cfg['crop_pct']})",
    }


def meta(d: dict[str, Any]) -> dict[str, Any]:
    """Model meta of a timm expansion: timm's default pretrained tag's input convention and class order."""
    cfg = pretrained_cfg(d)
    ncls = int(d["num_classes"])
    return {
        "arch": d["id"],
        "family": d["family"],
        "input_convention": input_convention(cfg, d.get("input_size")),
        # the class order is known only for the described head width
        "class_order": cfg["class_order"] if ncls == cfg["num_classes"] else "unknown",
        "num_classes": ncls,
        "timm_name": d["timm_model"],
        "pretrained_cfg": cfg,
    }


def describe(d: dict[str, Any]) -> dict[str, Any]:
    """One row for `senet-hub info` (zoo.describe of a timm architecture)."""
    from . import trainable_params

    g = expand(d)
    cfg = pretrained_cfg(d)
    row: dict[str, Any] = {
        "id": d["id"],
        "family": TITLES[d["layout"]],
        "source_format": d.get("source_format", "pytorch"),
        "timm_model": d["timm_model"],
        "params": trainable_params(g),
        "input_size": int(g.input_shape[-1]),
        "input_shape": list(g.input_shape),
        "nodes": len(g.nodes),
        "layout": d["layout"],
        "block": d["block"],
        "depths": list(d["depths"]),
        "groups": int(d["groups"]),
    }
    if d["layout"] == "resnet":
        row.update(
            base_width=int(d["base_width"]),
            stem=d["stem"],
            stem_width=int(d["stem_width"]),
            avg_down=bool(d["avg_down"]),
            anti_aliasing=d.get("aa"),
        )
    row.update(
        pretrained_tags=list(d["pretrained"]),
        default_tag=cfg["tag"],
        pretrained_cfg=cfg,
        input_convention=input_convention(cfg),
        class_order=cfg["class_order"],
        license=d["license"],
    )
    return row
