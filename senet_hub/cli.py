"""The `senet-hub` command line. Frameworks are imported inside commands, never at import time."""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from .errors import EXIT_CODES, ParityError, SenetHubError, Terminated

DEFAULT_BACKENDS = ("numpy", "torch", "opencv")


def _say(msg: str) -> None:
    click.echo(msg, err=True)


class _Group(click.Group):
    """Turns package errors into one line and a documented exit code; --debug shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        previous = _on_sigterm()
        try:
            return super().invoke(ctx)
        except Terminated:
            _say("senet-hub: terminated")
            ctx.exit(143)
        except SenetHubError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _say(f"senet-hub: error: {e}")
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            _say("senet-hub: interrupted")
            ctx.exit(130)
        except BrokenPipeError:  # `senet-hub list | head`: the reader left; not an error of ours
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the final flush at exit must not fail again
            ctx.exit(141)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except MemoryError:
            _say("senet-hub: error: out of memory; close other programs or use a smaller batch")
            ctx.exit(1)
        except Exception as e:  # a bug: still one line, with the way to see more
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _say(f"senet-hub: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
            ctx.exit(1)
        finally:
            if previous is not None:
                import signal

                signal.signal(signal.SIGTERM, previous)


def _on_sigterm() -> Any:
    """SIGTERM unwinds like Ctrl-C (atomic_outputs removes its temporaries); returns the old handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    return signal.signal(signal.SIGTERM, handler)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="senet-hub")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """senet-hub: convert Squeeze-and-Excitation Networks between Caffe, MindSpore, PyTorch,
    TensorFlow, MXNet, Chainer and ONNX, and prove the result computes the same thing.
    """
    ctx.ensure_object(dict)["debug"] = debug


main.epilog = "\b\nExit codes:\n" + "\n".join(f"  {k:>3}  {v}" for k, v in EXIT_CODES.items())


SOURCE_OPTIONS = [
    click.option("--from", "source", type=click.Choice(["caffe", "mindspore", "zoo"]), help="Input format (inferred from the files given)."),
    # plain strings, not click.Path: a directory or unreadable input is the readers' exit 3, not a usage error
    click.option("--prototxt", help="Caffe deploy prototxt."),
    click.option("--caffemodel", help="Caffe weights."),
    click.option("--ckpt", help="MindSpore checkpoint (.ckpt)."),
    click.option("--model", "model_id", help="A released model id (`senet-hub list`): files come from the checksum-verified cache."),
    click.option("--offline", is_flag=True, default=None, help="With --model: never touch the network (also SENET_HUB_OFFLINE=1)."),
    click.option("--arch", help="Architecture id (`senet-hub list`); for --from zoo and MindSpore checkpoints."),
    click.option("--seed", type=int, default=0, show_default=True, help="Seed of synthetic weights (--from zoo)."),
    click.option("--input-convention", type=click.Choice(["source", "caffe", "rgb01", "mindcv"]), default="source", show_default=True,
                 help="Input the result takes; rgb01 = RGB in [0,1] normalized with ImageNet mean/std (Cadene/timm)."),
    click.option("--class-order", type=click.Choice(["source", "senet", "ilsvrc2012"]), default="source", show_default=True,
                 help="Order of the output classes; ilsvrc2012 = sorted WordNet ids (torchvision)."),
]  # fmt: skip


def verify_file_options(fn: Callable) -> Callable:
    """--verify/--consumer of the commands that write a file (convert, export-onnx)."""
    fn = click.option(
        "--consumer",
        default=None,
        help="With --verify: the consumer to load the file with (e.g. timm:legacy_seresnet50, openvino; "
        "`senet-hub consumers`).",
    )(fn)
    return click.option(
        "--verify",
        "verify_file",
        is_flag=True,
        help="Load the written file the way its users do (default consumer per format) and compare it with the "
        "source model; exit 10 if it differs.",
    )(fn)


def source_options(fn: Callable) -> Callable:
    """The options that name a model; the command receives them as **src for _load."""
    for o in reversed(SOURCE_OPTIONS):
        fn = o(fn)
    return fn


def _load(
    source=None, prototxt=None, caffemodel=None, ckpt=None, model_id=None, offline=None, arch=None, seed=0,
    input_convention="source", class_order="source",
):  # fmt: skip
    """The model named by the source options, with the requested exact rewrites."""
    from . import transforms
    from .sources import load_model

    t = time.perf_counter()
    if model_id:
        if source or prototxt or caffemodel or ckpt:
            raise SenetHubError(
                "--model takes its files from the cache: do not combine it with --from/--prototxt/--caffemodel/--ckpt"
            )
        from .cache import model_from_cache

        model = model_from_cache(model_id, offline=offline)
    else:
        model = load_model(source, prototxt, caffemodel, ckpt, arch, seed)
    if input_convention != "source":
        model = transforms.set_input_convention(model, input_convention)
    if class_order != "source":
        model = transforms.set_class_order(model, class_order)
    n_params = sum(v.size for v in model.weights.values()) / 1e6
    _say(
        f"loaded {model.arch}: {len(model.graph.nodes)} nodes, {n_params:.2f} M parameters ({time.perf_counter() - t:.2f} s)"
    )
    return model


def _check_outputs(src: dict[str, Any], outputs: list[str], model: Any = None) -> None:
    """Exit 7 before anything is written when an output is one of the inputs (by file identity).

    Called before loading with the named input files, and again after with the model's recorded
    source paths (for --model, whose files are only known once the cache has them).
    """
    from .paths import check_not_inputs

    inputs = [src.get(k) for k in ("prototxt", "caffemodel", "ckpt")] + list(src.get("extra_inputs") or [])
    if model is not None:
        inputs += list((model.meta.get("source_paths") or {}).values())
    check_not_inputs(inputs, outputs)


def _warn_nonfinite(model: Any) -> None:
    """convert: NaN/Inf weights are converted as they are, with one warning line naming them."""
    from .checks import check_finite

    msg = check_finite(model, fatal=False)
    if msg:
        _say(f"senet-hub: warning: {msg}; the converted model will output NaN (verify fails on it)")


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _size(path: str) -> str:
    if os.path.isdir(path):
        n = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    else:
        n = os.path.getsize(path)
    return f"{n / 1e6:.1f} MB"


def _write_text(path: str, text: str) -> None:
    from .atomic import atomic_outputs

    with atomic_outputs([path]) as tmp, open(tmp[0], "w") as f:
        f.write(text)


@main.command()
@source_options
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Choice(["pytorch", "onnx", "tensorflow", "mxnet", "chainer", "caffe", "mindspore"]),
    help="Output format.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    help="Output: .pth/.pt2/.pt, .onnx, SavedModel dir or .keras, MXNet prefix, .npz, Caffe prefix, .ckpt.",
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
    from .atomic import check_writable
    from .paths import output_files
    from .sources import save_model

    outs = output_files(target, output)
    _check_outputs(src, outs)
    for f in outs:
        check_writable(f)
    model = _load(**src)
    _check_outputs(src, outs, model)
    _warn_nonfinite(model)
    opts: dict[str, Any] = {}
    if target == "onnx":
        opts["inline"] = inline
        if opset:
            opts["opset"] = opset
    if target == "tensorflow" and layout:
        opts["layout"] = layout
    if consumer and not verify_file:
        raise click.UsageError("--consumer names who loads the file for --verify; add --verify")
    if verify_file:
        _consumer_for(output, consumer, target)  # an unknown or missing consumer fails before the work
    t = time.perf_counter()
    files = save_model(model, target, output, exact_input=exact_input, say=_say, **opts)
    dt = time.perf_counter() - t
    for f in files:
        _say(f"wrote {f} ({_size(f)})")
    _say(f"converted {model.arch} to {target} in {dt:.2f} s")
    if target == "onnx":
        _say(_onnx_runtimes(model, inline))
    summary = _verify_written(model, output, consumer) if verify_file else None
    if as_json:
        _emit_json({"arch": model.arch, "target": target, "files": files, "seconds": dt, "verify": summary})
    if summary and not summary["passed"]:
        raise ParityError(
            f"{output}: the written file does not compute the source model in {summary['consumer']} "
            f"({summary['line']}); the file is kept for inspection"
        )


def _consumer_for(artifact: str, consumer: str | None, target: str | None = None) -> str:
    """The consumer that loads `artifact` (the format's default when none is named), checked installed.

    `target` (convert's --to) tells the format of a file not written yet (a prefix, a directory).
    """
    from . import consumers

    name = consumer or consumers.default_consumer(artifact, target)
    consumers.check_available(name, artifact, target)
    return name


def _verify_written(model: Any, artifact: str, consumer: str | None) -> dict[str, Any]:
    """Load the written file with its consumer and compare with the source model: one line, a summary."""
    from . import consumers

    report = consumers.verify_artifact(model, artifact, consumer, progress=_say)
    line = consumers.summary_line(report)
    _say(line)
    return {"consumer": report.backends[0], "passed": report.passed, "line": line}


def _onnx_runtimes(model: Any, inline: bool) -> str:
    """The one line saying where the written .onnx runs (and the flag for the other runtimes)."""
    from .builders.onnx import runtimes_message

    return runtimes_message(model, inline)


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
    from .atomic import check_writable
    from .sources import save_model

    _check_outputs(src, [output])
    check_writable(output)
    model = _load(**src)
    _check_outputs(src, [output], model)
    _warn_nonfinite(model)
    opts: dict[str, Any] = {"inline": inline}
    if opset:
        opts["opset"] = opset
    if consumer and not verify_file:
        raise click.UsageError("--consumer names who loads the file for --verify; add --verify")
    if verify_file:
        _consumer_for(output, consumer, "onnx")
    for f in save_model(model, "onnx", output, **opts):
        _say(f"wrote {f} ({_size(f)})")
    _say(_onnx_runtimes(model, inline))
    if verify_file:
        summary = _verify_written(model, output, consumer)
        if not summary["passed"]:
            raise ParityError(
                f"{output}: the written file does not compute the source model in {summary['consumer']} "
                f"({summary['line']}); the file is kept for inspection"
            )


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
    "--rtol",
    type=float,
    default=1e-3,
    show_default=True,
    callback=lambda c, p, v: _positive_finite(p, v),
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
           plot_path: str | None, quiet: bool, **src: Any) -> None:  # fmt: skip
    """Run backends with taps on every node and compare them with the float64 numpy reference."""
    from . import builders
    from . import verify as verify_mod
    from .atomic import check_writable

    if images_dir and input_path:
        raise click.UsageError("give --input X.npy or --images DIR, not both")
    if (limit or strict) and not images_dir:
        raise click.UsageError("--limit and --strict apply to --images DIR")
    outputs = [p for p in (json_path, md_path, save_dir, html_path, plot_path) if p and p != "-"]
    src_in = dict(src, extra_inputs=([input_path] if input_path else []) + ([artifact] if artifact else []))
    _check_outputs(src_in, outputs)
    for p in outputs:
        check_writable(p)
    if input_path:
        from .converters.npyio import check_exists

        check_exists(input_path)

    if consumer and not artifact:
        raise click.UsageError("--consumer names who loads --artifact; add --artifact FILE")
    if artifact and backends:
        raise click.UsageError(
            "--artifact checks one written file with its consumer; --backends checks senet-hub's builders: give one"
        )
    if artifact:
        names = []
        consumer = _consumer_for(artifact, consumer)
    elif backends and backends.strip().lower() == "all":
        names = [b for b in builders.BACKENDS if _installed(b)]
        _say(f"backends: {', '.join(names)} (every installed one)")
    elif backends:
        names = [builders.canonical_backend(b) for b in backends.split(",") if b.strip()]
        for b in names:
            builders.get(b)  # a missing framework fails here, naming the extra
    else:
        names = [b for b in DEFAULT_BACKENDS if _installed(b)]
        skipped = [b for b in DEFAULT_BACKENDS if b not in names]
        if skipped:
            _say(f"not installed, skipped: {', '.join(skipped)}")
    model = _load(**src)
    _check_outputs(src_in, outputs, model)
    from .checks import check_finite

    check_finite(model, fatal=True)  # NaN/Inf weights: ModelError (exit 5) naming the tensors
    if input_path:
        from .converters.npyio import read_npy
        from .errors import FormatError

        x = read_npy(input_path)
        want = " x ".join(map(str, model.graph.input_shape[1:]))
        if x.ndim != 4 or x.shape[1:] != tuple(model.graph.input_shape[1:]) or x.shape[0] < 1:
            shape = x.shape if x.ndim <= 8 else f"({x.ndim} dimensions)"
            raise FormatError(f"{input_path}: input shape {shape} does not fit the model's N x {want}")
        provenance = {"file": os.path.abspath(input_path)}
    elif images_dir:
        from .images import load_images

        imgs = load_images(images_dir, model.meta.get("input_convention") or {}, limit=limit, strict=strict)
        x, provenance = imgs.x, imgs.provenance()
        note = f"; skipped {len(imgs.skipped)} unreadable (first: {imgs.skipped[0][1]})" if imgs.skipped else ""
        _say(f"images: {len(imgs.files)} from {images_dir}{note}")
    else:
        x = verify_mod.default_input(model, batch, input_seed)
        provenance = {"generated": f"default_input(batch={batch}, seed={input_seed})"}
    say, step = _progress(quiet)
    report: verify_mod.Report
    if artifact:
        from . import consumers

        report = consumers.verify_artifact(model, artifact, consumer, x=x, rtol=rtol, progress=say)
    else:
        report = verify_mod.verify(model, names, x, rtol=rtol, progress=say, chunk=chunk, step=step)
    report.provenance = provenance
    click.echo(report.to_text(max_rows))
    if artifact:
        from .consumers import ArtifactReport, summary_line

        assert isinstance(report, ArtifactReport)
        _say(summary_line(report))
    if json_path:
        data = json.dumps(report.to_json(), indent=1, default=str)
        if json_path == "-":
            click.echo(data)
        else:
            _write_text(json_path, data)
    if md_path:
        _write_text(md_path, report.to_markdown())
    if html_path or plot_path:
        from . import report_html

        png = report_html.chart_png(report)
        if plot_path:
            _write_bytes(plot_path, png)
        if html_path:
            _write_text(html_path, report_html.to_html(report, png))
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
        return _say, None
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


def _write_bytes(path: str, data: bytes) -> None:
    from .atomic import atomic_outputs

    with atomic_outputs([path]) as tmp, open(tmp[0], "wb") as f:
        f.write(data)


def _positive_finite(param: click.Parameter, v: float) -> float:
    import math

    if not (math.isfinite(v) and v > 0):
        raise click.BadParameter(f"{v} is not a finite number > 0", param=param)
    return v


def _save_outputs(save_dir: str, outputs: dict[str, Any], x: Any) -> None:
    """DIR/<backend>.npy + DIR/input.npy, written as one directory: all of it or nothing (exit 7)."""
    import numpy as np

    from .atomic import atomic_outputs

    with atomic_outputs([save_dir]) as (tmp,):
        os.mkdir(tmp)
        for b, out in outputs.items():
            np.save(os.path.join(tmp, f"{b}.npy"), out)
        np.save(os.path.join(tmp, "input.npy"), x)


@functools.cache
def _installed(backend: str) -> bool:
    import importlib.util

    from .builders import BACKENDS, canonical_backend

    probe = BACKENDS[canonical_backend(backend)][2]
    return probe is None or importlib.util.find_spec(probe) is not None


def _model_rows() -> list[dict[str, Any]]:
    """The released models (manifest) joined with their architectures (zoo) and cache state."""
    from . import cache, manifest, zoo

    rows = []
    for entry in manifest.list_models():
        acc = manifest.published_accuracy(entry)
        size = sum(float(f.get("size_mb") or 0) for f in entry["files"].values() if isinstance(f, dict))
        rows.append({
            "id": entry["id"], "architecture": entry["architecture"], "source_format": entry["source_format"],
            "size_mb": size, "top1": acc.get("top1"), "top5": acc.get("top5"),
            "params": zoo.describe(entry["architecture"]).get("params"), "cached": cache.cached(entry["id"]),
        })  # fmt: skip
    return rows


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """The released models senet-hub knows: source, size, published accuracy, cached?"""
    rows = _model_rows()
    if as_json:
        _emit_json(rows)
        return
    click.echo(f"{'model':<20} {'source':<10} {'params':>8} {'size':>8} {'top-1':>6} {'top-5':>6}  cached")
    for r in rows:
        click.echo(
            f"{r['id']:<20} {r['source_format']:<10} {(r['params'] or 0) / 1e6:7.2f}M {r['size_mb']:6.0f}MB "
            f"{r['top1']:6.2f} {r['top5']:6.2f}  {'yes' if r['cached'] else 'no'}"
        )
    click.echo("top-1/top-5: published ImageNet-1k val accuracy in % (the Caffe release's error figures converted)")


@main.command()
@click.argument("model_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(model_id: str, as_json: bool) -> None:
    """One model: architecture, files, checksums, input convention, class order, license, origin."""
    from . import cache, manifest, zoo

    entry = manifest.get(model_id)
    d = {
        **entry,
        "published_accuracy": manifest.published_accuracy(entry),
        "architecture_details": zoo.describe(entry["architecture"]),
        "cached": cache.cached(entry["id"]),
    }
    if as_json:
        _emit_json(d)
        return

    def show(k: str, v: Any, indent: int = 0) -> None:
        pad = "  " * indent
        if isinstance(v, dict):
            click.echo(f"{pad}{k}:")
            for k2, v2 in v.items():
                show(str(k2), v2, indent + 1)
        else:
            click.echo(f"{pad}{k + ':':<24} {v}")

    for k, v in d.items():
        show(k, v)


@main.command("consumers")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def consumers_cmd(as_json: bool) -> None:
    """The tools `verify --artifact` / `--verify` load written files with, and what each loads."""
    from .consumers import list_consumers

    rows = list_consumers()
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        state = "installed" if r["installed"] else f"not installed ({r['install']})"
        default = f"; default for {', '.join(r['default_for'])}" if r["default_for"] else ""
        click.echo(f"{r['name']:<15} {', '.join(r['formats'])}{default}; {state}")
        click.echo(f"{'':<15} {r['description']}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def env(as_json: bool) -> None:
    """Which backends are installed, with versions."""
    import importlib.metadata as md

    from .builders import BACKENDS

    rows = {}
    for name, (_, extra, probe) in BACKENDS.items():
        dist = {"torch": "torch", "cv2": "opencv-python-headless", "onnxruntime": "onnxruntime", "tensorflow": "tensorflow-cpu",
                "mxnet": "mxnet", "chainer": "chainer", "mindspore": "mindspore", "openvino": "openvino",
                None: "numpy"}[probe]  # fmt: skip
        try:
            version = md.version(dist)
        except md.PackageNotFoundError:
            version = None
            if probe == "tensorflow":
                try:
                    version = md.version("tensorflow")
                except md.PackageNotFoundError:
                    pass
        rows[name] = {"installed": version is not None, "version": version, "extra": extra}
    if as_json:
        _emit_json({"python": sys.version.split()[0], "backends": rows})
        return
    click.echo(f"python {sys.version.split()[0]}")
    for name, r in rows.items():
        state = r["version"] if r["installed"] else f"not installed (pip install 'senet-hub[{r['extra']}]')"
        click.echo(f"{name:<12} {state}")


@main.command()
@click.option("-o", "--outdir", default="demo_out", show_default=True, help="Where the demo writes its files.")
@click.option("--arch", default="SE-ResNet-50", show_default=True, help="Released Caffe architecture to use.")
def demo(outdir: str, arch: str) -> None:
    """The whole flow on a built-in default: bundled prototxt + synthetic weights -> PyTorch -> verify."""
    from importlib import resources

    from . import zoo
    from .converters import caffe_writer

    os.makedirs(outdir, exist_ok=True)
    prototxt = os.path.join(outdir, f"{arch}.prototxt")
    caffemodel = os.path.join(outdir, f"{arch}.synthetic.caffemodel")
    with resources.as_file(resources.files("senet_hub.zoo_data") / f"{arch}.prototxt") as src, open(src) as f:
        _write_text(prototxt, f.read())
    _say("=" * 78)
    _say(f"senet-hub demo: {arch} from the bundled Caffe deploy prototxt")
    _say("NOTE: the released SENet weights are NOT bundled (no download here); this demo uses")
    _say("      deterministic synthetic weights (seed 0) written as a real .caffemodel.")
    _say("=" * 78)
    caffe_writer.write_caffemodel_for(zoo.synthetic_model(arch, seed=0), caffemodel)
    _say(f"[1/3] wrote {caffemodel} ({_size(caffemodel)})")
    ctx = click.get_current_context()
    files = {"source": "caffe", "prototxt": prototxt, "caffemodel": caffemodel}
    for suffix in (".pth", ".pt2"):
        # --verify: the written file itself, loaded the way its users load it, against the source
        _say(f"[2/3] senet-hub convert --from caffe --to pytorch -o {arch}{suffix} --verify")
        ctx.invoke(convert, target="pytorch", output=os.path.join(outdir, arch + suffix), verify_file=True, **files)
    _say("[3/3] senet-hub verify --backends numpy,torch,opencv")
    ctx.invoke(verify, json_path=os.path.join(outdir, "verify.json"), save_dir=os.path.join(outdir, "outputs"), **files)


from . import cli_zoo  # noqa: E402  (registers download, cache, evaluate)

cli_zoo.register(main)

if __name__ == "__main__":
    main()
