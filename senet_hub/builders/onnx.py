"""ONNX: export straight from the canonical Model with ``onnx.helper`` (no PyTorch), run in onnxruntime.

The exported graph uses standard ONNX ops, except that each ``axpy`` node is ONE node
``Axpy`` in the project's own domain ``org.senet-hub`` (version 1, declared in ``opset_import``).
The model carries a model-local function (FunctionProto) with the same name whose body is
``Mul(a, x) -> Add(., y)``, so onnxruntime, ``onnx.reference`` or any runtime that knows
model-local functions runs it without a custom library. ``inline=True`` writes the same model
with that function inlined (plain standard ops only). A runtime kernel for the op can be
registered instead of the function: ``bench/axpy_fused.py`` measures one (it does not pay).

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

Why this module is long: it holds three things that change together, the lowering table (one
function per op), the model-level wrapping (Axpy's domain and function, metadata, opset checks,
which runtimes can run the file) and the onnxruntime session that taps every node; splitting
them would spread one ONNX graph's conventions (value names, domains, opsets) over several files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UnsupportedError
from ..graph import Model, infer_shapes
from ..ops import (
    BatchNormAttrs,
    ConcatAttrs,
    ConvAttrs,
    InputNormAttrs,
    LinearAttrs,
    Lowerings,
    PoolAttrs,
    ReshapeAttrs,
    Shape,
    Step,
    plan,
    pool_out,
    walk,
)

NAME = "onnxruntime"
EXTRA = "onnx"

DOMAIN = "org.senet-hub"
DOMAIN_VERSION = 1
DEFAULT_OPSET = 17
MIN_OPSET = 13  # Softmax-13 (single axis) is the first with the canonical semantics
TESTED_OPSETS = range(13, 22)
METADATA_KEYS = ("arch", "input_convention", "class_order", "source_sha256")

# op -> lowering ``fn(emitter, step, input value names) -> output value name``; each lowering
# appends its ONNX nodes and initializers to the emitter (``_Emitter``)
LowerFn = Callable[["_Emitter", Step, list[str]], str]
LOWER: Lowerings[LowerFn] = Lowerings("onnx")


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


def _pool_attrs(a: PoolAttrs, in_hw: tuple[int, int], pad_neutral: bool) -> dict[str, Any]:
    """kernel_shape, strides, pads and ceil_mode that give ops.pool_out's size and windows.

    onnxruntime's ceil_mode implements Caffe's clip rule (a last window starting in the end
    padding is dropped) but ONNX shape inference does not, so ceil_mode is written only where it
    changes the size and no axis hits the clip rule. Where the clip rule applies, ceil and floor
    give the same size and windows (floor is written). Mixed axes of max / exclude-pad pools get
    floor mode with the end pad grown to reach the ceil size (padding adds no value there).
    """
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a.kernel, a.stride, a.pad
    attrs: dict[str, Any] = {"kernel_shape": [kh, kw], "strides": [sh, sw]}
    pads = [pt, pl, pb, pr]
    if a.ceil:
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
    """The lowerings' context: the nodes and initializers emitted so far, plus the value shapes."""

    def __init__(self, model: Model, opset: int, inline: bool, shapes: dict[str, Shape]):
        from onnx import helper, numpy_helper

        self.h, self.nh = helper, numpy_helper
        self.model, self.opset, self.inline, self.shapes = model, opset, inline, shapes
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

    def same(self, onnx_op: str, s: Step, ins: list[str], **attrs: Any) -> str:
        """One ONNX node named like the canonical node, on the same inputs."""
        return self.add(onnx_op, ins, s.name, s.name, _doc(s), **attrs)

    def nc11(self, node: str, value: str, rank: int) -> str:
        """value of shape N x C (or N x C x 1 x 1) as N x C x 1 x 1, batch-agnostic."""
        if rank == 4:
            return value
        shape = self.helper_const(node, "shape_nc11", np.array([0, 0, 1, 1], np.int64))
        out = self.fresh(f"{value}/nc11" if value != node else f"{node}/nc11")
        return self.add("Reshape", [value, shape], out, self.fresh(f"{node}/reshape_nc11"))


def _doc(s: Step) -> str:
    return "source: " + " + ".join(s.node.source) if s.node.source else ""


# ------------------------------------------------------------------------------------ lowerings


@LOWER.register("conv")
def _conv(em: _Emitter, s: Step, ins: list[str]) -> str:
    a: ConvAttrs = s.attrs
    inputs = [ins[0], em.weight(s.name, "weight")] + ([em.weight(s.name, "bias")] if a.bias else [])
    return em.same(
        "Conv", s, inputs,
        kernel_shape=list(a.kernel), strides=list(a.stride), pads=list(a.pad),
        dilations=list(a.dilation), group=a.groups,
    )  # fmt: skip


@LOWER.register("batch_norm")
def _batch_norm(em: _Emitter, s: Step, ins: list[str]) -> str:
    a: BatchNormAttrs = s.attrs
    params = [em.weight(s.name, p) for p in ("weight", "bias", "running_mean", "running_var")]
    return em.same("BatchNormalization", s, [ins[0], *params], epsilon=a.eps)


def _standard(onnx_op: str, **attrs: Any) -> LowerFn:
    """A canonical op that is one standard ONNX node with fixed attributes."""

    def lower(em: _Emitter, s: Step, ins: list[str]) -> str:
        return em.same(onnx_op, s, ins, **attrs)

    return lower


LOWER.register("relu")(_standard("Relu"))
LOWER.register("sigmoid")(_standard("Sigmoid"))
LOWER.register("global_avg_pool")(_standard("GlobalAveragePool"))
LOWER.register("add")(_standard("Add"))
LOWER.register("flatten")(_standard("Flatten", axis=1))
LOWER.register("softmax")(_standard("Softmax", axis=1))
LOWER.register("dropout")(_standard("Identity"))


@LOWER.register("max_pool")
def _max_pool(em: _Emitter, s: Step, ins: list[str]) -> str:
    x_shape = em.shapes[ins[0]]
    return em.same("MaxPool", s, ins, **_pool_attrs(s.attrs, (int(x_shape[2]), int(x_shape[3])), True))


@LOWER.register("avg_pool")
def _avg_pool(em: _Emitter, s: Step, ins: list[str]) -> str:
    a: PoolAttrs = s.attrs
    x_shape = em.shapes[ins[0]]
    attrs = _pool_attrs(a, (int(x_shape[2]), int(x_shape[3])), not a.count_include_pad)
    attrs["count_include_pad"] = int(a.count_include_pad)
    return em.same("AveragePool", s, ins, **attrs)


@LOWER.register("axpy")
def _axpy(em: _Emitter, s: Step, ins: list[str]) -> str:
    out, doc = s.name, _doc(s)
    a4 = em.nc11(out, ins[0], len(em.shapes[ins[0]]))
    if em.inline:
        ax = em.add("Mul", [a4, ins[1]], em.fresh(f"{out}/ax"), em.fresh(f"{out}/mul"), doc)
        return em.add("Add", [ax, ins[2]], out, out, doc)
    em.uses_domain = True
    return em.add("Axpy", [a4, ins[1], ins[2]], out, out, doc, domain=DOMAIN)


@LOWER.register("channel_scale")
def _channel_scale(em: _Emitter, s: Step, ins: list[str]) -> str:
    s4 = em.nc11(s.name, ins[1], len(em.shapes[ins[1]]))
    return em.same("Mul", s, [ins[0], s4])


@LOWER.register("concat")
def _concat(em: _Emitter, s: Step, ins: list[str]) -> str:
    a: ConcatAttrs = s.attrs
    return em.same("Concat", s, ins, axis=a.axis)


@LOWER.register("reshape")
def _reshape(em: _Emitter, s: Step, ins: list[str]) -> str:
    a: ReshapeAttrs = s.attrs
    shape = em.helper_const(s.name, "shape", np.array(a.shape, np.int64))
    return em.same("Reshape", s, [ins[0], shape])


@LOWER.register("linear")
def _linear(em: _Emitter, s: Step, ins: list[str]) -> str:
    a: LinearAttrs = s.attrs
    out, x = s.name, ins[0]
    if len(em.shapes[x]) != 2:
        x = em.add("Flatten", [x], em.fresh(f"{out}/flat"), em.fresh(f"{out}/flatten"), _doc(s), axis=1)
    inputs = [x, em.weight(out, "weight")] + ([em.weight(out, "bias")] if a.bias else [])
    return em.same("Gemm", s, inputs, transB=1)


@LOWER.register("input_norm")
def _input_norm(em: _Emitter, s: Step, ins: list[str]) -> str:
    a: InputNormAttrs = s.attrs
    out, x, doc, c = s.name, ins[0], _doc(s), em.shapes[ins[0]][1]
    perm = list(a.perm)
    scale = np.asarray(a.scale, np.float32).reshape(1, c, 1, 1)
    shift = np.asarray(a.shift, np.float32).reshape(1, c, 1, 1)
    steps: list[tuple[str, str | None]] = []  # only the parts that are not the identity
    if perm != list(range(c)):
        steps.append(("Gather", em.helper_const(out, "perm", np.array(perm, np.int64))))
    if not np.all(scale == 1):
        steps.append(("Mul", em.helper_const(out, "scale", scale)))
    if not np.all(shift == 0):
        steps.append(("Add", em.helper_const(out, "shift", shift)))
    if not steps:
        steps.append(("Identity", None))
    for i, (op, const) in enumerate(steps):
        last = i == len(steps) - 1
        y = out if last else em.fresh(f"{out}/{op.lower()}")
        attrs: dict[str, Any] = {"axis": 1} if op == "Gather" else {}
        em.add(
            op,
            [x] + ([const] if const else []),
            y,
            out if last else em.fresh(f"{out}/{op.lower()}_op"),
            doc,
            **attrs,
        )
        x = y
    return out


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
    steps = plan(g, LOWER)  # every missing lowering fails here, before any work
    shapes = infer_shapes(model)
    em = _Emitter(model, opset, inline, shapes)
    walk(g, steps, em, g.input_name)  # the values are ONNX value names

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
