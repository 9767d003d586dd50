"""The zoo: compact architecture descriptions -> canonical Graphs, recognition, synthetic weights.

Descriptions live in YAML files of the ``senet_hub.zoo_data`` package (``reference_models/``):
``caffe_zoo.yaml`` (the seven released Caffe SENets) first, then every other ``*_zoo.yaml``
(``mindcv_zoo.yaml``: the five MindCV SENets; ``timm_zoo.yaml``: timm 1.0.31's SE models with
pretrained weights, ids ``timm/<timm name>`` for resnet.py and ``legacy_*`` for senet.py). A file
names its ``family``; a family is an expander registered with ``@register_family(name)`` that
turns one description (defaults merged in, ``id`` added) into a ``Graph``. A file may also list
``aliases``: other names of architectures described anywhere (timm's ``legacy_seresnet50`` is
the Caffe release's ``SE-ResNet-50``), each with an ``arch`` and, for timm names, ``timm_model``
and ``pretrained`` (timm's pretrained_cfg facts of the weights served under that name). More
files can be added at run time with ``add_descriptions(path)``, more families with
``register_family``. The built-in families are modules of this package: ``zoo.caffe`` (the
Caffe release), ``zoo.mindcv`` (MindCV's retrained SENets) and ``zoo.timm`` (timm's), all built
with ``zoo.builder.GraphBuilder``; they register when the descriptions are first loaded. Every
family shares this module's API and its one synthetic weight rule.

Public API::

    list_archs(family=None)       -> ["SE-BN-Inception", ..., "seresnext50_32x4d", "timm/seresnet50", ...]
    is_arch(arch, family=None)    -> whether the zoo (or that family) describes arch
    resolve_arch(name, prefer=()) -> the arch id of an id, alias, timm name (a ".tag" allowed) or "family/id"
    aliases()                     -> {alias: arch id}
    timm_name(arch)               -> the timm model that computes arch exactly, or None
    pretrained_cfg(name, tag=None)-> timm's pretrained_cfg facts of the weights timm serves as name
    timm_meta(name, tag=None, num_classes=None) -> Model meta for weights as timm serves them
    description(arch)             -> the merged description (a copy)
    expand(arch, num_classes=None, input_size=None) -> Graph with canonical node names
    meta(arch, num_classes=None)  -> the Model meta of an expansion (arch, family, convention ...)
    graph_param_shapes(graph)     -> {weight key: shape}; trainable_params(graph) -> count
    describe(arch)                -> description + derived facts (params, input size, family, ...)
    identify(graph)               -> arch id whose expansion has the same graph.structure(), or None
    canonicalize(model)           -> model renamed by position to canonical names, meta["arch"] set
    synthetic_weights(graph, seed)-> deterministic float32 weights (numpy only)
    synthetic_model(arch, seed, num_classes=None) -> Model(expand(...), synthetic weights, meta)

Why this module is long: it is the zoo's one public API (the list above) over one registry:
loading, name resolution (ids, aliases, timm names and tags), expansion, recognition and the one
synthetic-weight rule all read the same registered descriptions; the families' own code lives in
zoo.caffe, zoo.mindcv and zoo.timm.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import yaml

from ..errors import SenetHubError
from ..graph import Graph, Model, expected_params, output_shape, rename, structure

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
_ALIASES: dict[str, dict[str, Any]] = {}  # alias -> its entry (``arch`` and facts, file defaults merged in)
_loaded = False


class ArchNameError(SenetHubError):
    """An architecture name that names no zoo architecture, or several: a usage error (exit 2)."""

    exit_code = 2


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
    _ensure_loaded()
    return list(_FAMILIES)


Entries = list[tuple[str, dict[str, Any]]]


def _parse(text: str, where: str) -> tuple[Entries, Entries]:
    """(models, aliases) of one zoo file, each entry with the file's defaults merged in."""
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
    aliases = doc.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise SenetHubError(f"{where}: 'aliases' must be a mapping of name -> {{arch: ID, ...}}")
    als = []
    for name, a in aliases.items():
        if not isinstance(a, dict) or not a.get("arch"):
            raise SenetHubError(f"{where}: alias '{name}' must be a mapping with an 'arch'")
        merged = copy.deepcopy({**defaults, **a})
        merged["id"] = str(name)
        merged["_file"] = where
        als.append((str(name), merged))
    return out, als


def _register(parsed: tuple[Entries, Entries]) -> list[str]:
    entries, aliases = parsed
    new = {arch for arch, _ in entries}
    for arch, d in entries:
        if arch in _DESCRIPTIONS and _DESCRIPTIONS[arch]["_file"] != d["_file"]:
            raise SenetHubError(
                f"{d['_file']}: architecture '{arch}' is already described in {_DESCRIPTIONS[arch]['_file']}"
            )
        if arch in _ALIASES and _ALIASES[arch]["_file"] != d["_file"]:
            raise SenetHubError(f"{d['_file']}: '{arch}' is already an alias in {_ALIASES[arch]['_file']}")
    for name, a in aliases:
        # an alias never shadows an id, so an id always means what it meant before
        if name in _DESCRIPTIONS or name in new:
            raise SenetHubError(f"{a['_file']}: alias '{name}' is an architecture id")
        if name in _ALIASES and _ALIASES[name]["_file"] != a["_file"]:
            raise SenetHubError(f"{a['_file']}: alias '{name}' is already defined in {_ALIASES[name]['_file']}")
        if a["arch"] not in _DESCRIPTIONS and a["arch"] not in new:
            raise SenetHubError(f"{a['_file']}: alias '{name}' names '{a['arch']}', which no zoo file describes")
    for arch, d in entries:
        _DESCRIPTIONS[arch] = d
    for name, a in aliases:
        _ALIASES[name] = a
    _STRUCTURES.clear()
    return [a for a, _ in entries]


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    from . import caffe, mindcv, timm  # noqa: F401  (the built-in families register themselves)

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
    """Load one more zoo YAML file (``family``, ``defaults``, ``models``, optional ``aliases``);
    returns its arch ids."""
    _ensure_loaded()
    return _register(_parse(_read(path), str(path)))


def list_archs(family: str | None = None) -> list[str]:
    """Every described architecture in load order (only `family`'s when given)."""
    _ensure_loaded()
    return [a for a, d in _DESCRIPTIONS.items() if family is None or d["family"] == family]


def is_arch(arch: str | None, family: str | None = None) -> bool:
    """Whether `arch` is described (and belongs to `family`, when given)."""
    _ensure_loaded()
    d = _DESCRIPTIONS.get(arch) if arch is not None else None
    return d is not None and (family is None or d["family"] == family)


# ---------------------------------------------------------------------------------- names


def aliases() -> dict[str, str]:
    """{alias: arch id} (e.g. timm's legacy_seresnet50 -> SE-ResNet-50)."""
    _ensure_loaded()
    return {name: a["arch"] for name, a in _ALIASES.items()}


def timm_name(arch: str) -> str | None:
    """The timm 1.0.31 model that computes `arch` exactly (SE-ResNet-50 -> legacy_seresnet50,
    timm/seresnet50 -> seresnet50), or None (SE-BN-Inception; the MindCV archs, whose nearest timm
    models pool the stem differently)."""
    description(arch)  # the one 'unknown architecture' error
    return _timm_name_of(_ALIASES[arch]["arch"] if arch in _ALIASES else arch)


def _timm_name_of(arch: str) -> str | None:
    d = _DESCRIPTIONS[arch]
    if d.get("timm_model"):
        return str(d["timm_model"])
    for a in _ALIASES.values():
        if a["arch"] == arch and a.get("timm_model"):
            return str(a["timm_model"])
    return None


def _family_of(arch: str) -> str:
    return str(_DESCRIPTIONS[arch]["family"])


def _qualified(arch: str) -> str:
    """The spelling of `arch` that no other name can take: ``family/id`` (timm ids already are)."""
    fam = _family_of(arch)
    return arch if arch.startswith(f"{fam}/") else f"{fam}/{arch}"


def _matches(name: str) -> list[str]:
    """Arch ids `name` can mean: an id, an alias, a timm model name, or ``family/<id or alias>``
    (``timm/<timm model>`` for any family: the arch that timm model computes)."""
    found: list[str] = []

    def take(arch: str) -> None:
        if arch not in found:
            found.append(arch)

    if name in _DESCRIPTIONS:
        take(name)
    if name in _ALIASES:
        take(_ALIASES[name]["arch"])
    for arch in _DESCRIPTIONS:
        if _timm_name_of(arch) == name:
            take(arch)
    fam, sep, rest = name.partition("/")
    if sep and rest and fam in _FAMILIES:
        inner = rest if rest in _DESCRIPTIONS else _ALIASES.get(rest, {}).get("arch")
        if inner is not None and _family_of(inner) == fam:
            take(inner)
        if fam == "timm":
            for arch in _DESCRIPTIONS:
                if _timm_name_of(arch) == rest:
                    take(arch)
    return found


def _tags(name: str) -> list[str]:
    """Pretrained tags timm publishes under the timm model / alias / arch `name`."""
    e = _timm_entry(name)
    return list((e or {}).get("pretrained") or {})


def _timm_entry(name: str) -> dict[str, Any] | None:
    """The description or alias entry holding timm's facts for `name`: a timm model name first
    (so 'seresnet50' is timm's seresnet50 here, not the MindCV id), then an alias, an arch id
    or ``timm/<model>``."""
    _ensure_loaded()
    base = name.removeprefix("timm/")
    for e in (*_DESCRIPTIONS.values(), *_ALIASES.values()):
        if e.get("timm_model") == base and e.get("pretrained"):
            return e
    if name in _ALIASES and _ALIASES[name].get("pretrained"):
        return _ALIASES[name]
    if name in _DESCRIPTIONS:
        if _DESCRIPTIONS[name].get("pretrained"):
            return _DESCRIPTIONS[name]
        for a in _ALIASES.values():
            if a["arch"] == name and a.get("pretrained"):
                return a
    return None


def resolve_arch(name: str, prefer: tuple[str, ...] = ()) -> str:
    """The zoo id `name` means: an id, an alias (legacy_seresnet50 -> SE-ResNet-50), a timm model
    name (seresnet152d -> timm/seresnet152d; a pretrained tag as in 'seresnet50.a1_in1k' is
    allowed), or ``family/id`` (mindcv/seresnet50). When it fits several (seresnet50 is a MindCV
    id and a timm model), the first family of `prefer` that has one of them decides; otherwise,
    or for an unknown name, ArchNameError (exit 2) names the candidates / closest ids."""
    _ensure_loaded()
    name = str(name).strip()
    found = _matches(name)
    if not found and "." in name:
        # 'model.tag' is timm's spelling of one set of weights: the arch that timm model computes
        base, tag = name.split(".", 1)
        e = _timm_entry(base)
        found = [str(e.get("arch", e["id"]))] if e is not None and tag in (e.get("pretrained") or {}) else []
        if not found and _matches(base):
            raise ArchNameError(
                f"architecture '{base}' has no pretrained tag '{tag}' in timm 1.0.31 "
                f"(it has {', '.join(_tags(base)) or 'none'})"
            )
    if not found:  # forgiving about case (se-resnet-50), never about anything else
        folded = [n for n in (*_DESCRIPTIONS, *_ALIASES) if n.lower() == name.lower()]
        found = list(dict.fromkeys(a for n in folded for a in _matches(n)))
    if len(found) == 1:
        return found[0]
    if not found:
        known = [
            *_DESCRIPTIONS,
            *_ALIASES,
            *(str(d["timm_model"]) for d in _DESCRIPTIONS.values() if "timm_model" in d),
        ]
        close = difflib.get_close_matches(name, list(dict.fromkeys(known)), n=4, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "see senet_hub.zoo.list_archs()"
        raise ArchNameError(f"unknown architecture '{name}'; {hint}")
    for fam in prefer:
        mine = [a for a in found if _family_of(a) == fam]
        if len(mine) == 1:
            return mine[0]
    raise ArchNameError(
        f"architecture name '{name}' is ambiguous: it names "
        + ", ".join(f"{a} ({_family_of(a)})" for a in found)
        + f"; name one as {' or '.join(_qualified(a) for a in found)}"
    )


def pretrained_cfg(name: str, tag: str | None = None) -> dict[str, Any] | None:
    """timm's pretrained_cfg facts of the weights timm serves as `name` (a timm model name, an
    alias or an arch id; 'model.tag' or `tag` picks a tag, else timm's default): timm_model, tag,
    input_size, crop_pct, interpolation, mean, std, num_classes, class_order, license [,
    test_input_size, test_crop_pct, hf_hub_id, url]. None where timm has no such weights."""
    found = _timm_cfg(name, tag)
    return None if found is None else found[1]


def _timm_cfg(name: str, tag: str | None) -> tuple[str, dict[str, Any]] | None:
    """(arch id, pretrained cfg) of the weights timm serves as `name`, or None."""
    from .timm import pretrained_cfg as cfg_of

    e = _timm_entry(name)
    if e is None and "." in name and tag is None:
        name, tag = name.split(".", 1)
        e = _timm_entry(name)
    if e is None:
        return None
    return str(e.get("arch", e["id"])), cfg_of(e, tag)  # an alias entry names its arch


def timm_meta(name: str, tag: str | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """The Model meta for weights as timm serves them under `name` (see pretrained_cfg): the
    arch's meta with timm's input convention (RGB in [0, 1], mean/std) and class order. For the
    Caffe archs this differs from meta(): Cadene refolded the first conv and permuted the classes."""
    from .timm import input_convention

    found = _timm_cfg(name, tag)
    if found is None:
        raise ArchNameError(f"timm 1.0.31 serves no pretrained weights as '{name}'")
    arch, cfg = found
    m = meta(arch, num_classes)
    ncls = int(m["num_classes"])
    m.update(
        input_convention=input_convention(cfg),
        class_order=cfg["class_order"] if ncls == cfg["num_classes"] else "unknown",
        timm_name=cfg["timm_model"],
        pretrained_cfg=cfg,
    )
    return m


def description(arch: str, num_classes: int | None = None, input_size: int | None = None) -> dict[str, Any]:
    """The merged description of one architecture (an id or an alias; a copy; bookkeeping keys
    start with '_').

    `num_classes` / `input_size` override the described head width / input size (the class
    order is then unknown unless the width is the described one: see meta()).
    """
    _ensure_loaded()
    if arch not in _DESCRIPTIONS and arch in _ALIASES:
        arch = _ALIASES[arch]["arch"]  # an alias names exactly one architecture (never an id)
    if arch not in _DESCRIPTIONS:
        raise SenetHubError(f"unknown architecture '{arch}'; known: {', '.join(_DESCRIPTIONS)}")
    d = copy.deepcopy(_DESCRIPTIONS[arch])
    # the described width, kept to tell an override from the described head (a family that has no
    # classifier head, like a test's toy family, need not describe one)
    d["_num_classes"] = int(d["num_classes"]) if "num_classes" in d else None
    if num_classes:
        d["num_classes"] = int(num_classes)
    if input_size:
        d["input_size"] = int(input_size)
    return d


def _family(d: dict[str, Any]) -> Family:
    fam = _FAMILIES.get(d["family"])
    if fam is None:
        raise SenetHubError(
            f"architecture '{d['id']}' belongs to family '{d['family']}', which no module registered "
            f"(known: {', '.join(_FAMILIES)})"
        )
    return fam


def expand(arch: str, num_classes: int | None = None, input_size: int | None = None) -> Graph:
    """The canonical Graph of an architecture (a fresh object on every call)."""
    d = description(arch, num_classes, input_size)
    return _family(d).expand(d)


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


def graph_param_shapes(graph: Graph) -> dict[str, tuple[int, ...]]:
    """{weight key: shape} of a graph (no weights allocated)."""
    return _shapes(graph)[1]


def trainable_params(graph: Graph) -> int:
    """The number of trained parameters (BatchNorm running statistics excluded)."""
    return sum(
        math.prod(s) for k, s in graph_param_shapes(graph).items() if not k.endswith(("running_mean", "running_var"))
    )


def param_shapes(arch: str, num_classes: int | None = None) -> dict[str, tuple[int, ...]]:
    """{canonical weight key: shape} of an architecture (no weights allocated)."""
    return graph_param_shapes(expand(arch, num_classes))


def _meta(d: dict[str, Any]) -> dict[str, Any]:
    fam = _family(d)
    if fam.meta is not None:
        return fam.meta(d)
    ncls = int(d["num_classes"])
    return {
        "arch": d["id"],
        "family": d["family"],
        "input_convention": copy.deepcopy(d["input_convention"]),
        # the class order is known only for the described head (ImageNet-1k)
        "class_order": d["class_order"] if ncls == d.get("_num_classes", ncls) else "unknown",
        "num_classes": ncls,
    }


def meta(arch: str, num_classes: int | None = None) -> dict[str, Any]:
    """The Model meta of expand(arch, num_classes): arch, family, input convention, class order."""
    return _meta(description(arch, num_classes))


def describe(arch: str) -> dict[str, Any]:
    """The description plus derived facts: params (trainable, running stats excluded), input
    size, family, source format, node count."""
    d = description(arch)
    fam = _family(d)
    if fam.describe is not None:
        return fam.describe(d)
    g = fam.expand(d)
    trainable = trainable_params(g)
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


def _branch_bn(graph: Graph, value: str) -> str:
    """The batch norm that closes a residual branch ending in `value`: the value itself, or the BN
    under its ReLUs (Cadene's basic block applies a ReLU after bn2, before the SE)."""
    nodes = {n.name: n for n in graph.nodes}
    while value in nodes and nodes[value].op == "relu":
        value = nodes[value].inputs[0]
    return value


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
      input of an axpy, or the BN under its ReLU in senet.py's basic block) gets gamma U(0.2, 0.4),
      so a residual stream grows slowly over 36 blocks;
    - linear: std 1.2 / sqrt(fan_in), biases N(0, 0.1).

    Measured on the 12 Caffe and MindCV nets (verify.default_input): every node's RMS below 8, SE
    gate inputs of std 0.6-1.7, logits of std 0.4-3.3. The 15 timm nets (at 224): RMS below 6, gate
    inputs of std 0.2-1.8, logits of std 1.1-3.3, except legacy_seresnet34 (its branches end in a
    ReLU, so every block adds a positive mean to the stream): RMS 10.8, logits of std 7.4.
    """
    rng = np.random.default_rng(seed)
    shapes, _ = _shapes(graph)
    producer = {n.name: n.op for n in graph.nodes}
    branch_end = {_branch_bn(graph, n.inputs[1]) for n in graph.nodes if n.op == "axpy"}
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


def synthetic_model(arch: str, seed: int = 0, num_classes: int | None = None) -> Model:
    """expand(arch) with synthetic_weights (deterministic; for tests, demos and benchmarks)."""
    d = description(arch, num_classes)
    g = _family(d).expand(d)
    meta = _meta(d)
    meta.update(arch=d["id"], source_format="synthetic", seed=int(seed))
    weights = synthetic_weights(g, seed, _input_scale(meta.get("input_convention")))
    return Model(g, weights, meta)
