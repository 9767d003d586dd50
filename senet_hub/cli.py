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

from .errors import EXIT_CODES, InputFileError, ParityError, SenetHubError

DEFAULT_BACKENDS = ("numpy", "torch", "opencv")


def _say(msg: str) -> None:
    click.echo(msg, err=True)


class _Group(click.Group):
    """Turns package errors into one line and a documented exit code; --debug shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SenetHubError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            _say(f"senet-hub: error: {e}")
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            _say("senet-hub: interrupted")
            ctx.exit(130)
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


def source_options(fn: Callable) -> Callable:
    opts = [
        click.option(
            "--from",
            "source",
            type=click.Choice(["caffe", "mindspore", "zoo"]),
            help="Input format (inferred from the files given).",
        ),
        click.option("--prototxt", type=click.Path(dir_okay=False), help="Caffe deploy prototxt."),
        click.option("--caffemodel", type=click.Path(dir_okay=False), help="Caffe weights."),
        click.option("--ckpt", type=click.Path(dir_okay=False), help="MindSpore checkpoint (.ckpt)."),
        click.option(
            "--arch", help="Architecture id (see `senet-hub list`); for --from zoo and MindSpore checkpoints."
        ),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of synthetic weights (--from zoo)."),
        click.option("--input-convention", "input_convention", type=click.Choice(["source", "caffe", "rgb01", "mindcv"]), default="source", show_default=True,
                     help="Input the converted model takes: rgb01 = RGB in [0,1] normalized with ImageNet mean/std (Cadene/timm style)."),
        click.option("--class-order", "class_order", type=click.Choice(["source", "senet", "ilsvrc2012"]), default="source", show_default=True,
                     help="Order of the output classes: ilsvrc2012 = sorted WordNet ids (torchvision style)."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def _load(source, prototxt, caffemodel, ckpt, arch, seed, input_convention="source", class_order="source"):
    from . import transforms
    from .sources import load_model

    t = time.perf_counter()
    model = load_model(source, prototxt, caffemodel, ckpt, arch, seed)
    if input_convention != "source":
        model = transforms.set_input_convention(model, input_convention)
    if class_order != "source":
        model = transforms.set_class_order(model, class_order)
    _say(
        f"loaded {model.arch}: {len(model.graph.nodes)} nodes, {sum(v.size for v in model.weights.values()) / 1e6:.2f} M parameters ({time.perf_counter() - t:.2f} s)"
    )
    return model


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


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
    help="Output path (.pth/.pt2/.pt, .onnx, SavedModel dir or .keras, MXNet prefix, .npz, Caffe prefix, .ckpt).",
)
@click.option("--opset", type=int, default=None, help="ONNX opset (--to onnx).")
@click.option("--inline", is_flag=True, help="ONNX: inline the Axpy function into standard ops.")
@click.option(
    "--layout",
    type=click.Choice(["nhwc", "nchw"]),
    default=None,
    help="TensorFlow serving input layout (default nhwc).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def convert(source, prototxt, caffemodel, ckpt, arch, seed, input_convention, class_order, target, output, opset, inline, layout, as_json) -> None:
    """Convert a model to another framework's native format."""
    from .atomic import check_writable
    from .sources import save_model

    check_writable(output)
    model = _load(source, prototxt, caffemodel, ckpt, arch, seed, input_convention, class_order)
    opts: dict[str, Any] = {}
    if target == "onnx":
        opts["inline"] = inline
        if opset:
            opts["opset"] = opset
    if target == "tensorflow" and layout:
        opts["layout"] = layout
    t = time.perf_counter()
    files = save_model(model, target, output, **opts)
    dt = time.perf_counter() - t
    for f in files:
        _say(f"wrote {f} ({_size(f)})")
    _say(f"converted {model.arch} to {target} in {dt:.2f} s")
    if as_json:
        _emit_json({"arch": model.arch, "target": target, "files": files, "seconds": dt})


def _size(path: str) -> str:
    if os.path.isdir(path):
        n = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    else:
        n = os.path.getsize(path)
    return f"{n / 1e6:.1f} MB"


@main.command("export-onnx")
@source_options
@click.option("-o", "--output", required=True, help="Output .onnx file.")
@click.option("--opset", type=int, default=None, help="ONNX opset version.")
@click.option("--inline", is_flag=True, help="Write plain standard ops (Axpy function inlined).")
def export_onnx(source, prototxt, caffemodel, ckpt, arch, seed, input_convention, class_order, output, opset, inline) -> None:
    """Export ONNX with Axpy as a custom-domain op plus a function fallback."""
    from .atomic import check_writable
    from .sources import save_model

    check_writable(output)
    model = _load(source, prototxt, caffemodel, ckpt, arch, seed, input_convention, class_order)
    opts: dict[str, Any] = {"inline": inline}
    if opset:
        opts["opset"] = opset
    for f in save_model(model, "onnx", output, **opts):
        _say(f"wrote {f} ({_size(f)})")


@main.command()
@source_options
@click.option(
    "--backends",
    default=None,
    help=f"Comma-separated backends (default: {','.join(DEFAULT_BACKENDS)}, those installed).",
)
@click.option(
    "--input", "input_path", type=click.Path(dir_okay=False), help="Input array (.npy, N x C x H x W float32)."
)
@click.option("--batch", type=int, default=2, show_default=True, help="Batch of the generated input.")
@click.option("--input-seed", type=int, default=7, show_default=True, help="Seed of the generated input.")
@click.option(
    "--rtol", type=float, default=1e-3, show_default=True, help="Per-node tolerance: max|d| <= rtol * max|ref|."
)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON ('-' for stdout).")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False), help="Write the report as Markdown.")
@click.option(
    "--save-outputs",
    "save_dir",
    type=click.Path(file_okay=False),
    help="Write each backend's final output as DIR/<backend>.npy.",
)
@click.option("--max-rows", type=int, default=None, help="Show only the first N nodes in the table.")
def verify(
    source,
    prototxt,
    caffemodel,
    ckpt,
    arch,
    seed,
    input_convention,
    class_order,
    backends,
    input_path,
    batch,
    input_seed,
    rtol,
    json_path,
    md_path,
    save_dir,
    max_rows,
) -> None:
    """Run backends with taps on every node and compare them with the float64 numpy reference."""
    import numpy as np

    from . import builders
    from . import verify as verify_mod

    if backends:
        names = [builders.canonical_backend(b) for b in backends.split(",") if b.strip()]
        for b in names:
            builders.get(b)  # a missing framework fails here, naming the extra
    else:
        names = [b for b in DEFAULT_BACKENDS if _installed(b)]
        skipped = [b for b in DEFAULT_BACKENDS if b not in names]
        if skipped:
            _say(f"not installed, skipped: {', '.join(skipped)}")
    model = _load(source, prototxt, caffemodel, ckpt, arch, seed, input_convention, class_order)
    if input_path:
        try:
            x = np.load(input_path)
        except FileNotFoundError:
            raise InputFileError(f"{input_path}: input array not found") from None
        except (ValueError, OSError) as e:
            raise InputFileError(f"{input_path}: not a .npy array ({e})") from None
        if x.ndim != 4 or x.shape[1:] != tuple(model.graph.input_shape[1:]):
            raise InputFileError(
                f"{input_path}: input shape {x.shape} does not fit the model's N x {' x '.join(map(str, model.graph.input_shape[1:]))}"
            )
    else:
        x = verify_mod.default_input(model, batch, input_seed)
    report = verify_mod.verify(model, names, x, rtol=rtol, progress=_say)
    click.echo(report.to_text(max_rows))
    if json_path:
        data = json.dumps(report.to_json(), indent=1, default=str)
        if json_path == "-":
            click.echo(data)
        else:
            _write_text(json_path, data)
    if md_path:
        _write_text(md_path, report.to_markdown())
    if save_dir:
        os.makedirs(save_dir, exist_ok=True)
        for b, out in report.outputs.items():
            np.save(os.path.join(save_dir, f"{b}.npy"), out)
        np.save(os.path.join(save_dir, "input.npy"), x)
    if not report.passed:
        raise ParityError(
            f"parity failed for {model.arch}: "
            + "; ".join(f"{b}: first divergent node {n}" for b, n in report.first_divergent.items() if n)
            + ("; " + "; ".join(f"{b}: {e}" for b, e in report.errors.items()) if report.errors else "")
        )


def _write_text(path: str, text: str) -> None:
    from .atomic import atomic_outputs

    with atomic_outputs([path]) as tmp, open(tmp[0], "w") as f:
        f.write(text)


@functools.cache
def _installed(backend: str) -> bool:
    import importlib.util

    from .builders import BACKENDS, canonical_backend

    probe = BACKENDS[canonical_backend(backend)][2]
    return probe is None or importlib.util.find_spec(probe) is not None


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """The architectures senet-hub knows."""
    from . import zoo

    rows = [zoo.describe(a) for a in zoo.list_archs()]
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        params = r.get("params") or r.get("parameters") or 0
        click.echo(
            f"{r.get('id', r.get('arch', '?')):<22} {r.get('family', ''):<18} {r.get('source_format', ''):<10} {params / 1e6:7.2f} M params"
        )


@main.command()
@click.argument("arch")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(arch: str, as_json: bool) -> None:
    """Details of one architecture."""
    from . import zoo

    d = zoo.describe(arch)
    if as_json:
        _emit_json(d)
        return
    for k, v in d.items():
        click.echo(f"{k:<20} {v}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def env(as_json: bool) -> None:
    """Which backends are installed, with versions."""
    import importlib.metadata as md

    from .builders import BACKENDS

    rows = {}
    for name, (_, extra, probe) in BACKENDS.items():
        dist = {"torch": "torch", "cv2": "opencv-python-headless", "onnxruntime": "onnxruntime", "tensorflow": "tensorflow-cpu",
                "mxnet": "mxnet", "chainer": "chainer", "mindspore": "mindspore", None: "numpy"}[probe]  # fmt: skip
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
    with resources.as_file(resources.files("senet_hub.zoo_data") / f"{arch}.prototxt") as src:
        with open(src) as f, open(prototxt, "w") as g:
            g.write(f.read())
    _say("=" * 78)
    _say(f"senet-hub demo: {arch} from the bundled Caffe deploy prototxt")
    _say("NOTE: the released SENet weights are NOT bundled (no download here); this demo uses")
    _say("      deterministic synthetic weights (seed 0) written as a real .caffemodel.")
    _say("=" * 78)
    caffe_writer.write_caffemodel_for(zoo.synthetic_model(arch, seed=0), caffemodel)
    _say(f"[1/3] wrote {caffemodel} ({_size(caffemodel)})")
    ctx = click.get_current_context()
    pth = os.path.join(outdir, f"{arch}.pth")
    pt2 = os.path.join(outdir, f"{arch}.pt2")
    _say("[2/3] senet-hub convert --from caffe --to pytorch")
    ctx.invoke(
        convert,
        source="caffe",
        prototxt=prototxt,
        caffemodel=caffemodel,
        ckpt=None,
        arch=None,
        seed=0,
        target="pytorch",
        output=pth,
        opset=None,
        inline=False,
        layout=None,
        as_json=False,
    )
    ctx.invoke(
        convert,
        source="caffe",
        prototxt=prototxt,
        caffemodel=caffemodel,
        ckpt=None,
        arch=None,
        seed=0,
        target="pytorch",
        output=pt2,
        opset=None,
        inline=False,
        layout=None,
        as_json=False,
    )
    _say("[3/3] senet-hub verify --backends numpy,torch,opencv")
    ctx.invoke(
        verify,
        source="caffe",
        prototxt=prototxt,
        caffemodel=caffemodel,
        ckpt=None,
        arch=None,
        seed=0,
        backends=None,
        input_path=None,
        batch=2,
        input_seed=7,
        rtol=1e-3,
        json_path=os.path.join(outdir, "verify.json"),
        md_path=None,
        save_dir=os.path.join(outdir, "outputs"),
        max_rows=None,
    )


from . import cli_zoo  # noqa: E402

cli_zoo.register(main)

if __name__ == "__main__":
    main()
