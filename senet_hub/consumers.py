"""Artifact verification: load a WRITTEN FILE with its consumer's own loader and compare it with the
float64 numpy reference of the source model.

``verify`` checks senet-hub's modules built from the graph; this module checks the file a user
gets, loaded the way that file's users load it (timm, Cadene ``pretrainedmodels``,
``torch.export.load``, ``torch.jit.load``, onnxruntime, OpenVINO, onnx2torch, ``onnx.reference``,
``tf.saved_model.load``, ``keras.models.load_model``, MXNet gluon ``SymbolBlock.imports``,
Chainer, OpenCV DNN, MindCV). Each consumer returns the values it can expose: per node where the
consumer shows intermediate values (hooks on modules named like the nodes, extra graph outputs on
an in-memory copy of an ONNX file, the layers of a Keras file, the internals of an MXNet symbol,
OpenCV layer outputs, MindCV cells), the final output always. The report's rows are the nodes the
consumer exposed, compared with ``verify.compare`` at ``rtol``.

The source model is given with the artifact's input convention and class order applied exactly
(``cli._load``). Formats that hold only weights (a ``.pth`` state_dict, a MindSpore ``.ckpt``)
cannot hold an input stage: such a file holds the model with the stage folded Cadene-style into
the first convolution (``transforms.fold_input_stage``), so that folded model is the reference,
and the report also carries the deviation of the consumer's output from the exact source model.

Files are read as user files: a ``.pth`` only with ``torch.load(weights_only=True)``, a Chainer
``.npz`` only through ``builders.chainer.load`` and ``np.load(allow_pickle=False)``, a ``.keras``
with Keras' safe mode; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import verify as verify_mod
from .converters.wire import check_regular
from .errors import (
    FormatError,
    InputFileError,
    MissingFrameworkError,
    ModelError,
    SenetHubError,
    UnsupportedError,
)
from .graph import Model, infer_shapes

# format id -> what it is (for messages)
FORMATS = {
    "pth": ".pth state_dict",
    "pt2": ".pt2 torch.export program",
    "pt": ".pt TorchScript",
    "onnx": ".onnx",
    "savedmodel": "TensorFlow SavedModel directory",
    "keras": ".keras file",
    "mxnet": "MXNet prefix (-symbol.json + -0000.params)",
    "npz": "Chainer .npz",
    "caffe": "Caffe prefix (.prototxt + .caffemodel)",
    "ckpt": "MindSpore .ckpt",
}
WEIGHTS_ONLY = ("pth", "ckpt")  # formats that cannot hold an input stage

# timm / Cadene model names for the released architectures (used when `timm` / `cadene` come alone)
TIMM_MODELS = {
    "SE-ResNet-50": "legacy_seresnet50",
    "SE-ResNet-101": "legacy_seresnet101",
    "SE-ResNet-152": "legacy_seresnet152",
    "SE-ResNeXt-50": "legacy_seresnext50_32x4d",
    "SE-ResNeXt-101": "legacy_seresnext101_32x4d",
    "SENet-154": "legacy_senet154",
    "seresnet18": "seresnet18",
    "seresnet34": "seresnet34",
    "seresnet50": "seresnet50",
    "seresnext26_32x4d": "seresnext26d_32x4d",
    "seresnext50_32x4d": "seresnext50_32x4d",
}
CADENE_MODELS = {
    "SE-ResNet-50": "se_resnet50",
    "SE-ResNet-101": "se_resnet101",
    "SE-ResNet-152": "se_resnet152",
    "SE-ResNeXt-50": "se_resnext50_32x4d",
    "SE-ResNeXt-101": "se_resnext101_32x4d",
    "SENet-154": "senet154",
}
TORCHVISION_HINT = (
    "PyPI's torchvision for torch 2.13 is CUDA-linked and cannot import beside the CPU torch: install "
    "the CPU torchvision build matching torch (the tests put a stub from tests/stubs on sys.path)"
)


@dataclass(frozen=True)
class Consumer:
    """One way users load a file: the runner, how to install it, the module whose presence means
    installed, the formats it loads and a one-line description."""

    name: str
    run: Callable[[_Job], dict[str, np.ndarray]]
    install: str
    probe: tuple[str, ...]
    formats: tuple[str, ...]
    description: str


@dataclass
class _Job:
    """What a runner needs: the files, the reference model, the input, and where to put notes."""

    consumer: str
    arg: str | None  # timm:<model> / cadene:<model>
    path: str
    fmt: str
    files: list[str]
    model: Model  # the reference model (folded for weights-only formats)
    x: np.ndarray
    final: str  # the node whose value the consumer's final output is
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # why the file may not match: said on FAIL
    version: str = ""


@dataclass
class ArtifactReport(verify_mod.Report):
    """A verify.Report for one artifact and one consumer, plus the deviation from the exact model
    when the reference is the folded model of a weights-only file."""

    artifact: str = ""
    consumer: str = ""
    final: str = ""
    reference: str = "source model"
    exact_rel: float | None = None  # consumer's final output vs the exact (unfolded) source model
    exact_fold: bool | None = None
    exact_node: str = ""  # the node exact_rel is measured on (the logits where exposed)
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # likely causes of a mismatch (summary_line on FAIL)

    def final_result(self) -> verify_mod.NodeResult | None:
        for r in self.rows:
            if r["node"] == self.final:
                return r["results"].get(self.consumer)
        return None

    def exact_line(self) -> str | None:
        if self.exact_rel is None:
            return None
        how = "exact fold" if self.exact_fold else "inexact fold"
        return (
            f"vs the exact source model: max|d|/max|ref| = {self.exact_rel:.1e} on '{self.exact_node}', "
            f"{how} of the input stage"
        )

    def to_text(self, max_rows: int | None = None) -> str:
        lines = [super().to_text(max_rows)]
        lines.append(f"artifact: {self.artifact} loaded by {self.consumer}; reference: the {self.reference}")
        lines += [f"note: {n}" for n in self.notes + self.hints]
        exact = self.exact_line()
        if exact:
            lines.append(exact)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        d = super().to_json()
        d["artifact"] = {
            "path": self.artifact,
            "consumer": self.consumer,
            "compared_output": self.final,
            "reference": self.reference,
            "vs_exact_source": None
            if self.exact_rel is None
            else {"rel": self.exact_rel, "node": self.exact_node, "exact_fold": self.exact_fold},
            "notes": self.notes,
            "hints": self.hints,
        }
        return d


# ------------------------------------------------------------------------------------ helpers


def _dist_version(*dists: str) -> str:
    for d in dists:
        try:
            return md.version(d)
        except md.PackageNotFoundError:
            continue
    return "?"


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


def _check_tensors(path: str, got: dict[str, tuple], want: dict[str, tuple], whose: str) -> None:
    """ModelError naming the first tensor where the file and `whose` tensors disagree."""
    for k, shp in want.items():
        if k not in got:
            raise ModelError(
                f"{path}: has no tensor '{k}' {tuple(shp)} that {whose} has; is it a file of this model "
                "(same architecture, same --arch / source files)?"
            )
        if tuple(got[k]) != tuple(shp):
            raise ModelError(
                f"{path}: tensor '{k}' has shape {tuple(got[k])}, {whose} has {tuple(shp)} "
                "(another architecture or class count?)"
            )
    extra = [k for k in got if k not in want]
    if extra:
        raise ModelError(f"{path}: holds tensor '{extra[0]}' that {whose} does not have; is it a file of this model?")


def _logits_node(model: Model) -> str:
    """The node whose value timm / Cadene return: the input of a trailing softmax (logits)."""
    out = model.graph.node(model.graph.output)
    return out.inputs[0] if out.op == "softmax" else out.name


def _strip_input_norm(model: Model) -> Model:
    """The model without a leading input_norm (what a weights-only file can hold)."""
    g = model.graph
    if not g.nodes or g.nodes[0].op != "input_norm":
        return model
    m = model.copy()
    first = m.graph.nodes.pop(0)
    for n in m.graph.nodes:
        n.inputs = [m.graph.input_name if i == first.name else i for i in n.inputs]
    return m


def _torch_input(x: np.ndarray) -> Any:
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, np.float32))


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


# ------------------------------------------------------------------------------ torch consumers


def _zip_or_refuse(path: str, what: str) -> None:
    """PyTorch files are zip archives: anything else is refused before torch reads (and logs) it."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise FormatError(
            f"{path}: not a {what} (a PyTorch file is a zip archive; pre-1.6 torch.save pickles are not read)"
        )


def _load_pth(job: _Job) -> dict[str, Any]:
    import torch

    _zip_or_refuse(job.path, "state_dict file")
    try:
        sd = torch.load(job.path, map_location="cpu", weights_only=True)  # never unpickle objects
    except Exception as e:  # torch raises many types for a bad or pickled-object file
        raise FormatError(
            f"{job.path}: not a state_dict torch.load(weights_only=True) can read "
            f"({type(e).__name__}: {_first_line(e)})"
        ) from None
    if not isinstance(sd, dict):
        raise FormatError(f"{job.path}: holds a {type(sd).__name__}, not a state_dict")
    from .converters.pth import model_state_dict

    want = {k: tuple(v.shape) for k, v in model_state_dict(job.model).items()}
    got = {k: tuple(getattr(v, "shape", ())) for k, v in sd.items()}
    _check_tensors(job.path, got, want, "the source model's state_dict")
    return sd


def _run_senet_hub(job: _Job) -> dict[str, np.ndarray]:
    from .builders import torch as tb

    _load_pth(job)  # names the first mismatching tensor before the strict load
    # the file holds weights only: load them into the graph without an input stage
    module = tb.load_state_dict(_strip_input_norm(job.model).graph, job.path)
    job.version = _dist_version("torch")
    return tb.run(module, job.x, taps=True)


def _import_torchvision_user(pkg: str) -> Any:
    """Import timm / pretrainedmodels / onnx2torch, naming torchvision when it is the cause."""
    try:
        return importlib.import_module(pkg)
    except Exception as e:  # a broken torchvision raises RuntimeError / ImportError / AttributeError
        msg = _first_line(e)
        if isinstance(e, ImportError) and e.name == "torchvision":
            raise MissingFrameworkError(
                f"{pkg} needs torchvision, which is not installed: install the CPU torchvision build matching "
                "torch (PyPI's torchvision for torch 2.13 is CUDA-linked and cannot import beside the CPU torch)"
            ) from None
        if "torchvision" in msg or _torchvision_broken():
            raise MissingFrameworkError(
                f"{pkg} is installed but cannot be imported because torchvision fails to import ({msg}); "
                + TORCHVISION_HINT
            ) from None
        raise MissingFrameworkError(f"{pkg} is installed but cannot be imported ({msg})") from None


def _torchvision_broken() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:
        return True
    return False


def _run_hub_model(job: _Job, net: Any, whose: str) -> dict[str, np.ndarray]:
    """Strict load of the .pth into a timm / Cadene module; hooks on the modules named like the
    reference's parametrised nodes give per-node values; the final output is the logits."""
    import torch

    sd = _load_pth(job)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    _check_tensors(job.path, {k: tuple(v.shape) for k, v in sd.items()}, want, whose)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{job.path}: {whose} refuses the strict load: {' '.join(str(e).split())[:300]}") from None
    net.eval()
    nodes = {n.name for n in job.model.graph.nodes if n.op in ("conv", "batch_norm", "linear")}
    out: dict[str, np.ndarray] = {}
    handles = []
    for name, mod in net.named_modules():
        if name in nodes:
            # clone: the module's output may be modified in place afterwards (ReLU(inplace=True))
            def hook(_m: Any, _i: Any, y: Any, name: str = name) -> None:
                out[name] = y.detach().clone().numpy()

            handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            y = net(_torch_input(job.x))
    finally:
        for h in handles:
            h.remove()
    y = _np(y)
    ref_shape = infer_shapes(job.model, tuple(job.x.shape))[job.final]
    out[job.final] = y.reshape(ref_shape) if y.size == int(np.prod(ref_shape)) else y
    job.notes.append(f"{whose} returns logits: compared with node '{job.final}', the input of the final softmax")
    return out


def _run_timm(job: _Job) -> dict[str, np.ndarray]:
    timm = _import_torchvision_user("timm")
    name = job.arg or ""
    try:
        net = timm.create_model(name, pretrained=False)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise UnsupportedError(
                f"timm has no model '{name}'; e.g. timm:{TIMM_MODELS.get(job.model.arch, 'legacy_seresnet50')}"
            ) from None
        raise
    job.version = _dist_version("timm")
    out = _run_hub_model(job, net, f"timm's {name}")
    if name.startswith("seres") and any(
        n.op == "max_pool" and tuple(n.attrs["pad"]) == (0, 0, 1, 1) for n in job.model.graph.nodes
    ):
        job.hints.append(
            f"timm's {name} max-pools with padding=1 where MindCV pads (0, 0, 1, 1) (windows shifted by one "
            "pixel): it computes another function than the MindCV source model"
        )
    return out


def _run_cadene(job: _Job) -> dict[str, np.ndarray]:
    pm = _import_torchvision_user("pretrainedmodels")
    name = job.arg or ""
    fn = pm.__dict__.get(name) if name in getattr(pm, "model_names", [name]) else None
    if not callable(fn):
        raise UnsupportedError(
            f"Cadene's pretrainedmodels has no model '{name}'; e.g. cadene:{CADENE_MODELS.get(job.model.arch, 'se_resnet50')}"
        )
    ncls = int(job.model.graph.node(_logits_node(job.model)).attrs.get("out_features", 1000))
    net = fn(num_classes=ncls, pretrained=None)
    job.version = _dist_version("pretrainedmodels")
    return _run_hub_model(job, net, f"Cadene's {name}")


def _run_torch_export(job: _Job) -> dict[str, np.ndarray]:
    import torch

    _zip_or_refuse(job.path, "torch.export program")
    try:
        prog = torch.export.load(job.path)
        mod = prog.module()
    except Exception as e:
        raise FormatError(f"{job.path}: torch.export.load cannot read it ({_first_line(e)})") from None
    job.version = _dist_version("torch")
    with torch.no_grad():
        y = mod(_torch_input(job.x))
    return {job.final: _np(y)}


def _run_torchscript(job: _Job) -> dict[str, np.ndarray]:
    import torch

    _zip_or_refuse(job.path, "TorchScript file")
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated in favour of .pt2; .pt users still load it so
            warnings.simplefilter("ignore", DeprecationWarning)
            mod = torch.jit.load(job.path, map_location="cpu")
    except Exception as e:
        raise FormatError(f"{job.path}: torch.jit.load cannot read it ({_first_line(e)})") from None
    job.version = _dist_version("torch")
    with torch.no_grad():
        y = mod(_torch_input(job.x))
    return {job.final: _np(y)}


# ------------------------------------------------------------------------------- ONNX consumers


def _onnx_proto(job: _Job) -> Any:
    """The file's ModelProto, checked against the source model's weights (names and shapes)."""
    import onnx

    from .converters.wire import read_bytes

    try:
        proto = onnx.load_model_from_string(bytes(read_bytes(job.path, "ONNX file")))
    except SenetHubError:
        raise
    except Exception as e:  # DecodeError / ValueError variants for a corrupt file
        raise FormatError(f"{job.path}: not a readable ONNX model ({_first_line(e)})") from None
    if not proto.graph.node:  # protobuf parses many non-ONNX byte strings as an empty model
        raise FormatError(f"{job.path}: not an ONNX model (no graph nodes); pass the .onnx file senet-hub wrote")
    inits = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    want = {
        f"{n.name}.{p}": tuple(job.model.weights[f"{n.name}.{p}"].shape)
        for n in job.model.graph.nodes
        for p in n.param_names()
    }
    for k, shp in want.items():
        if k not in inits:
            raise ModelError(
                f"{job.path}: has no initializer '{k}' {shp} that the source model has; is it this model's file?"
            )
        if inits[k] != shp:
            raise ModelError(
                f"{job.path}: initializer '{k}' has shape {inits[k]}, the source model's is {shp} "
                "(another architecture or class count?)"
            )
    return proto


def _tap_names(proto: Any, model: Model) -> list[str]:
    values = {v for n in proto.graph.node for v in n.output}
    return [n.name for n in model.graph.nodes if n.name in values]


def _run_onnxruntime(job: _Job) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    proto = _onnx_proto(job)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(job.path, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UnsupportedError(f"{job.path}: onnxruntime refused the model: {_first_line(e)}") from None
    job.version = ort.__version__
    feed = {sess.get_inputs()[0].name: np.ascontiguousarray(job.x, np.float32)}
    final = sess.run([sess.get_outputs()[0].name], feed)[0]
    # per node: a copy in memory with every node's value as a graph output, optimizations off
    names = _tap_names(proto, job.model)
    so2 = ort.SessionOptions()
    so2.log_severity_level = 3
    so2.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    from .builders.openvino import with_outputs  # onnx only: openvino itself is not imported

    taps = ort.InferenceSession(with_outputs(proto, names).SerializeToString(), so2, providers=["CPUExecutionProvider"])
    out = dict(zip(names, taps.run(names, feed)))
    out[job.final] = final  # the file as written, all optimizations on
    job.notes.append("per-node values from an in-memory copy with every node as a graph output (optimizations off)")
    return out


def _run_onnx_reference(job: _Job) -> dict[str, np.ndarray]:
    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = _onnx_proto(job)
    job.version = onnx.__version__
    ev = ReferenceEvaluator(proto)
    res: Any = ev.run(None, {proto.graph.input[0].name: np.ascontiguousarray(job.x, np.float32)}, intermediate=True)
    out = {n: np.asarray(res[n]) for n in _tap_names(proto, job.model) if n in res}
    out[job.final] = np.asarray(res[proto.graph.output[0].name])
    return out


def _run_openvino(job: _Job) -> dict[str, np.ndarray]:
    from .builders import openvino as ovb

    proto = _onnx_proto(job)
    names = _tap_names(proto, job.model)
    job.version = ovb.available() or "?"
    got = ovb.run_onnx_file(job.path, job.x, outputs=names)
    out = {n: got[n] for n in names if n in got}
    out[job.final] = got[proto.graph.output[0].name]
    job.notes.append("per-node values as extra outputs of the file's graph (builders.openvino.run_onnx_file)")
    return out


def _run_onnx2torch(job: _Job) -> dict[str, np.ndarray]:
    import torch

    proto = _onnx_proto(job)
    o2t = _import_torchvision_user("onnx2torch")
    job.version = _dist_version("onnx2torch")
    try:
        mod = o2t.convert(proto)
    except NotImplementedError as e:
        if any(n.domain not in ("", "ai.onnx") for n in proto.graph.node):
            raise UnsupportedError(
                f"{job.path}: onnx2torch cannot convert the custom-domain Axpy node (it does not expand "
                "model-local functions); write the file with `senet-hub export-onnx --inline`"
            ) from None
        raise UnsupportedError(f"{job.path}: onnx2torch cannot convert it: {_first_line(e)}") from None
    mod.eval()
    with torch.no_grad():
        y = mod(_torch_input(job.x))
    return {job.final: _np(y)}


# ------------------------------------------------------------------------- other frameworks


def _layout(shape: Any, model: Model) -> str:
    """The serving layout of a TensorFlow file from its input shape ([N, H, W, C] or [N, C, H, W])."""
    c = int(model.graph.input_shape[1])
    dims = list(shape)
    return "nhwc" if len(dims) == 4 and dims[-1] == c and dims[1] != c else "nchw"


def _nchw(v: np.ndarray) -> np.ndarray:
    return v.transpose(0, 3, 1, 2) if v.ndim == 4 else v


def _run_tensorflow(job: _Job) -> dict[str, np.ndarray]:
    from .builders import tensorflow as tfb

    try:
        fn = tfb.load(job.path)
    except Exception as e:
        raise FormatError(f"{job.path}: tf.saved_model.load cannot read it ({_first_line(e)})") from None
    import tensorflow as tf

    job.version = tf.__version__
    specs = fn.structured_input_signature[1]
    key, spec = next(iter(specs.items()))
    layout = _layout(spec.shape, job.model)
    feed = job.x if layout == "nchw" else job.x.transpose(0, 2, 3, 1)
    res = fn(**{key: tf.constant(np.ascontiguousarray(feed, np.float32))})
    y = np.asarray(next(iter(res.values())))
    job.notes.append(f"SavedModel serving_default signature, {layout.upper()} input")
    return {job.final: _nchw(y)}


def _run_keras(job: _Job) -> dict[str, np.ndarray]:
    import keras

    from .builders import tensorflow as tfb

    try:
        net = keras.models.load_model(job.path, safe_mode=True)  # safe mode: no lambdas / code
    except Exception as e:
        raise FormatError(f"{job.path}: keras.models.load_model cannot read it ({_first_line(e)})") from None
    job.version = keras.__version__
    layout = _layout(net.input_shape, job.model)
    feed = np.ascontiguousarray(job.x if layout == "nchw" else job.x.transpose(0, 2, 3, 1), np.float32)
    # per node: the layer named like the node (names unique after Keras' character mapping only)
    layers = {layer.name for layer in net.layers}
    keyed: dict[str, list[str]] = {}
    for n in job.model.graph.nodes:
        keyed.setdefault(tfb.keras_name(n.name), []).append(n.name)
    taps = [v[0] for k, v in keyed.items() if len(v) == 1 and k in layers and v[0] != job.final]
    tapped = keras.Model(net.input, [net.get_layer(tfb.keras_name(n)).output for n in taps] + [net.output])
    ys = tapped(feed, training=False)
    ys = ys if isinstance(ys, (list, tuple)) else [ys]
    out = {n: _nchw(np.asarray(y)) for n, y in zip(taps, ys[:-1])}
    out[job.final] = _nchw(np.asarray(ys[-1]))
    job.notes.append(
        f"keras.models.load_model, {layout.upper()} input; per-node values from the layers named like the nodes"
    )
    return out


def _mxnet_files(path: str) -> list[str]:
    prefix = path
    for suffix in ("-symbol.json", "-0000.params"):
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    return [f"{prefix}-symbol.json", f"{prefix}-0000.params"]


def _run_mxnet(job: _Job) -> dict[str, np.ndarray]:
    from .builders import mxnet as mxb
    from .builders.compat import import_mxnet

    mx = import_mxnet()
    sym_file, params_file = job.files
    try:
        saved = mx.nd.load(params_file)
    except Exception as e:
        raise FormatError(f"{params_file}: not an MXNet .params file ({_first_line(e)})") from None
    arg, aux = mxb.params(job.model)
    want = {f"arg:{k}": v.shape for k, v in arg.items()} | {f"aux:{k}": v.shape for k, v in aux.items()}
    _check_tensors(params_file, {k: tuple(v.shape) for k, v in saved.items()}, want, "the source model")
    job.version = mx.__version__
    try:
        with warnings.catch_warnings():  # "Cannot decide type for ... data": the type comes with the input
            warnings.simplefilter("ignore", UserWarning)
            net = mx.gluon.SymbolBlock.imports(sym_file, [job.model.graph.input_name], params_file, ctx=mx.cpu())
    except Exception as e:
        raise FormatError(f"{sym_file}: gluon SymbolBlock.imports cannot load it ({_first_line(e)})") from None
    xin = mxb._nd(mx, job.x)
    final = net(xin)
    final = final[0] if isinstance(final, (list, tuple)) else final
    out: dict[str, np.ndarray] = {}
    # per node: the same files as a SymbolBlock whose outputs are the symbol's internals
    internals = mx.sym.load(sym_file).get_internals()
    avail = set(internals.list_outputs())
    names = [n.name for n in job.model.graph.nodes if f"{n.name}_output" in avail and n.name != job.final]
    if names:
        group = mx.sym.Group([internals[f"{n}_output"] for n in names])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            blk = mx.gluon.SymbolBlock(group, mx.sym.var(job.model.graph.input_name))
        blk.collect_params().load(params_file, ctx=mx.cpu(), ignore_extra=True)
        ys = blk(xin)
        ys = ys if isinstance(ys, (list, tuple)) else [ys]
        out = {n: y.asnumpy() for n, y in zip(names, ys)}
    out[job.final] = final.asnumpy()
    return out


def _plain(v: Any) -> Any:
    """An attribute as JSON gives it back (tuples are lists there)."""
    return [_plain(i) for i in v] if isinstance(v, (list, tuple)) else v


def _run_chainer(job: _Job) -> dict[str, np.ndarray]:
    from .builders import chainer as chb
    from .graph import structure

    try:
        with np.load(job.path, allow_pickle=False) as z:  # read the stored graph; never unpickle
            raw = z[chb.GRAPH_KEY].tobytes().decode("utf-8") if chb.GRAPH_KEY in z.files else None
    except Exception as e:
        raise FormatError(f"{job.path}: not an .npz archive ({_first_line(e)})") from None
    if raw is not None:
        graph, _ = chb._graph_from_json(raw)
        want, got = job.model.graph, graph
        for i, (a, b) in enumerate(zip(structure(want), structure(got))):
            w, g = want.nodes[i], got.nodes[i]
            same = w.op == g.op and w.name == g.name
            diff = [k for k in w.attrs if same and _plain(w.attrs[k]) != _plain(g.attrs.get(k))]
            if diff:  # same node, other settings (a class count, a width): name the first
                k = diff[0]
                raise ModelError(
                    f"{job.path}: node '{g.name}' ({g.op}) has {k}={g.attrs.get(k)}, the source model's has "
                    f"{k}={w.attrs[k]}; is it this model's file?"
                )
            if a != b or w.name != g.name:
                raise ModelError(
                    f"{job.path}: node {i} is '{got.nodes[i].name}' ({got.nodes[i].op}) where the source model has "
                    f"'{want.nodes[i].name}' ({want.nodes[i].op}) with other settings; is it this model's file?"
                )
        if len(want.nodes) != len(got.nodes):
            raise ModelError(f"{job.path}: {len(got.nodes)} nodes, the source model has {len(want.nodes)}")
    chain = chb.load(None, job.path)
    job.version = chb.available() or "?"
    return chb.run(chain, job.x, taps=True)


def _caffe_files(path: str) -> list[str]:
    prefix = path
    for ext in (".prototxt", ".caffemodel"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    return [prefix + ".prototxt", prefix + ".caffemodel"]


def _run_opencv(job: _Job) -> dict[str, np.ndarray]:
    import cv2

    from .builders.opencv import patch_axpy
    from .converters import caffe_writer

    prototxt, caffemodel = job.files
    from .converters.caffe_format import MAX_PROTOTXT_BYTES
    from .converters.wire import read_bytes

    text = read_bytes(prototxt, "prototxt", MAX_PROTOTXT_BYTES).decode("utf-8", errors="replace")
    try:
        patched = patch_axpy(text)
    except SenetHubError:
        raise
    except Exception as e:
        raise FormatError(f"{prototxt}: not a Caffe prototxt OpenCV can read ({_first_line(e)})") from None
    with tempfile.TemporaryDirectory(prefix="senet-hub-consumer-") as tmp:
        p = os.path.join(tmp, "patched.prototxt")
        with open(p, "w") as f:
            f.write(patched)
        try:
            net = cv2.dnn.readNetFromCaffe(p, caffemodel)
        except cv2.error as e:
            raise FormatError(f"{prototxt}: OpenCV DNN cannot read it with {caffemodel} ({_first_line(e)})") from None
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    net.enableFusion(False)  # each tapped layer's own output, not a fused conv + bn + relu
    if hasattr(net, "enableWinograd"):  # Winograd 3x3 convs drift past 1e-3 of scale in deep nets
        net.enableWinograd(False)
    job.version = cv2.__version__
    have = set(net.getLayerNames())
    taps = {k: v[-1] for k, v in caffe_writer.layer_names(job.model).items()}
    if taps.get(job.final) not in have:
        raise ModelError(
            f"{prototxt}: has no layer '{taps.get(job.final)}' (the source model's output); is it this model's file?"
        )
    nodes = [n for n in taps if taps[n] in have]
    net.setInput(np.ascontiguousarray(job.x, np.float32))
    ys = net.forward([taps[n] for n in nodes])
    shapes = infer_shapes(job.model, tuple(job.x.shape))
    out = {}
    for n, y in zip(nodes, ys):
        y = np.array(y, np.float32)
        out[n] = y.reshape(shapes[n]) if y.size == int(np.prod(shapes[n])) else y
    job.notes.append(
        "OpenCV's built-in Axpy computes a*y + x: its Axpy layers were rewritten as Reshape + Scale + "
        "Eltwise SUM in a patched copy of the prototxt (builders.opencv.patch_axpy); the caffemodel is read as written"
    )
    return out


def _run_mindcv(job: _Job) -> dict[str, np.ndarray]:
    from . import zoo_mindcv
    from .converters import mindspore as msc

    m = job.model
    if not zoo_mindcv.is_arch(m.arch):
        raise UnsupportedError(
            f"{job.path}: mindcv has no network for '{m.arch}' (it has {', '.join(zoo_mindcv.list_archs())})"
        )
    tensors, _ = msc._network_entries(msc.read_ckpt_tensors(job.path))
    want = {k: tuple(v.shape) for k, v in msc.to_mindcv(m).items()}
    _check_tensors(job.path, {k: tuple(v.shape) for k, v in tensors.items()}, want, f"MindCV's {m.arch}")
    import mindcv
    import mindspore as ms

    from .builders import mindspore as msb

    ncls = int(m.graph.node(_logits_node(m)).attrs["out_features"])
    net = mindcv.create_model(m.arch, pretrained=False, num_classes=ncls)
    net.set_train(False)
    try:
        params = ms.load_checkpoint(job.path)
    except Exception as e:
        raise FormatError(f"{job.path}: mindspore.load_checkpoint cannot read it ({_first_line(e)})") from None
    missing, unused = ms.load_param_into_net(net, params, strict_load=True)
    missing = [k for k in missing if not k.endswith(("num_batches_tracked",))]
    if missing or [k for k in unused if k in want]:
        raise ModelError(f"{job.path}: MindCV's {m.arch} does not take it: not loaded {list(missing)[:3]}")
    job.version = str(ms.__version__)
    cells = {name for name, _ in net.cells_and_names()}
    native = msb.MindCVNet(net, m, None, msb._tap_cells(m.graph, cells))
    out = msb.run(native, job.x, taps=True)
    out[job.final] = out.pop(m.graph.output)
    return out


# ---------------------------------------------------------------------------------- registry


def _c(name: str, run: Callable, install: str, probe: tuple[str, ...], formats: tuple[str, ...], desc: str) -> Consumer:
    return Consumer(name, run, install, probe, formats, desc)


CONSUMERS: dict[str, Consumer] = {
    c.name: c
    for c in (
        _c("senet-hub", _run_senet_hub, "pip install 'senet-hub[torch]'", ("torch",), ("pth",),
           "senet-hub's own torch module (builders.torch.load_state_dict), per node"),
        _c("timm:<model>", _run_timm, "pip install --no-deps timm==1.0.31 (plus a CPU torchvision)", ("torch", "timm"),
           ("pth",), "strict load into timm.create_model(<model>, pretrained=False); logits; per conv/bn/linear"),
        _c("cadene:<model>", _run_cadene, "pip install --no-deps pretrainedmodels==0.7.4 munch (plus a CPU torchvision)",
           ("torch", "pretrainedmodels"), ("pth",),
           "strict load into pretrainedmodels.__dict__[<model>](num_classes=1000, pretrained=None); logits"),
        _c("torch.export", _run_torch_export, "pip install 'senet-hub[torch]'", ("torch",), ("pt2",),
           "torch.export.load(file).module(); final output"),
        _c("torchscript", _run_torchscript, "pip install 'senet-hub[torch]'", ("torch",), ("pt",),
           "torch.jit.load(file); final output"),
        _c("onnxruntime", _run_onnxruntime, "pip install 'senet-hub[onnx]'", ("onnx", "onnxruntime"), ("onnx",),
           "onnxruntime.InferenceSession(file); per node from extra graph outputs"),
        _c("openvino", _run_openvino, "pip install 'senet-hub[openvino]' onnx", ("onnx", "openvino"), ("onnx",),
           "openvino.Core().read_model(file) on CPU, f32; per node from extra graph outputs"),
        _c("onnx2torch", _run_onnx2torch, "pip install --no-deps onnx2torch==1.5.15 (plus a CPU torchvision)",
           ("onnx", "torch", "onnx2torch"), ("onnx",), "onnx2torch.convert(file); final output"),
        _c("onnx.reference", _run_onnx_reference, "pip install 'senet-hub[onnx]'", ("onnx",), ("onnx",),
           "onnx.reference.ReferenceEvaluator(file); per node (intermediate results)"),
        _c("tensorflow", _run_tensorflow, "pip install 'senet-hub[tensorflow]'", ("tensorflow",), ("savedmodel",),
           "tf.saved_model.load(dir).signatures['serving_default'] (its NHWC/NCHW layout); final output"),
        _c("keras", _run_keras, "pip install 'senet-hub[tensorflow]'", ("tensorflow", "keras"), ("keras",),
           "keras.models.load_model(file) (its layout); per node from the layers named like the nodes"),
        _c("mxnet", _run_mxnet, "pip install 'senet-hub[mxnet]'", ("mxnet",), ("mxnet",),
           "gluon SymbolBlock.imports(prefix-symbol.json, ['data'], prefix-0000.params); per node"),
        _c("chainer", _run_chainer, "pip install 'senet-hub[chainer]'", ("chainer",), ("npz",),
           "builders.chainer.load(None, file) (graph stored in the file); per node"),
        _c("opencv", _run_opencv, "pip install 'senet-hub[opencv]'", ("cv2",), ("caffe",),
           "cv2.dnn.readNetFromCaffe(prototxt, caffemodel), Axpy rewritten (OpenCV's is a*y+x); per layer"),
        _c("mindcv", _run_mindcv, "pip install 'senet-hub[mindspore]'", ("mindspore", "mindcv"), ("ckpt",),
           "mindcv.create_model(arch) + mindspore.load_checkpoint/load_param_into_net strict; per cell"),
    )
}  # fmt: skip
DEFAULTS = {
    "pth": "senet-hub",
    "pt2": "torch.export",
    "pt": "torchscript",
    "onnx": "onnxruntime",
    "savedmodel": "tensorflow",
    "keras": "keras",
    "mxnet": "mxnet",
    "npz": "chainer",
    "caffe": "opencv",
    "ckpt": "mindcv",
}


def list_consumers() -> list[dict[str, Any]]:
    """The registry as rows (for a CLI listing): name, formats, installed (without importing), install, description."""
    return [
        {
            "name": c.name,
            "formats": [FORMATS[f] for f in c.formats],
            "default_for": [FORMATS[f] for f, d in DEFAULTS.items() if d == c.name],
            "installed": all(importlib.util.find_spec(p) is not None for p in c.probe),
            "install": c.install,
            "description": c.description,
        }
        for c in CONSUMERS.values()
    ]


def artifact_format(path: str) -> str:
    """The format of an artifact from its name (and, for prefixes and directories, what exists)."""
    p = os.fspath(path)
    low = p.lower()
    if os.path.isdir(p):
        if os.path.exists(os.path.join(p, "saved_model.pb")):
            return "savedmodel"
        raise UnsupportedError(f"{p}: a directory that is not a TensorFlow SavedModel (no saved_model.pb)")
    for ext, fmt in ((".pth", "pth"), (".pt2", "pt2"), (".pt", "pt"), (".onnx", "onnx"), (".keras", "keras"),
                     (".npz", "npz"), (".ckpt", "ckpt"), (".prototxt", "caffe"), (".caffemodel", "caffe"),
                     ("-symbol.json", "mxnet"), ("-0000.params", "mxnet")):  # fmt: skip
        if low.endswith(ext):
            return fmt
    if os.path.exists(p + "-symbol.json"):
        return "mxnet"
    if os.path.exists(p + ".prototxt"):
        return "caffe"
    raise UnsupportedError(
        f"{p}: cannot tell the artifact's format from its name; senet-hub verifies " + ", ".join(FORMATS.values())
    )


# convert's --to -> the format its output has when the name does not say (prefixes, directories)
TARGET_FORMATS = {"onnx": "onnx", "tensorflow": "savedmodel", "mxnet": "mxnet", "chainer": "npz",
                  "caffe": "caffe", "mindspore": "ckpt", "pytorch": "pth"}  # fmt: skip


def _format_for(path: str, target: str | None) -> str:
    """The artifact's format from its name, or (before it is written) from convert's --to."""
    fmt = _format_by_name(path)
    if target is not None and (fmt is None or (target == "tensorflow" and fmt not in ("savedmodel", "keras"))):
        return TARGET_FORMATS.get(target) or artifact_format(path)
    return fmt or artifact_format(path)


def default_consumer(path: str, target: str | None = None) -> str:
    """The consumer that loads a file of this format by default (.pth -> senet-hub, .onnx -> onnxruntime ...).

    `target` (convert's --to) names the format of an output not written yet whose name does not
    say it (a Caffe or MXNet prefix, a SavedModel directory)."""
    return DEFAULTS[_format_for(path, target)]


def _known() -> str:
    return ", ".join(CONSUMERS)


def resolve(name: str, model: Model | None = None) -> tuple[Consumer, str | None]:
    """(consumer, argument) for a name such as 'onnxruntime' or 'timm:legacy_seresnet50'."""
    base, _, arg = name.strip().partition(":")
    key = base.lower()
    if key in ("timm", "cadene"):
        if not arg:
            table = TIMM_MODELS if key == "timm" else CADENE_MODELS
            found = table.get(model.arch) if model is not None else None
            if not found:
                raise UnsupportedError(
                    f"consumer '{name}' needs a model name: {key}:<model>, e.g. {key}:"
                    f"{'legacy_seresnet50' if key == 'timm' else 'se_resnet50'}"
                )
            arg = found
        return CONSUMERS[f"{key}:<model>"], arg
    if name in CONSUMERS and not arg:
        return CONSUMERS[name], None
    if key in CONSUMERS and not arg:
        return CONSUMERS[key], None
    raise UnsupportedError(f"unknown consumer '{name}'; known: {_known()} (e.g. timm:legacy_seresnet50)")


def check_available(name: str, artifact: str | None = None, target: str | None = None) -> Consumer:
    """The consumer, checked known, installed, and able to load the artifact's format (by its name,
    or convert's --to `target`; the file need not exist yet). UnsupportedError (6) /
    MissingFrameworkError (8) otherwise."""
    base = name.strip().partition(":")[0].lower()
    # timm / cadene without a model name: the model is chosen from the architecture later
    cons = CONSUMERS[f"{base}:<model>"] if base in ("timm", "cadene") else resolve(name)[0]
    if artifact is not None:
        try:
            fmt = _format_for(artifact, target) if target else _format_by_name(artifact)
        except UnsupportedError:
            fmt = None
        if fmt is not None and fmt not in cons.formats:
            can = [c.name for c in CONSUMERS.values() if fmt in c.formats]
            raise UnsupportedError(
                f"consumer '{name}' does not load a {FORMATS[fmt]} ({artifact}); consumers that do: {', '.join(can)}"
            )
    for probe in cons.probe:
        if importlib.util.find_spec(probe) is None:
            raise MissingFrameworkError(f"consumer '{name}' needs {probe}, which is not installed: {cons.install}")
        if probe in ("timm", "pretrainedmodels", "onnx2torch"):  # these fail at import when torchvision does
            _import_torchvision_user(probe)
    return cons


def _format_by_name(path: str) -> str | None:
    try:
        return artifact_format(path)
    except UnsupportedError:
        return None


def _files(fmt: str, path: str) -> list[str]:
    if fmt == "mxnet":
        return _mxnet_files(path)
    if fmt == "caffe":
        return _caffe_files(path)
    return [path]


# ---------------------------------------------------------------------------- the reference


def _same_convention(a: Any, b: Any) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return a == b
    try:
        return str(a.get("channel_order")).upper() == str(b.get("channel_order")).upper() and all(
            np.allclose(np.asarray(a[k], float), np.asarray(b[k], float)) for k in ("range", "mean", "std")
        )
    except (KeyError, TypeError, ValueError):
        return False


def _metadata_notes(path: str, model: Model) -> list[str]:
    """What the .pth's senet-hub record says that disagrees with the model it is compared with
    (the usual cause of a FAIL: another --input-convention / --class-order than the file's)."""
    from .converters import pth

    if not hasattr(pth, "read_metadata"):
        return []
    rec = pth.read_metadata(path) or {}
    notes = []
    conv, order = rec.get("input_convention"), rec.get("class_order")
    if conv and model.meta.get("input_convention") and not _same_convention(conv, model.meta["input_convention"]):
        notes.append(
            f"the file records input convention {conv.get('channel_order') if isinstance(conv, dict) else conv} "
            f"(mean {conv.get('mean') if isinstance(conv, dict) else '?'}), not the one given here: pass the "
            "--input-convention it was written with"
        )
    if order and model.meta.get("class_order") and order != model.meta["class_order"]:
        notes.append(f"the file records class order '{order}', the model here has '{model.meta['class_order']}'")
    return notes


# (source model, folded?, input sha, every node's reference value): the last three
_REF_CACHE: list[tuple[Model, bool, str, dict[str, np.ndarray]]] = []


def _reference(source: Model, folded: bool, model: Model, x: np.ndarray, sha: str) -> dict[str, np.ndarray]:
    """float64 numpy reference of `model` (the source model, or its fold), every node. Recent ones
    are kept, keyed by the source model object (held here, so its identity is not reused): checking
    one file with several consumers computes each reference once."""
    for m, f, s, r in _REF_CACHE:
        if m is source and f == folded and s == sha:
            return r
    from .builders import numpy_ref

    ref = numpy_ref.run(numpy_ref.build(model, np.float64), x)
    _REF_CACHE.append((source, folded, sha, ref))
    del _REF_CACHE[:-3]
    return ref


def verify_artifact(
    model: Model,
    artifact: str,
    consumer: str | None = None,
    x: np.ndarray | None = None,
    rtol: float = verify_mod.DEFAULT_RTOL,
    progress: Any = None,
) -> ArtifactReport:
    """Load `artifact` with `consumer` (default: the format's) and compare with the float64
    reference of `model` (with the artifact's input convention and class order already applied).

    The report's backend is the consumer's name; rows are the nodes the consumer exposes, the
    compared final output always (logits, the softmax's input, for timm / Cadene). A weights-only
    file (.pth, .ckpt) of a model with an input stage is compared with the folded model
    (transforms.fold_input_stage), and ``exact_rel`` says how far it is from the exact model.
    """
    say = progress or (lambda msg: None)
    path = os.fspath(artifact)
    name = consumer or default_consumer(path)
    cons, arg = resolve(name, model)
    shown = cons.name.replace("<model>", arg) if arg else cons.name
    fmt = _format_by_name(path)
    if fmt is None and not os.path.exists(path):
        raise InputFileError(f"{path}: no such file or directory; check the path")
    if fmt is None:
        fmt = artifact_format(path)  # raises naming the formats
    if fmt not in cons.formats:
        can = [c.name for c in CONSUMERS.values() if fmt in c.formats]
        raise UnsupportedError(
            f"consumer '{shown}' does not load a {FORMATS[fmt]} ({path}); consumers that do: {', '.join(can)}"
        )
    files = _files(fmt, path)
    if fmt == "savedmodel":
        if not os.path.isdir(path):
            raise InputFileError(f"{path}: no such SavedModel directory")
    else:
        for f in files:
            check_regular(f, FORMATS[fmt])  # a FIFO would block the consumer's loader
    check_available(shown, path)

    x = verify_mod.default_input(model, 2, 7) if x is None else np.ascontiguousarray(x, np.float32)
    exact_model, ref_model, folded, exact_fold = model, model, False, None
    notes: list[str] = []
    has_stage = bool(model.graph.nodes) and model.graph.nodes[0].op == "input_norm"
    if fmt in WEIGHTS_ONLY and has_stage:
        from . import transforms

        if hasattr(transforms, "fold_input_stage"):
            ref_model, exact_fold = transforms.fold_input_stage(model)
            folded = True
        else:  # this version cannot fold: the file lacks the stage, and the comparison shows it
            notes.append(f"a {FORMATS[fmt]} cannot hold the input stage and this version has no fold for it")
    hints = _metadata_notes(path, model) if fmt == "pth" else []
    final = _logits_node(ref_model) if cons.name in ("timm:<model>", "cadene:<model>") else ref_model.graph.output
    shapes = infer_shapes(ref_model, tuple(x.shape))
    sha = hashlib.sha256(x.tobytes()).hexdigest()
    report = ArtifactReport(
        ref_model, [shown], {}, tuple(x.shape), sha, rtol, command=" ".join(sys.argv),
        artifact=path, consumer=shown, final=final,
        reference="folded source model (input stage folded into the first convolution)" if folded else "source model",
        notes=notes, hints=hints,
    )  # fmt: skip
    # the consumer first: a file it refuses, or one of another model, fails before the reference
    say(f"loading {path} with {shown}")
    t = time.perf_counter()
    job = _Job(shown, arg, path, fmt, files, ref_model, x, final)
    outs = cons.run(job)
    report.timings[shown] = time.perf_counter() - t
    report.versions[shown] = job.version or "?"
    report.notes += job.notes
    report.hints += job.hints
    want = tuple(shapes[final])
    got = np.asarray(outs[final])
    if got.shape != want:
        if got.size == int(np.prod(want)) and got.shape[:1] == want[:1]:
            got = got.reshape(want)  # e.g. N x C x 1 x 1 logits of a Caffe InnerProduct
        else:
            raise ModelError(
                f"{path}: {shown} outputs shape {got.shape} where the source model's '{final}' is {want}; "
                "is it this model's file?"
            )
        outs[final] = got
    t = time.perf_counter()
    say("running the numpy float64 reference")
    ref = _reference(model, folded, ref_model, x, sha)
    report.timings["numpy"] = time.perf_counter() - t
    report.versions["numpy"] = np.__version__
    for n in ref_model.graph.nodes:
        if n.name in outs and n.name in ref:
            report.rows.append({
                "node": n.name, "source": list(n.source), "shape": list(shapes[n.name]),
                "results": {shown: verify_mod.compare(ref[n.name], outs[n.name], rtol)},
            })  # fmt: skip
    report.first_divergent[shown] = next((r["node"] for r in report.rows if not r["results"][shown].ok), None)
    report.topk[shown] = verify_mod.topk_agreement(ref[final], got)
    report.outputs[shown] = got.astype(np.float32)
    report.outputs["numpy"] = np.asarray(ref[final], np.float32)
    if folded:
        say("running the float64 reference of the exact (unfolded) source model")
        exact = _reference(model, False, exact_model, x, sha)
        # on the logits where the consumer shows them (the figure convert prints for the fold)
        node = _logits_node(ref_model)
        node = node if node in outs and node in exact else final
        report.exact_rel = verify_mod.compare(exact[node], np.asarray(outs[node]), rtol).rel
        report.exact_node = node
        report.exact_fold = exact_fold
    return report


def summary_line(report: ArtifactReport) -> str:
    """One line: consumer, file, max|d|/max|ref| vs the source model, top-1/top-5 agreement, PASS/FAIL."""
    c = report.consumer or report.backends[0]
    res = report.final_result() if isinstance(report, ArtifactReport) else None
    verdict = "PASS" if report.passed else "FAIL"
    if res is None:
        err = report.errors.get(c, "no output")
        return f"consumer {c} could not run {report.artifact}: {err} — {verdict}"
    t = report.topk.get(c, {})
    against = "the folded source model" if report.exact_rel is not None else "the source model"
    extra = ""
    if report.exact_rel is not None:
        how = "exact fold" if report.exact_fold else "inexact fold of the input stage"
        extra = f" ({report.exact_rel:.1e} vs the exact model: {how})"
    fd = report.first_divergent.get(c)
    where = f", first divergent node {fd}" if fd else ""
    why = f" ({'; '.join(report.hints)})" if not report.passed and getattr(report, "hints", None) else ""
    return (
        f"consumer {c} loaded {report.artifact}: max|d|/max|ref| {res.rel:.1e} vs {against}{extra}, "
        f"top-1 {t.get('top1', 0) * 100:.0f} %, top-5 {t.get('top5', 0) * 100:.0f} %{where} — {verdict}{why}"
    )
