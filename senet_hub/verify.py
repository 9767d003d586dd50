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
from .verify_stats import (  # noqa: F401  (re-exported: verify.NodeStats, verify.compare, ... are its API)
    NodeResult,
    NodeStats,
    chunk_label,
    compare,
    fold_reference,
    missing_taps,
    reference_stats,
)

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
    provenance: dict[str, Any] = field(default_factory=dict)  # where the input came from (--images: files)

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
            "input": {"shape": list(self.input_shape), "sha256": self.input_sha256, **self.provenance},
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


def topk_agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    r, g = ref.reshape(ref.shape[0], -1), got.reshape(got.shape[0], -1)
    top1 = float(np.mean(r.argmax(1) == g.argmax(1)))
    k = min(5, r.shape[1])
    rk, gk = np.argsort(-r, axis=1)[:, :k], np.argsort(-g, axis=1)[:, :k]
    top5 = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(rk, gk)]))
    return {"top1": top1, "top5": top5}


TAP_BUDGET = 1.0e9  # bytes of taps (float64 reference + one backend's float32) held per chunk


def default_chunk(model: Model, shapes: dict[str, tuple[int, ...]]) -> int:
    """Images per chunk so that one chunk's taps (reference float64 + one backend) fit TAP_BUDGET."""
    per_image = sum(int(np.prod(s[1:], dtype=np.int64)) for s in shapes.values()) * (8 + 4)
    return max(1, int(TAP_BUDGET // max(per_image, 1)))


def verify(
    model: Model,
    backends: list[str],
    x: np.ndarray | None = None,
    rtol: float = DEFAULT_RTOL,
    progress: Any = None,
    chunk: int | None = None,
    step: Any = None,
    isolate: bool | None = None,
    **build_opts: Any,
) -> Report:
    """Run each backend with taps on every node and compare with the float64 numpy reference.

    Memory is bounded by one chunk, whatever the batch: per chunk the reference runs once, then
    each backend in turn; its taps are folded into per-node statistics (NodeStats) and dropped
    before the next backend runs. Only the final outputs of all images are kept (top-k, outputs).
    `isolate` runs each backend in its own process against the reference spilled to disk
    (senet_hub.verify_isolated: the backends' resident memory never adds up); None picks by an
    estimate of the memory the in-process run would hold. Both give the same report.
    `step(done, total, label)` is called after each (backend, chunk) run, for a progress bar.
    """
    x = default_input(model) if x is None else np.asarray(x, np.float32)
    shapes = infer_shapes(model, tuple(x.shape))
    names = [builders.canonical_backend(b) for b in backends]
    one = infer_shapes(model, (1, *x.shape[1:]))
    chunk = chunk or default_chunk(model, one)
    if chunk < 1:
        raise SenetHubError(f"chunk must be at least 1, got {chunk}")
    report = Report(
        model,
        names,
        {},
        tuple(x.shape),
        hashlib.sha256(x.tobytes()).hexdigest(),
        rtol,
        command=" ".join(sys.argv),
    )
    say = progress or (lambda msg: None)
    tick = step or (lambda done, total, label: None)
    from . import verify_isolated

    if isolate is None:
        isolate = verify_isolated.choose(model, names, x, chunk, one, say)
    run = verify_isolated.run if isolate else _run_in_process
    stats, finals, missing_out = run(report, x, chunk, say, tick, build_opts)
    _finish(report, shapes, stats, finals, missing_out)
    return report


Stats = dict[str, dict[str, NodeStats]]  # backend -> node -> statistics over all chunks


def _run_in_process(
    report: Report, x: np.ndarray, chunk: int, say: Any, tick: Any, build_opts: dict[str, Any]
) -> tuple[Stats, dict[str, list[np.ndarray]], set[str]]:
    """Every backend built in this process; per chunk the reference, then each backend in turn."""
    from .builders import numpy_ref

    model, names, versions = report.model, report.backends, report.versions
    out = model.graph.output
    ref_native = numpy_ref.build(model, np.float64)
    versions["numpy"] = np.__version__
    report.timings["numpy"] = 0.0
    natives: dict[str, Any] = {}
    mods: dict[str, Any] = {}
    for b in names:
        if b == "numpy" or b in natives:
            continue
        t = time.perf_counter()
        mod = mods[b] = builders.get(b)
        versions[b] = mod.available() or "?"
        try:
            natives[b] = mod.build(model, **build_opts.get(b, {}))
        except SenetHubError as e:  # this backend cannot run this model: report it, run the others
            report.errors[b] = str(e)
        report.timings[b] = time.perf_counter() - t
    stats: Stats = {b: {} for b in ["numpy", *natives]}
    finals: dict[str, list[np.ndarray]] = {b: [] for b in stats}
    missing_out: set[str] = set()
    starts = range(0, x.shape[0], chunk)
    total, done = len(starts) * (1 + len(natives)), 0
    for lo in starts:
        xc = x[lo : lo + chunk]
        part = chunk_label(lo, len(xc), x.shape[0], len(starts))
        say(f"running the numpy float64 reference{part}")
        t = time.perf_counter()
        ref = numpy_ref.run(ref_native, xc)
        report.timings["numpy"] += time.perf_counter() - t
        done += 1
        tick(done, total, f"numpy{part}")
        ref_stats = {k: reference_stats(v) for k, v in ref.items() if np.size(v)}
        fold_reference(stats["numpy"], list(ref), ref_stats)
        finals["numpy"].append(np.asarray(ref[out], np.float32))
        for b, native in natives.items():
            if b in report.errors:
                continue
            say(f"running {b}{part}")
            t = time.perf_counter()
            try:
                got = mods[b].run(native, xc, taps=True)
            except SenetHubError as e:
                report.errors[b] = str(e)
                continue
            report.timings[b] += time.perf_counter() - t
            done += 1
            tick(done, total, f"{b}{part}")
            gap = missing_taps(mods[b], list(ref), got)
            if gap:
                report.errors[b] = gap
                continue
            for name, value in got.items():
                if name in ref:
                    stats[b].setdefault(name, NodeStats()).add(ref[name], value, ref_stats.get(name))
            if out in got:
                finals[b].append(np.asarray(got[out], np.float32))
            else:
                missing_out.add(b)
            del got
        del ref
    return stats, finals, missing_out


def _finish(
    report: Report,
    shapes: dict[str, tuple[int, ...]],
    stats: Stats,
    finals: dict[str, list[np.ndarray]],
    missing_out: set[str],
) -> None:
    """Rows, first divergent nodes, top-k agreement and outputs from the accumulated statistics."""
    model, names, rtol = report.model, report.backends, report.rtol
    out = model.graph.output
    for n in model.graph.nodes:
        results = {
            b: per_node[n.name].result(rtol)
            for b, per_node in stats.items()
            if b not in report.errors and n.name in per_node
        }
        report.rows.append(
            {"node": n.name, "source": list(n.source), "shape": list(shapes[n.name]), "results": results}
        )
    ref_out = np.concatenate(finals["numpy"])
    for b in stats:
        if b in report.errors or (b == "numpy" and len(names) > 1):
            continue
        report.first_divergent[b] = next(
            (r["node"] for r in report.rows if b in r["results"] and not r["results"][b].ok), None
        )
        if b in missing_out or not finals[b]:
            report.errors[b] = f"produced no value for the graph output '{out}'"
            continue
        got_out = np.concatenate(finals[b])
        report.topk[b] = topk_agreement(ref_out, got_out)
        report.outputs[b] = got_out
    report.outputs.setdefault("numpy", ref_out)
    # in the order of --backends, whichever phase (build, run, output) found them
    report.errors = {b: report.errors[b] for b in dict.fromkeys(names) if b in report.errors}
