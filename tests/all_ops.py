"""The one shared "every op" fixture: small graphs that together use every op of senet_hub.ops
with non-trivial attributes, and deterministic weights.

    all_ops_models() -> [(name, Model)]   two SENet-like graphs using every op at once:
        "senet_112"  1 x 3 x 112 x 112 (was tests/test_torch_builder.py's and, minus the dilated
                     conv and the asymmetric average pools, tests/test_onnx.py's graph)
        "mixed_14"   2 x 3 x 14 x 14 (was tests/test_tensorflow_builder.py's and, minus the
                     stride+dilation conv and the 4-D reshape / concat along H, test_mxnet_chainer.py's)
    op_cases(op) -> [(case, Model)]       one op's corner cases, each a graph of a few nodes
    op_case(op) -> Model                  its first case
    all_cases() -> [("op:case", Model)]
    input_for(model, seed) -> ndarray     a float32 input of the model's input shape
    random_weights(graph, seed) -> dict   the one weight rule (BN variance and scale in [0.5, 2),
                                          conv/linear bias in [0.1, 0.5), He-like weights)

Per-framework variants (what a backend may refuse, with an UnsupportedError naming the node):
    Caffe (converters.caffe_writer): asymmetric conv pads, asymmetric pool pads (except an
        end-only max pool in floor mode that equals Caffe's ceil mode), average pooling that
        excludes padding from the divisor when it pads, and input_norm (declared unsupported:
        MissingLowering) -> CAFFE_REFUSES below; the all-ops models are not Caffe-expressible.
    The other builders (numpy, torch, onnxruntime, tensorflow, mxnet, chainer) take every case.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from senet_hub.graph import Graph, Model, Node, expected_params, output_shape, validate


def conv(name, x, o, k, s=1, pad=(0, 0, 0, 0), groups=1, bias=True, dilation=(1, 1)) -> Node:
    a = dict(out_channels=o, kernel=(k, k), stride=(s, s), pad=pad, dilation=dilation, groups=groups, bias=bias)
    return Node(name, "conv", [x], a)


def pool(name, op, x, k, s, pad=(0, 0, 0, 0), ceil=False, **kw) -> Node:
    return Node(name, op, [x], dict(kernel=(k, k), stride=(s, s), pad=pad, ceil=ceil, **kw))


def norm(name: str = "layer0.norm", x: str = "data") -> Node:
    return Node(name, "input_norm", [x], dict(perm=[2, 1, 0], scale=[1 / 58, 1 / 57, 1 / 59], shift=[-1.7, -2.0, -2.1]))


def random_weights(g: Graph, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    shapes = {g.input_name: tuple(g.input_shape)}
    for n in g.nodes:
        ins = [shapes[i] for i in n.inputs]
        for p, shp in expected_params(n, ins).items():
            if p == "running_var":
                w = rng.uniform(0.5, 2.0, shp)
            elif p == "weight" and n.op == "batch_norm":
                w = rng.uniform(0.5, 1.5, shp)
            elif p == "bias" and n.op in ("conv", "linear"):  # keeps ReLU outputs away from all-zero
                w = rng.uniform(0.1, 0.5, shp)
            else:
                fan_in = int(np.prod(shp[1:])) if len(shp) > 1 else 1
                w = rng.normal(0, 1 / np.sqrt(fan_in), shp)
            weights[f"{n.name}.{p}"] = w.astype(np.float32)
        shapes[n.name] = output_shape(n, ins)
    return weights


def _model(nodes: list[Node], shape: tuple[int, ...], arch: str, seed: int = 0, output: str = "") -> Model:
    g = Graph(nodes, "data", shape, output=output)
    m = Model(g, random_weights(g, seed), {"arch": arch})
    validate(m)
    return m


def input_for(model: Model, seed: int = 1) -> np.ndarray:
    """Image-like values (0..255) when the graph starts with input_norm, else N(0, 1)."""
    rng = np.random.default_rng(seed)
    shape = tuple(model.graph.input_shape)
    if model.graph.nodes[0].op == "input_norm":
        return rng.uniform(0, 255, shape).astype(np.float32)
    return rng.normal(0, 1, shape).astype(np.float32)


# ------------------------------------------------------------------------------- all-ops models


def senet_112(size: int = 112) -> Model:
    """A small SENet-like graph using every canonical op and every pooling corner case."""
    nodes = [
        norm(),
        conv("layer0.conv1", "layer0.norm", 8, 3, pad=(1, 1, 1, 1)),
        Node("layer0.bn1", "batch_norm", ["layer0.conv1"], dict(eps=1e-5)),
        Node("layer0.relu1", "relu", ["layer0.bn1"]),
        pool("layer0.pool", "max_pool", "layer0.relu1", 3, 2, ceil=True),  # Caffe ceil: 112 -> 56 (floor: 55)
        # grouped strided conv with an asymmetric pad (MindSpore "same"): 56 -> 28
        conv("layer1.0.conv1", "layer0.pool", 8, 3, s=2, pad=(0, 0, 1, 1), groups=4, bias=False),
        Node("layer1.0.bn1", "batch_norm", ["layer1.0.conv1"], dict(eps=1e-3)),
        Node("layer1.0.relu1", "relu", ["layer1.0.bn1"]),
        # SE-BN-Inception's padded avg pool 3x3 s1 p1 counting the padding
        pool("layer1.0.avg", "avg_pool", "layer1.0.relu1", 3, 1, pad=(1, 1, 1, 1), ceil=True, count_include_pad=True),
        # SE with 1x1 convs: a is N x C x 1 x 1
        Node("layer1.0.se_module.avg_pool", "global_avg_pool", ["layer1.0.avg"]),
        conv("layer1.0.se_module.fc1", "layer1.0.se_module.avg_pool", 4, 1),
        Node("layer1.0.se_module.relu", "relu", ["layer1.0.se_module.fc1"]),
        conv("layer1.0.se_module.fc2", "layer1.0.se_module.relu", 8, 1),
        Node("layer1.0.se_module.sigmoid", "sigmoid", ["layer1.0.se_module.fc2"]),
        conv("layer1.0.downsample.0", "layer0.pool", 8, 1, s=2, bias=False),
        Node("layer1.0.axpy", "axpy", ["layer1.0.se_module.sigmoid", "layer1.0.avg", "layer1.0.downsample.0"]),
        Node("layer1.0.relu", "relu", ["layer1.0.axpy"]),
        # dilated conv, asymmetric pad on the other sides
        conv("layer1.1.conv", "layer1.0.relu", 8, 3, pad=(2, 1, 2, 3), dilation=(2, 2)),
        # MindSpore-style max pool: pads (0, 0, 1, 1), floor: 28 -> 14
        pool("layer2.pool", "max_pool", "layer1.1.conv", 3, 2, pad=(0, 0, 1, 1)),
        # SE with linear layers: a is N x C
        Node("layer2.se.pool", "global_avg_pool", ["layer2.pool"]),
        Node("layer2.se.flat", "flatten", ["layer2.se.pool"]),
        Node("layer2.se.fc1", "linear", ["layer2.se.flat"], dict(out_features=16, bias=True)),
        Node("layer2.se.relu", "relu", ["layer2.se.fc1"]),
        Node("layer2.se.fc2", "linear", ["layer2.se.relu"], dict(out_features=8, bias=False)),
        Node("layer2.se.sigmoid", "sigmoid", ["layer2.se.fc2"]),
        Node("layer2.axpy", "axpy", ["layer2.se.sigmoid", "layer2.pool", "layer2.pool"]),
        # SE-BN-Inception gating: s = reshape(sigmoid, [0, 0]) -> N x C, channel_scale
        Node("layer2.gate.pool", "global_avg_pool", ["layer2.axpy"]),
        conv("layer2.gate.fc", "layer2.gate.pool", 8, 1),
        Node("layer2.gate.sigmoid", "sigmoid", ["layer2.gate.fc"]),
        Node("layer2.gate.reshape", "reshape", ["layer2.gate.sigmoid"], dict(shape=[0, 0])),
        Node("layer2.gate.scale", "channel_scale", ["layer2.axpy", "layer2.gate.reshape"]),
        # Caffe clip rule in H (14, k3 s2 p2 ceil -> 8) with pads over half the kernel (explicit path)
        pool("layer3.clip", "max_pool", "layer2.gate.scale", 3, 2, pad=(2, 1, 2, 1), ceil=True),
        # avg pool, ceil adds a window, counting padding: 14 k3 s2 p0 -> 7 (floor: 6)
        pool("layer3.avg_ceil", "avg_pool", "layer2.gate.scale", 3, 2, ceil=True, count_include_pad=True),
        # avg pool excluding padding (native), and asymmetric avg pools both ways (explicit path)
        pool("layer3.avg_ex", "avg_pool", "layer2.gate.scale", 3, 2, pad=(1, 1, 1, 1), count_include_pad=False),
        pool("layer3.avg_as_in", "avg_pool", "layer2.gate.scale", 3, 2, (0, 1, 2, 0), True, count_include_pad=True),
        pool("layer3.avg_as_ex", "avg_pool", "layer2.gate.scale", 3, 2, (0, 1, 2, 0), True, count_include_pad=False),
        Node("layer3.add", "add", ["layer3.avg_ceil", "layer3.avg_ceil"]),
        Node("layer3.concat", "concat", ["layer3.add", "layer3.avg_ex"], dict(axis=1)),
        pool("layer4.pool", "avg_pool", "layer3.concat", 7, 1, ceil=True, count_include_pad=True),
        Node("layer4.flat", "flatten", ["layer4.pool"]),
        Node("layer3.clip_pool", "global_avg_pool", ["layer3.clip"]),
        Node("layer3.clip_flat", "reshape", ["layer3.clip_pool"], dict(shape=[0, -1])),
        Node("layer3.as_pool", "global_avg_pool", ["layer3.avg_as_in"]),
        Node("layer3.as_pool2", "global_avg_pool", ["layer3.avg_as_ex"]),
        Node("layer3.as_add", "add", ["layer3.as_pool", "layer3.as_pool2"]),
        Node("layer3.as_flat", "flatten", ["layer3.as_add"]),
        Node("layer4.concat", "concat", ["layer4.flat", "layer3.clip_flat", "layer3.as_flat"], dict(axis=1)),
        Node("layer4.dropout", "dropout", ["layer4.concat"], dict(ratio=0.2)),
        Node("last_linear", "linear", ["layer4.dropout"], dict(out_features=10, bias=True)),
        Node("prob", "softmax", ["last_linear"]),
    ]
    return _model(nodes, (1, 3, size, size), "test-all-ops", output="prob")


def mixed_14(seed: int = 0) -> Model:
    """A small SENet-like graph on 2 x 3 x 14 x 14 inputs: Caffe-style names with '/', stride and
    dilation in one conv, linear on a 4-D value, a 4-D reshape and a concat along H."""
    nodes = [
        norm(),
        conv("conv1/7x7_s2", "layer0.norm", 8, 3, pad=(1, 1, 1, 1)),  # '/': not a valid Keras name
        Node("layer0.bn1", "batch_norm", ["conv1/7x7_s2"], dict(eps=1e-5)),
        Node("layer0.relu1", "relu", ["layer0.bn1"]),
        pool("layer0.pool_ceil", "max_pool", "layer0.relu1", 3, 2, ceil=True),  # Caffe: 14 -> 7 (floor: 6)
        pool("layer0.pool_ms", "max_pool", "layer0.bn1", 3, 2, pad=(0, 0, 1, 1)),  # MindSpore "same": 14 -> 7
        Node("layer0.pool", "add", ["layer0.pool_ceil", "layer0.pool_ms"]),
        conv("layer1.0.conv1", "layer0.pool", 16, 3, s=2, pad=(1, 1, 1, 1), groups=4, bias=False),  # 7 -> 4
        Node("layer1.0.bn1", "batch_norm", ["layer1.0.conv1"], dict(eps=1e-3)),
        Node("layer1.0.relu1", "relu", ["layer1.0.bn1"]),
        conv("layer1.0.conv2", "layer1.0.relu1", 16, 3, pad=(2, 1, 2, 3), groups=2, bias=False, dilation=(2, 2)),
        Node("layer1.0.bn2", "batch_norm", ["layer1.0.conv2"], dict(eps=1e-5)),
        Node("layer1.0.se_module.avg_pool", "global_avg_pool", ["layer1.0.bn2"]),
        conv("layer1.0.se_module.fc1", "layer1.0.se_module.avg_pool", 4, 1),
        Node("layer1.0.se_module.relu", "relu", ["layer1.0.se_module.fc1"]),
        conv("layer1.0.se_module.fc2", "layer1.0.se_module.relu", 16, 1),
        Node("layer1.0.se_module.sigmoid", "sigmoid", ["layer1.0.se_module.fc2"]),
        conv("layer1.0.downsample.0", "layer0.pool", 16, 1, s=2, bias=False),
        Node("layer1.0.downsample.1", "batch_norm", ["layer1.0.downsample.0"], dict(eps=1e-5)),
        Node("layer1.0.axpy", "axpy", ["layer1.0.se_module.sigmoid", "layer1.0.bn2", "layer1.0.downsample.1"]),
        Node("layer1.0.relu", "relu", ["layer1.0.axpy"]),
        # stride and dilation together (Keras refuses both in one Conv2D): 4 -> 2
        conv("mix.dilated", "layer1.0.relu", 4, 3, s=2, pad=(2, 2, 2, 2), dilation=(2, 2)),
        # Caffe clip rule: 7, k2 s2 p1 ceil -> 4 (the 5th window would start in the end padding)
        pool("mix.clip", "max_pool", "layer0.pool", 2, 2, pad=(1, 1, 1, 1), ceil=True),
        pool("mix.avg", "avg_pool", "layer1.0.relu", 3, 1, pad=(1, 1, 1, 1), ceil=True, count_include_pad=True),
        pool("mix.avg_asym", "avg_pool", "layer1.0.relu", 3, 1, pad=(1, 0, 1, 2), count_include_pad=False),
        pool("mix.avg_ceil", "avg_pool", "layer1.0.relu", 3, 2, ceil=True, count_include_pad=True),  # 4 -> 2
        Node("mix.cat", "concat", ["layer1.0.relu", "mix.avg", "mix.avg_asym", "mix.clip"], dict(axis=1)),
        Node("mix.se.pool", "global_avg_pool", ["mix.cat"]),
        Node("mix.se.reshape", "reshape", ["mix.se.pool"], dict(shape=[0, 0])),
        Node("mix.se.sigmoid", "sigmoid", ["mix.se.reshape"]),
        Node("mix.se.scale", "channel_scale", ["mix.cat", "mix.se.sigmoid"]),
        Node("drop", "dropout", ["mix.se.scale"], dict(ratio=0.2)),
        Node("last_linear", "linear", ["drop"], dict(out_features=10, bias=True)),  # after a 4 x 4 map
        Node("aux.flat", "flatten", ["mix.avg_ceil"]),
        Node("aux.fc", "linear", ["aux.flat"], dict(out_features=10, bias=False)),
        Node("aux.reshape", "reshape", ["mix.dilated"], dict(shape=[0, 2, -1, 4])),
        Node("aux.cat_h", "concat", ["aux.reshape", "aux.reshape"], dict(axis=2)),
        Node("aux.fc2", "linear", ["aux.cat_h"], dict(out_features=10, bias=True)),
        Node("logits0", "add", ["last_linear", "aux.fc"]),
        Node("logits", "add", ["logits0", "aux.fc2"]),
        Node("prob", "softmax", ["logits"]),
    ]
    return _model(nodes, (2, 3, 14, 14), "test-all-ops", seed)


def all_ops_models() -> list[tuple[str, Model]]:
    return [("senet_112", senet_112()), ("mixed_14", mixed_14())]


# ------------------------------------------------------------------------------------ op cases

X = (2, 4, 14, 14)  # the default case input: 4 channels (groups 2 and 4 divide it), 14 x 14


def _gate(x: str = "data", nc: bool = False) -> list[Node]:
    """sigmoid(global_avg_pool(x)) as 'g': N x C x 1 x 1, or N x C through reshape [0, 0]."""
    nodes = [Node("gap", "global_avg_pool", [x]), Node("g", "sigmoid", ["gap"])]
    if nc:
        nodes = [nodes[0], Node("gap2", "reshape", ["gap"], dict(shape=[0, 0])), Node("g", "sigmoid", ["gap2"])]
    return nodes


# op -> case -> (nodes, input shape)
_CASES: dict[str, dict[str, Callable[[], tuple[list[Node], tuple[int, ...]]]]] = {
    "conv": {
        "3x3_pad1": lambda: ([conv("c", "data", 8, 3, pad=(1, 1, 1, 1))], X),
        "grouped_s2_asym_nobias": lambda: ([conv("c", "data", 8, 3, s=2, pad=(0, 0, 1, 1), groups=4, bias=False)], X),
        "dilated_asym_groups2": lambda: ([conv("c", "data", 6, 3, pad=(2, 1, 2, 3), groups=2, dilation=(2, 2))], X),
        "stride_dilation": lambda: ([conv("c", "data", 4, 3, s=2, pad=(2, 2, 2, 2), dilation=(2, 2))], X),
        "1x1_s2_nobias": lambda: ([conv("c", "data", 8, 1, s=2, bias=False)], X),
    },
    "batch_norm": {"eps1e-3": lambda: ([Node("bn", "batch_norm", ["data"], dict(eps=1e-3))], X)},
    "relu": {"plain": lambda: ([Node("r", "relu", ["data"])], X)},
    "sigmoid": {"plain": lambda: ([Node("s", "sigmoid", ["data"])], X)},
    "max_pool": {
        "ceil": lambda: ([pool("p", "max_pool", "data", 3, 2, ceil=True)], X),  # 14 -> 7 (floor: 6)
        "mindspore_same": lambda: ([pool("p", "max_pool", "data", 3, 2, pad=(0, 0, 1, 1))], X),  # end-only, floor
        "clip_rule": lambda: ([pool("p", "max_pool", "data", 3, 2, pad=(2, 1, 2, 1), ceil=True)], X),  # H: 8
        "clip_k2": lambda: ([pool("p", "max_pool", "data", 2, 2, pad=(1, 1, 1, 1), ceil=True)], (2, 4, 7, 7)),
    },
    "avg_pool": {
        "pad1_include_ceil": lambda: (
            [pool("p", "avg_pool", "data", 3, 1, (1, 1, 1, 1), True, count_include_pad=True)],
            X,
        ),
        "ceil_overhang": lambda: ([pool("p", "avg_pool", "data", 3, 2, ceil=True, count_include_pad=True)], X),
        "exclude_pad": lambda: ([pool("p", "avg_pool", "data", 3, 2, (1, 1, 1, 1), count_include_pad=False)], X),
        "asym_include_ceil": lambda: (
            [pool("p", "avg_pool", "data", 3, 2, (0, 1, 2, 0), True, count_include_pad=True)],
            X,
        ),
        "asym_exclude_ceil": lambda: (
            [pool("p", "avg_pool", "data", 3, 2, (0, 1, 2, 0), True, count_include_pad=False)],
            X,
        ),
        "asym_exclude_floor": lambda: ([pool("p", "avg_pool", "data", 3, 1, (1, 0, 1, 2), count_include_pad=False)], X),
    },
    "global_avg_pool": {"plain": lambda: ([Node("gap", "global_avg_pool", ["data"])], X)},
    "axpy": {
        "a_nc11": lambda: ([*_gate(), Node("r", "relu", ["data"]), Node("ax", "axpy", ["g", "data", "r"])], X),
        "a_nc": lambda: ([*_gate(nc=True), Node("r", "relu", ["data"]), Node("ax", "axpy", ["g", "data", "r"])], X),
    },
    "channel_scale": {
        "s_nc": lambda: ([*_gate(nc=True), Node("cs", "channel_scale", ["data", "g"])], X),
        "s_nc11": lambda: ([*_gate(), Node("cs", "channel_scale", ["data", "g"])], X),
    },
    "add": {"plain": lambda: ([Node("r", "relu", ["data"]), Node("sum", "add", ["data", "r"])], X)},
    "concat": {
        "axis1_three": lambda: (
            [Node("r", "relu", ["data"]), Node("s", "sigmoid", ["data"]), Node("cat", "concat", ["data", "r", "s"])],
            X,
        ),
        "axis2": lambda: ([Node("r", "relu", ["data"]), Node("cat", "concat", ["data", "r"], dict(axis=2))], X),
    },
    "reshape": {
        "0_-1": lambda: (
            [Node("gap", "global_avg_pool", ["data"]), Node("rs", "reshape", ["gap"], dict(shape=[0, -1]))],
            X,
        ),
        "4d_0_2_-1_7": lambda: ([Node("rs", "reshape", ["data"], dict(shape=[0, 2, -1, 7]))], X),
    },
    "flatten": {"4d": lambda: ([Node("f", "flatten", ["data"])], X)},
    "linear": {
        "2d_bias": lambda: ([Node("f", "flatten", ["data"]), Node("fc", "linear", ["f"], dict(out_features=10))], X),
        "4d_nobias": lambda: ([Node("fc", "linear", ["data"], dict(out_features=10, bias=False))], X),
    },
    "softmax": {
        "2d": lambda: (
            [Node("fc", "linear", ["data"], dict(out_features=10)), Node("prob", "softmax", ["fc"])],
            X,
        )
    },
    "dropout": {"ratio0.2": lambda: ([Node("d", "dropout", ["data"], dict(ratio=0.2))], X)},
    "input_norm": {"bgr_perm": lambda: ([norm("n")], (2, 3, 14, 14))},
}
OPS_WITH_CASES = list(_CASES)

# op:case ids the Caffe writer refuses (UnsupportedError naming the node; input_norm: MissingLowering)
CAFFE_REFUSES = {
    "conv:grouped_s2_asym_nobias",
    "conv:dilated_asym_groups2",
    "avg_pool:exclude_pad",
    "avg_pool:asym_include_ceil",
    "avg_pool:asym_exclude_ceil",
    "avg_pool:asym_exclude_floor",
    "input_norm:bgr_perm",
}


def op_cases(op: str) -> list[tuple[str, Model]]:
    """The op's corner cases, each a small validated model (other ops only feed the one under test)."""
    return [(case, _model(*make(), arch=f"test-{op}-{case}")) for case, make in _CASES[op].items()]


def op_case(op: str) -> Model:
    return op_cases(op)[0][1]


def all_cases() -> list[tuple[str, Model]]:
    return [(f"{op}:{case}", m) for op in _CASES for case, m in op_cases(op)]
