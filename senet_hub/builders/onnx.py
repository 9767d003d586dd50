"""ONNX: export straight from the canonical Model with ``onnx.helper`` (no PyTorch), run in onnxruntime.

The exported graph uses standard ONNX ops, except that each ``axpy`` node is ONE node
``Axpy`` in the project's own domain ``org.senet-hub`` (version 1, declared in ``opset_import``).
The model carries a model-local function (FunctionProto) with the same name whose body is
``Mul(a, x) -> Add(., y)``, so onnxruntime, ``onnx.reference`` or any runtime that knows
model-local functions runs it without a custom library. ``inline=True`` writes the same model
with that function inlined (plain standard ops only). A runtime kernel for the op can be
registered instead of the function: see ``senet_hub.builders.onnx_fused``.

Value names are the canonical node names (every node has one output named like the node), the
input is ``graph.input_name`` (``data``) and the output is the graph's output node. The batch
dimension is symbolic (``N``); spatial sizes are those the model was described with (the
classifier fixes them). ``metadata_props`` carry the input convention, class order,
architecture id and source file sha256 as JSON strings (``"unknown"`` when missing, ``{}`` for
the hashes).

Op mapping: conv -> Conv (pads [t, l, b, r]); batch_norm -> BatchNormalization (explicit
epsilon); max_pool / avg_pool -> MaxPool / AveragePool (see ``_pool_attrs`` for ceil mode and
Caffe's clip rule; avg: count_include_pad); global_avg_pool -> GlobalAveragePool;
channel_scale -> Reshape(s, [0, 0, 1, 1]) + Mul; reshape -> Reshape (Caffe's 0 / -1 are ONNX
Reshape's 0 / -1 with allowzero = 0); flatten -> Flatten(axis 1); linear -> [Flatten +] Gemm
(transB = 1); softmax -> Softmax(axis 1); dropout -> Identity; input_norm -> Gather on the
channel axis + Mul + Add.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UnsupportedError
from ..graph import Model, infer_shapes, pool_out

NAME = "onnxruntime"
EXTRA = "onnx"

DOMAIN = "org.senet-hub"
DOMAIN_VERSION = 1
DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax-13 (single axis) is the first with the canonical semantics
TESTED_OPSETS = range(13, 22)
METADATA_KEYS = ("arch", "input_convention", "class_order", "source_sha256")


def available() -> str | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


# --------------------------------------------------------------------------------------- export


def axpy_function(opset: int) -> Any:
    """The model-local function ``org.senet-hub::Axpy(a, x, y) = a * x + y`` on standard ops."""
    from onnx import helper

    return helper.make_function(
        DOMAIN,
        "Axpy",
        ["a", "x", "y"],
        ["z"],
        [helper.make_node("Mul", ["a", "x"], ["ax"]), helper.make_node("Add", ["ax", "y"], ["z"])],
        [helper.make_opsetid("", opset)],
        doc_string="Caffe's Axpy (SENet): z = a * x + y, a of shape N x C x 1 x 1 broadcast over H, W.",
    )


def _pool_attrs(node_attrs: dict, in_hw: tuple[int, int], pad_neutral: bool) -> dict[str, Any]:
    """kernel_shape, strides, pads and ceil_mode that give graph.pool_out's size and windows.

    onnxruntime's ceil_mode implements Caffe's clip rule (a last window starting in the end
    padding is dropped) but ONNX shape inference does not, so ceil_mode is written only where it
    changes the size and no axis hits the clip rule. Where the clip rule applies, ceil and floor
    give the same size and windows (floor is written). Mixed axes of max / exclude-pad pools get
    floor mode with the end pad grown to reach the ceil size (padding adds no value there).
    """
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = node_attrs["kernel"], node_attrs["stride"], node_attrs["pad"]
    attrs: dict[str, Any] = {"kernel_shape": [kh, kw], "strides": [sh, sw]}
    pads = [pt, pl, pb, pr]
    if node_attrs.get("ceil", False):
        axes = [(in_hw[0], kh, sh, pt, pb), (in_hw[1], kw, sw, pl, pr)]
        want = [pool_out(*ax, True) for ax in axes]
        floor = [pool_out(*ax, False) for ax in axes]
        # n from the plain ceil formula (what ONNX shape inference computes)
        plain = [-(-(size + p0 + p1 - k) // s) + 1 for size, k, s, p0, p1 in axes]
        if want != floor:
            if plain == want:
                attrs["ceil_mode"] = 1
            elif not pad_neutral:  # avg pool counting the padding: the divisor must not see extra pad
                attrs["ceil_mode"] = 1  # onnxruntime is exact; ONNX shape inference is one too large
            else:
                for i, ((size, k, s, p0, p1), n) in enumerate(zip(axes, want)):
                    pads[2 + i] = max(p1, (n - 1) * s + k - size - p0)
    attrs["pads"] = pads
    return attrs


class _Emitter:
    def __init__(self, model: Model, opset: int, inline: bool):
        from onnx import helper, numpy_helper

        self.h, self.nh = helper, numpy_helper
        self.model, self.opset, self.inline = model, opset, inline
        self.nodes: list = []
        self.inits: list = []
        self.used: set[str] = {model.graph.input_name} | {n.name for n in model.graph.nodes} | set(model.weights)
        self.uses_domain = False

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def const(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(self.nh.from_array(np.ascontiguousarray(arr), name))
        return name

    def weight(self, node: str, param: str) -> str:
        key = f"{node}.{param}"
        return self.const(key, np.asarray(self.model.weights[key], np.float32))

    def helper_const(self, node: str, suffix: str, arr: np.ndarray) -> str:
        return self.const(self.fresh(f"{node}/{suffix}"), arr)

    def add(self, op: str, inputs: list[str], output: str, name: str, doc: str = "", domain: str = "", **attrs) -> str:
        n = self.h.make_node(op, inputs, [output], name=name, domain=domain or None, **attrs)
        if doc:
            n.doc_string = doc
        self.nodes.append(n)
        return output

    def nc11(self, node: str, value: str, rank: int) -> str:
        """value of shape N x C (or N x C x 1 x 1) as N x C x 1 x 1, batch-agnostic."""
        if rank == 4:
            return value
        shape = self.helper_const(node, "shape_nc11", np.array([0, 0, 1, 1], np.int64))
        out = self.fresh(f"{value}/nc11" if value != node else f"{node}/nc11")
        return self.add("Reshape", [value, shape], out, self.fresh(f"{node}/reshape_nc11"))

    def emit(self, shapes: dict[str, tuple[int, ...]]) -> None:
        for n in self.model.graph.nodes:
            a, op, out, ins = n.attrs, n.op, n.name, list(n.inputs)
            doc = "source: " + " + ".join(n.source) if n.source else ""
            x_shape = shapes[ins[0]]
            if op == "conv":
                inputs = [ins[0], self.weight(out, "weight")] + (
                    [self.weight(out, "bias")] if "bias" in n.param_names() else []
                )
                self.add(
                    "Conv", inputs, out, out, doc,
                    kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=list(a["pad"]),
                    dilations=list(a.get("dilation", (1, 1))), group=int(a.get("groups", 1)),
                )  # fmt: skip
            elif op == "batch_norm":
                params = [self.weight(out, p) for p in ("weight", "bias", "running_mean", "running_var")]
                self.add("BatchNormalization", [ins[0], *params], out, out, doc, epsilon=float(a["eps"]))
            elif op == "relu":
                self.add("Relu", ins, out, out, doc)
            elif op == "sigmoid":
                self.add("Sigmoid", ins, out, out, doc)
            elif op in ("max_pool", "avg_pool"):
                neutral = op == "max_pool" or not a.get("count_include_pad", True)
                attrs = _pool_attrs(a, (int(x_shape[2]), int(x_shape[3])), neutral)
                if op == "avg_pool":
                    attrs["count_include_pad"] = int(bool(a.get("count_include_pad", True)))
                self.add("MaxPool" if op == "max_pool" else "AveragePool", ins, out, out, doc, **attrs)
            elif op == "global_avg_pool":
                self.add("GlobalAveragePool", ins, out, out, doc)
            elif op == "axpy":
                a4 = self.nc11(out, ins[0], len(shapes[ins[0]]))
                if self.inline:
                    ax = self.add("Mul", [a4, ins[1]], self.fresh(f"{out}/ax"), self.fresh(f"{out}/mul"), doc)
                    self.add("Add", [ax, ins[2]], out, out, doc)
                else:
                    self.uses_domain = True
                    self.add("Axpy", [a4, ins[1], ins[2]], out, out, doc, domain=DOMAIN)
            elif op == "channel_scale":
                s4 = self.nc11(out, ins[1], len(shapes[ins[1]]))
                self.add("Mul", [ins[0], s4], out, out, doc)
            elif op == "add":
                self.add("Add", ins, out, out, doc)
            elif op == "concat":
                self.add("Concat", ins, out, out, doc, axis=int(a.get("axis", 1)))
            elif op == "reshape":
                shape = self.helper_const(out, "shape", np.array([int(d) for d in a["shape"]], np.int64))
                self.add("Reshape", [ins[0], shape], out, out, doc)
            elif op == "flatten":
                self.add("Flatten", ins, out, out, doc, axis=1)
            elif op == "linear":
                x = ins[0]
                if len(x_shape) != 2:
                    x = self.add("Flatten", [x], self.fresh(f"{out}/flat"), self.fresh(f"{out}/flatten"), doc, axis=1)
                inputs = [x, self.weight(out, "weight")] + (
                    [self.weight(out, "bias")] if "bias" in n.param_names() else []
                )
                self.add("Gemm", inputs, out, out, doc, transB=1)
            elif op == "softmax":
                self.add("Softmax", ins, out, out, doc, axis=1)
            elif op == "dropout":
                self.add("Identity", ins, out, out, doc)
            elif op == "input_norm":
                self.emit_input_norm(n.name, ins[0], a, x_shape[1], doc)
            else:
                raise UnsupportedError(f"node '{n.name}': op '{op}' has no ONNX mapping")

    def emit_input_norm(self, out: str, x: str, a: dict, c: int, doc: str) -> None:
        perm = [int(p) for p in a["perm"]]
        scale = np.asarray(a["scale"], np.float32).reshape(1, c, 1, 1)
        shift = np.asarray(a["shift"], np.float32).reshape(1, c, 1, 1)
        steps: list[tuple[str, str | None]] = []
        if perm != list(range(c)):
            steps.append(("Gather", self.helper_const(out, "perm", np.array(perm, np.int64))))
        if not np.all(scale == 1):
            steps.append(("Mul", self.helper_const(out, "scale", scale)))
        if not np.all(shift == 0):
            steps.append(("Add", self.helper_const(out, "shift", shift)))
        if not steps:
            steps.append(("Identity", None))
        for i, (op, const) in enumerate(steps):
            last = i == len(steps) - 1
            y = out if last else self.fresh(f"{out}/{op.lower()}")
            attrs: dict[str, Any] = {"axis": 1} if op == "Gather" else {}
            self.add(
                op,
                [x] + ([const] if const else []),
                y,
                out if last else self.fresh(f"{out}/{op.lower()}_op"),
                doc,
                **attrs,
            )
            x = y


def _json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def metadata(model: Model, custom_axpy: bool = False) -> dict[str, str]:
    """The metadata_props of an export: JSON strings, "unknown" where missing (sha256: {})."""
    m = model.meta
    props = {
        "arch": _json(m.get("arch", "unknown")),
        "input_convention": _json(m.get("input_convention") or "unknown"),
        "class_order": _json(m.get("class_order") or "unknown"),
        "source_sha256": _json(m.get("source_sha256", {})),
    }
    if custom_axpy:
        props["custom_ops"] = _json({f"{DOMAIN}::Axpy": "z = a * x + y (a: N x C x 1 x 1); model-local function"})
    return props


def to_onnx(model: Model, opset: int = DEFAULT_OPSET, inline: bool = False, batch: str | int = "N") -> Any:
    """The canonical model as an ``onnx.ModelProto``.

    opset: ONNX default-domain opset (13 and up; 13-21 tested). inline: write the Axpy function
    inlined (standard ops only). batch: the batch dimension, a symbolic name or a fixed size.
    """
    import onnx
    from onnx import TensorProto, helper

    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= int(opset) <= max_opset:
        raise UnsupportedError(f"ONNX opset {opset} is not supported: choose {MIN_OPSET}-{max_opset} (tested: 13-21)")
    opset = int(opset)
    g = model.graph
    shapes = infer_shapes(model)
    em = _Emitter(model, opset, inline)
    em.emit(shapes)

    def vinfo(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *shapes[name][1:]])

    graph = helper.make_graph(
        em.nodes, _safe_name(model.arch), [vinfo(g.input_name)], [vinfo(g.output)], initializer=em.inits
    )
    opsets = [helper.make_opsetid("", opset)]
    functions = []
    if em.uses_domain:
        opsets.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
        functions.append(axpy_function(opset))
    ir = max(8, helper.find_min_ir_version_for(opsets[:1]))  # model-local functions need IR 8
    from .. import __version__

    proto = helper.make_model(
        graph,
        opset_imports=opsets,
        functions=functions,
        ir_version=ir,
        producer_name="senet-hub",
        producer_version=__version__,
        doc_string=f"{model.arch} exported by senet-hub from the canonical model",
    )
    helper.set_model_props(proto, metadata(model, em.uses_domain))
    return proto


# The runtimes CI loads the written files into, each with its own loader
# (tests/test_onnx_runtimes.py, all released architectures, both modes); that test also asserts
# that the runtimes missing from RUNTIMES_FUNCTION still refuse a function file, so this message
# changes when they do. OpenVINO 2026.4 and onnx2torch 1.5.15 do not expand model-local functions
# of a custom domain (FIELD_NOTES section 10).
RUNTIMES_FUNCTION = ("onnxruntime", "onnx.reference")
RUNTIMES_ALL = ("onnxruntime", "onnx.reference", "OpenVINO", "onnx2torch")


def uses_custom_axpy(model: Model, inline: bool) -> bool:
    """Whether the export holds the custom-domain Axpy node (SE-BN-Inception gates without Axpy)."""
    return not inline and any(n.op == "axpy" for n in model.graph.nodes)


def _and(names: tuple[str, ...] | list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def runtimes_message(model: Model, inline: bool) -> str:
    """One line: which runtimes the written file runs in, and which flag gives a file for the others."""
    if uses_custom_axpy(model, inline):
        others = [r for r in RUNTIMES_ALL if r not in RUNTIMES_FUNCTION]
        return (
            f"runs in {_and(RUNTIMES_FUNCTION)} (Axpy is the custom op {DOMAIN}::Axpy with a model-local "
            f"function); {_and(others)} refuse it: pass --inline for a file that runs in all {len(RUNTIMES_ALL)}"
        )
    why = "standard ops only" if inline else "this model has no Axpy: standard ops only"
    return f"runs in {_and(RUNTIMES_ALL)} ({why})"


def _safe_name(s: str) -> str:
    return s or "senet"


def to_bytes(model: Model, opset: int = DEFAULT_OPSET, inline: bool = False, batch: str | int = "N") -> bytes:
    """Serialized ONNX; the same model gives the same bytes."""
    return to_onnx(model, opset, inline, batch).SerializeToString(deterministic=True)


def save(
    model: Model, path: str | os.PathLike, opset: int | None = None, inline: bool = False, batch: str | int = "N"
) -> list[str]:
    """Write ``path`` atomically (temporary file in the target directory, then rename).

    Raises OutputError (one line) when the directory is missing or not writable or the write
    fails; no partial or temporary file is left behind.
    """
    from ..atomic import atomic_outputs, check_writable

    path = os.fspath(path)
    check_writable(path)  # before the export, which takes a while for big models
    data = to_bytes(model, opset or DEFAULT_OPSET, inline, batch)
    with atomic_outputs([path]) as (tmp,), open(tmp, "wb") as f:
        f.write(data)
    return [path]


# ------------------------------------------------------------------------------------------ run


@dataclass
class OrtModel:
    """An onnxruntime session for the exported model, plus a lazily built verification copy."""

    proto: Any
    session: Any
    input_name: str
    output: str
    nodes: list[str]
    providers: list[str]
    session_options: Any = None
    libraries: list[str] = field(default_factory=list)  # custom-op libraries the sessions need
    _taps: Any = field(default=None, repr=False)

    def taps_session(self) -> Any:
        """Session for a copy whose every node output is a graph output, optimizations off."""
        if self._taps is None:
            import onnxruntime as ort
            from onnx import TensorProto, helper

            p = type(self.proto)()
            p.CopyFrom(self.proto)
            have = {o.name for o in p.graph.output}
            p.graph.output.extend(
                helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in self.nodes if n not in have
            )
            so = _options(self.session_options, self.libraries)
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            self._taps = ort.InferenceSession(p.SerializeToString(), so, providers=self.providers)
        return self._taps


def _options(base: Any = None, libraries: list[str] | None = None) -> Any:
    """Fresh SessionOptions (quiet), with base's thread settings and the given custom-op libraries."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if base is not None:
        so.intra_op_num_threads = base.intra_op_num_threads
        so.inter_op_num_threads = base.inter_op_num_threads
    for lib in libraries or []:
        so.register_custom_ops_library(lib)
    so.log_severity_level = 3  # no warnings on stderr
    return so


def session_for(proto: Any, session_options: Any = None, providers: list[str] | None = None) -> Any:
    import onnxruntime as ort

    so = session_options or _options()
    return ort.InferenceSession(proto.SerializeToString(), so, providers=providers or ["CPUExecutionProvider"])


def build(
    model: Model,
    inline: bool = False,
    opset: int = DEFAULT_OPSET,
    session_options: Any = None,
    providers: list[str] | None = None,
) -> OrtModel:
    """Export the model and open an onnxruntime session on it (all graph optimizations on)."""
    proto = to_onnx(model, opset=opset, inline=inline)
    providers = providers or ["CPUExecutionProvider"]
    sess = session_for(proto, session_options, providers)
    return OrtModel(
        proto,
        sess,
        model.graph.input_name,
        model.graph.output,
        [n.name for n in model.graph.nodes],
        providers,
        session_options,
    )


def run(native: OrtModel, x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    """Run; with taps every canonical node's output (from the unoptimized verification copy)."""
    feed = {native.input_name: np.ascontiguousarray(x, np.float32)}
    if not taps:
        return {native.output: native.session.run([native.output], feed)[0]}
    outs = native.taps_session().run(native.nodes, feed)
    return dict(zip(native.nodes, outs))
