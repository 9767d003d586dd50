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
TorchScript (``torch.jit.trace``; fixed spatial size). Files are written atomically.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputFileError, ModelError, OutputError, UnsupportedError
from ..graph import Graph, Model, infer_shapes, output_shape, pool_out

NAME = "torch"
EXTRA = "torch"
FORMATS = {".pth": "state_dict", ".pt2": "export", ".pt": "torchscript"}


def available() -> str | None:
    return torch.__version__


# ------------------------------------------------------------------------------------- helpers


def _graph_shapes(graph: Graph, input_shape: tuple[int, ...] | None = None) -> dict[str, tuple[int, ...]]:
    """Every value's shape from the graph alone (no weights needed)."""
    shapes: dict[str, tuple[int, ...]] = {graph.input_name: tuple(input_shape or graph.input_shape)}
    for n in graph.nodes:
        try:
            shapes[n.name] = output_shape(n, [shapes[i] for i in n.inputs])
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise ModelError(f"node '{n.name}' ({n.op}): {e}") from None
    return shapes


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


class _Step:
    """One node of the walk: name, op, inputs, the submodule (if any) and the op's static settings."""

    __slots__ = ("name", "op", "inputs", "module", "cfg")

    module: Any  # the node's nn.Module (None for parameter-free ops, whose cfg says what to do)

    def __init__(self, name: str, op: str, inputs: list[str], module: nn.Module | None, cfg: dict[str, Any]) -> None:
        self.name, self.op, self.inputs, self.module, self.cfg = name, op, list(inputs), module, cfg


def _pair(v: Any) -> tuple[int, int]:
    a, b = (int(x) for x in v)
    return a, b


def _pool_cfg(a: dict) -> dict[str, Any]:
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["pad"])
    return dict(
        k=(int(kh), int(kw)),
        s=(int(sh), int(sw)),
        pad=(int(pt), int(pl), int(pb), int(pr)),
        ceil=bool(a.get("ceil", False)),
        include_pad=bool(a.get("count_include_pad", True)),
        # torch's own pooling (symmetric pads, at most half the kernel) has graph.py's size rule
        native=pt == pb and pl == pr and 2 * pt <= kh and 2 * pl <= kw,
    )


def _pool(x: torch.Tensor, c: dict[str, Any], is_max: bool) -> torch.Tensor:
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = c["k"], c["s"], c["pad"]
    if c["native"]:
        if is_max:
            return F.max_pool2d(x, (kh, kw), (sh, sw), (pt, pl), ceil_mode=c["ceil"])
        return F.avg_pool2d(x, (kh, kw), (sh, sw), (pt, pl), ceil_mode=c["ceil"], count_include_pad=c["include_pad"])
    h, w = int(x.shape[-2]), int(x.shape[-1])
    ho, wo = pool_out(h, kh, sh, pt, pb, c["ceil"]), pool_out(w, kw, sw, pl, pr, c["ceil"])
    eh, ew = (ho - 1) * sh + kh, (wo - 1) * sw + kw  # exactly the rows/columns the windows read
    if is_max:
        return F.max_pool2d(_canvas(x, pt, pl, eh, ew, -math.inf), (kh, kw), (sh, sw))
    total = F.avg_pool2d(_canvas(x, pt, pl, eh, ew, 0.0), (kh, kw), (sh, sw))
    if c["include_pad"]:  # the window clipped to [-p0, size + p1)
        mask = _canvas(x.new_ones((1, 1, h + pt + pb, w + pl + pr)), 0, 0, eh, ew, 0.0)
    else:  # the real pixels only
        mask = _canvas(x.new_ones((1, 1, h, w)), pt, pl, eh, ew, 0.0)
    return total / F.avg_pool2d(mask, (kh, kw), (sh, sw))


def _reshape(x: torch.Tensor, spec: list[int]) -> torch.Tensor:
    return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(spec)])


# -------------------------------------------------------------------------------------- module


class SENetModule(nn.Module):
    """A canonical senet-hub graph as a PyTorch module (see the module docstring)."""

    def __init__(self, graph: Graph, shapes: dict[str, tuple[int, ...]] | None = None) -> None:
        super().__init__()
        shapes = shapes or _graph_shapes(graph)
        self._senet_graph = graph
        self._senet_output = graph.output
        self._senet_input = graph.input_name
        self._senet_input_shape = tuple(graph.input_shape)
        mods: dict[str, nn.Module] = {}
        # graph order, so state_dict() lists keys as users know them (layer0 ... last_linear)
        for n in graph.nodes:
            m = self._make(n, shapes)
            if m is not None:
                self._attach(n.name, m)
                mods[n.name] = m
        steps = []
        for n in graph.nodes:
            a = n.attrs
            cfg: dict[str, Any] = {}
            if n.op == "conv":
                pt, pl, pb, pr = (int(p) for p in a["pad"])
                cfg = {"pad": None if (pt == pb and pl == pr) else (pl, pr, pt, pb)}
            elif n.op in ("max_pool", "avg_pool"):
                cfg = _pool_cfg(a)
            elif n.op == "concat":
                cfg = {"axis": int(a.get("axis", 1))}
            elif n.op == "reshape":
                cfg = {"shape": [int(d) for d in a["shape"]]}
            steps.append(_Step(n.name, n.op, n.inputs, mods.get(n.name), cfg))
        self._senet_steps = steps
        last_use: dict[str, int] = {}
        for i, s in enumerate(steps):
            for v in s.inputs:
                last_use[v] = i
        # values no later node reads, freed as soon as possible when not tapping
        self._senet_free = [
            [v for v in dict.fromkeys(s.inputs) if last_use[v] == i and v != graph.output] for i, s in enumerate(steps)
        ]

    @staticmethod
    def _make(n: Any, shapes: dict[str, tuple[int, ...]]) -> nn.Module | None:
        a = n.attrs
        if n.op == "conv":
            pt, pl, pb, pr = (int(p) for p in a["pad"])
            return nn.Conv2d(
                shapes[n.inputs[0]][1],
                int(a["out_channels"]),
                _pair(a["kernel"]),
                stride=_pair(a["stride"]),
                padding=(pt, pl) if (pt == pb and pl == pr) else 0,
                dilation=_pair(a.get("dilation", (1, 1))),
                groups=int(a.get("groups", 1)),
                bias=bool(a.get("bias", True)),
            )
        if n.op == "batch_norm":
            return nn.BatchNorm2d(shapes[n.inputs[0]][1], eps=float(a["eps"]))
        if n.op == "linear":
            return nn.Linear(math.prod(shapes[n.inputs[0]][1:]), int(a["out_features"]), bias=bool(a.get("bias", True)))
        if n.op == "input_norm":
            return InputNorm(a["perm"], a["scale"], a["shift"])
        return None

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
        vals: dict[str, torch.Tensor] = {self._senet_input: x}
        out: dict[str, torch.Tensor] = {}
        for s, free in zip(self._senet_steps, self._senet_free):
            ins = [vals[v] for v in s.inputs]
            y = self._run_step(s, ins)
            vals[s.name] = y
            if taps:
                out[s.name] = y
            else:
                for v in free:
                    del vals[v]
        if not taps:
            out[self._senet_output] = vals[self._senet_output]
        return out

    @staticmethod
    def _run_step(s: _Step, ins: list[torch.Tensor]) -> torch.Tensor:
        op, x, c = s.op, ins[0], s.cfg
        if op == "conv":
            if c["pad"] is not None:
                x = F.pad(x, c["pad"])
            return s.module(x)
        if op in ("batch_norm", "input_norm"):
            return s.module(x)
        if op == "linear":
            return s.module(torch.flatten(x, 1))
        if op == "relu":
            return F.relu(x)
        if op == "sigmoid":
            return torch.sigmoid(x)
        if op == "max_pool":
            return _pool(x, c, True)
        if op == "avg_pool":
            return _pool(x, c, False)
        if op == "global_avg_pool":
            return x.mean(dim=(2, 3), keepdim=True)
        if op == "axpy":
            return _nc11(ins[0]) * ins[1] + ins[2]
        if op == "channel_scale":
            return x * _nc11(ins[1])
        if op == "add":
            return x + ins[1]
        if op == "concat":
            return torch.cat(ins, dim=c["axis"])
        if op == "reshape":
            return _reshape(x, c["shape"])
        if op == "flatten":
            return torch.flatten(x, 1)
        if op == "softmax":
            return torch.softmax(x, dim=1)
        if op == "dropout":
            return x
        raise UnsupportedError(f"node '{s.name}': op '{op}' has no PyTorch mapping")

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
        torch.export.save(export_program(module), buf)
        with atomic_outputs([path]) as (tmp,), open(tmp, "wb") as f:
            f.write(buf.getvalue())
    else:
        buf = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            # the spatial size is fixed at trace time by design; torch.jit is deprecated in favour of .pt2
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            traced = torch.jit.trace(module, (module.example_input(2),), check_trace=False)
            torch.jit.save(traced, buf)
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
