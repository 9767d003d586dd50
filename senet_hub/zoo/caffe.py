"""The Caffe SENet family: the seven released architectures (reference_models/caffe_zoo.yaml).

The "caffe" family reproduces exactly what ``senet_hub.converters.caffe`` makes of the released
prototxts (node order = Caffe layer order, BatchNorm + Scale = one ``batch_norm``, in-place
layers resolved), with canonical names and each node's Caffe layer names as ``source``.

Canonical names (Cadene pretrainedmodels / timm ``legacy_senet.py``, so a PyTorch state_dict of
the canonical weights loads into ``legacy_seresnet50`` and friends), Caffe names for stage
S = 2..5, block B = 1..n, i.e. ``layer{S-1}.{B-1}`` and ``conv{S}_{B}``::

    layer0.conv1 / bn1 / relu1 (/ conv2 .. relu3)   stem (per description), layer0.pool
    layerL.i.conv1, bn1, relu1        conv{S}_{B}_1x1_reduce (+ /bn, /bn/scale), ..._1x1_reduce/relu
    layerL.i.conv2, bn2, relu2        conv{S}_{B}_3x3 ...
    layerL.i.conv3, bn3               conv{S}_{B}_1x1_increase ...
    layerL.i.se_module.avg_pool       conv{S}_{B}_global_pool
    layerL.i.se_module.fc1, relu      conv{S}_{B}_1x1_down, conv{S}_{B}_1x1_down/relu
    layerL.i.se_module.fc2, sigmoid   conv{S}_{B}_1x1_up, conv{S}_{B}_prob
    layerL.i.downsample.0, .1         conv{S}_{B}_1x1_proj (+ /bn, /bn/scale)
    layerL.i.axpy, relu               conv{S}_{B} (Axpy), conv{S}_{B}/relu
    avg_pool, dropout, last_linear, prob     pool5/7x7_s1, pool5/dropout_7x7_s1, classifier, prob

SE-BN-Inception has no standard PyTorch port; its names are the Caffe names with '/' -> '.'
and one container per conv unit: ``inception_3a.1x1.conv`` / ``.bn`` / ``.relu`` (Caffe
``inception_3a/1x1``, ``/bn``, ``/bn/scale``, ``inception_3a/relu_1x1``), ``inception_3a.pool``,
``inception_3a.concat``, ``inception_3a.se_module.{avg_pool,fc1,relu,fc2,sigmoid,reshape}``
(``inception_3a_global_pool``, ``_1x1_down``, ``_1x1_down/relu``, ``_1x1_up``, ``_prob``,
``_prob_reshape``) and ``inception_3a.scale`` (``inception_3a_scale``, the two-bottom Scale).
"""

from __future__ import annotations

from typing import Any

from ..errors import SenetHubError
from ..graph import Graph
from . import register_family
from .builder import GraphBuilder


class _Builder(GraphBuilder):
    """GraphBuilder plus the Caffe release's units (BatchNorm + Scale sources, ceil pooling, SE)."""

    def bn(self, name: str, src: str, x: str, eps: float) -> str:
        return self.add(name, "batch_norm", [x], {"eps": eps}, [f"{src}/bn", f"{src}/bn/scale"], self.channels[x])

    def pool(self, name: str, src: str, x: str, kind: str, k: int, s: int, p: int = 0) -> str:
        attrs = {"kernel": (k, k), "stride": (s, s), "pad": (p, p, p, p), "ceil": True, "count_include_pad": True}
        return self.simple(name, {"max": "max_pool", "avg": "avg_pool"}[kind], src, x, attrs)

    def conv_bn_relu(
        self, names: list[str], src: str, relu_src: str | None, x: str, out: int, k: int, s: int, eps: float, **kw: Any
    ) -> str:
        y = self.conv(names[0], src, x, out, k, s, **kw)
        y = self.bn(names[1], src, y, eps)
        return self.simple(names[2], "relu", relu_src, y) if relu_src else y

    def se(self, prefix: str, src: str, x: str, reduction: int) -> str:
        """squeeze -> fc1 (C/r) -> relu -> fc2 (C) -> sigmoid; returns the gate."""
        c = self.channels[x]
        if c % reduction:
            raise SenetHubError(f"{prefix}: {c} channels are not divisible by the SE reduction {reduction}")
        g = self.simple(f"{prefix}.avg_pool", "global_avg_pool", f"{src}_global_pool", x)
        g = self.conv(f"{prefix}.fc1", f"{src}_1x1_down", g, c // reduction, 1, bias=True)
        g = self.simple(f"{prefix}.relu", "relu", f"{src}_1x1_down/relu", g)
        g = self.conv(f"{prefix}.fc2", f"{src}_1x1_up", g, c, 1, bias=True)
        return self.simple(f"{prefix}.sigmoid", "sigmoid", f"{src}_prob", g)


def _stem(b: _Builder, d: dict[str, Any], x: str, eps: float) -> str:
    for item in d["stem"]:
        if "conv" in item:
            k = int(item["kernel"])
            pad = int(item.get("pad", k // 2))
            x = b.conv_bn_relu(
                item["names"], item["conv"], item["relu"], x, item["out"], k, int(item.get("stride", 1)), eps, pad=pad
            )
        elif "max_pool" in item or "avg_pool" in item:
            kind = "max" if "max_pool" in item else "avg"
            src = item[f"{kind}_pool"]
            x = b.pool(item["name"], src, x, kind, int(item["kernel"]), int(item["stride"]), int(item.get("pad", 0)))
        else:
            raise SenetHubError(f"{d['id']}: stem item {item} is neither a conv nor a pool")
    return x


def _bottleneck_unit(
    b: _Builder,
    c: str,
    p: str,
    i: int,
    unit: str,
    x: str,
    out: int,
    k: int,
    s: int,
    eps: float,
    relu: bool = True,
    groups: int = 1,
) -> str:
    """convI / bnI [/ reluI] of block c (canonical) = Caffe p_unit, p_unit/bn(/scale) [, p_unit/relu]."""
    names = [f"{c}.conv{i}", f"{c}.bn{i}", f"{c}.relu{i}"]
    src = f"{p}_{unit}"
    return b.conv_bn_relu(names, src, f"{src}/relu" if relu else None, x, out, k, s, eps, groups=groups)


def _bottleneck_stages(b: _Builder, d: dict[str, Any], x: str, eps: float) -> str:
    r = int(d["se_reduction"])
    groups = int(d.get("groups", 1))
    stride_on = d["stride_on"]
    if stride_on not in ("reduce", "3x3"):
        raise SenetHubError(f"{d['id']}: stride_on must be 'reduce' or '3x3', not {stride_on!r}")
    stages = zip(d["depths"], d["reduce"], d["width"], d["out"], d["strides"], d["downsample_kernel"])
    for si, (depth, reduce_w, width, out, stride, dk) in enumerate(stages):
        for bi in range(int(depth)):
            c, p = f"layer{si + 1}.{bi}", f"conv{si + 2}_{bi + 1}"
            s = int(stride) if bi == 0 else 1
            s1, s3 = (s, 1) if stride_on == "reduce" else (1, s)
            inp = x
            y = _bottleneck_unit(b, c, p, 1, "1x1_reduce", inp, reduce_w, 1, s1, eps)
            y = _bottleneck_unit(b, c, p, 2, "3x3", y, width, 3, s3, eps, groups=groups)
            y = _bottleneck_unit(b, c, p, 3, "1x1_increase", y, out, 1, 1, eps, relu=False)
            gate = b.se(f"{c}.se_module", p, y, r)
            shortcut = inp
            if s != 1 or b.channels[inp] != int(out):
                k = int(dk)
                shortcut = b.conv_bn_relu(
                    [f"{c}.downsample.0", f"{c}.downsample.1"], f"{p}_1x1_proj", None, inp, out, k, s, eps
                )
            y = b.add(f"{c}.axpy", "axpy", [gate, y, shortcut], {}, [p], b.channels[y])
            x = b.simple(f"{c}.relu", "relu", f"{p}/relu", y)
    return x


def _inception_modules(b: _Builder, d: dict[str, Any], x: str, eps: float) -> str:
    cols = d["module_columns"]
    r = int(d["se_reduction"])
    for row in d["modules"]:
        m = dict(zip(cols, row))
        name, stride = m["name"], int(m["stride"])

        def unit(u: str, inp: str, out: int, k: int, s: int = 1, _n: str = name) -> str:
            return b.conv_bn_relu(
                [f"{_n}.{u}.conv", f"{_n}.{u}.bn", f"{_n}.{u}.relu"], f"{_n}/{u}", f"{_n}/relu_{u}", inp, out, k, s, eps
            )

        branches = []
        if int(m["1x1"]):
            branches.append(unit("1x1", x, m["1x1"], 1))
        y = unit("3x3_reduce", x, m["3x3_reduce"], 1)
        branches.append(unit("3x3", y, m["3x3"], 3, stride))
        y = unit("double3x3_reduce", x, m["double3x3_reduce"], 1)
        y = unit("double3x3a", y, m["double3x3"], 3)
        branches.append(unit("double3x3b", y, m["double3x3"], 3, stride))
        if stride == 1:
            y = b.pool(f"{name}.pool", f"{name}/pool", x, m["pool"], 3, 1, 1)
        else:
            y = b.pool(f"{name}.pool", f"{name}/pool/3x3_s2", x, m["pool"], 3, stride, 0)
        branches.append(unit("pool_proj", y, m["pool_proj"], 1) if int(m["pool_proj"]) else y)
        cat = b.add(
            f"{name}.concat", "concat", branches, {"axis": 1}, [f"{name}/concat"], sum(b.channels[v] for v in branches)
        )
        gate = b.se(f"{name}.se_module", name, cat, r)
        gate = b.simple(f"{name}.se_module.reshape", "reshape", f"{name}_prob_reshape", gate, {"shape": [0, 0]})
        x = b.add(f"{name}.scale", "channel_scale", [cat, gate], {}, [f"{name}_scale"], b.channels[cat])
    return x


@register_family("caffe")
def expand_caffe(d: dict[str, Any]) -> Graph:
    """A Caffe-release SENet description -> the Graph the Caffe converter makes of its prototxt."""
    eps = float(d["bn_eps"])
    size = int(d["input_size"])
    b = _Builder("data", 3)
    x = _stem(b, d, "data", eps)
    if d["block"] == "bottleneck":
        x = _bottleneck_stages(b, d, x, eps)
    elif d["block"] == "inception":
        x = _inception_modules(b, d, x, eps)
    else:
        raise SenetHubError(f"{d['id']}: unknown block type {d['block']!r}")
    head = d.get("head") or {}
    x = b.pool("avg_pool", "pool5/7x7_s1", x, "avg", int(head.get("pool", 7)), 1)
    if head.get("dropout") is not None:
        x = b.simple("dropout", "dropout", "pool5/dropout_7x7_s1", x, {"ratio": float(head["dropout"])})
    ncls = int(d["num_classes"])
    x = b.add("last_linear", "linear", [x], {"out_features": ncls, "bias": True}, ["classifier"], ncls)
    x = b.simple("prob", "softmax", "prob", x)
    return Graph(b.nodes, "data", (1, 3, size, size), x)
