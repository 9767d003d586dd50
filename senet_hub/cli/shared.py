"""What the commands that read a model or write a file share: loading, output checks, --verify."""

from __future__ import annotations

import functools
import time
from typing import Any

from .. import formats
from ..errors import SenetHubError
from .app import say


def _file_options() -> list[str]:
    """The dests of the source options that name input files (prototxt, caffemodel, ckpt ...)."""
    return [o.dest for o in formats.source_options() if o.file]


def load_source(
    source: str | None = None,
    model_id: str | None = None,
    offline: bool | None = None,
    input_convention: str = "source",
    class_order: str = "source",
    **options: Any,
) -> Any:
    """The model named by the source options, with the requested exact rewrites."""
    from .. import transforms
    from ..sources import load_model

    t = time.perf_counter()
    if model_id:
        if source or any(options.get(k) for k in _file_options()):
            flags = "/".join(["--from", *(o.flag for o in formats.source_options() if o.file)])
            raise SenetHubError(f"--model takes its files from the cache: do not combine it with {flags}")
        from ..hub.cache import model_from_cache

        model = model_from_cache(model_id, offline=offline)
    else:
        model = load_model(source, **options)
    for note in model.meta.pop("reader_notes", None) or []:  # an assumption the reader made, said once
        say(f"note: {note}")
    if input_convention != "source":
        model = transforms.set_input_convention(model, input_convention)
    if class_order != "source":
        model = transforms.set_class_order(model, class_order)
    n_params = sum(v.size for v in model.weights.values()) / 1e6
    say(
        f"loaded {model.arch}: {len(model.graph.nodes)} nodes, {n_params:.2f} M parameters ({time.perf_counter() - t:.2f} s)"
    )
    return model


def check_outputs(src: dict[str, Any], outputs: list[str], model: Any = None) -> None:
    """Exit 7 before anything is written when an output is one of the inputs (by file identity).

    Called before loading with the named input files, and again after with the model's recorded
    source paths (for --model, whose files are only known once the cache has them).
    """
    from ..paths import check_not_inputs

    inputs = [src.get(k) for k in _file_options()] + list(src.get("extra_inputs") or [])
    if model is not None:
        inputs += list((model.meta.get("source_paths") or {}).values())
    check_not_inputs(inputs, outputs)


def warn_nonfinite(model: Any) -> None:
    """convert: NaN/Inf weights are converted as they are, with one warning line naming them."""
    from ..checks import check_finite

    msg = check_finite(model, fatal=False)
    if msg:
        say(f"senet-hub: warning: {msg}; the converted model will output NaN (verify fails on it)")


def consumer_for(artifact: str, consumer: str | None, target: str | None = None) -> str:
    """The consumer that loads `artifact` (the format's default when none is named), checked installed.

    `target` (convert's --to) tells the format of a file not written yet (a prefix, a directory).
    """
    from .. import consumers

    name = consumer or consumers.default_consumer(artifact, target)
    consumers.check_available(name, artifact, target)
    return name


def verify_written(model: Any, artifact: str, consumer: str | None) -> dict[str, Any]:
    """Load the written file with its consumer and compare with the source model: one line, a summary."""
    from .. import consumers

    report = consumers.verify_artifact(model, artifact, consumer, progress=say)
    line = consumers.summary_line(report)
    say(line)
    return {"consumer": report.backends[0], "passed": report.passed, "line": line}


def onnx_runtimes(model: Any, inline: bool) -> str:
    """The one line saying where the written .onnx runs (and the flag for the other runtimes)."""
    from ..builders.onnx import runtimes_message

    return runtimes_message(model, inline)


@functools.cache
def installed(backend: str) -> bool:
    """Whether a backend's framework is importable (found, not imported)."""
    import importlib.util

    from ..builders import BACKENDS, canonical_backend

    probe = BACKENDS[canonical_backend(backend)][2]
    return probe is None or importlib.util.find_spec(probe) is not None
