"""Layer-by-layer parity of backends against the float64 numpy reference.

Every backend runs the same input and returns every node's output; each is compared with the
reference node by node (max |delta|, max |delta| / max |ref|, cosine). A node passes when
max |delta| <= rtol * max |ref|. The report renders as a terminal table, Markdown or JSON.
"""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__, builders
from .errors import SenetHubError
from .graph import Model, infer_shapes

DEFAULT_RTOL = 1e-3


def default_input(model: Model, batch: int = 2, seed: int = 7) -> np.ndarray:
    """The deterministic verification input.

    For pixel-scale inputs (Caffe: BGR 0-255 minus the mean) it is N(0, 50), the same array as the
    shared real-Caffe references for batch 2 and seed 7; for normalized inputs N(0, 1).
    """
    conv = model.meta.get("input_convention") or {}
    hi = float(list(conv.get("range", [0, 1]))[-1])
    shape = (batch, *model.graph.input_shape[1:])
    rng = np.random.default_rng(seed)
    if hi > 1 and all(float(s) == 1.0 for s in conv.get("std", [1.0])):  # mean-free pixels
        x = rng.normal(0, 50, size=shape)
    else:  # normalized inputs
        x = rng.normal(0, 1, size=shape)
    return x.astype(np.float32)


@dataclass
class NodeResult:
    max_abs: float
    rel: float
    cos: float
    ok: bool


@dataclass
class Report:
    model: Model
    backends: list[str]
    versions: dict[str, str]
    input_shape: tuple[int, ...]
    input_sha256: str
    rtol: float
    rows: list[dict[str, Any]] = field(default_factory=list)  # per node: name, source, shape, results
    topk: dict[str, dict[str, float]] = field(default_factory=dict)
    first_divergent: dict[str, str | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    command: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            not self.errors
            and all(v is None for v in self.first_divergent.values())
            and all(t["top1"] == 1.0 for t in self.topk.values())
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "senet_hub": __version__,
            "command": self.command,
            "python": platform.python_version(),
            "arch": self.model.arch,
            "versions": self.versions,
            "reference": "numpy float64",
            "tolerances": {"rtol_per_node": self.rtol, "rule": "max|delta| <= rtol * max|ref|", "top1": "identical"},
            "input": {"shape": list(self.input_shape), "sha256": self.input_sha256},
            "backends": self.backends,
            "passed": self.passed,
            "first_divergent": self.first_divergent,
            "topk_agreement": self.topk,
            "errors": self.errors,
            "seconds": self.timings,
            "nodes": [
                {
                    **{k: r[k] for k in ("node", "source", "shape")},
                    "results": {b: vars(v) for b, v in r["results"].items()},
                }
                for r in self.rows
            ],
        }

    def _cells(self, r: dict[str, Any], b: str) -> str:
        v = r["results"].get(b)
        if v is None:
            return f"{'-':>9} {'-':>9} {'-':>9}"
        flag = " " if v.ok else "!"
        return f"{v.max_abs:9.2e} {v.rel:9.2e} {v.cos:9.6f}{flag}"

    def to_text(self, max_rows: int | None = None) -> str:
        others = [b for b in self.backends if b != "numpy"] or ["numpy"]
        width = max([len(r["node"]) for r in self.rows] + [4])
        swidth = min(max([len(", ".join(r["source"])) for r in self.rows] + [6]), 40)
        head = f"{'node':<{width}}  {'source':<{swidth}}  {'shape':<18}" + "".join(
            f" | {b + ': max|d|':>9} {'rel':>9} {'cos':>9} " for b in others
        )
        lines = [head, "-" * len(head)]
        rows = self.rows if max_rows is None else self.rows[:max_rows]
        for r in rows:
            src = ", ".join(r["source"])
            src = src if len(src) <= swidth else src[: swidth - 1] + "~"
            lines.append(
                f"{r['node']:<{width}}  {src:<{swidth}}  {'x'.join(map(str, r['shape'])):<18}"
                + "".join(f" | {self._cells(r, b)}" for b in others)
            )
        if max_rows is not None and len(self.rows) > max_rows:
            lines.append(f"... {len(self.rows) - max_rows} more nodes")
        lines.append("")
        lines.append(
            f"reference: numpy float64; tolerance per node: max|d| <= {self.rtol:g} * max|ref|; '!' marks a node over it"
        )
        for b in others:
            if b in self.errors:
                lines.append(f"{b:<12} ERROR: {self.errors[b]}")
                continue
            fd = self.first_divergent.get(b)
            t = self.topk.get(b, {})
            lines.append(
                f"{b:<12} {self.versions.get(b, ''):<10} first divergent node: {fd or 'none'}; "
                f"top-1 agreement {t.get('top1', 0):.0%}, top-5 overlap {t.get('top5', 0):.0%}; "
                f"{self.timings.get(b, 0):.2f} s"
            )
        lines.append(
            f"PARITY {'HOLDS' if self.passed else 'FAILED'} ({self.model.arch}, input {'x'.join(map(str, self.input_shape))})"
        )
        return "\n".join(lines)

    def to_markdown(self) -> str:
        others = [b for b in self.backends if b != "numpy"] or ["numpy"]
        out = [
            "| node | source | shape | " + " | ".join(f"{b} rel" for b in others) + " |",
            "|---|---|---|" + "---|" * len(others),
        ]
        for r in self.rows:
            cells = [f"{r['results'][b].rel:.2e}" if b in r["results"] else "-" for b in others]
            out.append(
                f"| {r['node']} | {', '.join(r['source'])} | {'x'.join(map(str, r['shape']))} | "
                + " | ".join(cells)
                + " |"
            )
        out.append("")
        out.append(f"**Parity {'holds' if self.passed else 'FAILED'}** (rtol {self.rtol:g} per node)")
        return "\n".join(out)


def compare(ref: np.ndarray, got: np.ndarray, rtol: float) -> NodeResult:
    ref64, got64 = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    if ref64.shape != got64.shape:
        return NodeResult(float("inf"), float("inf"), 0.0, False)
    scale = float(np.abs(ref64).max()) if ref64.size else 0.0
    diff = float(np.abs(ref64 - got64).max()) if ref64.size else 0.0
    if not np.isfinite(diff):
        return NodeResult(float("inf"), float("inf"), 0.0, False)
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    na, nb = np.linalg.norm(ref64), np.linalg.norm(got64)
    cos = float(np.dot(ref64.ravel(), got64.ravel()) / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
    return NodeResult(diff, rel, cos, rel <= rtol)


def topk_agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    r, g = ref.reshape(ref.shape[0], -1), got.reshape(got.shape[0], -1)
    top1 = float(np.mean(r.argmax(1) == g.argmax(1)))
    k = min(5, r.shape[1])
    rk, gk = np.argsort(-r, axis=1)[:, :k], np.argsort(-g, axis=1)[:, :k]
    top5 = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(rk, gk)]))
    return {"top1": top1, "top5": top5}


def verify(
    model: Model,
    backends: list[str],
    x: np.ndarray | None = None,
    rtol: float = DEFAULT_RTOL,
    progress: Any = None,
    **build_opts: Any,
) -> Report:
    """Run each backend with taps on every node and compare with the float64 numpy reference."""
    x = default_input(model) if x is None else np.asarray(x, np.float32)
    shapes = infer_shapes(model, tuple(x.shape))
    names = [builders.canonical_backend(b) for b in backends]
    versions = {}
    report = Report(
        model,
        names,
        versions,
        tuple(x.shape),
        hashlib.sha256(x.tobytes()).hexdigest(),
        rtol,
        command=" ".join(sys.argv),
    )
    say = progress or (lambda msg: None)
    t = time.perf_counter()
    say("running the numpy float64 reference")
    from .builders import numpy_ref

    ref = numpy_ref.run(numpy_ref.build(model, np.float64), x)
    report.timings["numpy"] = time.perf_counter() - t
    versions["numpy"] = np.__version__
    results: dict[str, dict[str, np.ndarray]] = {"numpy": ref}
    for b in names:
        if b == "numpy":
            continue
        say(f"running {b}")
        t = time.perf_counter()
        mod = builders.get(b)
        versions[b] = mod.available() or "?"
        try:
            native = mod.build(model, **build_opts.get(b, {}))
            results[b] = mod.run(native, x, taps=True)
        except SenetHubError as e:  # this backend cannot run this model: report it, run the others
            report.errors[b] = str(e)
            continue
        report.timings[b] = time.perf_counter() - t
    for n in model.graph.nodes:
        row = {"node": n.name, "source": list(n.source), "shape": list(shapes[n.name]), "results": {}}
        for b, outs in results.items():
            if n.name in outs:
                row["results"][b] = compare(ref[n.name], outs[n.name], rtol)
        report.rows.append(row)
    out = model.graph.output
    for b, outs in results.items():
        if b == "numpy" and len(names) > 1:
            continue
        report.first_divergent[b] = next(
            (r["node"] for r in report.rows if b in r["results"] and not r["results"][b].ok), None
        )
        if out in outs:
            report.topk[b] = topk_agreement(ref[out], outs[out])
            report.outputs[b] = np.asarray(outs[out], np.float32)
        else:
            report.errors[b] = f"produced no value for the graph output '{out}'"
    report.outputs.setdefault("numpy", np.asarray(ref[out], np.float32))
    return report
