"""The comparison: load an artifact with its consumer, compare the values it exposes with the
float64 numpy reference of the source model (or of its fold, for weights-only formats), and the
report and one-line summary of that comparison."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import verify as verify_mod
from ..converters.wire import check_regular
from ..errors import InputFileError, ModelError, UnsupportedError
from ..graph import Model, infer_shapes
from .core import (
    CONSUMERS,
    FORMATS,
    WEIGHTS_ONLY,
    Job,
    _files,
    _format_by_name,
    _logits_node,
    artifact_format,
    check_available,
    default_consumer,
    resolve,
)


@dataclass
class ArtifactReport(verify_mod.Report):
    """A verify.Report for one artifact and one consumer, plus the deviation from the exact model
    when the reference is the folded model of a weights-only file."""

    artifact: str = ""
    consumer: str = ""
    final: str = ""
    reference: str = "source model"
    exact_rel: float | None = None  # consumer's final output vs the exact (unfolded) source model
    exact_fold: bool | None = None
    exact_node: str = ""  # the node exact_rel is measured on (the logits where exposed)
    notes: list[str] = field(default_factory=list)
    hints: list[str] = field(default_factory=list)  # likely causes of a mismatch (summary_line on FAIL)

    def final_result(self) -> verify_mod.NodeResult | None:
        for r in self.rows:
            if r["node"] == self.final:
                return r["results"].get(self.consumer)
        return None

    def exact_line(self) -> str | None:
        if self.exact_rel is None:
            return None
        how = "exact fold" if self.exact_fold else "inexact fold"
        return (
            f"vs the exact source model: max|d|/max|ref| = {self.exact_rel:.1e} on '{self.exact_node}', "
            f"{how} of the input stage"
        )

    def to_text(self, max_rows: int | None = None) -> str:
        lines = [super().to_text(max_rows)]
        lines.append(f"artifact: {self.artifact} loaded by {self.consumer}; reference: the {self.reference}")
        lines += [f"note: {n}" for n in self.notes + self.hints]
        exact = self.exact_line()
        if exact:
            lines.append(exact)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        d = super().to_json()
        d["artifact"] = {
            "path": self.artifact,
            "consumer": self.consumer,
            "compared_output": self.final,
            "reference": self.reference,
            "vs_exact_source": None
            if self.exact_rel is None
            else {"rel": self.exact_rel, "node": self.exact_node, "exact_fold": self.exact_fold},
            "notes": self.notes,
            "hints": self.hints,
        }
        return d


# ---------------------------------------------------------------------------- the reference


def _same_convention(a: Any, b: Any) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return a == b
    try:
        return str(a.get("channel_order")).upper() == str(b.get("channel_order")).upper() and all(
            np.allclose(np.asarray(a[k], float), np.asarray(b[k], float)) for k in ("range", "mean", "std")
        )
    except (KeyError, TypeError, ValueError):
        return False


def _metadata_notes(path: str, model: Model) -> list[str]:
    """What the .pth's senet-hub record says that disagrees with the model it is compared with
    (the usual cause of a FAIL: another --input-convention / --class-order than the file's)."""
    from ..converters import pth

    if not hasattr(pth, "read_metadata"):
        return []
    rec = pth.read_metadata(path) or {}
    notes = []
    conv, order = rec.get("input_convention"), rec.get("class_order")
    if conv and model.meta.get("input_convention") and not _same_convention(conv, model.meta["input_convention"]):
        notes.append(
            f"the file records input convention {conv.get('channel_order') if isinstance(conv, dict) else conv} "
            f"(mean {conv.get('mean') if isinstance(conv, dict) else '?'}), not the one given here: pass the "
            "--input-convention it was written with"
        )
    if order and model.meta.get("class_order") and order != model.meta["class_order"]:
        notes.append(f"the file records class order '{order}', the model here has '{model.meta['class_order']}'")
    return notes


# (source model, folded?, input sha, every node's reference value): the last three
_REF_CACHE: list[tuple[Model, bool, str, dict[str, np.ndarray]]] = []


def _reference(source: Model, folded: bool, model: Model, x: np.ndarray, sha: str) -> dict[str, np.ndarray]:
    """float64 numpy reference of `model` (the source model, or its fold), every node. Recent ones
    are kept, keyed by the source model object (held here, so its identity is not reused): checking
    one file with several consumers computes each reference once."""
    for m, f, s, r in _REF_CACHE:
        if m is source and f == folded and s == sha:
            return r
    from ..builders import numpy_ref

    ref = numpy_ref.run(numpy_ref.build(model, np.float64), x)
    _REF_CACHE.append((source, folded, sha, ref))
    del _REF_CACHE[:-3]
    return ref


def verify_artifact(
    model: Model,
    artifact: str,
    consumer: str | None = None,
    x: np.ndarray | None = None,
    rtol: float = verify_mod.DEFAULT_RTOL,
    progress: Any = None,
) -> ArtifactReport:
    """Load `artifact` with `consumer` (default: the format's) and compare with the float64
    reference of `model` (with the artifact's input convention and class order already applied).

    The report's backend is the consumer's name; rows are the nodes the consumer exposes, the
    compared final output always (logits, the softmax's input, for timm / Cadene). A weights-only
    file (.pth, .ckpt) of a model with an input stage is compared with the folded model
    (transforms.fold_input_stage), and ``exact_rel`` says how far it is from the exact model.
    """
    say = progress or (lambda msg: None)
    path = os.fspath(artifact)
    name = consumer or default_consumer(path)
    cons, arg = resolve(name, model)
    shown = cons.name.replace("<model>", arg) if arg else cons.name
    fmt = _format_by_name(path)
    if fmt is None and not os.path.exists(path):
        raise InputFileError(f"{path}: no such file or directory; check the path")
    if fmt is None:
        fmt = artifact_format(path)  # raises naming the formats
    if fmt not in cons.formats:
        can = [c.name for c in CONSUMERS.values() if fmt in c.formats]
        raise UnsupportedError(
            f"consumer '{shown}' does not load a {FORMATS[fmt]} ({path}); consumers that do: {', '.join(can)}"
        )
    files = _files(fmt, path)
    if fmt in ("savedmodel", "timmdir"):  # directories
        if not os.path.isdir(path):
            raise InputFileError(f"{path}: no such {FORMATS[fmt]}")
    else:
        for f in files:
            check_regular(f, FORMATS[fmt])  # a FIFO would block the consumer's loader
    check_available(shown, path)

    x = verify_mod.default_input(model, 2, 7) if x is None else np.ascontiguousarray(x, np.float32)
    exact_model, ref_model, folded, exact_fold = model, model, False, None
    notes: list[str] = []
    has_stage = bool(model.graph.nodes) and model.graph.nodes[0].op == "input_norm"
    if fmt in WEIGHTS_ONLY and has_stage:
        from .. import transforms

        if hasattr(transforms, "fold_input_stage"):
            ref_model, exact_fold = transforms.fold_input_stage(model)
            folded = True
        else:  # this version cannot fold: the file lacks the stage, and the comparison shows it
            notes.append(f"a {FORMATS[fmt]} cannot hold the input stage and this version has no fold for it")
    hints = _metadata_notes(path, model) if fmt == "pth" else []
    final = _logits_node(ref_model) if cons.logits else ref_model.graph.output
    shapes = infer_shapes(ref_model, tuple(x.shape))
    sha = hashlib.sha256(x.tobytes()).hexdigest()
    report = ArtifactReport(
        ref_model, [shown], {}, tuple(x.shape), sha, rtol, command=" ".join(sys.argv),
        artifact=path, consumer=shown, final=final,
        reference="folded source model (input stage folded into the first convolution)" if folded else "source model",
        notes=notes, hints=hints,
    )  # fmt: skip
    # the consumer first: a file it refuses, or one of another model, fails before the reference
    say(f"loading {path} with {shown}")
    t = time.perf_counter()
    job = Job(shown, arg, path, fmt, files, ref_model, x, final)
    outs = cons.run(job)
    report.timings[shown] = time.perf_counter() - t
    report.versions[shown] = job.version or "?"
    report.notes += job.notes
    report.hints += job.hints
    want = tuple(shapes[final])
    got = np.asarray(outs[final])
    if got.shape != want:
        if got.size == int(np.prod(want)) and got.shape[:1] == want[:1]:
            got = got.reshape(want)  # e.g. N x C x 1 x 1 logits of a Caffe InnerProduct
        else:
            raise ModelError(
                f"{path}: {shown} outputs shape {got.shape} where the source model's '{final}' is {want}; "
                "is it this model's file?"
            )
        outs[final] = got
    t = time.perf_counter()
    say("running the numpy float64 reference")
    ref = _reference(model, folded, ref_model, x, sha)
    report.timings["numpy"] = time.perf_counter() - t
    report.versions["numpy"] = np.__version__
    for n in ref_model.graph.nodes:
        if n.name in outs and n.name in ref:
            report.rows.append({
                "node": n.name, "source": list(n.source), "shape": list(shapes[n.name]),
                "results": {shown: verify_mod.compare(ref[n.name], outs[n.name], rtol)},
            })  # fmt: skip
    report.first_divergent[shown] = next((r["node"] for r in report.rows if not r["results"][shown].ok), None)
    report.topk[shown] = verify_mod.topk_agreement(ref[final], got)
    report.outputs[shown] = got.astype(np.float32)
    report.outputs["numpy"] = np.asarray(ref[final], np.float32)
    if folded:
        say("running the float64 reference of the exact (unfolded) source model")
        exact = _reference(model, False, exact_model, x, sha)
        # on the logits where the consumer shows them (the figure convert prints for the fold)
        node = _logits_node(ref_model)
        node = node if node in outs and node in exact else final
        report.exact_rel = verify_mod.compare(exact[node], np.asarray(outs[node]), rtol).rel
        report.exact_node = node
        report.exact_fold = exact_fold
    return report


def summary_line(report: ArtifactReport) -> str:
    """One line: consumer, file, max|d|/max|ref| vs the source model, top-1/top-5 agreement, PASS/FAIL."""
    c = report.consumer or report.backends[0]
    res = report.final_result() if isinstance(report, ArtifactReport) else None
    verdict = "PASS" if report.passed else "FAIL"
    if res is None:
        err = report.errors.get(c, "no output")
        return f"consumer {c} could not run {report.artifact}: {err} — {verdict}"
    t = report.topk.get(c, {})
    against = "the folded source model" if report.exact_rel is not None else "the source model"
    extra = ""
    if report.exact_rel is not None:
        how = "exact fold" if report.exact_fold else "inexact fold of the input stage"
        extra = f" ({report.exact_rel:.1e} vs the exact model: {how})"
    fd = report.first_divergent.get(c)
    where = f", first divergent node {fd}" if fd else ""
    why = f" ({'; '.join(report.hints)})" if not report.passed and getattr(report, "hints", None) else ""
    return (
        f"consumer {c} loaded {report.artifact}: max|d|/max|ref| {res.rel:.1e} vs {against}{extra}, "
        f"top-1 {t.get('top1', 0) * 100:.0f} %, top-5 {t.get('top5', 0) * 100:.0f} %{where} — {verdict}{why}"
    )
