"""MXNet consumer: gluon ``SymbolBlock.imports`` of a prefix-symbol.json + prefix-0000.params pair."""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import FormatError
from .core import Job, _check_tensors, _first_line, register


@register(
    "mxnet",
    formats=("mxnet",),
    needs=("mxnet",),
    install="pip install 'senet-hub[mxnet]'",
    default_for=("mxnet",),
    description="gluon SymbolBlock.imports(prefix-symbol.json, ['data'], prefix-0000.params); per node",
)
def _run_mxnet(job: Job) -> dict[str, np.ndarray]:
    from ..builders import mxnet as mxb
    from ..builders.compat import import_mxnet

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
