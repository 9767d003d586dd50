"""PyTorch: the canonical graph as an ``nn.Module``, plus ``.pth`` / ``.pt2`` / ``.pt`` files.

``build(model)`` walks the graph (no per-architecture code) and returns a ``SENetModule`` in eval
mode with the model's weights (float32). Every node with parameters is a real submodule at its
dotted canonical path (conv -> ``nn.Conv2d``, batch_norm -> ``nn.BatchNorm2d`` with the graph's
eps, linear -> ``nn.Linear``); the path's intermediate components are plain ``nn.Module``
containers. ``state_dict()`` keys are therefore exactly the canonical weight keys
``<node>.<param>`` plus BatchNorm's ``num_batches_tracked``, so a state_dict of a canonically
named SENet loads into timm's ``legacy_seresnet50`` and friends, and theirs into ours.

Every other op runs functionally in ``forward``:

- conv with asymmetric pads: ``F.pad`` with zeros, then the convolution with padding 0;
- max_pool / avg_pool with symmetric pads of at most half the kernel: ``F.max_pool2d`` /
  ``F.avg_pool2d`` with ``ceil_mode`` and ``count_include_pad``, whose output size and divisor
  are exactly graph.py's (torch implements Caffe's clip rule). Otherwise (asymmetric pads such as
  MindSpore's "same" max pool (0, 0, 1, 1), or pads over half the kernel) the input is placed in
  a canvas of exactly ``(out - 1) * stride + kernel`` rows/columns (fill -inf for max, 0 for
  avg) and pooled with padding 0 and floor rounding; average pooling divides by the pooled
  mask of the pixels that count, so both divisor rules of graph.py hold;
- axpy: ``a.reshape(N, C, 1, 1) * x + y``; channel_scale: ``x * s.reshape(N, C, 1, 1)``;
  reshape with Caffe's 0 / -1; flatten; linear flattens its input; softmax along dim 1;
  dropout is the identity (inference);
- input_norm: channel permutation + per-channel affine, held as non-persistent buffers of a
  small submodule at the node's path (so they travel with ``.to()`` and ``torch.export`` but
  are not state_dict keys).

``forward(x)`` returns the graph output; ``forward_taps(x)`` returns ``{node: tensor}`` for every
node (no op is in place, so each tap is the node's own output).

``save(model, path)`` by suffix: ``.pth`` = ``torch.save(state_dict)`` (canonical keys,
byte-identical for the same model: written through an in-memory buffer so the zip's inner
archive name does not depend on the temporary file name), ``.pt2`` = ``torch.export`` program
with a dynamic batch dimension (``torch.export.load(p).module()(x)`` needs torch only), ``.pt`` =
TorchScript (``torch.jit.trace``; fixed spatial size). A ``.pt2`` / ``.pt`` also carries senet-hub's
record and canonical graph as extra files (``extra/senet_hub.json``, ``extra/senet_hub_graph.json``),
which torch's loaders ignore and ``converters.pytorch_program`` reads back. Files are written atomically.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputFileError, ModelError, OutputError, UnsupportedError
from ..graph import Graph, Model, infer_shapes
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
    dead_after,
    graph_shapes,
    plan,
    walk,
)

NAME = "torch"
EXTRA = "torch"
FORMATS = {".pth": "state_dict", ".pt2": "export", ".pt": "torchscript"}

# Two tables: MAKE builds a node's submodule once at build time (only ops with parameters or
# buffers have one); LOWER is the forward lowering, ``fn(module, step, inputs) -> tensor``.
MakeFn = Callable[[Step, dict[str, Shape]], nn.Module]
LowerFn = Callable[["SENetModule", Step, list[torch.Tensor]], torch.Tensor]
MAKE: Lowerings[MakeFn] = Lowerings("torch")
LOWER: Lowerings[LowerFn] = Lowerings("torch")


def available() -> str | None:
    return torch.__version__


# ------------------------------------------------------------------------------------- helpers


def _nc11(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape[0], v.shape[1], 1, 1)


def _canvas(t: torch.Tensor, top: int, left: int, eh: int, ew: int, fill: float) -> torch.Tensor:
    """t placed at (top, left) in an eh x ew canvas filled with `fill` (cropped where it overhangs)."""
    h, w = t.shape[-2], t.shape[-1]
    bottom, right = eh - top - h, ew - left - w
    if top or left or bottom > 0 or right > 0:
        t = F.pad(t, (left, max(right, 0), top, max(bottom, 0)), value=fill)
    if bottom < 0 or right < 0:
        t = t[..., :eh, :ew]
    return t


class InputNorm(nn.Module):
    """y[:, c] = x[:, perm[c]] * scale[c] + shift[c] (non-persistent buffers: no state_dict keys)."""

    perm: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, perm: list[int], scale: list[float], shift: list[float]) -> None:
        super().__init__()
        self.register_buffer("perm", torch.tensor(list(perm), dtype=torch.long), persistent=False)
        self.register_buffer(
            "scale", torch.tensor(list(scale), dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "shift", torch.tensor(list(shift), dtype=torch.float32).reshape(1, -1, 1, 1), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, 1, self.perm) * self.scale + self.shift


def _conv_pad(a: ConvAttrs) -> tuple[int, int, int, int] | None:
    """F.pad's (left, right, top, bottom) for asymmetric pads; None where Conv2d pads itself."""
    pt, pl, pb, pr = a.pad
    return None if (pt == pb and pl == pr) else (pl, pr, pt, pb)


def _pool(x: torch.Tensor, a: PoolAttrs, is_max: bool) -> torch.Tensor:
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = a.kernel, a.stride, a.pad
    if a.symmetric:  # torch's own pooling has graph.py's size rule (Caffe's clip rule) here
        if is_max:
            return F.max_pool2d(x, (kh, kw), (sh, sw), (pt, pl), ceil_mode=a.ceil)
        return F.avg_pool2d(x, (kh, kw), (sh, sw), (pt, pl), ceil_mode=a.ceil, count_include_pad=a.count_include_pad)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    eh, ew = a.extent_hw(h, w)  # exactly the rows/columns the windows read
    if is_max:
        return F.max_pool2d(_canvas(x, pt, pl, eh, ew, -math.inf), (kh, kw), (sh, sw))
    total = F.avg_pool2d(_canvas(x, pt, pl, eh, ew, 0.0), (kh, kw), (sh, sw))
    if a.count_include_pad:  # the window clipped to [-p0, size + p1)
        mask = _canvas(x.new_ones((1, 1, h + pt + pb, w + pl + pr)), 0, 0, eh, ew, 0.0)
    else:  # the real pixels only
        mask = _canvas(x.new_ones((1, 1, h, w)), pt, pl, eh, ew, 0.0)
    return total / F.avg_pool2d(mask, (kh, kw), (sh, sw))


# ------------------------------------------------------------------------ build-time submodules


@MAKE.register("conv")
def _make_conv(s: Step, shapes: dict[str, Shape]) -> nn.Module:
    a: ConvAttrs = s.attrs
    pt, pl, _, _ = a.pad
    return nn.Conv2d(
        shapes[s.inputs[0]][1],
        a.out_channels,
        a.kernel,
        stride=a.stride,
        padding=(pt, pl) if _conv_pad(a) is None else 0,
        dilation=a.dilation,
        groups=a.groups,
        bias=a.bias,
    )


@MAKE.register("batch_norm")
def _make_bn(s: Step, shapes: dict[str, Shape]) -> nn.Module:
    a: BatchNormAttrs = s.attrs
    return nn.BatchNorm2d(shapes[s.inputs[0]][1], eps=a.eps)


@MAKE.register("linear")
def _make_linear(s: Step, shapes: dict[str, Shape]) -> nn.Module:
    a: LinearAttrs = s.attrs
    return nn.Linear(math.prod(shapes[s.inputs[0]][1:]), a.out_features, bias=a.bias)


@MAKE.register("input_norm")
def _make_input_norm(s: Step, shapes: dict[str, Shape]) -> nn.Module:
    a: InputNormAttrs = s.attrs
    return InputNorm(list(a.perm), list(a.scale), list(a.shift))


# ------------------------------------------------------------------------- forward lowerings


@LOWER.register("conv")
def _conv(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    x, pad = ins[0], _conv_pad(s.attrs)
    if pad is not None:
        x = F.pad(x, pad)
    return m._senet_mods[s.name](x)


@LOWER.register("batch_norm", "input_norm")
def _submodule(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return m._senet_mods[s.name](ins[0])


@LOWER.register("linear")
def _linear(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return m._senet_mods[s.name](torch.flatten(ins[0], 1))


@LOWER.register("relu")
def _relu(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return F.relu(ins[0])


@LOWER.register("sigmoid")
def _sigmoid(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return torch.sigmoid(ins[0])


@LOWER.register("max_pool")
def _max_pool(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return _pool(ins[0], s.attrs, True)


@LOWER.register("avg_pool")
def _avg_pool(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return _pool(ins[0], s.attrs, False)


@LOWER.register("global_avg_pool")
def _global_avg_pool(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return ins[0].mean(dim=(2, 3), keepdim=True)


@LOWER.register("axpy")
def _axpy(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return _nc11(ins[0]) * ins[1] + ins[2]


@LOWER.register("channel_scale")
def _channel_scale(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return ins[0] * _nc11(ins[1])


@LOWER.register("add")
def _add(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return ins[0] + ins[1]


@LOWER.register("concat")
def _concat(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    a: ConcatAttrs = s.attrs
    return torch.cat(ins, dim=a.axis)


@LOWER.register("reshape")
def _reshape(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    # not ops.reshape_target: the batch dimension stays symbolic under torch.export
    a: ReshapeAttrs = s.attrs
    x = ins[0]
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(a.shape)])


@LOWER.register("flatten")
def _flatten(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return torch.flatten(ins[0], 1)


@LOWER.register("softmax")
def _softmax(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return torch.softmax(ins[0], dim=1)


@LOWER.register("dropout")
def _dropout(m: SENetModule, s: Step, ins: list[torch.Tensor]) -> torch.Tensor:
    return ins[0]  # the identity at inference


# -------------------------------------------------------------------------------------- module


class SENetModule(nn.Module):
    """A canonical senet-hub graph as a PyTorch module (see the module docstring)."""

    def __init__(self, graph: Graph, shapes: dict[str, Shape] | None = None) -> None:
        super().__init__()
        # planned once: typed attributes and lowerings are looked up here, not per forward;
        # a missing lowering fails here (MissingLowering), before any submodule is made
        steps = plan(graph, LOWER)
        shapes = shapes or graph_shapes(graph)
        self._senet_graph = graph
        self._senet_output = graph.output
        self._senet_input = graph.input_name
        self._senet_input_shape = tuple(graph.input_shape)
        self._senet_mods: dict[str, nn.Module] = {}
        # graph order, so state_dict() lists keys as users know them (layer0 ... last_linear)
        for s in steps:
            if s.op in MAKE:
                m = MAKE.get(s.op, s.name)(s, shapes)
                self._attach(s.name, m)
                self._senet_mods[s.name] = m
        self._senet_steps = steps
        # values no later node reads, freed as soon as possible when not tapping
        self._senet_free = dead_after(graph)

    def _attach(self, path: str, m: nn.Module) -> None:
        parent: nn.Module = self
        *dirs, leaf = path.split(".")
        try:
            for d in dirs:
                child = parent._modules.get(d)
                if child is None:
                    child = nn.Module()
                    parent.add_module(d, child)
                parent = child
            if leaf in parent._modules:
                raise KeyError(f"'{leaf}' already exists")
            parent.add_module(leaf, m)
        except (KeyError, TypeError) as e:
            msg = e.args[0] if e.args else e
            raise ModelError(f"node '{path}': cannot be a PyTorch submodule path ({msg}); rename the node") from None

    # ------------------------------------------------------------------------------- forward

    def _walk(self, x: torch.Tensor, taps: bool) -> dict[str, torch.Tensor]:
        return walk(self._senet_graph, self._senet_steps, self, x, taps=taps, dead=self._senet_free)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._walk(x, taps=False)[self._senet_output]

    def forward_taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every node's output, keyed by canonical node name."""
        return self._walk(x, taps=True)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        _, c, h, w = self._senet_input_shape
        return torch.zeros((batch, c, h, w), dtype=torch.float32)


# --------------------------------------------------------------------------------- interface


def build(model: Model) -> SENetModule:
    """The model as an eval-mode ``SENetModule`` holding its weights in float32."""
    shapes = infer_shapes(model)
    module = SENetModule(model.graph, shapes)
    _load_weights(module, model)
    # save() refuses a .pth of a module whose input convention lives in an InputNorm stage
    module.senet_input_convention = model.meta.get("input_convention")  # type: ignore[assignment]
    module.senet_meta = dict(model.meta)  # type: ignore[assignment]  # save() records it in a .pt2 / .pt
    module.eval()
    return module


def _load_weights(module: SENetModule, model: Model) -> None:
    sd = module.state_dict()
    with torch.no_grad():
        for n in model.graph.nodes:
            for p in n.param_names():
                key = f"{n.name}.{p}"
                sd[key].copy_(
                    torch.from_numpy(np.array(model.weights[key], dtype=np.float32))
                )  # a copy: weights may be read-only views on the file's buffer


def run(native: SENetModule, x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    """Run on float32 NCHW input; every node's output (taps) or only the graph output."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        outs = native.forward_taps(t) if taps else {native._senet_output: native(t)}
    return {k: v.detach().cpu().numpy() for k, v in outs.items()}


def _as_module(model: Model | SENetModule) -> SENetModule:
    if isinstance(model, SENetModule):
        return model
    if isinstance(model, Model):
        return build(model)
    raise TypeError(f"expected a senet_hub Model or SENetModule, got {type(model).__name__}")


def state_dict_bytes(model: Model | SENetModule) -> bytes:
    """The state_dict in torch.save's format (written by senet_hub.converters.pth, so a Model and its
    module give the same bytes); the same weights give the same bytes."""
    from ..converters.pth import model_state_dict, write_state_dict

    if isinstance(model, Model):
        sd = model_state_dict(model)
    else:
        sd = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    write_state_dict(sd, buf)
    return buf.getvalue()


def export_program(model: Model | SENetModule, example_batch: int = 2) -> Any:
    """``torch.export`` program of the module with a dynamic batch dimension."""
    module = _as_module(model)
    batch = torch.export.Dim("batch", min=1)
    # no_grad: the same program and the same .pt2 bytes, traced without autograd bookkeeping
    # (bench/bench_export.py: 2-8 % faster; strict=True would be 4-5x slower and trace another graph)
    with torch.no_grad():
        return torch.export.export(module, (module.example_input(example_batch),), dynamic_shapes={"x": {0: batch}})


def _record_files(model: Model | SENetModule, module: SENetModule) -> dict[str, str]:
    """senet-hub's record and graph as extra files of a .pt2 / .pt, so that senet-hub reads the file
    back (converters.pytorch_program); torch.export.load and torch.jit.load ignore them."""
    from ..converters.pytorch_program import extra_files

    if not isinstance(model, Model):  # a module: its graph, and the meta build() gave it (if any)
        model = Model(module._senet_graph, {}, dict(getattr(module, "senet_meta", None) or {}))
    return extra_files(model)


def save(model: Model | SENetModule, path: str | os.PathLike, format: str | None = None, **_: Any) -> list[str]:
    """Write ``path`` (``.pth`` state_dict, ``.pt2`` torch.export, ``.pt`` TorchScript) atomically."""
    from ..atomic import atomic_outputs, check_writable

    path = os.fspath(path)
    fmt = format or FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt not in FORMATS.values():
        raise OutputError(
            f"{path}: unknown PyTorch output format; use a .pth (state_dict), .pt2 (torch.export) or .pt (TorchScript) file name"
        )
    check_writable(path)
    if fmt == "state_dict" and isinstance(model, Model):  # streams the weights; no module needed
        from ..converters.pth import save_model as save_pth

        return save_pth(model, path)
    module = _as_module(model)
    if fmt == "state_dict":
        staged = any(isinstance(m, InputNorm) for m in module.modules())
        if staged and getattr(module, "senet_input_convention", None):  # its buffers are not in a state_dict
            raise UnsupportedError(
                f"{path}: a .pth state_dict cannot hold the input stage; pass the Model (sources.save_model "
                "folds it into conv1) or write .pt2/.pt, which hold it exactly"
            )
        data = state_dict_bytes(module)
        with atomic_outputs([path]) as (tmp,), open(tmp, "wb") as f:
            f.write(data)
    elif fmt == "export":
        buf = io.BytesIO()  # a buffer: the archive's inner name does not depend on the temporary name
        torch.export.save(export_program(module), buf, extra_files=_record_files(model, module))
        with atomic_outputs([path]) as (tmp,), open(tmp, "wb") as f:
            f.write(buf.getvalue())
    else:
        buf = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            # the spatial size is fixed at trace time by design; torch.jit is deprecated in favour of .pt2
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(module, (module.example_input(2),), check_trace=False)
            torch.jit.save(traced, buf, _extra_files=_record_files(model, module))
        with atomic_outputs([path]) as (tmp,), open(tmp, "wb") as f:
            f.write(buf.getvalue())
    return [path]


def load_state_dict(target: Model | Graph | SENetModule, path: str | os.PathLike) -> SENetModule:
    """Load a ``.pth`` state_dict (strict: exactly the canonical keys) into a senet-hub module.

    ``target`` is a module built by senet-hub (loaded in place), a Model or a bare Graph (a module
    is built for it first). Returns the module, in eval mode.
    """
    path = os.fspath(path)
    if isinstance(target, SENetModule):
        module = target
    elif isinstance(target, Model):
        module = build(target)
    elif isinstance(target, Graph):
        module = SENetModule(target).eval()
    else:
        raise TypeError(f"expected a Model, Graph or SENetModule, got {type(target).__name__}")
    if not os.path.isfile(path):
        raise InputFileError(f"{path}: no such file; check the path")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a bad file
        raise InputFileError(
            f"{path}: not a readable PyTorch state_dict ({type(e).__name__}: {e})".splitlines()[0]
        ) from None
    if not isinstance(sd, dict):
        raise InputFileError(f"{path}: holds a {type(sd).__name__}, not a state_dict")
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise ModelError(f"{path}: does not fit the model: {msg[:300]}") from None
    return module.eval()
