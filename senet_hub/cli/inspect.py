"""What senet-hub knows and has: ``list``, ``info``, ``consumers``, ``env``."""

from __future__ import annotations

import sys
from typing import Any

import click

from .app import emit_json, main
from .options import json_flag


def _model_rows() -> list[dict[str, Any]]:
    """The released models (manifest) joined with their architectures (zoo) and cache state."""
    from .. import zoo
    from ..hub import cache, manifest

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
@json_flag
def list_cmd(as_json: bool) -> None:
    """The released models senet-hub knows: source, size, published accuracy, cached?"""
    rows = _model_rows()
    if as_json:
        emit_json(rows)
        return
    w = max([20, *(len(r["id"]) for r in rows)])  # timm's ids run to 42 characters
    click.echo(f"{'model':<{w}} {'source':<10} {'params':>8} {'size':>8} {'top-1':>6} {'top-5':>6}  cached")
    for r in rows:
        click.echo(
            f"{r['id']:<{w}} {r['source_format']:<10} {(r['params'] or 0) / 1e6:7.2f}M {r['size_mb']:6.0f}MB "
            f"{r['top1']:6.2f} {r['top5']:6.2f}  {'yes' if r['cached'] else 'no'}"
        )
    click.echo("top-1/top-5: published ImageNet-1k val accuracy in % (the Caffe release's error figures converted)")


@main.command()
@click.argument("model_id")
@json_flag
def info(model_id: str, as_json: bool) -> None:
    """One model: architecture, files, checksums, input convention, class order, license, origin."""
    from .. import zoo
    from ..hub import cache, manifest

    entry = manifest.get(model_id)
    d = {
        **entry,
        "published_accuracy": manifest.published_accuracy(entry),
        "architecture_details": zoo.describe(entry["architecture"]),
        "cached": cache.cached(entry["id"]),
    }
    if as_json:
        emit_json(d)
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
@json_flag
def consumers_cmd(as_json: bool) -> None:
    """The tools `verify --artifact` / `--verify` load written files with, and what each loads."""
    from ..consumers import list_consumers

    rows = list_consumers()
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        state = "installed" if r["installed"] else f"not installed ({r['install']})"
        default = f"; default for {', '.join(r['default_for'])}" if r["default_for"] else ""
        click.echo(f"{r['name']:<15} {', '.join(r['formats'])}{default}; {state}")
        click.echo(f"{'':<15} {r['description']}")


@main.command()
@json_flag
def env(as_json: bool) -> None:
    """Which backends are installed, with versions."""
    import importlib.metadata as md

    from ..builders import BACKENDS

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
        emit_json({"python": sys.version.split()[0], "backends": rows})
        return
    click.echo(f"python {sys.version.split()[0]}")
    for name, r in rows.items():
        state = r["version"] if r["installed"] else f"not installed (pip install 'senet-hub[{r['extra']}]')"
        click.echo(f"{name:<12} {state}")
