"""Canonical Model -> Caffe deploy prototxt + caffemodel (Axpy layers for SE blocks).

Layer names are the nodes' Caffe source names where the model has them (a released model
round-trips to its own names), else the canonical node names. Reading the written pair back
with ``caffe.load`` gives the same weights and outputs.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from senet_hub.atomic import atomic_outputs
from senet_hub.errors import UnsupportedError
from senet_hub.graph import Model, Node, infer_shapes

from .caffe_format import Quoted, encode_layer, format_prototxt, ld


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


def _hw(prefix: str, v: tuple[int, int]) -> dict[str, list[Any]]:
    return {f"{prefix}_h": [v[0]], f"{prefix}_w": [v[1]]}


def to_caffe(model: Model) -> tuple[dict[str, list[Any]], list[tuple[str, str, list[np.ndarray]]]]:
    """The prototxt message and the caffemodel's (layer, type, blobs) records."""
    shapes = infer_shapes(model)
    g = model.graph
    names = layer_names(model)
    top = {g.input_name: g.input_name}  # canonical value -> Caffe blob name
    layers: list[dict[str, Any]] = [
        {"name": [Quoted(g.input_name)], "type": [Quoted("Input")], "top": [Quoted(g.input_name)],
         "input_param": [{"shape": [{"dim": list(g.input_shape)}]}]}
    ]  # fmt: skip
    records: list[tuple[str, str, list[np.ndarray]]] = []

    def add(
        name: str, ltype: str, bottoms: list[str], out: str, blobs: list[np.ndarray] | None = None, **params: Any
    ) -> None:
        layer = {
            "name": [Quoted(name)],
            "type": [Quoted(ltype)],
            "bottom": [Quoted(b) for b in bottoms],
            "top": [Quoted(out)],
        }
        layer.update(params)
        layers.append(layer)
        if blobs:
            records.append((name, ltype, blobs))

    for n in g.nodes:
        a, op = n.attrs, n.op
        ln = names[n.name]
        ins = [top[i] for i in n.inputs]
        w = {p: model.weights[f"{n.name}.{p}"] for p in n.param_names()}
        if op == "conv":
            t, lf, b, r = a["pad"]
            if (t, lf) != (b, r):
                raise UnsupportedError(f"node '{n.name}': Caffe convolutions cannot pad asymmetrically ({a['pad']})")
            p = {"num_output": [a["out_channels"]], "bias_term": [a.get("bias", True)], **_hw("pad", (t, lf)),
                 **_hw("kernel", a["kernel"]), **_hw("stride", a["stride"])}  # fmt: skip
            if tuple(a.get("dilation", (1, 1))) != (1, 1):
                p["dilation"] = list(a["dilation"])
            if a.get("groups", 1) != 1:
                p["group"] = [a["groups"]]
            add(
                ln[0],
                "Convolution",
                ins,
                ln[0],
                [w["weight"]] + ([w["bias"]] if "bias" in w else []),
                convolution_param=[p],
            )
        elif op == "batch_norm":
            bn = [w["running_mean"], w["running_var"], np.ones(1, np.float32)]
            add(ln[0], "BatchNorm", ins, ln[0], bn, batch_norm_param=[{"use_global_stats": [True], "eps": [a["eps"]]}])
            add(ln[1], "Scale", [ln[0]], ln[0], [w["weight"], w["bias"]], scale_param=[{"bias_term": [True]}])
        elif op in ("max_pool", "avg_pool"):
            t, lf, b, r = a["pad"]
            ceil = a.get("ceil", False)
            if (t, lf) != (b, r):
                # End-only padding of a max pool in floor mode = Caffe's ceil mode without padding
                # whenever the output sizes agree (same window starts, padding never wins a max).
                h, wd = shapes[n.inputs[0]][2:]
                if op != "max_pool" or (t, lf) != (0, 0) or shapes[n.name][2:] != _ceil_sizes(h, wd, a):
                    raise UnsupportedError(f"node '{n.name}': Caffe pooling cannot pad asymmetrically ({a['pad']})")
                t = lf = 0
                ceil = True
            if op == "avg_pool" and not a.get("count_include_pad", True) and (t or lf):
                raise UnsupportedError(f"node '{n.name}': Caffe average pooling always counts padding")
            p = {
                "pool": ["MAX" if op == "max_pool" else "AVE"],
                **_hw("kernel", a["kernel"]),
                **_hw("stride", a["stride"]),
                **_hw("pad", (t, lf)),
            }
            if not ceil:
                p["round_mode"] = ["FLOOR"]
            add(ln[0], "Pooling", ins, ln[0], pooling_param=[p])
        elif op == "global_avg_pool":
            add(ln[0], "Pooling", ins, ln[0], pooling_param=[{"pool": ["AVE"], "global_pooling": [True]}])
        elif op in ("relu", "sigmoid", "softmax", "axpy", "add", "flatten"):
            ltype = {
                "relu": "ReLU",
                "sigmoid": "Sigmoid",
                "softmax": "Softmax",
                "axpy": "Axpy",
                "add": "Eltwise",
                "flatten": "Flatten",
            }[op]
            add(ln[0], ltype, ins, ln[0])
        elif op == "channel_scale":
            s = ins[1]
            if len(shapes[n.inputs[1]]) != 2:
                s = f"{ln[0]}/reshape"
                add(s, "Reshape", [ins[1]], s, reshape_param=[{"shape": [{"dim": [0, 0]}]}])
            add(ln[0], "Scale", [ins[0], s], ln[0], scale_param=[{"axis": [0], "bias_term": [False]}])
        elif op == "concat":
            add(ln[0], "Concat", ins, ln[0], concat_param=[{"axis": [a.get("axis", 1)]}])
        elif op == "reshape":
            add(ln[0], "Reshape", ins, ln[0], reshape_param=[{"shape": [{"dim": list(a["shape"])}]}])
        elif op == "linear":
            p = {"num_output": [a["out_features"]], "bias_term": [a.get("bias", True)]}
            add(
                ln[0],
                "InnerProduct",
                ins,
                ln[0],
                [w["weight"]] + ([w["bias"]] if "bias" in w else []),
                inner_product_param=[p],
            )
        elif op == "dropout":
            add(ln[0], "Dropout", ins, ln[0], dropout_param=[{"dropout_ratio": [a.get("ratio", 0.5)]}])
        else:
            raise UnsupportedError(
                f"node '{n.name}': op '{op}' has no Caffe equivalent (convert with the Caffe input convention)"
            )
        top[n.name] = ln[0]
    net = {"name": [Quoted(str(model.meta.get("arch", "senet-hub")))], "layer": layers}
    return net, records


def _ceil_sizes(h: int, w: int, a: dict) -> tuple[int, int]:
    from senet_hub.graph import pool_out

    (kh, kw), (sh, sw) = a["kernel"], a["stride"]
    return (pool_out(h, kh, sh, 0, 0, True), pool_out(w, kw, sw, 0, 0, True))


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
