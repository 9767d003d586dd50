"""``senet-hub convert`` and ``senet-hub export-onnx``: write a model in another framework's format."""

from __future__ import annotations

import time
from typing import Any

import click

from ..errors import ParityError
from .app import emit_json, main, say, size
from .options import source_options, target_option, verify_file_options
from .shared import check_outputs, consumer_for, load_source, onnx_runtimes, verify_written, warn_nonfinite


def writer_options(target: str, given: dict[str, Any]) -> dict[str, Any]:
    """The writer keywords `target` declares (formats.TargetFormat.options), from the CLI's values.

    A flag is always passed (inline=False is the writer's own choice made explicit); a value only when
    given, so the writer's default (opset 17, layout nhwc) applies otherwise.
    """
    from .. import formats

    declared = formats.target(target).options
    return {k: given[k] for k in declared if isinstance(given[k], bool) or given[k]}


def _parity_error(output: str, summary: dict[str, Any]) -> ParityError:
    return ParityError(
        f"{output}: the written file does not compute the source model in {summary['consumer']} "
        f"({summary['line']}); the file is kept for inspection"
    )


@main.command()
@source_options
@target_option
@click.option(
    "-o",
    "--output",
    required=True,
    help="Output: .pth/.safetensors/.pt2/.pt, .onnx, SavedModel dir or .keras, MXNet prefix, .npz, Caffe prefix, .ckpt, timm dir.",
)
@click.option("--opset", type=int, default=None, help="ONNX opset (--to onnx).")
@click.option("--inline", is_flag=True, help="ONNX: inline the Axpy function into standard ops.")
@click.option(
    "--layout",
    type=click.Choice(["nhwc", "nchw"]),
    default=None,
    help="TensorFlow serving input layout (default nhwc).",
)
@click.option(
    "--exact-input",
    is_flag=True,
    help="Refuse to fold an input convention inexactly into formats that cannot hold an input stage (.pth, .ckpt).",
)
@verify_file_options
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def convert(
    target: str,
    output: str,
    opset: int | None,
    inline: bool,
    layout: str | None,
    exact_input: bool,
    verify_file: bool,
    consumer: str | None,
    as_json: bool,
    **src: Any,
) -> None:
    """Convert a model to another framework's native format."""
    from ..atomic import check_writable
    from ..paths import output_files
    from ..sources import save_model

    outs = output_files(target, output)
    check_outputs(src, outs)
    for f in outs:
        check_writable(f)
    model = load_source(**src)
    check_outputs(src, outs, model)
    warn_nonfinite(model)
    opts = writer_options(target, {"opset": opset, "inline": inline, "layout": layout})
    if consumer and not verify_file:
        raise click.UsageError("--consumer names who loads the file for --verify; add --verify")
    if verify_file:
        consumer_for(output, consumer, target)  # an unknown or missing consumer fails before the work
    t = time.perf_counter()
    files = save_model(model, target, output, exact_input=exact_input, say=say, **opts)
    dt = time.perf_counter() - t
    for f in files:
        say(f"wrote {f} ({size(f)})")
    say(f"converted {model.arch} to {target} in {dt:.2f} s")
    if target == "onnx":
        say(onnx_runtimes(model, inline))
    summary = verify_written(model, output, consumer) if verify_file else None
    if as_json:
        emit_json({"arch": model.arch, "target": target, "files": files, "seconds": dt, "verify": summary})
    if summary and not summary["passed"]:
        raise _parity_error(output, summary)


@main.command("export-onnx")
@source_options
@click.option("-o", "--output", required=True, help="Output .onnx file.")
@click.option("--opset", type=int, default=None, help="ONNX opset version (13-21 tested; default 17).")
@click.option("--inline", is_flag=True, help="Write plain standard ops (Axpy function inlined).")
@verify_file_options
def export_onnx(
    output: str, opset: int | None, inline: bool, verify_file: bool, consumer: str | None, **src: Any
) -> None:
    """Export ONNX with Axpy as a custom-domain op plus a function fallback."""
    from ..atomic import check_writable
    from ..sources import save_model

    check_outputs(src, [output])
    check_writable(output)
    model = load_source(**src)
    check_outputs(src, [output], model)
    warn_nonfinite(model)
    opts: dict[str, Any] = {"inline": inline}
    if opset:
        opts["opset"] = opset
    if consumer and not verify_file:
        raise click.UsageError("--consumer names who loads the file for --verify; add --verify")
    if verify_file:
        consumer_for(output, consumer, "onnx")
    for f in save_model(model, "onnx", output, **opts):
        say(f"wrote {f} ({size(f)})")
    say(onnx_runtimes(model, inline))
    if verify_file:
        summary = verify_written(model, output, consumer)
        if not summary["passed"]:
            raise _parity_error(output, summary)
