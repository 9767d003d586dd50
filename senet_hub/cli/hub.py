"""The released models' commands: ``download``, ``cache ls|verify|rm``, ``evaluate``.

Only click and the standard library are imported here; pooch, PIL, torch and the rest load inside
the commands. The hub modules (cache, evaluate) are imported in one place, `_hub`, so a move of
those modules is one edit.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import click

from .app import emit_json, human, main, say
from .options import json_flag, offline_option, progress_option


def _hub(name: str) -> ModuleType:
    """senet_hub.hub.<name> (cache, evaluate), imported when a command runs."""
    import importlib

    return importlib.import_module(f"senet_hub.hub.{name}")


@main.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL...")
@offline_option
@progress_option
@click.option("--json", "as_json", is_flag=True, help="Print {model: {role: path, sha256}} as JSON on stdout.")
def download(models: tuple[str, ...], offline: bool | None, progress: bool | None, as_json: bool) -> None:
    """Download released models' files into the cache, checksum-verified.

    The cache is $SENET_HUB_HOME, else $XDG_CACHE_HOME/senet-hub (~/.cache/senet-hub).
    """
    cache_mod = _hub("cache")
    out: dict[str, Any] = {}
    for m in models:
        files = cache_mod.fetch_files(m, offline=offline, progress=progress)
        out[m] = {r: {"path": str(v["path"]), "sha256": v["sha256"]} for r, v in files.items()}
        if not as_json:
            for r, v in files.items():
                click.echo(f"{m} {r}: {v['path']}")
    if as_json:
        emit_json(out)


@main.group()
def cache() -> None:
    """Inspect, verify or clear the download cache."""


@cache.command("ls")
@click.argument("model", required=False)
@json_flag
def cache_ls(model: str | None, as_json: bool) -> None:
    """Files of every model (or MODEL): cached or not, size, checksum kind."""
    c = _hub("cache")
    rows = c.ls(model)
    if as_json:
        emit_json({"cache_dir": str(c.cache_dir()), "files": rows})
        return
    click.echo(f"cache: {c.cache_dir()}")
    partial: set[str] = set()
    w = max([20, *(len(r["model"]) for r in rows)])
    for r in rows:
        state = "cached" if r["cached"] else "-"
        click.echo(
            f"{r['model']:<{w}} {r['role']:<11} {state:<7} {human(r['bytes']):>9}  {r['checksum']:<14} {r['file']}"
        )
        partial.update(r["partial_downloads"])
    if partial:
        click.echo(
            f"{len(partial)} partial download(s) left by an interrupted run; `senet-hub cache rm MODEL` removes them"
        )


@cache.command("verify")
@click.argument("model", required=False)
@json_flag
def cache_verify(model: str | None, as_json: bool) -> None:
    """Re-hash cached files against the manifest (or the hash recorded at first download)."""
    from ..errors import ChecksumError

    c = _hub("cache")
    rows = c.verify_cache(model, log=say)
    bad = [r for r in rows if r["status"] in ("mismatch", "error")]
    if as_json:
        emit_json({"cache_dir": str(c.cache_dir()), "files": rows, "ok": not bad})
    else:
        if not rows:
            click.echo(f"nothing cached in {c.cache_dir()}" + (f" for {model}" if model else ""))
        w = max([20, *(len(r["model"]) for r in rows)])
        for r in rows:
            click.echo(f"{r['model']:<{w}} {r['role']:<11} {r['status']:<9} {r.get('sha256') or r.get('error', '')}")
    if bad:
        first = bad[0].get("error", "")
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ChecksumError(f"{first}{more}")


@cache.command("rm")
@click.argument("model", required=False)
@click.option("--all", "all_", is_flag=True, help="Remove the files of every model.")
def cache_rm(model: str | None, all_: bool) -> None:
    """Delete MODEL's cached files (with their recorded checksums and partial downloads)."""
    if not model and not all_:
        raise click.UsageError("give a MODEL, or --all to clear the files of every model")
    if model and all_:
        raise click.UsageError("give a MODEL or --all, not both")
    removed = _hub("cache").rm(model)
    for p in removed:
        say(f"removed {p}")
    if not removed:
        say("nothing to remove" + (f" for {model}" if model else ""))


@main.command()
@click.option("--model", "model_id", required=True, help="Released model id (see `senet-hub list`).")
@click.option(
    "--backend",
    type=click.Choice(["torch", "numpy"]),
    default="torch",
    show_default=True,
    help="Framework that runs the model.",
)
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False),
    help="ImageFolder, or flat folder of images with --labels.",
)
@click.option(
    "--labels", type=click.Path(dir_okay=False), help="Label file: 'name label' per line (ImageNet-val layout)."
)
@click.option(
    "--label-order",
    type=click.Choice(["auto", "model", "senet", "ilsvrc2012"]),
    default="auto",
    show_default=True,
    help="Class order of the labels; auto: ilsvrc2012 for 1000 WordNet-id folders, else the model's own.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N images.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Image decoding threads (default: CPUs, at most 8)."
)
@offline_option
@progress_option
@click.option(
    "--synthetic-weights",
    is_flag=True,
    help="Use deterministic random weights instead of the released ones (checks the pipeline; accuracy is meaningless).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def evaluate(
    model_id: str,
    backend: str,
    data: str,
    labels: str | None,
    label_order: str,
    batch_size: int,
    limit: int | None,
    workers: int | None,
    offline: bool | None,
    progress: bool | None,
    synthetic_weights: bool,
    as_json: bool,
) -> None:
    """Top-1 / top-5 accuracy on an image folder with the model's own preprocessing.

    \b
    Resize shorter side 256 (bilinear), centre crop 224, the model's channel order and
    normalization. Data-parallel under torchrun, e.g.
      torchrun --nproc_per_node 4 -m senet_hub.cli evaluate --model SE-ResNet-50 --data DIR ...
    """
    ev = _hub("evaluate")
    res = ev.run(
        model_id,
        data,
        backend=backend,
        labels=labels,
        label_order=label_order,
        batch_size=batch_size,
        limit=limit,
        workers=workers,
        offline=offline,
        progress=progress,
        synthetic=synthetic_weights,
    )
    if res is None:  # not rank 0
        return
    if res.get("labelled_files_missing"):
        say(
            f"{res['labelled_files_missing']} files named in {res['labels']} are not in {res['data']}; evaluated the rest"
        )
    say(
        f"evaluated {res['images']} images in {res['seconds']:.1f} s ({res['images_per_second'] or 0:.1f} img/s, {res['world_size']} process(es))"
    )
    if as_json:
        emit_json(res)
    else:
        click.echo(ev.format_report(res))
