"""Exact model rewrites: input convention (channel order, range, mean/std) and class order.

An input convention says what the model's input is: pixels in `channel_order`, scaled to
`range`, then (pixel - mean) / std per channel. Changing convention prepends one `input_norm`
node (channel permutation + per-channel affine), which is exact; folding it into the first
convolution is exact only when that convolution pads nothing (zero padding of the new input is
not zero padding of the old one), so it is folded only then.
"""

from __future__ import annotations

import csv
from importlib import resources

import numpy as np

from .errors import SenetHubError, UnsupportedError
from .graph import Model, Node, infer_shapes

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CONVENTIONS: dict[str, dict] = {
    "caffe": {"channel_order": "BGR", "range": [0, 255], "mean": [104.0, 117.0, 123.0], "std": [1.0, 1.0, 1.0]},
    "rgb01": {"channel_order": "RGB", "range": [0, 1], "mean": IMAGENET_MEAN, "std": IMAGENET_STD},
    "mindcv": {
        "channel_order": "RGB",
        "range": [0, 255],
        "mean": [m * 255 for m in IMAGENET_MEAN],
        "std": [s * 255 for s in IMAGENET_STD],
    },
}
CLASS_ORDERS = ("senet", "ilsvrc2012")


def convention(name_or_dict: str | dict) -> dict:
    if isinstance(name_or_dict, dict):
        return name_or_dict
    if name_or_dict not in CONVENTIONS:
        raise SenetHubError(f"unknown input convention '{name_or_dict}'; choose one of {', '.join(CONVENTIONS)}")
    return CONVENTIONS[name_or_dict]


def _norm_params(src: dict, tgt: dict) -> tuple[list[int], list[float], list[float]]:
    """input_norm attrs mapping a target-convention input onto the source-convention input."""
    so, to = src["channel_order"].upper(), tgt["channel_order"].upper()
    if sorted(so) != sorted(to):
        raise SenetHubError(f"cannot map channel order {to} onto {so}")
    perm = [to.index(ch) for ch in so]
    k = float(src["range"][-1]) / float(tgt["range"][-1])
    scale = [float(tgt["std"][perm[c]]) * k / float(src["std"][c]) for c in range(len(so))]
    shift = [(float(tgt["mean"][perm[c]]) * k - float(src["mean"][c])) / float(src["std"][c]) for c in range(len(so))]
    return perm, scale, shift


def set_input_convention(model: Model, target: str | dict, fold: bool = True) -> Model:
    """A model that takes `target`-convention input and computes what `model` computes."""
    src = model.meta.get("input_convention")
    if not src:
        raise SenetHubError(f"{model.arch}: the model's input convention is unknown; cannot change it")
    tgt = dict(convention(target), size=src.get("size", model.graph.input_shape[-1]))
    perm, scale, shift = _norm_params(src, tgt)
    m = model.copy()
    g = m.graph
    if perm == list(range(len(perm))) and all(abs(s - 1) < 1e-12 for s in scale) and all(abs(b) < 1e-12 for b in shift):
        m.meta["input_convention"] = tgt
        return m
    first = g.nodes[0] if g.nodes else None
    if first is not None and first.op == "input_norm":  # compose with the existing stage
        p0, s0, b0 = first.attrs["perm"], first.attrs["scale"], first.attrs["shift"]
        first.attrs = {
            "perm": [perm[p0[c]] for c in range(len(p0))],
            "scale": [s0[c] * scale[p0[c]] for c in range(len(p0))],
            "shift": [s0[c] * shift[p0[c]] + b0[c] for c in range(len(p0))],
        }
    else:
        name = "input_norm"
        node = Node(
            name, "input_norm", [g.input_name], {"perm": perm, "scale": scale, "shift": shift}, ["input convention"]
        )
        for n in g.nodes:
            n.inputs = [name if i == g.input_name else i for i in n.inputs]
        g.nodes.insert(0, node)
    # the convention the weights were made for: what a later fold_input_stage records
    m.meta.setdefault("input_stage_from", dict(src))
    m.meta["input_convention"] = tgt
    m.meta["transforms"] = [
        *m.meta.get("transforms", []),
        f"input_convention:{target if isinstance(target, str) else 'custom'}",
    ]
    if fold:
        m = fold_input_norm(m)
        if not m.graph.nodes or m.graph.nodes[0].op != "input_norm":
            m.meta.pop("input_stage_from", None)
    infer_shapes(m)
    return m


def fold_input_norm(model: Model) -> Model:
    """Fold a leading input_norm into the first convolution when that is exact (no padding, one
    group, sole consumer); otherwise return the model unchanged (see fold_input_stage)."""
    g = model.graph
    if not g.nodes or g.nodes[0].op != "input_norm":
        return model
    norm = g.nodes[0]
    users = [n for n in g.nodes if norm.name in n.inputs]
    conv = users[0] if len(users) == 1 else None
    if (
        conv is None
        or conv.op != "conv"
        or any(conv.attrs["pad"])
        or conv.attrs.get("groups", 1) != 1
        or conv.inputs != [norm.name]
        or g.output == norm.name
    ):
        return model
    return fold_input_stage(model)[0]


def class_permutation() -> np.ndarray:
    """perm[senet_index] = index in the sorted-synset (ILSVRC2012) order."""
    path = resources.files("senet_hub") / "data" / "senet_to_ilsvrc2012_sorted.csv"
    pairs = [(int(a), int(b)) for a, b in csv.reader(path.read_text().splitlines()) if a.strip().isdigit()]
    perm = np.full(len(pairs), -1, np.int64)
    for s, t in pairs:
        perm[s] = t
    if sorted(perm.tolist()) != list(range(len(pairs))):
        raise SenetHubError(f"{path}: not a bijection of 0..{len(pairs) - 1}")
    return perm


def set_class_order(model: Model, target: str) -> Model:
    """Permute the classifier rows (and bias) so that output j is class j in `target` order."""
    if target not in CLASS_ORDERS:
        raise SenetHubError(f"unknown class order '{target}'; choose one of {', '.join(CLASS_ORDERS)}")
    src = model.meta.get("class_order", "unknown")
    if src == target:
        return model
    if src not in CLASS_ORDERS:
        raise SenetHubError(f"{model.arch}: the model's class order is '{src}'; cannot convert it to '{target}'")
    linears = [n for n in model.graph.nodes if n.op == "linear"]
    if not linears or linears[-1].attrs["out_features"] != 1000:
        raise SenetHubError(f"{model.arch}: no 1000-way classifier to reorder")
    fc = linears[-1]
    after = model.graph.nodes[model.graph.nodes.index(fc) + 1 :]
    if any(n.op not in ("softmax", "dropout") for n in after):
        raise SenetHubError(
            f"{model.arch}: the classifier '{fc.name}' is followed by {after[0].op}; cannot reorder classes exactly"
        )
    perm = class_permutation()  # senet -> sorted
    new_from_old = np.argsort(perm) if target == "ilsvrc2012" else perm  # row j of the result = old row new_from_old[j]
    m = model.copy()
    for p in fc.param_names():
        m.weights[f"{fc.name}.{p}"] = np.ascontiguousarray(model.weights[f"{fc.name}.{p}"][new_from_old])
    m.meta["class_order"] = target
    m.meta["transforms"] = [*m.meta.get("transforms", []), f"class_order:{target}"]
    return m


def fold_input_stage(model: Model) -> tuple[Model, bool]:
    """The model without its input_norm node, the stage folded Cadene-style into the first conv.

    For formats that hold only weights (a state_dict, a MindSpore checkpoint): the channel
    permutation and the scale go into the conv's weights, the shift's contribution (the conv of
    the constant shift image, one number per output channel) into the following batch norm's
    running_mean when the conv has no bias (so the parameter set, and a consumer's strict load,
    stay the same), else into the conv bias. Exact where the conv reads no zero padding: a
    padded zero of the new input is not a padded zero of the old one, so border outputs differ.
    Returns (model, exact); exact is True when the conv pads nothing or there was no stage.
    """
    g = model.graph
    if not g.nodes or g.nodes[0].op != "input_norm":
        return model, True
    norm = g.nodes[0]
    users = [n for n in g.nodes if norm.name in n.inputs]
    conv = users[0] if len(users) == 1 and g.output != norm.name else None
    if conv is None or conv.op != "conv" or conv.attrs.get("groups", 1) != 1 or conv.inputs != [norm.name]:
        what = f"'{users[0].name}' ({users[0].op})" if len(users) == 1 else f"{len(users)} nodes"
        raise UnsupportedError(
            f"{model.arch}: the input stage feeds {what}, not one ungrouped convolution, so it cannot be folded "
            "into weights; write .pt2, .pt, ONNX, TensorFlow, MXNet, Chainer or Caffe, which hold the stage exactly"
        )
    perm = [int(p) for p in norm.attrs["perm"]]
    scale = np.asarray(norm.attrs["scale"], np.float64)
    shift = np.asarray(norm.attrs["shift"], np.float64)
    w = model.weights[f"{conv.name}.weight"].astype(np.float64)
    new_w = np.empty_like(w)
    for c, src in enumerate(perm):
        new_w[:, src] = w[:, c] * scale[c]
    const = np.einsum("ochw,c->o", w, shift)  # conv(W, shift) away from the padded border
    m = model.copy()
    m.weights[f"{conv.name}.weight"] = new_w.astype(np.float32)
    bn = next((n for n in g.nodes if conv.name in n.inputs), None)
    bn_ok = bn is not None and bn.op == "batch_norm" and g.output != conv.name
    bn_ok = bn_ok and sum(conv.name in n.inputs for n in g.nodes) == 1
    mc = m.graph.node(conv.name)
    if conv.attrs.get("bias", True) or not bn_ok:
        bias = model.weights.get(f"{conv.name}.bias")
        m.weights[f"{conv.name}.bias"] = ((0.0 if bias is None else bias.astype(np.float64)) + const).astype(np.float32)
        mc.attrs["bias"] = True
    else:  # BN subtracts its mean from conv + const: subtract const from the mean instead
        assert bn is not None  # bn_ok
        key = f"{bn.name}.running_mean"
        m.weights[key] = (model.weights[key].astype(np.float64) - const).astype(np.float32)
    mc.inputs = [g.input_name]
    mc.source = [*mc.source, "input convention (folded, Cadene-style)"]
    m.graph.nodes = m.graph.nodes[1:]
    exact = not any(conv.attrs["pad"])
    m.meta["input_fold"] = {"exact": exact, "from": dict(model.meta.get("input_stage_from") or {})}
    m.meta.pop("input_stage_from", None)
    m.meta["transforms"] = [*m.meta.get("transforms", []), f"input_fold:{'exact' if exact else 'cadene'}"]
    infer_shapes(m)
    return m, exact


def logits_model(model: Model) -> Model:
    """The model with its output moved before a trailing softmax: consumers compare logits."""
    g = model.graph
    out = g.node(g.output)
    if out.op != "softmax":
        return model
    m = model.copy()
    m.graph.output = out.inputs[0]
    return m


def output_deviation(reference: Model, other: Model, x: np.ndarray) -> float:
    """max|d| / max|ref| of the two models' logits (the output before a trailing softmax),
    float64 numpy reference on input x."""
    from .builders import numpy_ref

    outs = []
    for mod in (reference, other):
        lm = logits_model(mod)
        outs.append(numpy_ref.run(numpy_ref.build(lm), x, taps=False)[lm.graph.output])
    ref, got = outs
    scale = float(np.max(np.abs(ref)))
    return float(np.max(np.abs(got - ref))) / (scale if scale > 0 else 1.0)


def fold_deviation(exact: Model, folded: Model, x: np.ndarray) -> float:
    """How far the folded model is from the exact one: max|d| / max|ref| of the logits (the output
    before a trailing softmax; the consumers of folded files, timm and Cadene, return logits)."""
    return output_deviation(exact, folded, x)


def timm_pool(model: Model) -> Model:
    """A MindCV model with its stem max pool as timm's `seresnet*` computes it.

    MindCV pools 3x3 s2 with pad_mode "same" (pads 0 top/left, 1 bottom/right); timm's ResNet
    stem uses MaxPool2d(3, 2, padding=1): the same output size, windows shifted by one pixel.
    """
    m = model.copy()
    for n in m.graph.nodes:
        if n.op == "max_pool":
            if tuple(n.attrs["pad"]) == (0, 0, 1, 1) and not n.attrs.get("ceil", False):
                n.attrs["pad"] = (1, 1, 1, 1)
            break
    infer_shapes(m)
    return m
