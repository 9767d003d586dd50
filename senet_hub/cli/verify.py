"""``senet-hub verify``: run backends with taps on every node against the float64 numpy reference."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from ..errors import ParityError
from .app import main, say, write_bytes, write_text
from .options import positive_finite, source_options
from .shared import check_outputs, consumer_for, installed, load_source

DEFAULT_BACKENDS = ("numpy", "torch", "opencv")


@main.command()
@source_options
@click.option(
    "--backends",
    default=None,
    help=f"Comma-separated backends (default: {','.join(DEFAULT_BACKENDS)}, those installed).",
)
@click.option("--input", "input_path", help="Input array (.npy, N x C x H x W float32).")
@click.option(
    "--images",
    "images_dir",
    help="A folder of photos (recursive; ImageFolder or ImageNet-val layout), "
    "preprocessed like `evaluate` does for this model.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="With --images: use the first N readable images."
)
@click.option(
    "--strict",
    is_flag=True,
    help="With --images: refuse a file that is not a readable image (default: skip and count).",
)
@click.option("--html", "html_path", help="Write a self-contained HTML report (chart, stage table, provenance).")
@click.option("--plot", "plot_path", help="Write the per-node deviation chart as PNG.")
@click.option("--quiet", "-q", is_flag=True, help="No progress output on stderr.")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True, help="Batch of the generated input.")
@click.option("--input-seed", type=int, default=7, show_default=True, help="Seed of the generated input.")
@click.option(
    "--chunk",
    type=click.IntRange(min=1),
    default=None,
    help="Images per chunk: memory is bounded by one chunk's taps (default: what fits ~1 GB).",
)
@click.option(
    "--isolate/--no-isolate",
    default=None,
    help="Run each backend in its own process against the float64 reference spilled to a temporary "
    "folder (TMPDIR, checked for space first), so the backends' memory never adds up. "
    "Default: isolated when two or more backends would hold over ~4 GB together.",
)
@click.option(
    "--rtol",
    type=float,
    default=1e-3,
    show_default=True,
    callback=positive_finite,
    help="Per-node tolerance: max|d| <= rtol * max|ref| (a finite number > 0).",
)
@click.option("--json", "json_path", help="Write the report as JSON ('-' for stdout).")
@click.option("--markdown", "md_path", help="Write the report as Markdown.")
@click.option(
    "--save-outputs",
    "save_dir",
    help="Write each backend's final output as DIR/<backend>.npy (DIR is replaced as a whole).",
)
@click.option("--max-rows", type=click.IntRange(min=1), default=None, help="Show only the first N nodes in the table.")
@click.option(
    "--artifact",
    default=None,
    help="A written file (.pth, .pt2, .pt, .onnx, SavedModel, .keras, MXNet prefix, .npz, Caffe prefix, .ckpt): load it with its consumer and compare it with the source model.",
)
@click.option(
    "--consumer",
    default=None,
    help="With --artifact: who loads it (senet-hub, timm:<model>, cadene:<model>, torch.export, torchscript, onnxruntime, openvino, onnx2torch, onnx.reference, tensorflow, keras, mxnet, chainer, opencv, mindcv); default per format.",
)
def verify(backends: str | None, input_path: str | None, batch: int, input_seed: int, rtol: float, json_path: str | None,
           md_path: str | None, save_dir: str | None, max_rows: int | None, artifact: str | None, consumer: str | None,
           chunk: int | None, images_dir: str | None, limit: int | None, strict: bool, html_path: str | None,
           plot_path: str | None, quiet: bool, isolate: bool | None, **src: Any) -> None:  # fmt: skip
    """Run backends with taps on every node and compare them with the float64 numpy reference."""
    from .. import builders
    from .. import verify as verify_mod
    from ..atomic import check_writable

    if images_dir and input_path:
        raise click.UsageError("give --input X.npy or --images DIR, not both")
    if (limit or strict) and not images_dir:
        raise click.UsageError("--limit and --strict apply to --images DIR")
    outputs = [p for p in (json_path, md_path, save_dir, html_path, plot_path) if p and p != "-"]
    src_in = dict(src, extra_inputs=([input_path] if input_path else []) + ([artifact] if artifact else []))
    check_outputs(src_in, outputs)
    for p in outputs:
        check_writable(p)
    if input_path:
        from ..converters.npyio import check_exists

        check_exists(input_path)

    if consumer and not artifact:
        raise click.UsageError("--consumer names who loads --artifact; add --artifact FILE")
    if artifact and backends:
        raise click.UsageError(
            "--artifact checks one written file with its consumer; --backends checks senet-hub's builders: give one"
        )
    if artifact and isolate is not None:
        raise click.UsageError("--isolate/--no-isolate apply to --backends runs; --artifact runs one consumer")
    if artifact:
        names = []
        consumer = consumer_for(artifact, consumer)
    elif backends and backends.strip().lower() == "all":
        names = [b for b in builders.BACKENDS if installed(b)]
        say(f"backends: {', '.join(names)} (every installed one)")
    elif backends:
        names = [builders.canonical_backend(b) for b in backends.split(",") if b.strip()]
        for b in names:  # a missing framework fails here, naming the extra; nothing is imported yet
            if b not in builders.BACKENDS or not installed(b):
                builders.get(b)
    else:
        names = [b for b in DEFAULT_BACKENDS if installed(b)]
        skipped = [b for b in DEFAULT_BACKENDS if b not in names]
        if skipped:
            say(f"not installed, skipped: {', '.join(skipped)}")
    model = load_source(**src)
    check_outputs(src_in, outputs, model)
    from ..checks import check_finite

    check_finite(model, fatal=True)  # NaN/Inf weights: ModelError (exit 5) naming the tensors
    if input_path:
        from ..converters.npyio import read_npy
        from ..errors import FormatError

        x = read_npy(input_path)
        want = " x ".join(map(str, model.graph.input_shape[1:]))
        if x.ndim != 4 or x.shape[1:] != tuple(model.graph.input_shape[1:]) or x.shape[0] < 1:
            shape = x.shape if x.ndim <= 8 else f"({x.ndim} dimensions)"
            raise FormatError(f"{input_path}: input shape {shape} does not fit the model's N x {want}")
        provenance = {"file": os.path.abspath(input_path)}
    elif images_dir:
        from ..hub.images import load_images

        imgs = load_images(images_dir, model.meta.get("input_convention") or {}, limit=limit, strict=strict)
        x, provenance = imgs.x, imgs.provenance()
        note = f"; skipped {len(imgs.skipped)} unreadable (first: {imgs.skipped[0][1]})" if imgs.skipped else ""
        say(f"images: {len(imgs.files)} from {images_dir}{note}")
    else:
        x = verify_mod.default_input(model, batch, input_seed)
        provenance = {"generated": f"default_input(batch={batch}, seed={input_seed})"}
    progress, step = _progress(quiet)
    report: verify_mod.Report
    if artifact:
        from .. import consumers

        report = consumers.verify_artifact(model, artifact, consumer, x=x, rtol=rtol, progress=progress)
    else:
        report = verify_mod.verify(
            model, names, x, rtol=rtol, progress=progress, chunk=chunk, step=step, isolate=isolate
        )
    report.provenance = provenance
    click.echo(report.to_text(max_rows))
    if artifact:
        from ..consumers import ArtifactReport, summary_line

        assert isinstance(report, ArtifactReport)
        say(summary_line(report))
    if json_path:
        data = json.dumps(report.to_json(), indent=1, default=str)
        if json_path == "-":
            click.echo(data)
        else:
            write_text(json_path, data)
    if md_path:
        write_text(md_path, report.to_markdown())
    if html_path or plot_path:
        from .. import report_html

        png = report_html.chart_png(report)
        if plot_path:
            write_bytes(plot_path, png)
        if html_path:
            write_text(html_path, report_html.to_html(report, png))
    if save_dir:
        _save_outputs(save_dir, report.outputs, x)
    if not report.passed:
        where = [f"{b}: first divergent node {n}" for b, n in report.first_divergent.items() if n]
        where += [f"{b}: {e}" for b, e in report.errors.items()]
        raise ParityError(f"parity failed for {model.arch}: " + "; ".join(where))


def _progress(quiet: bool) -> tuple[Callable[[str], None], Callable[[int, int, str], None] | None]:
    """(message, step) callbacks: a bar on a terminal, plain lines otherwise, nothing with --quiet."""
    if quiet:
        return (lambda msg: None), None
    if not sys.stderr.isatty():
        return say, None
    start = time.perf_counter()

    def step(done: int, total: int, label: str) -> None:
        width = 30
        fill = int(width * done / max(total, 1))
        el = time.perf_counter() - start
        sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} {label[:40]:<40} {el:6.1f} s")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return (lambda msg: None), step


def _save_outputs(save_dir: str, outputs: dict[str, Any], x: Any) -> None:
    """DIR/<backend>.npy + DIR/input.npy, written as one directory: all of it or nothing (exit 7)."""
    import numpy as np

    from ..atomic import atomic_outputs

    with atomic_outputs([save_dir]) as (tmp,):
        os.mkdir(tmp)
        for b, out in outputs.items():
            np.save(os.path.join(tmp, f"{b}.npy"), out)
        np.save(os.path.join(tmp, "input.npy"), x)
