"""Checks on a loaded model's values (its structure is checked by graph.validate).

NaN/Inf weights come from damaged or crafted files (and from real training blow-ups); every
output of such a model is NaN. `convert` warns, naming the tensors; `verify` refuses with
ModelError (exit code 5), since no backend can match a NaN reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import formats
from .errors import ModelError


def _finite(a: np.ndarray) -> bool:
    if a.dtype.kind not in "fc" or a.size == 0:
        return True
    if a.dtype.itemsize <= 4:
        # Any NaN or Inf makes a sum non-finite, and a finite sum proves there is none. The native
        # sum is twice as fast as a float64 one but may overflow on large finite values; only then
        # decide with the float64 sum, which cannot overflow for float16/32 values.
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.add.reduce(a, axis=None)):
                return True
            return bool(np.isfinite(np.add.reduce(a, axis=None, dtype=np.float64)))
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i : i + (1 << 20)]).all() for i in range(0, flat.size, 1 << 20))


def nonfinite_weights(model: Any) -> list[str]:
    """Names of the weight tensors that hold NaN or +-Inf, in the model's order."""
    return [k for k, v in model.weights.items() if not _finite(np.asarray(v))]


def describe_nonfinite(model: Any, names: list[str], limit: int = 4) -> str:
    """One line: where the weights come from, how many tensors are bad, the first few by name
    (with the source layer, e.g. the Caffe layer, when it differs) and their NaN/Inf counts."""
    sources = {n.name: n.source for n in model.graph.nodes}
    shown = []
    for k in names[:limit]:
        a = np.asarray(model.weights[k])
        n_nan, n_inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        counts = ", ".join(c for c in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} Inf" if n_inf else "") if c)
        src = sources.get(k.rsplit(".", 1)[0]) or []
        origin = f" from '{src[0]}'" if src and src[0] != k.rsplit(".", 1)[0] else ""
        shown.append(f"{k}{origin} ({counts})")
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    paths = model.meta.get("source_paths") or {}
    # the weights file each source records under its option's name (formats.SourceFormat.weights_option)
    keys = [s.weights_option for s in formats.sources() if s.weights_option] + ["weights"]
    where = next((paths[k] for k in keys if k in paths), None) or model.arch
    s = "s" if len(names) > 1 else ""
    return f"{where}: {len(names)} weight tensor{s} hold NaN/Inf: {', '.join(shown)}{more}"


def check_finite(model: Any, fatal: bool) -> str | None:
    """None when every weight is finite; else the one-line description (raised as ModelError if fatal)."""
    bad = nonfinite_weights(model)
    if not bad:
        return None
    msg = describe_nonfinite(model, bad)
    if fatal:
        raise ModelError(f"{msg}; every output would be NaN: re-download or fix the weights")
    return msg
