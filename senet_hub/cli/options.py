"""Option declarations shared by several commands.

The options that name a model (``--from``, each source's own options, ``--model`` ...) are made
from the format registry (senet_hub.formats): a registered source's options appear on every
command that reads a model, and ``--from``/``--to`` list the registered names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from .. import formats

F = Callable[..., Any]


def _source_option(o: formats.SourceOption) -> Callable[[F], F]:
    # plain strings, not click.Path: a directory or unreadable input is the readers' exit 3, not a usage error
    return click.option(o.flag, type=o.type, default=o.default, show_default=o.show_default, help=o.help)


def _source_option_list() -> list[Callable[[F], F]]:
    opts = formats.source_options()
    files = [o for o in opts if o.file]
    others = [o for o in opts if not o.file]
    return [
        click.option(
            "--from", "source", type=click.Choice(formats.source_names()), help="Input format (inferred from the files given)."
        ),
        *map(_source_option, files),
        click.option("--model", "model_id", help="A released model id (`senet-hub list`): files come from the checksum-verified cache."),
        click.option("--offline", is_flag=True, default=None, help="With --model: never touch the network (also SENET_HUB_OFFLINE=1)."),
        *map(_source_option, others),
        click.option("--input-convention", type=click.Choice(["source", "caffe", "rgb01", "mindcv"]), default="source", show_default=True,
                     help="Input the result takes; rgb01 = RGB in [0,1] normalized with ImageNet mean/std (Cadene/timm)."),
        click.option("--class-order", type=click.Choice(["source", "senet", "ilsvrc2012"]), default="source", show_default=True,
                     help="Order of the output classes; ilsvrc2012 = sorted WordNet ids (torchvision)."),
    ]  # fmt: skip


def source_options(fn: F) -> F:
    """The options that name a model; the command receives them as **src for shared.load_source."""
    for o in reversed(_source_option_list()):
        fn = o(fn)
    return fn


def target_option(fn: F) -> F:
    """convert's --to: the registered targets."""
    return click.option(
        "--to", "target", required=True, type=click.Choice(formats.target_names()), help="Output format."
    )(fn)


def verify_file_options(fn: F) -> F:
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


json_flag = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")

offline_option = click.option(
    "--offline",
    is_flag=True,
    default=None,
    help="Never touch the network (also: SENET_HUB_OFFLINE=1); a missing file is an error saying where to place it.",
)
progress_option = click.option(
    "--progress/--no-progress", default=None, help="Progress bar on stderr (default: when stderr is a terminal)."
)


def positive_finite(ctx: click.Context | None, param: click.Parameter, v: float) -> float:
    """A click callback: a finite number > 0 (verify's --rtol)."""
    if not (math.isfinite(v) and v > 0):
        raise click.BadParameter(f"{v} is not a finite number > 0", param=param)
    return v
