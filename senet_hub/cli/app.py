"""The ``senet-hub`` click group and the output helpers every command shares.

The group turns package errors into one line and a documented exit code (``--debug`` shows the
traceback); commands register themselves on ``main`` from their own modules (senet_hub.cli).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

from ..errors import EXIT_CODES, SenetHubError, Terminated


def say(msg: str) -> None:
    """A progress or warning line on stderr (stdout carries only results)."""
    click.echo(msg, err=True)


class _Group(click.Group):
    """Turns package errors into one line and a documented exit code; --debug shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        previous = _on_sigterm()
        try:
            return super().invoke(ctx)
        except Terminated:
            say("senet-hub: terminated")
            ctx.exit(143)
        except SenetHubError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            say(f"senet-hub: error: {e}")
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            say("senet-hub: interrupted")
            ctx.exit(130)
        except BrokenPipeError:  # `senet-hub list | head`: the reader left; not an error of ours
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the final flush at exit must not fail again
            ctx.exit(141)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except MemoryError:
            say("senet-hub: error: out of memory; close other programs or use a smaller batch")
            ctx.exit(1)
        except Exception as e:  # a bug: still one line, with the way to see more
            if ctx.obj and ctx.obj.get("debug"):
                raise
            say(f"senet-hub: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)")
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


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def size(path: str) -> str:
    """A file's (or a directory's) size for `wrote ...` lines."""
    if os.path.isdir(path):
        n = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    else:
        n = os.path.getsize(path)
    return f"{n / 1e6:.1f} MB"


def human(n: int | None) -> str:
    """Bytes for the cache listing: 512 B, 1.5 kB, 99.0 MB."""
    if n is None:
        return "-"
    v = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if v < 1000 or unit == "GB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1000
    return str(v)


def write_text(path: str, text: str) -> None:
    from ..atomic import atomic_outputs

    with atomic_outputs([path]) as tmp, open(tmp[0], "w") as f:
        f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    from ..atomic import atomic_outputs

    with atomic_outputs([path]) as tmp, open(tmp[0], "wb") as f:
        f.write(data)
