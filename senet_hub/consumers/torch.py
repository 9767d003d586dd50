"""PyTorch consumers: senet-hub's own module, timm, Cadene ``pretrainedmodels`` (a .pth state_dict),
``torch.export`` (.pt2) and TorchScript (.pt)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import FormatError, ModelError, UnsupportedError
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


def _load_pth(job: Job) -> dict[str, Any]:
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
    from ..converters.pth import model_state_dict

    want = {k: tuple(v.shape) for k, v in model_state_dict(job.model).items()}
    got = {k: tuple(getattr(v, "shape", ())) for k, v in sd.items()}
    _check_tensors(job.path, got, want, "the source model's state_dict")
    return sd


@register(
    "senet-hub",
    formats=("pth",),
    needs=("torch",),
    install="pip install 'senet-hub[torch]'",
    default_for=("pth",),
    description="senet-hub's own torch module (builders.torch.load_state_dict), per node",
)
def _run_senet_hub(job: Job) -> dict[str, np.ndarray]:
    from ..builders import torch as tb

    _load_pth(job)  # names the first mismatching tensor before the strict load
    # the file holds weights only: load them into the graph without an input stage
    module = tb.load_state_dict(_strip_input_norm(job.model).graph, job.path)
    job.version = _dist_version("torch")
    return tb.run(module, job.x, taps=True)


def _run_hub_model(job: Job, net: Any, whose: str) -> dict[str, np.ndarray]:
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


@register(
    "timm:<model>",
    formats=("pth",),
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
    formats=("pth",),
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
