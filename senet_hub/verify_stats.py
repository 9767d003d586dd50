"""The per-node statistics of verify, shared by the one-process run (verify.py) and the
process-per-backend run (verify_isolated.py): max|d|, max|ref| and the cosine's sums of each node,
accumulated exactly over chunks, and the small rules both runs apply to them.

Its own module so that verify_isolated's children use the very code the one-process path runs
(the reports agree exactly) without the two runners importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class NodeResult:
    max_abs: float
    rel: float
    cos: float
    ok: bool


class NodeStats:
    """max|d|, max|ref| and the cosine's sums of one node, accumulated exactly over chunks.

    Maxima combine by max and the cosine's dot product and norms by sums, so a run in chunks
    reports what one run over the whole batch would (up to float64 summation order), while only
    one chunk's values are ever held.
    """

    __slots__ = ("max_abs", "scale", "dot", "nref", "ngot", "bad")

    def __init__(self) -> None:
        self.max_abs = self.scale = self.dot = self.nref = self.ngot = 0.0
        self.bad = False  # shape mismatch or a non-finite difference: fails whatever the rest says

    def add(self, ref: np.ndarray, got: np.ndarray, ref_stats: tuple[float, float] | None = None) -> None:
        """Fold one chunk in; ref_stats = (max|ref|, ref.ref) when already known (shared by backends)."""
        ref64 = np.asarray(ref, np.float64)
        if ref64.shape != np.shape(got):
            self.bad = True
            return
        if not ref64.size:
            return
        r = ref64.ravel()
        g = _scratch(r.size)
        # float64, into a reused buffer (no page faults), straight from got's layout (no ravel copy)
        np.copyto(g.reshape(ref64.shape), got, casting="unsafe")
        dot, ngot = _dot(r, g), _dot(g, g)
        np.subtract(r, g, out=g)
        hi, lo = float(g.max()), float(g.min())  # max|d| = max(hi, -lo), exactly, one pass fewer than abs
        diff = max(hi, -lo)
        if not (np.isfinite(hi) and np.isfinite(lo) and np.isfinite(dot) and np.isfinite(ngot)):
            self.bad = True
            return
        scale, nref = ref_stats if ref_stats is not None else reference_stats(r)
        self.max_abs = max(self.max_abs, diff)
        self.scale = max(self.scale, scale)
        self.dot += dot
        self.nref += nref
        self.ngot += ngot

    def result(self, rtol: float) -> NodeResult:
        if self.bad:
            return NodeResult(float("inf"), float("inf"), 0.0, False)
        diff, scale = self.max_abs, self.scale
        rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        na, nb = np.sqrt(self.nref), np.sqrt(self.ngot)
        cos = float(self.dot / (na * nb)) if na > 0 and nb > 0 else float(na == nb)
        return NodeResult(diff, rel, cos, rel <= rtol)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b in one deterministic pass (numpy's own loop, never BLAS).

    BLAS's dot splits long vectors over its thread pool, and whether it does depends on what else
    is running (verify --isolate compares on a thread beside a backend's forward): the cosine's
    last digits then changed from run to run. The same inputs must give the same report."""
    return float(np.einsum("i,i->", a, b))


_SCRATCH = np.empty(0, np.float64)


def _scratch(n: int) -> np.ndarray:
    """A float64 work buffer of n values, reused across nodes (grown, never shrunk, per process)."""
    global _SCRATCH
    if _SCRATCH.size < n:
        _SCRATCH = np.empty(n, np.float64)
    return _SCRATCH[:n]


def reference_stats(ref: np.ndarray) -> tuple[float, float]:
    """(max|ref|, ref.ref) of a float64 reference tap."""
    r = np.asarray(ref, np.float64).ravel()
    return float(max(r.max(), -r.min())), _dot(r, r)


def compare(ref: np.ndarray, got: np.ndarray, rtol: float) -> NodeResult:
    """One node's max|d|, max|d|/max|ref| and cosine; ok when max|d| <= rtol * max|ref|."""
    st = NodeStats()
    st.add(ref, got)
    return st.result(rtol)


def chunk_label(lo: int, n: int, total: int, chunks: int) -> str:
    """' (images 3-4 of 8)' when the batch runs in several chunks, else ''."""
    return f" (images {lo + 1}-{lo + n} of {total})" if chunks > 1 else ""


def fold_reference(per_node: dict[str, NodeStats], names: list[str], ref_stats: dict[str, tuple[float, float]]) -> None:
    """The reference against itself, one chunk: exact by construction, from its statistics alone."""
    for k in names:
        st = per_node.setdefault(k, NodeStats())
        if k in ref_stats:
            st.scale = max(st.scale, ref_stats[k][0])
            st.nref += ref_stats[k][1]
            st.ngot += ref_stats[k][1]
            st.dot += ref_stats[k][1]


def missing_taps(mod: Any, ref_names: list[str], got: dict[str, Any]) -> str | None:
    """The error for a backend that returned fewer nodes than the reference (None when complete)."""
    missing = [k for k in ref_names if k not in got]
    if not missing or getattr(mod, "PARTIAL_TAPS", None):  # a silent gap is not a pass
        return None
    return (
        f"returned values for {len(ref_names) - len(missing)} of {len(ref_names)} nodes; missing "
        + ", ".join(missing[:5])
        + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    )
