"""The zoo: compact architecture descriptions -> canonical Graphs, recognition, synthetic weights.

Descriptions live in YAML files of the ``senet_hub.zoo_data`` package (``reference_models/``):
``caffe_zoo.yaml`` (the seven released Caffe SENets) first, then every other ``*_zoo.yaml``
(``mindcv_zoo.yaml``: the five MindCV SENets). A file names its ``family``; a family is an
expander registered with ``@register_family(name)`` that turns one description (defaults merged
in, ``id`` added) into a ``Graph``. More files can be added at run time with
``add_descriptions(path)``, more families with ``register_family``.

Public API::

    list_archs()                  -> ["SE-BN-Inception", ..., "seresnext50_32x4d"]
    description(arch)             -> the merged description (a copy)
    expand(arch)                  -> Graph with canonical node names
    describe(arch)                -> description + derived facts (params, input size, family, ...)
    identify(graph)               -> arch id whose expansion has the same graph.structure(), or None
    canonicalize(model)           -> model renamed by position to canonical names, meta["arch"] set
    synthetic_weights(graph, seed)-> deterministic float32 weights (numpy only)
    synthetic_model(arch, seed)   -> Model(expand(arch), synthetic weights, meta)

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

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import yaml

from .errors import SenetHubError
from .graph import Graph, Model, Node, expected_params, output_shape, rename, structure

DATA_PACKAGE = "senet_hub.zoo_data"
PRIMARY_YAML = "caffe_zoo.yaml"

# ------------------------------------------------------------------------------------ registry


@dataclass
class Family:
    """How one family of descriptions becomes graphs (``expand``) and, optionally, its own
    ``describe`` / ``meta`` (each takes the merged description; missing ones use the defaults)."""

    name: str
    expand: Callable[[dict[str, Any]], Graph]
    describe: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    meta: Callable[[dict[str, Any]], dict[str, Any]] | None = None


_FAMILIES: dict[str, Family] = {}
_DESCRIPTIONS: dict[str, dict[str, Any]] = {}  # arch id -> merged description, in load order
_STRUCTURES: dict[str, tuple[tuple, ...] | None] = {}  # arch id -> structure(expand(arch)), for identify
_loaded = False


def register_family(
    name: str,
    *,
    describe: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    meta: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Callable[[Callable[[dict[str, Any]], Graph]], Callable[[dict[str, Any]], Graph]]:
    """Decorator: ``@register_family("name")`` on ``expand(description) -> Graph``.

    Registering a name again replaces the earlier family (and forgets cached expansions).
    """

    def deco(fn: Callable[[dict[str, Any]], Graph]) -> Callable[[dict[str, Any]], Graph]:
        _FAMILIES[name] = Family(name, fn, describe, meta)
        _STRUCTURES.clear()
        return fn

    return deco


def families() -> list[str]:
    return list(_FAMILIES)


def _parse(text: str, where: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SenetHubError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict) or not doc.get("family"):
        raise SenetHubError(f"{where}: a zoo file needs 'family' and a 'models' mapping")
    defaults = doc.get("defaults") or {}
    out = []
    for arch, d in doc["models"].items():
        if not isinstance(d, dict):
            raise SenetHubError(f"{where}: model '{arch}' must be a mapping")
        merged = copy.deepcopy({**defaults, **d})
        merged.setdefault("family", doc["family"])
        merged["id"] = str(arch)
        merged["_title"] = doc.get("title", doc["family"])
        merged["_file"] = where
        out.append((str(arch), merged))
    return out


def _register(entries: list[tuple[str, dict[str, Any]]]) -> list[str]:
    for arch, d in entries:
        if arch in _DESCRIPTIONS and _DESCRIPTIONS[arch]["_file"] != d["_file"]:
            raise SenetHubError(
                f"{d['_file']}: architecture '{arch}' is already described in {_DESCRIPTIONS[arch]['_file']}"
            )
    for arch, d in entries:
        _DESCRIPTIONS[arch] = d
    _STRUCTURES.clear()
    return [a for a, _ in entries]


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    pkg = resources.files(DATA_PACKAGE)
    names = [PRIMARY_YAML] + sorted(
        p.name for p in pkg.iterdir() if p.name.endswith("_zoo.yaml") and p.name != PRIMARY_YAML
    )
    for name in names:
        res = pkg / name
        if res.is_file():
            _register(_parse(res.read_text(encoding="utf-8"), name))


def _read(src: Any) -> str:
    try:
        with open(src, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise SenetHubError(f"{src}: cannot read the zoo file ({e.strerror or e})") from None


def add_descriptions(path: str | os.PathLike) -> list[str]:
    """Load one more zoo YAML file (``family``, ``defaults``, ``models``); returns its arch ids."""
    _ensure_loaded()
    return _register(_parse(_read(path), str(path)))


def list_archs() -> list[str]:
    _ensure_loaded()
    return list(_DESCRIPTIONS)


def description(arch: str) -> dict[str, Any]:
    """The merged description of one architecture (a copy; bookkeeping keys start with '_')."""
    _ensure_loaded()
    if arch not in _DESCRIPTIONS:
        raise SenetHubError(f"unknown architecture '{arch}'; known: {', '.join(_DESCRIPTIONS)}")
    return copy.deepcopy(_DESCRIPTIONS[arch])


def _family(d: dict[str, Any]) -> Family:
    fam = _FAMILIES.get(d["family"])
    if fam is None:
        raise SenetHubError(
            f"architecture '{d['id']}' belongs to family '{d['family']}', which no module registered "
            f"(known: {', '.join(_FAMILIES)})"
        )
    return fam


def expand(arch: str) -> Graph:
    """The canonical Graph of an architecture (a fresh object on every call)."""
    d = description(arch)
    return _family(d).expand(d)


# ------------------------------------------------------------------------ the Caffe SENet family


class _Builder:
    """Appends canonical nodes and tracks channel counts (for SE widths and shortcuts)."""

    def __init__(self, input_name: str, channels: int) -> None:
        self.nodes: list[Node] = []
        self.channels: dict[str, int] = {input_name: channels}

    def add(self, name: str, op: str, inputs: list[str], attrs: dict | None, source: list[str], c: int) -> str:
        self.nodes.append(Node(name, op, list(inputs), dict(attrs or {}), list(source)))
        self.channels[name] = c
        return name

    def conv(
        self,
        name: str,
        src: str,
        x: str,
        out: int,
        k: int,
        s: int = 1,
        pad: int | None = None,
        groups: int = 1,
        bias: bool = False,
    ) -> str:
        p = k // 2 if pad is None else pad
        attrs = {
            "out_channels": int(out),
            "kernel": (k, k),
            "stride": (s, s),
            "pad": (p, p, p, p),
            "dilation": (1, 1),
            "groups": int(groups),
            "bias": bias,
        }
        return self.add(name, "conv", [x], attrs, [src], int(out))

    def bn(self, name: str, src: str, x: str, eps: float) -> str:
        return self.add(name, "batch_norm", [x], {"eps": eps}, [f"{src}/bn", f"{src}/bn/scale"], self.channels[x])

    def simple(self, name: str, op: str, src: str, x: str, attrs: dict | None = None) -> str:
        return self.add(name, op, [x], attrs, [src], self.channels[x])

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


# ------------------------------------------------------------------ the MindCV family (adapter)


def _mindcv_describe(d: dict[str, Any]) -> dict[str, Any]:
    from . import zoo_mindcv

    return zoo_mindcv.describe(d["id"])


def _mindcv_meta(d: dict[str, Any]) -> dict[str, Any]:
    from . import zoo_mindcv

    return zoo_mindcv.meta(d["id"])


@register_family("mindcv", describe=_mindcv_describe, meta=_mindcv_meta)
def _expand_mindcv(d: dict[str, Any]) -> Graph:
    from . import zoo_mindcv

    return zoo_mindcv.expand(d["id"])


# ------------------------------------------------------------------------- facts and recognition


def _shapes(graph: Graph) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """(value shapes, {weight key: shape}) from the graph alone."""
    shapes: dict[str, tuple[int, ...]] = {graph.input_name: tuple(graph.input_shape)}
    params: dict[str, tuple[int, ...]] = {}
    for n in graph.nodes:
        ins = [shapes[i] for i in n.inputs]
        for p, shp in expected_params(n, ins).items():
            params[f"{n.name}.{p}"] = tuple(shp)
        shapes[n.name] = output_shape(n, ins)
    return shapes, params


def param_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """{canonical weight key: shape} of an architecture (no weights allocated)."""
    return _shapes(expand(arch))[1]


def _meta(d: dict[str, Any]) -> dict[str, Any]:
    fam = _family(d)
    if fam.meta is not None:
        return fam.meta(d)
    return {
        "arch": d["id"],
        "family": d["family"],
        "input_convention": copy.deepcopy(d["input_convention"]),
        "class_order": d["class_order"],
        "num_classes": int(d["num_classes"]),
    }


def describe(arch: str) -> dict[str, Any]:
    """The description plus derived facts: params (trainable, running stats excluded), input
    size, family, source format, node count."""
    d = description(arch)
    fam = _family(d)
    if fam.describe is not None:
        return fam.describe(d)
    g = fam.expand(d)
    _, params = _shapes(g)
    trainable = sum(math.prod(s) for k, s in params.items() if not k.endswith(("running_mean", "running_var")))
    public = {k: v for k, v in d.items() if not k.startswith("_") and k not in ("id", "family", "stem")}
    return {
        "id": arch,
        "family": d["_title"],
        "source_format": d.get("source_format", d["family"]),
        "params": trainable,
        "input_size": int(g.input_shape[-1]),
        "input_shape": list(g.input_shape),
        "nodes": len(g.nodes),
        **public,
        "stem": [_stem_summary(item) for item in d.get("stem", [])],
    }


def _stem_summary(item: dict[str, Any]) -> str:
    k, s = int(item["kernel"]), int(item.get("stride", 1))
    if "conv" in item:
        return f"conv {k}x{k}/{s} {item['out']}"
    return f"{'max' if 'max_pool' in item else 'avg'}_pool {k}x{k}/{s}"


def _structure_of(arch: str) -> tuple[tuple, ...] | None:
    if arch not in _STRUCTURES:
        try:
            _STRUCTURES[arch] = tuple(structure(expand(arch)))
        except Exception:  # a broken family must not stop recognising the others
            _STRUCTURES[arch] = None
    return _STRUCTURES[arch]


def identify(graph: Graph) -> str | None:
    """The architecture whose expansion has exactly this graph's structure (names ignored)."""
    n = len(graph.nodes)
    mine: tuple[tuple, ...] | None = None
    for arch in list_archs():
        ref = _structure_of(arch)
        if ref is None or len(ref) != n:
            continue
        if mine is None:
            mine = tuple(structure(graph))
        if ref == mine:
            return arch
    return None


def canonical_names(graph: Graph, arch: str) -> dict[str, str]:
    """{node name: canonical name} by position (the graph must have arch's structure)."""
    ref = expand(arch)
    if tuple(structure(graph)) != tuple(structure(ref)):
        raise SenetHubError(f"the graph is not a '{arch}' (its structure differs from the description)")
    return {n.name: r.name for n, r in zip(graph.nodes, ref.nodes)}


def canonicalize(model: Model) -> Model:
    """Recognise a known architecture and rename its nodes (and weights) to canonical names.

    Source names are kept; meta["arch"] is the architecture id, or "custom" (model otherwise
    unchanged) when the graph matches no description.
    """
    arch = identify(model.graph)
    if arch is None:
        return Model(model.graph, model.weights, {**model.meta, "arch": "custom"})
    ref = expand(arch)
    mapping = {n.name: r.name for n, r in zip(model.graph.nodes, ref.nodes)}
    m = rename(model, mapping)
    m.meta["arch"] = arch
    return m


# --------------------------------------------------------------------------- synthetic weights


_SE_FC2_GAIN = 1.2  # SE fc2 std = gain / sqrt(fan_in): gate inputs of std ~0.6-1.7 over the 12 nets
_SE_FC2_BIAS = 1.0  # gates around 0.7
_LINEAR_GAIN = 1.2  # classifier std = gain / sqrt(fan_in): logits of std ~0.4-3.3


def synthetic_weights(graph: Graph, seed: int = 0, input_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Deterministic float32 weights that keep activations O(1) through the deepest net.

    The arrays depend only on numpy's PCG64 stream for ``seed`` and on the graph's structure
    (not on node names: a Caffe-named and a canonical graph get the same arrays); parameters are
    drawn in node order. ``input_scale`` is the typical size of the input values (about 50 for
    mean-free 0..255 pixels, 1 for normalized inputs): the convs reading the input divide by it.

    - conv: He-normal, std sqrt(2 / fan_in), biases N(0, 0.1). SE fc1 (a conv on a 1 x 1 map
      fed by a global_avg_pool) has its rows centred, so a common offset of the pooled features
      (SE-BN-Inception pools ReLU outputs) does not push every gate the same way; SE fc2 (a
      conv on a 1 x 1 map fed by a ReLU) has std 1.2 / sqrt(fan_in) and biases N(1, 0.1): the
      gates spread over (0, 1) around 0.7, not saturated;
    - batch_norm: gamma U(0.8, 1.2), beta N(0, 0.1), running_mean N(0, 0.1); running_var
      U(0.5, 1.5) when a ReLU follows, else U(1, 3) (a He conv doubles the second moment, a
      ReLU halves it: conv-BN[-ReLU] keeps the scale). A BN closing a residual branch (the x
      input of an axpy) gets gamma U(0.2, 0.4), so a residual stream grows slowly over 36 blocks;
    - linear: std 1.2 / sqrt(fan_in), biases N(0, 0.1).

    Measured on the 12 zoo nets (verify.default_input): every node's RMS below 8, SE gate inputs
    of std 0.6-1.7, logits of std 0.4-3.3.
    """
    rng = np.random.default_rng(seed)
    shapes, _ = _shapes(graph)
    producer = {n.name: n.op for n in graph.nodes}
    branch_end = {n.inputs[1] for n in graph.nodes if n.op == "axpy"}
    consumers: dict[str, list[str]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            consumers.setdefault(i, []).append(n.op)
    out: dict[str, np.ndarray] = {}

    def normal(shape: tuple[int, ...], std: float, mean: float = 0.0) -> np.ndarray:
        z = rng.standard_normal(shape, dtype=np.float32)
        z *= np.float32(std)
        if mean:
            z += np.float32(mean)
        return z

    def uniform(shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
        u = rng.random(shape, dtype=np.float32)
        u *= np.float32(hi - lo)
        u += np.float32(lo)
        return u

    for n in graph.nodes:
        ins = [shapes[i] for i in n.inputs]
        pshapes = expected_params(n, ins)
        key = f"{n.name}."
        if n.op == "conv":
            w = pshapes["weight"]
            fan_in = math.prod(w[1:])
            se_fc2 = tuple(ins[0][2:]) == (1, 1) and producer.get(n.inputs[0]) == "relu"
            if se_fc2:
                std = _SE_FC2_GAIN / math.sqrt(fan_in)
            else:
                std = math.sqrt(2.0 / fan_in)
            if n.inputs[0] == graph.input_name:
                std /= float(input_scale)
            wt = normal(w, std)
            if tuple(ins[0][2:]) == (1, 1) and producer.get(n.inputs[0]) == "global_avg_pool":  # SE fc1
                wt -= wt.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
            out[key + "weight"] = wt
            if "bias" in pshapes:
                out[key + "bias"] = normal(pshapes["bias"], 0.1, _SE_FC2_BIAS if se_fc2 else 0.0)
        elif n.op == "batch_norm":
            c = pshapes["weight"]
            lo, hi = (0.2, 0.4) if n.name in branch_end else (0.8, 1.2)
            out[key + "weight"] = uniform(c, lo, hi)
            out[key + "bias"] = normal(c, 0.1)
            out[key + "running_mean"] = normal(c, 0.1)
            relu_next = bool(consumers.get(n.name)) and all(op == "relu" for op in consumers[n.name])
            out[key + "running_var"] = uniform(c, 0.5, 1.5) if relu_next else uniform(c, 1.0, 3.0)
        elif n.op == "linear":
            w = pshapes["weight"]
            out[key + "weight"] = normal(w, _LINEAR_GAIN / math.sqrt(w[1]))
            if "bias" in pshapes:
                out[key + "bias"] = normal(pshapes["bias"], 0.1)
        else:
            for p, shp in pshapes.items():  # an op added later with parameters: small noise
                out[key + p] = normal(shp, 0.1)
    return out


def _input_scale(convention: dict[str, Any] | None) -> float:
    """Typical magnitude of the model input under its convention (as verify.default_input)."""
    conv = convention or {}
    hi = float(list(conv.get("range", [0, 1]))[-1])
    if hi > 1 and all(float(s) == 1.0 for s in conv.get("std", [1.0])):
        return 50.0
    return 1.0


def synthetic_model(arch: str, seed: int = 0) -> Model:
    """expand(arch) with synthetic_weights (deterministic; for tests, demos and benchmarks)."""
    d = description(arch)
    g = _family(d).expand(d)
    meta = _meta(d)
    meta.update(arch=arch, source_format="synthetic", seed=int(seed))
    weights = synthetic_weights(g, seed, _input_scale(meta.get("input_convention")))
    return Model(g, weights, meta)
