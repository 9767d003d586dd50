"""MXNet: an ``mx.sym`` graph walked from the canonical Model, run with the CPU executor.

One symbol per canonical node, named exactly like the node (MXNet names may contain ``.``);
helper symbols a node needs are named ``<node>/<what>``. Parameters follow MXNet's naming
convention on the canonical node name: ``<node>_weight``, ``<node>_bias`` (conv, linear),
``<node>_gamma``, ``<node>_beta``, ``<node>_moving_mean``, ``<node>_moving_var`` (batch norm;
the last two are auxiliary states), ``<node>_scale``, ``<node>_shift`` (input_norm constants,
shape 1 x C x 1 x 1).

Op mapping, with every parameter whose MXNet default differs set explicitly:

- conv -> Convolution (num_group = groups, pad when symmetric; asymmetric pads -> ``pad`` op first)
- batch_norm -> BatchNorm(eps = attr, fix_gamma=False, use_global_stats=True, axis=1)
- max_pool / avg_pool -> Pooling(pooling_convention 'full' for ceil, 'valid' for floor,
  count_include_pad). MXNet's 'full' does not apply Caffe's clip rule: where it yields one more
  window than graph.pool_out (the extra one starts in the end padding), a ``slice`` drops it.
  Asymmetric pads: an explicit ``pad`` op (-inf for max, 0 for avg) and Pooling with pad 0; for avg
  without count_include_pad the sum is divided by the pooled mask of real pixels.
- global_avg_pool -> Pooling(global_pool=True, avg); axpy -> broadcast_mul(reshape(a, 0,0,1,1), x)
  + y; channel_scale -> broadcast_mul; add -> elemwise add; concat -> Concat(dim = axis);
  reshape -> Reshape (Caffe's 0 / -1 are MXNet's 0 / -1); flatten -> Flatten;
  linear -> FullyConnected(flatten=True); softmax -> softmax(axis=1); dropout -> Dropout (identity
  at inference); input_norm -> split + Concat (channel permutation) + broadcast_mul / _add.

The clip-rule slice depends on the input's spatial size, so a symbol is built for one H x W
(the model's ``graph.input_shape`` when saved; ``run`` rebuilds for other sizes). The batch size
is free.

``save(model, prefix)`` writes ``<prefix>-symbol.json`` and ``<prefix>-0000.params`` (keys
``arg:<name>`` / ``aux:<name>``), loadable with MXNet alone (the input variable's ``__senet_hub__``
attribute, senet-hub's record for reading the prefix back, is ignored by MXNet)::

    net = mx.gluon.SymbolBlock.imports(prefix + "-symbol.json", ["data"], prefix + "-0000.params")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..graph import Model, infer_shapes, pool_out
from ..ops import Lowerings, PoolAttrs, Step, plan, walk
from .compat import import_mxnet, version_of

NAME = "mxnet"
EXTRA = "mxnet"

_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}
_AUX = ("running_mean", "running_var")


def available() -> str | None:
    return version_of("mxnet")


def param_name(node: str, op: str, param: str) -> str:
    """The MXNet variable name of canonical parameter ``<node>.<param>``."""
    return f"{node}_{_BN[param] if op == 'batch_norm' else param}"


def _pool(mx: Any, x: Any, name: str, a: PoolAttrs, is_max: bool, in_hw: tuple[int, int]) -> Any:
    (kh, kw), (sh, sw) = a.kernel, a.stride
    pt, pl, pb, pr = (int(p) for p in a.pad)
    ceil, inc = bool(a.ceil), bool(a.count_include_pad)
    conv = "full" if ceil else "valid"
    typ = "max" if is_max else "avg"
    kw_: dict[str, Any] = dict(kernel=(kh, kw), stride=(sh, sw), pool_type=typ, pooling_convention=conv)
    if not is_max:
        kw_["count_include_pad"] = inc
    h, w = in_hw
    sym = (pt, pl) == (pb, pr)
    eh, ew = (h + pt + pb, w + pl + pr)
    # MXNet's own output size (its 'full' has no clip rule) vs the canonical one
    mh = (-(-(eh - kh) // sh) if ceil else (eh - kh) // sh) + 1
    mw = (-(-(ew - kw) // sw) if ceil else (ew - kw) // sw) + 1
    ho, wo = pool_out(h, kh, sh, pt, pb, ceil), pool_out(w, kw, sw, pl, pr, ceil)
    clip = (mh, mw) != (ho, wo)
    divide = not sym and not is_max and not inc
    pool_name = f"{name}/pool" if clip or divide else name
    if sym:
        y = mx.sym.Pooling(x, pad=(pt, pl), name=pool_name, **kw_)
    else:
        width = (0, 0, 0, 0, pt, pb, pl, pr)
        fill = -np.inf if is_max else 0.0
        xp = mx.sym.pad(x, mode="constant", constant_value=fill, pad_width=width, name=f"{name}/pad")
        y = mx.sym.Pooling(xp, pad=(0, 0), name=pool_name, **kw_)
        if divide:  # divide the window sums by the number of real pixels in them
            ones = mx.sym.ones_like(x, name=f"{name}/ones")
            mask = mx.sym.pad(ones, mode="constant", constant_value=0.0, pad_width=width, name=f"{name}/mask")
            count = mx.sym.Pooling(mask, pad=(0, 0), name=f"{name}/count", **kw_)
            y = mx.sym.broadcast_div(y, count, name=f"{name}/div" if clip else name)
    if clip:  # drop the last window where it starts in the end padding (Caffe's clip rule)
        y = mx.sym.slice(y, begin=(None, None, 0, 0), end=(None, None, ho, wo), name=name)
    return y


def _nc11(mx: Any, s: Any, name: str) -> Any:
    return mx.sym.reshape(s, shape=(0, 0, 1, 1), name=name)


@dataclass
class _Ctx:
    """What a lowering needs besides its inputs: the framework and the inferred shapes."""

    mx: Any
    shapes: dict[str, tuple[int, ...]]

    def var(self, s: Step, p: str) -> Any:
        return self.mx.sym.Variable(param_name(s.name, s.op, p))


LowerFn = Callable[[_Ctx, Step, list[Any]], Any]
# ``fn(ctx, step, inputs) -> symbol``: one symbol named like the node (helpers ``<node>/<what>``)
LOWER: Lowerings[LowerFn] = Lowerings("mxnet")


@LOWER.register("conv")
def _conv(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    a, x = s.attrs, ins[0]
    pt, pl, pb, pr = a.pad
    if (pt, pl) != (pb, pr):  # MXNet's Convolution pads symmetrically only
        width = (0, 0, 0, 0, pt, pb, pl, pr)
        x = c.mx.sym.pad(x, mode="constant", constant_value=0.0, pad_width=width, name=f"{s.name}/pad")
        pt = pl = 0
    has_bias = "bias" in s.node.param_names()
    return c.mx.sym.Convolution(
        x,
        weight=c.var(s, "weight"),
        bias=c.var(s, "bias") if has_bias else None,
        kernel=tuple(a.kernel),
        stride=tuple(a.stride),
        dilate=tuple(a.dilation),
        pad=(pt, pl),
        num_filter=int(a.out_channels),
        num_group=int(a.groups),
        no_bias=not has_bias,
        name=s.name,
    )


@LOWER.register("batch_norm")
def _batch_norm(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.mx.sym.BatchNorm(
        ins[0],
        gamma=c.var(s, "weight"),
        beta=c.var(s, "bias"),
        moving_mean=c.var(s, "running_mean"),
        moving_var=c.var(s, "running_var"),
        eps=float(s.attrs.eps),
        fix_gamma=False,
        use_global_stats=True,
        axis=1,
        name=s.name,
    )


@LOWER.register("relu")
def _relu(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.mx.sym.Activation(ins[0], act_type="relu", name=s.name)


@LOWER.register("sigmoid")
def _sigmoid(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.mx.sym.Activation(ins[0], act_type="sigmoid", name=s.name)


@LOWER.register("max_pool")
def _max_pool(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return _pool(c.mx, ins[0], s.name, s.attrs, True, _hw(c.shapes[s.inputs[0]]))


@LOWER.register("avg_pool")
def _avg_pool(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return _pool(c.mx, ins[0], s.name, s.attrs, False, _hw(c.shapes[s.inputs[0]]))


@LOWER.register("global_avg_pool")
def _global_avg_pool(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.mx.sym.Pooling(ins[0], kernel=(1, 1), global_pool=True, pool_type="avg", name=s.name)


@LOWER.register("axpy")
def _axpy(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    ax = c.mx.sym.broadcast_mul(_nc11(c.mx, ins[0], f"{s.name}/a"), ins[1], name=f"{s.name}/ax")
    return c.mx.sym.elemwise_add(ax, ins[2], name=s.name)


@LOWER.register("channel_scale")
def _channel_scale(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.mx.sym.broadcast_mul(ins[0], _nc11(c.mx, ins[1], f"{s.name}/s"), name=s.name)


@LOWER.register("add")
def _add(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.mx.sym.elemwise_add(ins[0], ins[1], name=s.name)


@LOWER.register("concat")
def _concat(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.mx.sym.concat(*ins, dim=int(s.attrs.axis), name=s.name)


@LOWER.register("reshape")
def _reshape(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    # Caffe's 0 (copy) / -1 (infer) mean the same in MXNet's Reshape
    return c.mx.sym.reshape(ins[0], shape=tuple(int(d) for d in s.attrs.shape), name=s.name)


@LOWER.register("flatten")
def _flatten(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.mx.sym.flatten(ins[0], name=s.name)


@LOWER.register("linear")
def _linear(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    has_bias = "bias" in s.node.param_names()
    return c.mx.sym.FullyConnected(
        ins[0],
        weight=c.var(s, "weight"),
        bias=c.var(s, "bias") if has_bias else None,
        num_hidden=int(s.attrs.out_features),
        no_bias=not has_bias,
        flatten=True,
        name=s.name,
    )


@LOWER.register("softmax")
def _softmax(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.mx.sym.softmax(ins[0], axis=1, name=s.name)


@LOWER.register("dropout")
def _dropout(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    return c.mx.sym.Dropout(ins[0], p=float(s.attrs.ratio), name=s.name)  # the identity at inference


@LOWER.register("input_norm")
def _input_norm(c: _Ctx, s: Step, ins: list[Any]) -> Any:
    x, perm = ins[0], [int(p) for p in s.attrs.perm]
    if perm != list(range(len(perm))):  # no channel gather in mx.sym: split + reordered concat
        parts = c.mx.sym.split(x, num_outputs=len(perm), axis=1, name=f"{s.name}/split")
        x = c.mx.sym.concat(*[parts[p] for p in perm], dim=1, name=f"{s.name}/perm")
    # the constants' shapes are stated (``__shape__``): broadcast ops cannot infer them, and without
    # them mx.mod.Module cannot bind the saved symbol from the data shape alone
    shape = (1, len(perm), 1, 1)
    scale, shift = (c.mx.sym.Variable(param_name(s.name, s.op, p), shape=shape) for p in ("scale", "shift"))
    xs = c.mx.sym.broadcast_mul(x, scale, name=f"{s.name}/mul")
    return c.mx.sym.broadcast_add(xs, shift, name=s.name)


def to_symbol(
    model: Model, input_shape: tuple[int, ...] | None = None, input_attr: dict[str, str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """(output symbol, {canonical node name: symbol}) for inputs of ``input_shape`` (H, W matter);
    ``input_attr``: attributes of the input variable (``__x__`` names, which MXNet keeps in the JSON)."""
    g = model.graph
    steps = plan(g, LOWER)  # a missing lowering fails here, before MXNet is imported
    mx = import_mxnet()
    shapes = infer_shapes(model, tuple(input_shape or g.input_shape))
    x = mx.sym.Variable(g.input_name, attr=input_attr)
    nodes = walk(g, steps, _Ctx(mx, shapes), x, taps=True)
    return nodes[g.output], nodes


ParamsFn = Callable[[Model, Step, dict[str, np.ndarray], dict[str, np.ndarray]], None]
# ``fn(model, step, arg, aux)`` fills a node's MXNet variables; ops without parameters have none
PARAMS: Lowerings[ParamsFn] = Lowerings("mxnet")


def _copy(model: Model, s: Step, p: str) -> np.ndarray:
    return np.ascontiguousarray(model.param(s.name, p), np.float32)


@PARAMS.register("conv", "linear")
def _weights(model: Model, s: Step, arg: dict[str, np.ndarray], aux: dict[str, np.ndarray]) -> None:
    for p in s.node.param_names():
        arg[param_name(s.name, s.op, p)] = _copy(model, s, p)


@PARAMS.register("batch_norm")
def _bn_params(model: Model, s: Step, arg: dict[str, np.ndarray], aux: dict[str, np.ndarray]) -> None:
    for p in s.node.param_names():  # running statistics are MXNet auxiliary states, not arguments
        (aux if p in _AUX else arg)[param_name(s.name, s.op, p)] = _copy(model, s, p)


@PARAMS.register("input_norm")
def _norm_params(model: Model, s: Step, arg: dict[str, np.ndarray], aux: dict[str, np.ndarray]) -> None:
    _weights(model, s, arg, aux)
    for p in ("scale", "shift"):  # attributes in the canonical graph, constants (1 x C x 1 x 1) here
        arg[param_name(s.name, s.op, p)] = np.asarray(getattr(s.attrs, p), np.float32).reshape(1, -1, 1, 1)


def params(model: Model) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(arg params, aux params) as float32 numpy arrays keyed by MXNet variable name."""
    arg: dict[str, np.ndarray] = {}
    aux: dict[str, np.ndarray] = {}
    for s in plan(model.graph, LOWER):
        if s.op in PARAMS:
            PARAMS.get(s.op, s.name)(model, s, arg, aux)
    return arg, aux


@dataclass
class MXNetModel:
    """The symbol (for ``graph.input_shape``), its parameters on CPU, and cached executors."""

    model: Model
    symbol: Any
    nodes: dict[str, Any]
    arg_params: dict[str, Any]
    aux_params: dict[str, Any]
    _symbols: dict[tuple[int, int], tuple[Any, dict[str, Any]]] = field(default_factory=dict, repr=False)
    _executors: dict[tuple, Any] = field(default_factory=dict, repr=False)

    def symbols_for(self, hw: tuple[int, int]) -> tuple[Any, dict[str, Any]]:
        if hw not in self._symbols:
            g = self.model.graph
            self._symbols[hw] = to_symbol(self.model, (1, g.input_shape[1], *hw))
        return self._symbols[hw]

    def executor(self, shape: tuple[int, ...], taps: bool) -> Any:
        key = (shape, taps)
        if key not in self._executors:
            while len(self._executors) >= 4:  # bound the cache (one executor per input shape)
                self._executors.pop(next(iter(self._executors)))
            mx = import_mxnet()
            out, nodes = self.symbols_for(_hw(shape))
            sym = mx.sym.Group(list(nodes.values())) if taps else out
            args = {k: self.arg_params[k] for k in sym.list_arguments() if k != self.model.graph.input_name}
            args[self.model.graph.input_name] = mx.nd.zeros(shape, ctx=mx.cpu())
            aux = {k: self.aux_params[k] for k in sym.list_auxiliary_states()}
            # MXNet's MKLDNN subgraph pass fuses conv + BN and fails on a Group that also outputs the
            # fused-away values: bind the tap graph unfused (it is the layer-by-layer view anyway)
            verbose = None if "MXNET_SUBGRAPH_VERBOSE" in os.environ else "0"  # no log line per bind
            with _env("MXNET_SUBGRAPH_BACKEND", "NONE" if taps else None), _env("MXNET_SUBGRAPH_VERBOSE", verbose):
                self._executors[key] = sym.bind(mx.cpu(), args=args, aux_states=aux, grad_req="null")
        return self._executors[key]


@contextlib.contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """Set an environment variable for the duration of the block (None: leave it alone)."""
    if value is None:
        yield
        return
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def build(model: Model) -> MXNetModel:
    mx = import_mxnet()
    out, nodes = to_symbol(model)
    arg, aux = params(model)
    g = model.graph
    m = MXNetModel(
        model,
        out,
        nodes,
        {k: _nd(mx, v) for k, v in arg.items()},
        {k: _nd(mx, v) for k, v in aux.items()},
    )
    m._symbols[_hw(g.input_shape)] = (out, nodes)
    return m


def run(native: MXNetModel, x: np.ndarray, taps: bool = True) -> dict[str, np.ndarray]:
    """Run on CPU; every canonical node's output (taps) or only the graph output."""
    mx = import_mxnet()
    x = np.ascontiguousarray(x, np.float32)
    exe = native.executor(tuple(x.shape), taps)
    outs = exe.forward(is_train=False, **{native.model.graph.input_name: _nd(mx, x)})
    names = [n.name for n in native.model.graph.nodes] if taps else [native.model.graph.output]
    return {k: v.asnumpy() for k, v in zip(names, outs)}


def _nd(mx: Any, a: np.ndarray) -> Any:
    """float32 CPU NDArray copy of a numpy array (without mx.nd.array's deprecated scipy check)."""
    out = mx.nd.empty(a.shape, ctx=mx.cpu(), dtype=np.float32)
    out[:] = np.ascontiguousarray(a, np.float32)
    return out


def _hw(shape: Any) -> tuple[int, int]:
    """(H, W) of an N x C x H x W shape."""
    return int(shape[2]), int(shape[3])


def _prefix(path: str) -> str:
    for suffix in ("-symbol.json", "-0000.params"):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


RECORD_ATTR = "__senet_hub__"  # on the input variable: MXNet keeps attributes named __x__ and no operator reads it


def record(model: Model) -> str:
    """The record save() puts on the symbol's input variable, as JSON text: what
    converters.pth.metadata_record records plus the graph and meta as builders.chainer's graph JSON
    (converters.mxnet_params reads it back). The same model gives the same text, so a prefix's bytes
    stay reproducible."""
    import json

    from ..converters.pth import metadata_record
    from ..graph import graph_document

    doc = {**metadata_record(model), "graph": graph_document(model.graph, model.meta)}
    return json.dumps(doc, sort_keys=True, default=str)


def save(model: Model, path: str | os.PathLike, epoch: int = 0, **_: Any) -> list[str]:
    """Write ``<prefix>-symbol.json`` and ``<prefix>-%04d.params`` atomically; returns both paths.

    The symbol carries senet-hub's record (graph, meta, input convention, class order) as the
    attribute ``__senet_hub__`` of its input variable, which MXNet keeps and ignores and
    ``--from mxnet`` reads back exactly (converters.mxnet_params)."""
    from ..atomic import atomic_outputs, check_writable

    prefix = _prefix(os.fspath(path))
    files = [f"{prefix}-symbol.json", f"{prefix}-{epoch:04d}.params"]
    for f in files:
        check_writable(f)
    mx = import_mxnet()
    sym, _ = to_symbol(model, input_attr={RECORD_ATTR: record(model)})
    arg, aux = params(model)
    data = {f"arg:{k}": _nd(mx, v) for k, v in arg.items()}
    data.update({f"aux:{k}": _nd(mx, v) for k, v in aux.items()})
    with atomic_outputs(files) as (tmp_sym, tmp_params):
        with open(tmp_sym, "w", encoding="utf-8") as fs:
            fs.write(sym.tojson())
        try:
            mx.nd.save(tmp_params, data)
        except mx.base.MXNetError as e:  # report as an I/O failure: temporaries removed, OutputError raised
            raise OSError(f"{files[1]}: {str(e).strip().splitlines()[0]}") from None
    return files
