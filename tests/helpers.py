"""Helpers shared by several test modules (imported as ``from helpers import ...``, like parity.py).

- ``cli`` / ``one_line``: run the click CLI in-process and assert a bad input is one line with its
  documented exit code.
- ``have`` / ``needs``: skip a test when an optional framework is not installed.
- ``assert_same_model``: a model read back is the one written (graph, bit-identical weights, meta).
- ``branch_end_bns`` / ``random_timm_net``: a timm model with random weights and randomized
  BatchNorm statistics, the BNs closing residual branches found from the canonical graph.

torch and timm are imported only inside ``random_timm_net``: importing this module loads no
framework (test modules that need none import it too).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

import pytest
from click.testing import CliRunner, Result

from senet_hub.cli import main
from senet_hub.graph import Graph


def cli(*args: object) -> Result:
    """`senet-hub ARGS...` in-process (paths and numbers given as objects are turned into strings)."""
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line(r: Result, code: int, *fragments: str) -> str:
    """Assert the command failed with exit code `code` and printed exactly one line (no traceback)
    holding every fragment; return that line."""
    assert r.exit_code == code, (r.exit_code, r.output)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def have(*mods: str) -> bool:
    """Every module is importable (found without importing it: a framework import costs seconds)."""
    return all(importlib.util.find_spec(m) is not None for m in mods)


def needs(*mods: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not have(*mods), reason=f"needs {', '.join(mods)}")


def branch_end_bns(graph: Graph) -> set[str]:
    """The BatchNorm closing each residual branch (bn3, or a basic block's bn2 before its ReLU):
    the first batch_norm up the branch input of every `axpy` (a*x + y, x the branch)."""
    producer = {n.name: n for n in graph.nodes}
    out = set()
    for n in graph.nodes:
        if n.op == "axpy":
            x = producer[n.inputs[1]]
            while x.op != "batch_norm":
                x = producer[x.inputs[0]]
            out.add(x.name)
    return out


def random_timm_net(
    name: str, layers: Iterable[int] | None = None, seed: int = 0, branch_ends: Iterable[str] = ()
) -> Any:
    """timm's model `name` (optionally at depths `layers`), random weights, randomized BN statistics
    and affine parameters, eval mode.

    The BNs named in `branch_ends` (timm module paths: `branch_end_bns` of the zoo graph, whose node
    names are timm's) get gamma U(0.1, 0.3), as zoo.synthetic_weights does: with gamma ~1 the
    residual stream of a 152-layer net grows by orders of magnitude, its SE gates saturate and
    float32 rounding alone moves them by more than the tolerance. Every other BN gets U(0.5, 1.5)."""
    import timm
    import torch

    ends = set(branch_ends)
    torch.manual_seed(seed)
    net = timm.create_model(name, pretrained=False, **({"layers": tuple(layers)} if layers else {}))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for n, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(*((0.1, 0.3) if n in ends else (0.5, 1.5)), generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    if ends:  # a name the net lacks would leave a branch's gamma ~1 silently
        missing = ends - dict(net.named_modules()).keys()
        assert not missing, f"{name}: no modules {sorted(missing)[:4]}"
    return net.eval()


READBACK_META = ("arch", "input_convention", "class_order", "num_classes", "input_fold")


def assert_same_model(got: Any, want: Any, meta: Iterable[str] = READBACK_META) -> None:
    """Same graph (structure, node names, ops and inputs, output, input shape), bit-identical float32
    weights, the same `meta` keys: what every read-back test asks of a file senet-hub wrote."""
    import numpy as np

    from senet_hub.graph import structure

    assert structure(got.graph) == structure(want.graph)
    assert [(n.name, n.op, n.inputs) for n in got.graph.nodes] == [(n.name, n.op, n.inputs) for n in want.graph.nodes]
    assert got.graph.output == want.graph.output and tuple(got.graph.input_shape) == tuple(want.graph.input_shape)
    assert got.graph.input_name == want.graph.input_name
    assert set(got.weights) == set(want.weights)
    for k, w in want.weights.items():
        a = got.weights[k]
        assert a.dtype == np.float32 and a.shape == w.shape, k
        assert np.array_equal(a.view(np.uint32), np.asarray(w, np.float32).view(np.uint32)), k
    keys = tuple(meta)
    assert {k: got.meta.get(k) for k in keys} == {k: want.meta.get(k) for k in keys}
