"""The consumer registry: each consumer one entry (name, the formats it loads, the packages it
needs, how to install them, its loader), the artifact formats and how a file's format is told,
and the helpers the loaders share. The loaders live in one module per ecosystem beside this one
and register themselves with ``@register``; nothing here imports a framework."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MissingFrameworkError, ModelError, UnsupportedError
from ..graph import Model

# format id -> what it is (for messages)
FORMATS = {
    "pth": ".pth state_dict",
    "safetensors": ".safetensors state_dict",
    "pt2": ".pt2 torch.export program",
    "pt": ".pt TorchScript",
    "onnx": ".onnx",
    "savedmodel": "TensorFlow SavedModel directory",
    "keras": ".keras file",
    "mxnet": "MXNet prefix (-symbol.json + -0000.params)",
    "npz": "Chainer .npz",
    "caffe": "Caffe prefix (.prototxt + .caffemodel)",
    "ckpt": "MindSpore .ckpt",
    "timmdir": "timm model directory (config.json + model.safetensors)",
}
WEIGHTS_ONLY = ("pth", "safetensors", "ckpt")  # formats that cannot hold an input stage
TORCHVISION_HINT = (
    "PyPI's torchvision for torch 2.13 is CUDA-linked and cannot import beside the CPU torch: install "
    "the CPU torchvision build matching torch (the tests put a stub from tests/stubs on sys.path)"
)

# packages that fail at import when torchvision does (checked by importing them, not just finding them)
NEEDS_TORCHVISION = ("timm", "pretrainedmodels", "onnx2torch")


@dataclass
class Job:
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


Runner = Callable[[Job], dict[str, np.ndarray]]


@dataclass(frozen=True)
class Consumer:
    """One way users load a file: the runner, how to install it, the modules whose presence means
    installed, the formats it loads and a one-line description; `logits`: it returns the input of
    a trailing softmax; `models`: architecture -> model name, for consumers named `<name>:<model>`."""

    name: str
    run: Runner
    install: str
    probe: tuple[str, ...]
    formats: tuple[str, ...]
    description: str
    logits: bool = False
    models: dict[str, str] | None = None


# the registry, in listing order (the order the ecosystem modules are imported in, see __init__)
CONSUMERS: dict[str, Consumer] = {}
DEFAULTS: dict[str, str] = {}  # format -> the consumer that loads it by default


def register(
    name: str,
    *,
    formats: tuple[str, ...],
    needs: tuple[str, ...],
    install: str,
    description: str,
    default_for: tuple[str, ...] = (),
    logits: bool = False,
    models: dict[str, str] | None = None,
) -> Callable[[Runner], Runner]:
    """Register the decorated runner as consumer `name` (and the default consumer of `default_for`)."""

    def add(run: Runner) -> Runner:
        CONSUMERS[name] = Consumer(name, run, install, needs, formats, description, logits, models)
        for fmt in default_for:
            DEFAULTS[fmt] = name
        return run

    return add


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


# ------------------------------------------------------------------------------ formats


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
        if os.path.exists(os.path.join(p, "config.json")):
            return "timmdir"
        raise UnsupportedError(
            f"{p}: a directory that is neither a TensorFlow SavedModel (saved_model.pb) nor a timm model (config.json)"
        )
    for ext, fmt in ((".pth", "pth"), (".safetensors", "safetensors"), (".pt2", "pt2"), (".pt", "pt"),
                     (".onnx", "onnx"), (".keras", "keras"), (".npz", "npz"), (".ckpt", "ckpt"), (".prototxt", "caffe"), (".caffemodel", "caffe"),
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
                  "caffe": "caffe", "mindspore": "ckpt", "pytorch": "pth", "timm": "timmdir"}  # fmt: skip


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
    family = CONSUMERS.get(f"{key}:<model>")  # timm / cadene: a model name, or one from the architecture
    if family is not None:
        table = family.models or {}
        if not arg:
            found = table.get(model.arch) if model is not None else None
            if not found:
                raise UnsupportedError(
                    f"consumer '{name}' needs a model name: {key}:<model>, e.g. {key}:{table['SE-ResNet-50']}"
                )
            arg = found
        return family, arg
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
    cons = CONSUMERS.get(f"{base}:<model>") or resolve(name)[0]
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
        if probe in NEEDS_TORCHVISION:
            _import_torchvision_user(probe)
    return cons


def _format_by_name(path: str) -> str | None:
    try:
        return artifact_format(path)
    except UnsupportedError:
        return None


def _mxnet_files(path: str) -> list[str]:
    prefix = path
    for suffix in ("-symbol.json", "-0000.params"):
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
    return [f"{prefix}-symbol.json", f"{prefix}-0000.params"]


def _caffe_files(path: str) -> list[str]:
    prefix = path
    for ext in (".prototxt", ".caffemodel"):
        if prefix.endswith(ext):
            prefix = prefix[: -len(ext)]
    return [prefix + ".prototxt", prefix + ".caffemodel"]


_FILES: dict[str, Callable[[str], list[str]]] = {"mxnet": _mxnet_files, "caffe": _caffe_files}  # prefix formats


def _files(fmt: str, path: str) -> list[str]:
    """The files an artifact of this format is made of (a prefix names two)."""
    return _FILES[fmt](path) if fmt in _FILES else [path]
