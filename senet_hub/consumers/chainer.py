"""Chainer consumer of a .npz: the graph stored in the file is checked against the source model,
then ``builders.chainer.load`` reads it (``np.load(allow_pickle=False)``: nothing is unpickled)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import FormatError, ModelError
from ..graph import read_graph
from .core import Job, _first_line, register


def _plain(v: Any) -> Any:
    """An attribute as JSON gives it back (tuples are lists there)."""
    return [_plain(i) for i in v] if isinstance(v, (list, tuple)) else v


@register(
    "chainer",
    formats=("npz",),
    needs=("chainer",),
    install="pip install 'senet-hub[chainer]'",
    default_for=("npz",),
    description="builders.chainer.load(None, file) (graph stored in the file); per node",
)
def _run_chainer(job: Job) -> dict[str, np.ndarray]:
    from ..builders import chainer as chb
    from ..graph import structure

    try:
        with np.load(job.path, allow_pickle=False) as z:  # read the stored graph; never unpickle
            raw = z[chb.GRAPH_KEY].tobytes().decode("utf-8") if chb.GRAPH_KEY in z.files else None
    except Exception as e:
        raise FormatError(f"{job.path}: not an .npz archive ({_first_line(e)})") from None
    if raw is not None:
        graph, _ = read_graph(raw, f"{job.path}: entry '{chb.GRAPH_KEY}'", "write it again with senet-hub")
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
