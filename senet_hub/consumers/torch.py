"""PyTorch consumers: senet-hub's own module, timm, Cadene ``pretrainedmodels`` (a .pth state_dict),
``torch.export`` (.pt2) and TorchScript (.pt)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import FormatError, MissingFrameworkError, ModelError, UnsupportedError
from ..graph import infer_shapes
from .core import (
    Job,
    _check_tensors,
    _dist_version,
    _first_line,
    _import_torchvision_user,
    _logits_node,
    _np,
    _strip_input_norm,
    _torch_input,
    register,
)

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


def _zip_or_refuse(path: str, what: str) -> None:
    """PyTorch files are zip archives: anything else is refused before torch reads (and logs) it."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise FormatError(
            f"{path}: not a {what} (a PyTorch file is a zip archive; pre-1.6 torch.save pickles are not read)"
        )


def _load_safetensors(path: str) -> dict[str, Any]:
    """A .safetensors state_dict, as torch users load it (safetensors.torch.load_file: no pickle)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise MissingFrameworkError(
            f"{path}: reading .safetensors needs the safetensors package: pip install safetensors"
        ) from None
    try:
        return dict(load_file(path, device="cpu"))
    except Exception as e:  # the library raises SafetensorError / OSError / ValueError for a bad file
        raise FormatError(
            f"{path}: not a file safetensors.torch.load_file can read ({type(e).__name__}: {_first_line(e)})"
        ) from None


def _load_pth(job: Job) -> dict[str, Any]:
    """The state_dict of a .pth (torch.load, weights only) or .safetensors file, checked against the model's."""
    import torch

    if job.fmt == "safetensors":
        sd = _load_safetensors(job.path)
    else:
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
    from ..converters.pth import model_state_dict

    want = {k: tuple(v.shape) for k, v in model_state_dict(job.model).items()}
    got = {k: tuple(getattr(v, "shape", ())) for k, v in sd.items()}
    _check_tensors(job.path, got, want, "the source model's state_dict")
    return sd


@register(
    "senet-hub",
    formats=("pth", "safetensors"),
    needs=("torch",),
    install="pip install 'senet-hub[torch]'",
    default_for=("pth", "safetensors"),
    description="senet-hub's own torch module (builders.torch.load_state_dict), per node",
)
def _run_senet_hub(job: Job) -> dict[str, np.ndarray]:
    from ..builders import torch as tb

    sd = _load_pth(job)  # names the first mismatching tensor before the strict load
    # the file holds weights only: load them into the graph without an input stage
    graph = _strip_input_norm(job.model).graph
    if job.fmt == "safetensors":
        module = tb.SENetModule(graph).eval()
        try:
            module.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise ModelError(f"{job.path}: does not fit the model: {' '.join(str(e).split())[:300]}") from None
    else:
        module = tb.load_state_dict(graph, job.path)
    job.version = _dist_version("torch")
    return tb.run(module, job.x, taps=True)


def _run_hub_model(job: Job, net: Any, whose: str) -> dict[str, np.ndarray]:
    """Strict load of the .pth into a timm / Cadene module; hooks on the modules named like the
    reference's parametrised nodes give per-node values; the final output is the logits."""
    sd = _load_pth(job)
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    _check_tensors(job.path, {k: tuple(v.shape) for k, v in sd.items()}, want, whose)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{job.path}: {whose} refuses the strict load: {' '.join(str(e).split())[:300]}") from None
    out = _run_with_hooks(job, net, job.x)
    job.notes.append(f"{whose} returns logits: compared with node '{job.final}', the input of the final softmax")
    return out


def _run_with_hooks(job: Job, net: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run `net` on x; hooks on the modules named like the reference's conv / bn / linear nodes give
    their values; the final output (logits) is reported as node job.final."""
    import torch

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
            y = net(_torch_input(x))
    finally:
        for h in handles:
            h.remove()
    y = _np(y)
    ref_shape = infer_shapes(job.model, tuple(job.x.shape))[job.final]
    out[job.final] = y.reshape(ref_shape) if y.size == int(np.prod(ref_shape)) else y
    return out


@register(
    "timm:<model>",
    formats=("pth", "safetensors"),
    needs=("torch", "timm"),
    logits=True,
    models=TIMM_MODELS,
    install="pip install --no-deps timm==1.0.31 (plus a CPU torchvision)",
    description="strict load into timm.create_model(<model>, pretrained=False); logits; per conv/bn/linear",
)
def _run_timm(job: Job) -> dict[str, np.ndarray]:
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


@register(
    "cadene:<model>",
    formats=("pth", "safetensors"),
    needs=("torch", "pretrainedmodels"),
    logits=True,
    models=CADENE_MODELS,
    install="pip install --no-deps pretrainedmodels==0.7.4 munch (plus a CPU torchvision)",
    description="strict load into pretrainedmodels.__dict__[<model>](num_classes=1000, pretrained=None); logits",
)
def _run_cadene(job: Job) -> dict[str, np.ndarray]:
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


@register(
    "torch.export",
    formats=("pt2",),
    needs=("torch",),
    install="pip install 'senet-hub[torch]'",
    default_for=("pt2",),
    description="torch.export.load(file).module(); final output",
)
def _run_torch_export(job: Job) -> dict[str, np.ndarray]:
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


@register(
    "torchscript",
    formats=("pt",),
    needs=("torch",),
    install="pip install 'senet-hub[torch]'",
    default_for=("pt",),
    description="torch.jit.load(file); final output",
)
def _run_torchscript(job: Job) -> dict[str, np.ndarray]:
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


@register(
    "timm-local-dir",
    formats=("timmdir",),
    needs=("torch", "timm", "safetensors"),
    logits=True,
    install="pip install --no-deps timm==1.0.31 safetensors (plus a CPU torchvision)",
    default_for=("timmdir",),
    description="timm.create_model('local-dir:DIR', pretrained=True), input normalised per "
    "timm.data.resolve_data_config; logits; per conv/bn/linear",
)
def _run_timm_dir(job: Job) -> dict[str, np.ndarray]:
    import os

    from ..converters import timm_dir
    from ..transforms import class_permutation

    timm = _import_torchvision_user("timm")
    config = timm_dir.read_config(job.path)  # one line when it is no timm directory, before timm reads it
    try:
        net = timm.create_model(f"local-dir:{os.path.abspath(job.path)}", pretrained=True)
    except Exception as e:  # timm raises RuntimeError / FileNotFoundError / TypeError for a bad directory
        raise ModelError(f"{job.path}: timm cannot load it ({type(e).__name__}: {_first_line(e)})") from None
    job.version = _dist_version("timm")
    # what a timm user feeds it: the image's pixels through timm's normalisation (resize and crop
    # are the same in both pipelines and not part of the model)
    data = timm.data.resolve_data_config({}, model=net)
    conv = job.model.meta.get("input_convention")
    if not conv:
        raise UnsupportedError(f"{job.path}: the source model's input convention is unknown; cannot make timm's input")
    x = timm_dir.to_timm_input(job.x, conv, data["mean"], data["std"])
    out = _run_with_hooks(job, net, x)
    # a directory in another class order than the reference (SENet order -> timm's sorted synsets):
    # its outputs are compared class for class, mapped back to the reference's order
    found = config.get("senet_hub")
    record: dict[str, Any] = found if isinstance(found, dict) else {}
    mine, ref = record.get("class_order"), job.model.meta.get("class_order")
    if {mine, ref} == {"senet", "ilsvrc2012"}:
        perm = class_permutation()  # perm[senet index] = sorted index
        order = perm if ref == "senet" else np.argsort(perm)
        fc = timm_dir._classifier(job.model).name
        for node in {fc, job.final}:
            if node in out:
                out[node] = np.ascontiguousarray(out[node][:, order])
        job.notes.append(
            f"the directory's classes are in the {mine} order: compared class for class in the {ref} order"
        )
    job.notes.append(f"timm's {config['architecture']} returns logits: compared with node '{job.final}'")
    if (record.get("timm") or {}).get("computes_source_exactly") is False:
        job.hints.append(
            f"timm's {config['architecture']} max-pools with padding=1 where MindCV pads (0, 0, 1, 1) (windows "
            "shifted by one pixel): it computes another function than the MindCV source model"
        )
    return out
