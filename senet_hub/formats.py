"""The format registry: every source senet-hub reads and every target it writes, declared once.

A SourceFormat names the CLI options that point at its files (``--prototxt``/``--caffemodel``,
``--ckpt`` ...) and a reader; a TargetFormat names its containers (file suffixes or a prefix or a
directory), the extra that installs its framework, a writer and the backend that verifies it.
The CLI's ``--from``/``--to`` choices, ``senet-hub env``, ``sources.load_model``/``save_model``
and ``checks`` read these entries; adding a format is one ``register_source``/``register_target``.

Readers and writers are lazy ``"module:function"`` references, and the built-in entries live in
this file rather than in their modules, because listing formats (``--help``, ``env``) must import
no framework and no reader: importing this module loads only the standard library.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .errors import SenetHubError

if TYPE_CHECKING:
    from .graph import Model


class Reader(Protocol):
    """A source's reader: the values of its options, positionally, in order -> the canonical Model."""

    def __call__(self, *values: Any) -> Model: ...


class Writer(Protocol):
    """A target's writer: writer(model, path, **opts) -> the files written (a list, one path, or None)."""

    def __call__(self, model: Model, path: str, /, **opts: Any) -> list[str] | str | None: ...


@dataclass(frozen=True)
class SourceOption:
    """One CLI option a source takes; `dest` is the keyword the CLI passes on (``--prototxt`` -> prototxt).

    `file`: the option names an input file (checked never to be overwritten by an output).
    """

    flag: str
    help: str
    file: bool = True
    type: type = str
    default: Any = None
    show_default: bool = False

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class SourceFormat:
    """A format senet-hub reads a canonical Model from.

    reader: ``"module:function"``, called with the values of `options` positionally, in order.
    needs: the options that must be given (`usage` says them in the error when one is missing).
    infer_from: the option (or options) whose presence implies this source when ``--from`` is not
    given (sources are tried in registration order).
    weights_option: the option naming the weights file (named in messages about bad weights).
    holds_input_stage: whether the format can carry an input stage (input_norm) exactly.
    """

    name: str
    reads: str
    options: tuple[SourceOption, ...]
    reader: str
    needs: tuple[str, ...]
    usage: str
    hint: str
    infer_from: str | tuple[str, ...] | None = None
    suffixes: tuple[str, ...] = ()
    extra: str | None = None
    weights_option: str | None = None
    holds_input_stage: bool = True

    def inferred(self, values: dict[str, Any]) -> bool:
        """Whether the option values imply this source (one of its `infer_from` options is given)."""
        names = (self.infer_from,) if isinstance(self.infer_from, str) else self.infer_from or ()
        return any(values.get(n) for n in names)

    def read(self, values: dict[str, Any]) -> Model:
        """The Model the reader makes of the option values (SenetHubError when a needed one is missing)."""
        if not all(values.get(dest) for dest in self.needs):
            raise SenetHubError(f"--from {self.name} needs {self.usage}")
        reader: Reader = resolve(self.reader)
        return reader(*(values.get(o.dest, o.default) for o in self.options))


@dataclass(frozen=True)
class Container:
    """One kind of file (or prefix, or directory) a target writes; None fields inherit the target's.

    suffix: what the output name ends with ("" for a prefix or a directory: any other name).
    kind: the artifact format's name as senet_hub.consumers knows it (pth, pt2, onnx, savedmodel ...).
    files: for a prefix, the suffixes of the files written beside it (the prefix is what -o gives).
    notes: an optional ``"module:function"`` called as notes(model, say) before this container is
    written, whatever it holds (the target's `notes` are said for weights-only writes only).
    """

    suffix: str
    kind: str
    label: str
    files: tuple[str, ...] = ()
    directory: bool = False
    holds_input_stage: bool | None = None
    writer: str | None = None
    without_framework: bool | None = None
    notes: str | None = None


@dataclass(frozen=True)
class TargetFormat:
    """A format senet-hub writes.

    writer: ``"module:function"`` called as writer(model, path, **opts); returns the files written
    (a list, one path, or None for `path`). Weights-only containers (holds_input_stage False) get the
    input stage folded into conv1 first and a ``metadata=`` record (converters.pth.metadata_record).
    prepare: an optional ``"module:function"`` rewriting the Model before it is written.
    backend: the senet_hub.builders backend that builds (and verifies) this target's framework.
    without_framework: the writer needs no framework (else builders.get(backend) is checked first,
    so a missing framework is one line naming the extra).
    options: the keyword options of the writer the CLI passes on (convert's --opset, --layout ...).
    records_source_hashes: the file records the source files' sha256 (filled before writing).
    notes: an optional ``"module:function"`` called as notes(model, say) before a weights-only write
    (what a user loading the file elsewhere should know).
    any_architecture: the format holds every architecture (False for timm: only those timm has a model
    for), so messages may suggest it for any model.
    """

    name: str
    title: str
    writes: str
    containers: tuple[Container, ...]
    writer: str
    label: str = ""
    extra: str | None = None  # the pip extra installing `backend` (what verifies the file; writing may need it)
    backend: str | None = None
    holds_input_stage: bool = True
    without_framework: bool = False
    options: tuple[str, ...] = ()
    prepare: str | None = None
    records_source_hashes: bool = False
    notes: str | None = None
    any_architecture: bool = True

    def container(self, path: str | os.PathLike) -> Container | None:
        """The container `path` names: the longest matching suffix, else the catch-all "" one, else None."""
        low = os.fspath(path).lower()
        named = [c for c in self.containers if c.suffix and _ends(low, c)]
        if named:
            return max(named, key=lambda c: len(c.suffix))
        return next((c for c in self.containers if not c.suffix), None)

    def holds_stage(self, path: str | os.PathLike) -> bool:
        c = self.container(path)
        return self.holds_input_stage if c is None or c.holds_input_stage is None else c.holds_input_stage

    def weights_only_label(self, path: str | os.PathLike) -> str | None:
        """The format's name in messages when `path` holds only weights (no input stage), else None."""
        if self.holds_stage(path):
            return None
        c = self.container(path)
        return c.label if c is not None and c.holds_input_stage is False else self.label

    def writer_for(self, path: str | os.PathLike) -> str:
        c = self.container(path)
        return c.writer if c is not None and c.writer else self.writer

    def needs_framework(self, path: str | os.PathLike) -> bool:
        c = self.container(path)
        free = self.without_framework if c is None or c.without_framework is None else c.without_framework
        return not free and self.backend is not None

    def outputs(self, path: str | os.PathLike) -> list[str]:
        """The files (or directory) writing `path` makes, named as the writer names them."""
        p = os.fspath(path)
        c = self.container(p)
        if c is None or not c.files:
            return [p]
        for ext in c.files:  # a prefix given with one of its files' suffixes
            if p.endswith(ext):
                p = p[: -len(ext)]
                break
        return [p + ext for ext in c.files]


def _ends(low: str, c: Container) -> bool:
    return bool(c.suffix) and low.endswith(c.suffix) or any(low.endswith(f) for f in c.files)


@dataclass
class _Registry:
    sources: dict[str, SourceFormat] = field(default_factory=dict)
    targets: dict[str, TargetFormat] = field(default_factory=dict)


_REGISTRY = _Registry()


def register_source(fmt: SourceFormat) -> SourceFormat:
    """Add (or replace, by name) a source; returns it."""
    _REGISTRY.sources[fmt.name] = fmt
    return fmt


def register_target(fmt: TargetFormat) -> TargetFormat:
    """Add (or replace, by name) a target; returns it."""
    _REGISTRY.targets[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    """Remove a source and/or target of that name (for tests that register a fake one)."""
    _REGISTRY.sources.pop(name, None)
    _REGISTRY.targets.pop(name, None)


def sources() -> tuple[SourceFormat, ...]:
    """Every registered source, in registration order (the order --from lists and infers them)."""
    return tuple(_REGISTRY.sources.values())


def targets() -> tuple[TargetFormat, ...]:
    """Every registered target, in registration order (the order --to lists them)."""
    return tuple(_REGISTRY.targets.values())


def source_names() -> list[str]:
    return list(_REGISTRY.sources)


def target_names() -> list[str]:
    return list(_REGISTRY.targets)


def source(name: str) -> SourceFormat:
    try:
        return _REGISTRY.sources[name]
    except KeyError:
        raise SenetHubError(f"unknown source '{name}'; choose one of {', '.join(_REGISTRY.sources)}") from None


def target(name: str) -> TargetFormat:
    try:
        return _REGISTRY.targets[name]
    except KeyError:
        raise SenetHubError(f"unknown target '{name}'; choose one of {', '.join(_REGISTRY.targets)}") from None


def target_for_path(path: str | os.PathLike) -> tuple[TargetFormat, Container] | None:
    """Which target writes this path, judged by its name alone (.pth -> pytorch, -symbol.json -> mxnet,
    .keras -> tensorflow ...), with the container; None for a name no suffix identifies (a prefix, a directory)."""
    low = os.fspath(path).lower()
    found = [(t, c) for t in targets() for c in t.containers if _ends(low, c)]
    if not found:
        return None
    return max(found, key=lambda tc: max(len(s) for s in (tc[1].suffix, *tc[1].files) if s and low.endswith(s)))


def source_options() -> list[SourceOption]:
    """The options of all sources, each flag once (first declaration), files first, in registration order."""
    seen: dict[str, SourceOption] = {}
    for s in sources():
        for o in s.options:
            seen.setdefault(o.flag, o)
    opts = list(seen.values())
    return [o for o in opts if o.file] + [o for o in opts if not o.file]


def exact_stage_formats() -> str:
    """The formats that hold an input stage exactly, for messages: ".pt2, .pt, ONNX, ... or Caffe"."""
    names: list[str] = []
    for t in targets():
        if not t.holds_input_stage or not t.any_architecture:
            continue
        held = [c.suffix for c in t.containers if c.holds_input_stage is not False]
        # the whole target by name, or (like PyTorch: .pth holds weights only) the suffixes that do
        names += [t.title] if len(held) == len(t.containers) else [s for s in held if s]
    return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def resolve(ref: str) -> Callable[..., Any]:
    """The function a ``"package.module:function"`` reference names (imported now, not before)."""
    module, _, name = ref.partition(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return fn


# ---------------------------------------------------------------------------- the built-in formats

_ARCH = SourceOption(
    "--arch",
    "Architecture id, alias or timm name (`senet-hub list`); for --from zoo, and to name (or check) the "
    "architecture of MindSpore/PyTorch weights.",
    file=False,
)

register_source(SourceFormat(
    name="caffe", reads="Caffe deploy prototxt + .caffemodel (SENet release)",
    options=(SourceOption("--prototxt", "Caffe deploy prototxt."), SourceOption("--caffemodel", "Caffe weights.")),
    reader="senet_hub.converters.caffe:load", needs=("prototxt", "caffemodel"),
    usage="both --prototxt and --caffemodel", hint="--prototxt/--caffemodel", infer_from="prototxt",
    suffixes=(".prototxt", ".caffemodel"), weights_option="caffemodel",
))  # fmt: skip
register_source(SourceFormat(
    name="mindspore", reads="MindSpore/MindCV checkpoint (.ckpt)",
    options=(SourceOption("--ckpt", "MindSpore checkpoint (.ckpt)."), _ARCH),
    reader="senet_hub.converters.mindspore:load_ckpt", needs=("ckpt",),
    usage="--ckpt FILE (and --arch when the checkpoint does not identify it)", hint="--ckpt", infer_from="ckpt",
    suffixes=(".ckpt",), weights_option="ckpt", holds_input_stage=False,
))  # fmt: skip
register_source(SourceFormat(
    name="onnx", reads="ONNX model (senet-hub's exports, torch.onnx.export of SE nets; opsets 13-21)",
    options=(SourceOption("--onnx", "ONNX model (.onnx; external data files beside it are read)."),
             SourceOption("--input-shape", "N,C,H,W for an ONNX model whose H, W are dynamic (--from onnx).",
                          file=False)),
    reader="senet_hub.converters.onnx_source:load", needs=("onnx",), usage="--onnx FILE", hint="--onnx",
    infer_from="onnx", suffixes=(".onnx",), extra="onnx", weights_option="onnx",
))  # fmt: skip
# before zoo: `--weights F --arch A` is a PyTorch file of arch A, not synthetic weights
register_source(SourceFormat(
    name="pytorch", reads="PyTorch state_dict (.pth/.pt/.bin torch.save, any version, or .safetensors), or a .pt2 / "
    "TorchScript .pt senet-hub wrote; no pickle is run",
    options=(SourceOption("--weights", "PyTorch state_dict (.pth/.pt/.bin/.safetensors), or senet-hub's .pt2/.pt."),
             _ARCH),
    reader="senet_hub.converters.pytorch:load", needs=("weights",),
    usage="--weights FILE (and --arch when its keys and shapes fit several architectures)", hint="--weights",
    infer_from="weights", suffixes=(".pth", ".pt", ".safetensors", ".bin"), weights_option="weights",
    holds_input_stage=False,
))  # fmt: skip
register_source(SourceFormat(
    name="chainer", reads="Chainer .npz (senet-hub's, graph stored; or save_npz of a zoo architecture); no pickle is run",
    options=(SourceOption("--npz", "Chainer serializers .npz (--from chainer)."), _ARCH),
    reader="senet_hub.converters.chainer_npz:load", needs=("npz",),
    usage="--npz FILE (and --arch for an npz without senet-hub's graph whose keys fit several architectures)",
    hint="--npz", infer_from="npz", suffixes=(".npz",), weights_option="npz",
))  # fmt: skip
register_source(SourceFormat(
    name="mxnet", reads="MXNet symbol + params of a zoo architecture (prefix-symbol.json, prefix-0000.params)",
    options=(SourceOption("--params", "MXNet parameters (prefix-0000.params; --from mxnet)."),
             SourceOption("--symbol", "MXNet symbol (prefix-symbol.json) beside --params: tells apart architectures "
                          "with the same parameters."), _ARCH),
    reader="senet_hub.converters.mxnet_params:load_prefix", needs=("params",),
    usage="--params FILE (with --symbol FILE, or --arch, when its names and shapes fit several architectures)",
    hint="--params/--symbol", infer_from="params", suffixes=(".params", "-symbol.json"), weights_option="params",
))  # fmt: skip
register_source(SourceFormat(
    name="tensorflow", reads="Keras .keras file or TensorFlow SavedModel directory written by senet-hub (graph stored)",
    options=(SourceOption("--keras", "Keras .keras file written by senet-hub (--from tensorflow)."),
             SourceOption("--saved-model", "TensorFlow SavedModel directory written by senet-hub (--from tensorflow)."),
             _ARCH),
    # either option alone names the model: the reader checks that exactly one is given
    reader="senet_hub.converters.tensorflow_source:load", needs=(), usage="--keras FILE or --saved-model DIR",
    hint="--keras/--saved-model", infer_from=("keras", "saved_model"), extra="tensorflow", weights_option="keras",
))  # fmt: skip
register_source(SourceFormat(
    name="zoo", reads="a zoo architecture with deterministic synthetic weights",
    options=(_ARCH, SourceOption("--seed", "Seed of synthetic weights (--from zoo).", file=False, type=int, default=0,
                                 show_default=True)),
    reader="senet_hub.zoo:synthetic_model", needs=("arch",),
    usage="--arch ARCH (see `senet-hub list`)", hint="--from zoo --arch ARCH", infer_from="arch",
))  # fmt: skip

register_target(TargetFormat(
    name="pytorch", title="PyTorch", writes="PyTorch state_dict, torch.export program or TorchScript",
    containers=(
        # a .pth is written by a zip/pickle writer of ours: no torch needed, and no input stage held
        Container(".pth", "pth", "a .pth state_dict", holds_input_stage=False,
                  writer="senet_hub.converters.pth:save_model", without_framework=True),
        # the same state_dict through the safetensors library (numpy API): no torch, no pickle
        Container(".safetensors", "safetensors", "a .safetensors state_dict", holds_input_stage=False,
                  writer="senet_hub.converters.safetensors_writer:save_model", without_framework=True),
        Container(".pt2", "pt2", "a .pt2 torch.export program"),
        Container(".pt", "pt", "a .pt TorchScript module"),
    ),
    writer="senet_hub.builders.torch:save", extra="torch", backend="torch", notes="senet_hub.sources:warn_timm_mismatch",
))  # fmt: skip
register_target(TargetFormat(
    name="onnx", title="ONNX", writes="ONNX model (Axpy as a custom-domain function)",
    containers=(Container(".onnx", "onnx", "an .onnx model"),),
    writer="senet_hub.builders.onnx:save", extra="onnx", backend="onnxruntime", options=("opset", "inline"),
    records_source_hashes=True,
))  # fmt: skip
register_target(TargetFormat(
    name="tensorflow", title="TensorFlow", writes="TensorFlow SavedModel directory or .keras file",
    containers=(Container(".keras", "keras", "a .keras file"),
                Container("", "savedmodel", "a TensorFlow SavedModel directory", directory=True)),
    writer="senet_hub.builders.tensorflow:save", extra="tensorflow", backend="tensorflow", options=("layout",),
))  # fmt: skip
register_target(TargetFormat(
    name="mxnet", title="MXNet", writes="MXNet symbol + params (prefix-symbol.json, prefix-0000.params)",
    containers=(Container("", "mxnet", "an MXNet prefix", files=("-symbol.json", "-0000.params")),),
    writer="senet_hub.builders.mxnet:save", extra="mxnet", backend="mxnet",
))  # fmt: skip
register_target(TargetFormat(
    name="chainer", title="Chainer", writes="Chainer serializers .npz",
    containers=(Container(".npz", "npz", "a Chainer .npz"),),
    writer="senet_hub.builders.chainer:save", extra="chainer", backend="chainer",
))  # fmt: skip
register_target(TargetFormat(
    name="caffe", title="Caffe", writes="Caffe deploy prototxt + .caffemodel (prefix.prototxt, prefix.caffemodel)",
    # Caffe has no channel-permute layer: the input stage is written as the 1x1 convolution it is
    containers=(Container("", "caffe", "a Caffe prefix", files=(".prototxt", ".caffemodel")),),
    writer="senet_hub.converters.caffe_writer:save", prepare="senet_hub.sources:stage_as_conv",
    extra="opencv", backend="opencv", without_framework=True,
))  # fmt: skip
register_target(TargetFormat(
    name="mindspore", title="MindSpore", writes="MindSpore checkpoint (.ckpt), written without MindSpore",
    containers=(Container(".ckpt", "ckpt", "a MindSpore checkpoint"),),
    writer="senet_hub.converters.mindspore:save_ckpt", label="a MindSpore checkpoint", extra="mindspore",
    backend="mindspore", holds_input_stage=False, without_framework=True, notes="senet_hub.converters.mindspore:notes",
))  # fmt: skip
register_target(TargetFormat(
    name="timm", title="timm", writes="timm model directory (model.safetensors + config.json, hub layout)",
    # the input convention is held exactly: conv1's input channels permuted to RGB, mean/std in config.json
    containers=(Container("", "timmdir", "a timm model directory", directory=True,
                          notes="senet_hub.converters.timm_dir:notes"),),
    writer="senet_hub.converters.timm_dir:save", extra="torch", backend="torch", without_framework=True,
    records_source_hashes=True, any_architecture=False,
))  # fmt: skip
