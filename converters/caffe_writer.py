"""Canonical Model -> Caffe deploy prototxt + caffemodel (Axpy layers for SE blocks).

The writer is a ``Lowerings`` table, ``LOWER`` (backend "caffe"), driven by ``ops.plan``: one
small function per op, ``fn(ctx, step, bottoms) -> [(layer message, blobs)]``, with the node's
typed attributes (``step.attrs``). A node's value is the top of its first layer. Planning looks
every lowering up before anything is written, so an op Caffe has no layer for (``input_norm``,
declared with ``LOWER.unsupported``) is one ``ops.MissingLowering`` naming the op, the node and
backend "caffe"; an attribute Caffe cannot express is an ``UnsupportedError`` naming the node.
Either way no file is written.

- conv -> Convolution (num_output, bias_term, pad/kernel/stride h and w, dilation and group when
  not 1); asymmetric pads are refused.
- batch_norm -> BatchNorm (use_global_stats, eps; blobs mean, variance, scale factor 1) and an
  in-place Scale (bias_term; blobs weight, bias): two layer names per node.
- max_pool / avg_pool -> Pooling (MAX / AVE; round_mode FLOOR unless ceil, Caffe's default being
  ceil). An end-only padded floor max pool whose output size is Caffe's ceil mode without padding
  is written as that (same windows; padding never wins a max). Other asymmetric pads, and
  padding-excluding average pools that pad, are refused.
- global_avg_pool -> Pooling (AVE, global_pooling); relu, sigmoid, softmax, axpy, add, flatten
  -> ReLU, Sigmoid, Softmax, Axpy, Eltwise (SUM, its default), Flatten.
- channel_scale -> Scale (axis 0, no bias) of x by s, s first reshaped to N x C (``<layer>/reshape``)
  unless it already is; concat -> Concat (axis); reshape -> Reshape (shape: Caffe's own 0 / -1
  semantics); linear -> InnerProduct (num_output, bias_term); dropout -> Dropout (dropout_ratio).

Layer names are the nodes' Caffe source names where the model has them (a released model
round-trips to its own names), else the canonical node names. Reading the written pair back
with ``caffe.load`` gives the same weights and outputs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from senet_hub.atomic import atomic_outputs
from senet_hub.errors import UnsupportedError
from senet_hub.graph import Model, Node, infer_shapes
from senet_hub.ops import (
    BatchNormAttrs,
    ConcatAttrs,
    ConvAttrs,
    DropoutAttrs,
    LinearAttrs,
    Lowerings,
    PoolAttrs,
    ReshapeAttrs,
    Shape,
    Step,
    plan,
)

from .caffe_format import Quoted, encode_layer, format_prototxt, ld

Message = dict[str, list[Any]]  # one prototxt message, as format_prototxt takes it
Layer = tuple[Message, list[np.ndarray]]  # a layer and its caffemodel blobs (none: no record)


def layer_names(model: Model) -> dict[str, list[str]]:
    """Per node, the Caffe layer names it becomes (batch_norm: BatchNorm + Scale)."""

    def wanted(n: Node) -> list[str]:
        k = 2 if n.op == "batch_norm" else 1
        src = n.source if len(n.source) == k else []
        return src or ([n.name, f"{n.name}/scale"] if k == 2 else [n.name])

    names = {n.name: wanted(n) for n in model.graph.nodes}
    flat = [x for v in names.values() for x in v]
    if len(set(flat)) != len(flat) or model.graph.input_name in flat:
        names = {n.name: ([n.name, f"{n.name}/scale"] if n.op == "batch_norm" else [n.name]) for n in model.graph.nodes}
    return names


@dataclasses.dataclass
class _Ctx:
    """What a lowering needs besides its bottoms: the weights, every value's shape, the layer names."""

    model: Model
    shapes: dict[str, Shape]
    names: dict[str, list[str]]

    def name(self, s: Step, i: int = 0) -> str:
        return self.names[s.name][i]

    def params(self, s: Step) -> dict[str, np.ndarray]:
        return {p: self.model.param(s.name, p) for p in s.node.param_names()}


LowerFn = Callable[[_Ctx, Step, list[str]], list[Layer]]
LOWER: Lowerings[LowerFn] = Lowerings("caffe")
LOWER.unsupported(
    "input_norm",
    "Caffe has no layer for a channel permutation with per-channel scale and shift; "
    "convert with the Caffe input convention (senet-hub convert --input-convention caffe)",
)


def _layer(name: str, ltype: str, bottoms: list[str], top: str, **params: Any) -> Message:
    layer: Message = {
        "name": [Quoted(name)],
        "type": [Quoted(ltype)],
        "bottom": [Quoted(b) for b in bottoms],
        "top": [Quoted(top)],
    }
    layer.update(params)
    return layer


def _hw(prefix: str, v: tuple[int, int]) -> dict[str, list[Any]]:
    return {f"{prefix}_h": [v[0]], f"{prefix}_w": [v[1]]}


def _weight_bias(w: dict[str, np.ndarray]) -> list[np.ndarray]:
    return [w["weight"]] + ([w["bias"]] if "bias" in w else [])


@LOWER.register("conv")
def _conv(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
    a: ConvAttrs = s.attrs
    t, lf, b, r = a.pad
    if (t, lf) != (b, r):
        raise UnsupportedError(f"node '{s.name}': Caffe convolutions cannot pad asymmetrically ({a.pad})")
    p = {"num_output": [a.out_channels], "bias_term": [a.bias], **_hw("pad", (t, lf)),
         **_hw("kernel", a.kernel), **_hw("stride", a.stride)}  # fmt: skip
    if a.dilation != (1, 1):
        p["dilation"] = list(a.dilation)
    if a.groups != 1:
        p["group"] = [a.groups]
    name = c.name(s)
    return [(_layer(name, "Convolution", ins, name, convolution_param=[p]), _weight_bias(c.params(s)))]


@LOWER.register("batch_norm")
def _batch_norm(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
    a: BatchNormAttrs = s.attrs
    w, bn, scale = c.params(s), c.name(s, 0), c.name(s, 1)
    stats = [w["running_mean"], w["running_var"], np.ones(1, np.float32)]  # scale factor 1: plain statistics
    return [
        (_layer(bn, "BatchNorm", ins, bn, batch_norm_param=[{"use_global_stats": [True], "eps": [a.eps]}]), stats),
        (_layer(scale, "Scale", [bn], bn, scale_param=[{"bias_term": [True]}]), [w["weight"], w["bias"]]),
    ]


def _pool(c: _Ctx, s: Step, ins: list[str], is_max: bool) -> list[Layer]:
    a: PoolAttrs = s.attrs
    t, lf, b, r = a.pad
    ceil = a.ceil
    if (t, lf) != (b, r):
        # End-only padding of a max pool in floor mode = Caffe's ceil mode without padding
        # whenever the output sizes agree (same window starts, padding never wins a max).
        h, w = c.shapes[s.inputs[0]][2:]
        unpadded_ceil = dataclasses.replace(a, pad=(0, 0, 0, 0), ceil=True).out_hw(h, w)
        if not is_max or (t, lf) != (0, 0) or c.shapes[s.name][2:] != unpadded_ceil:
            raise UnsupportedError(f"node '{s.name}': Caffe pooling cannot pad asymmetrically ({a.pad})")
        t = lf = 0
        ceil = True
    if not is_max and not a.count_include_pad and (t or lf):
        raise UnsupportedError(f"node '{s.name}': Caffe average pooling always counts padding")
    p = {
        "pool": ["MAX" if is_max else "AVE"],
        **_hw("kernel", a.kernel),
        **_hw("stride", a.stride),
        **_hw("pad", (t, lf)),
    }
    if not ceil:
        p["round_mode"] = ["FLOOR"]
    name = c.name(s)
    return [(_layer(name, "Pooling", ins, name, pooling_param=[p]), [])]


@LOWER.register("max_pool")
def _max_pool(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
    return _pool(c, s, ins, True)


@LOWER.register("avg_pool")
def _avg_pool(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
    return _pool(c, s, ins, False)


@LOWER.register("global_avg_pool")
def _global_avg_pool(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
    name = c.name(s)
    return [(_layer(name, "Pooling", ins, name, pooling_param=[{"pool": ["AVE"], "global_pooling": [True]}]), [])]


def _plain(op: str, ltype: str) -> None:
    """Register the lowering of an op that is one parameterless Caffe layer of type ``ltype``."""

    def lower(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
        name = c.name(s)
        return [(_layer(name, ltype, ins, name), [])]

    LOWER.register(op)(lower)


_plain("relu", "ReLU")
_plain("sigmoid", "Sigmoid")
_plain("softmax", "Softmax")
_plain("axpy", "Axpy")
_plain("add", "Eltwise")  # Eltwise's default operation is SUM
_plain("flatten", "Flatten")


@LOWER.register("channel_scale")
def _channel_scale(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
    name, scale = c.name(s), ins[1]
    out: list[Layer] = []
    if len(c.shapes[s.inputs[1]]) != 2:  # Scale with axis 0 takes the scale as N x C
        scale = f"{name}/reshape"
        out.append((_layer(scale, "Reshape", [ins[1]], scale, reshape_param=[{"shape": [{"dim": [0, 0]}]}]), []))
    out.append((_layer(name, "Scale", [ins[0], scale], name, scale_param=[{"axis": [0], "bias_term": [False]}]), []))
    return out


@LOWER.register("concat")
def _concat(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
    a: ConcatAttrs = s.attrs
    name = c.name(s)
    return [(_layer(name, "Concat", ins, name, concat_param=[{"axis": [a.axis]}]), [])]


@LOWER.register("reshape")
def _reshape(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
    a: ReshapeAttrs = s.attrs
    name = c.name(s)
    return [(_layer(name, "Reshape", ins, name, reshape_param=[{"shape": [{"dim": list(a.shape)}]}]), [])]


@LOWER.register("linear")
def _linear(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
    a: LinearAttrs = s.attrs
    name = c.name(s)
    p = {"num_output": [a.out_features], "bias_term": [a.bias]}
    return [(_layer(name, "InnerProduct", ins, name, inner_product_param=[p]), _weight_bias(c.params(s)))]


@LOWER.register("dropout")
def _dropout(c: _Ctx, s: Step, ins: list[str]) -> list[Layer]:
    a: DropoutAttrs = s.attrs
    name = c.name(s)
    return [(_layer(name, "Dropout", ins, name, dropout_param=[{"dropout_ratio": [a.ratio]}]), [])]


def to_caffe(model: Model) -> tuple[Message, list[tuple[str, str, list[np.ndarray]]]]:
    """The prototxt message and the caffemodel's (layer, type, blobs) records."""
    g = model.graph
    steps = plan(g, LOWER)  # every lowering looked up first: input_norm is refused before any work
    ctx = _Ctx(model, infer_shapes(model), layer_names(model))
    top = {g.input_name: g.input_name}  # canonical value -> Caffe blob name
    layers: list[Message] = [
        {"name": [Quoted(g.input_name)], "type": [Quoted("Input")], "top": [Quoted(g.input_name)],
         "input_param": [{"shape": [{"dim": list(g.input_shape)}]}]}
    ]  # fmt: skip
    records: list[tuple[str, str, list[np.ndarray]]] = []
    for s in steps:
        for layer, blobs in s.fn(ctx, s, [top[i] for i in s.inputs]):
            layers.append(layer)
            if blobs:
                records.append((str(layer["name"][0]), str(layer["type"][0]), blobs))
        top[s.name] = ctx.name(s)
    net: Message = {"name": [Quoted(str(model.meta.get("arch", "senet-hub")))], "layer": layers}
    return net, records


def header_comments(model: Model) -> str:
    """Comment lines recording what Caffe has no field for (read back by caffe.load)."""
    import json

    lines = ["# written by senet-hub"]
    conv = model.meta.get("input_convention")
    if conv:
        lines.append(f"# mean_value: {', '.join(f'{m:g}' for m in conv.get('mean', []))}")
        lines.append(f"# senet-hub input_convention: {json.dumps(conv, sort_keys=True)}")
    if model.meta.get("class_order"):
        lines.append(f"# senet-hub class_order: {model.meta['class_order']}")
    if model.meta.get("arch"):
        lines.append(f"# senet-hub arch: {model.meta['arch']}")
    return "\n".join(lines) + "\n"


def caffemodel_bytes(records: list[tuple[str, str, list[np.ndarray]]], name: str = "") -> bytes:
    head = ld(1, name.encode()) if name else b""
    return head + b"".join(encode_layer(n, t, b) for n, t, b in records)


def save(model: Model, prefix: str | os.PathLike) -> list[str]:
    """Write <prefix>.prototxt and <prefix>.caffemodel (atomically, both or neither)."""
    prefix = str(prefix)
    for ext in (".prototxt", ".caffemodel"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    net, records = to_caffe(model)
    text = header_comments(model) + format_prototxt(net)
    paths = [prefix + ".prototxt", prefix + ".caffemodel"]
    with atomic_outputs(paths) as tmp:
        with open(tmp[0], "w") as f:
            f.write(text)
        with open(tmp[1], "wb") as f:
            f.write(caffemodel_bytes(records, str(model.meta.get("arch", ""))))
    return paths


def write_caffemodel_for(model: Model, path: str | os.PathLike) -> str:
    """Only the caffemodel, with layer names from the nodes' Caffe sources (to pair with an existing prototxt)."""
    _, records = to_caffe(model)
    with atomic_outputs([str(path)]) as tmp:
        with open(tmp[0], "wb") as f:
            f.write(caffemodel_bytes(records))
    return str(path)
