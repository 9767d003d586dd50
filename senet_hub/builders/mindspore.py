"""MindSpore: MindCV's own SENet with the canonical model's weights (a verify backend).

``build(model)`` = ``mindcv.create_model(arch, pretrained=False, num_classes=...)`` in eval mode,
weights from ``converters.mindspore.to_mindcv`` (the same tensors ``save_ckpt`` writes) loaded
with ``load_param_into_net`` (strict: a parameter missing on either side is an error). So this
backend checks the canonical graph of a MindCV architecture against MindCV's real code.

A leading ``input_norm`` (an input-convention change) is not part of MindCV's network: it is
applied in numpy before the network runs.

``run(native, x, taps=True)`` taps, through forward hooks (PyNative mode), every canonical node
that is the output of one MindCV cell: convs, BNs, the stem ReLU, the max pool, the SE pool /
Dense / ReLU / sigmoid (N x C reshaped to N x C x 1 x 1), each block's output (the block cell
= the canonical ``actN``), the global pool and the classifier. The inner ReLUs of a block (one
shared cell, called several times) and the fused SE-scale + shortcut (``add``) have no cell of
their own and are not tapped.

MindSpore's max pool pads "same" from the actual input size; the canonical graph has fixed pads
(0, 0, 1, 1), equal for even stem outputs (inputs such as 224 or 64). Other sizes are refused
with a one-line error rather than compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ModelError, UnsupportedError
from ..graph import Graph, Model, infer_shapes

NAME = "mindspore"
EXTRA = "mindspore"
# verify: this backend is MindCV's own network, tapped through cell hooks; values computed inside a
# cell (an activation within a block, the residual add) are not exposed, so fewer taps are expected
PARTIAL_TAPS = "MindCV's cells expose only their outputs"


def available() -> str | None:
    try:
        import mindspore
    except Exception:  # a broken install counts as absent
        return None
    return str(mindspore.__version__)


@dataclass
class MindCVNet:
    net: Any
    model: Model  # the model the net computes (without a leading input_norm)
    pre: dict | None  # input_norm attrs applied in numpy, or None
    taps: dict[str, str] = field(default_factory=dict)  # canonical node -> MindCV cell name


def _strip_input_norm(model: Model) -> tuple[Model, dict | None]:
    g = model.graph
    if not g.nodes or g.nodes[0].op != "input_norm":
        return model, None
    m = model.copy()
    first = m.graph.nodes.pop(0)
    for n in m.graph.nodes:
        n.inputs = [m.graph.input_name if i == first.name else i for i in n.inputs]
    return m, {**first.attrs, "name": first.name}


def _tap_cells(graph: Graph, cells: set[str]) -> dict[str, str]:
    by_name = {n.name: n for n in graph.nodes}
    taps = {}
    for n in graph.nodes:
        if not n.source:
            continue
        cell = n.source[0]
        if n.op == "relu" and n.inputs and by_name.get(n.inputs[0]) is not None and by_name[n.inputs[0]].op == "axpy":
            cell = cell.rsplit(".", 1)[0]  # the block's output = the block cell's output
        elif n.op == "relu" and cell.endswith(".relu"):
            continue  # a block's shared ReLU cell: called several times
        if cell in cells:
            taps[n.name] = cell
    return taps


def build(model: Model) -> MindCVNet:
    import mindcv
    import mindspore as ms

    from .. import zoo
    from ..converters.mindspore import to_mindcv

    m, pre = _strip_input_norm(model)
    if not zoo.is_arch(m.arch, "mindcv"):
        raise UnsupportedError(
            f"the mindspore backend runs MindCV architectures ({', '.join(zoo.list_archs('mindcv'))}); "
            f"this model is '{m.arch}'"
        )
    params = to_mindcv(m)
    ncls = int(m.graph.node(m.graph.output).attrs["out_features"])
    net = mindcv.create_model(m.arch, pretrained=False, num_classes=ncls)
    net.set_train(False)
    pd = {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in params.items()}
    missing, unused = ms.load_param_into_net(net, pd)
    if missing or unused:
        raise ModelError(
            f"{m.arch}: MindCV's network and the converted weights differ: "
            f"not loaded {list(missing)[:4]}, unused {list(unused)[:4]}"
        )
    cells = {name for name, _ in net.cells_and_names()}
    return MindCVNet(net, m, pre, _tap_cells(m.graph, cells))


def _check_pool(native: MindCVNet, shapes: dict[str, tuple[int, ...]]) -> None:
    from ..zoo.mindcv import same_pad

    for n in native.model.graph.nodes:
        if n.op == "max_pool":
            (kh, kw), (sh, sw), (pt, pl, pb, pr) = n.attrs["kernel"], n.attrs["stride"], n.attrs["pad"]
            h, w = shapes[n.inputs[0]][2:]
            if same_pad(h, kh, sh) != (pt, pb) or same_pad(w, kw, sw) != (pl, pr):
                raise UnsupportedError(
                    f"node '{n.name}': MindSpore's 'same' max pool pads {same_pad(h, kh, sh)} rows, "
                    f"{same_pad(w, kw, sw)} columns for a {h}x{w} input, the graph pads {n.attrs['pad']}; "
                    "use an input size whose stem output is even (e.g. 224)"
                )


def run(native: MindCVNet, x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    import mindspore as ms

    x = np.asarray(x, np.float32)
    out: dict[str, np.ndarray] = {}
    if native.pre is not None:
        a = native.pre
        x = (
            x[:, list(a["perm"])] * np.asarray(a["scale"], np.float32)[:, None, None]
            + np.asarray(a["shift"], np.float32)[:, None, None]
        ).astype(np.float32)
        if taps:
            out[a["name"]] = x
    shapes = infer_shapes(native.model, tuple(x.shape))
    _check_pool(native, shapes)
    handles = []
    if taps:
        cells = dict(native.net.cells_and_names())
        for node, cell in native.taps.items():

            def hook(_cell: Any, _inputs: Any, output: Any, node: str = node) -> None:
                out[node] = output.asnumpy().reshape(shapes[node])

            handles.append(cells[cell].register_forward_hook(hook))
    try:
        y = native.net(ms.Tensor(np.ascontiguousarray(x))).asnumpy()
    finally:
        for h in handles:
            h.remove()
    g = native.model.graph
    out[g.output] = y.reshape(shapes[g.output])
    return out
