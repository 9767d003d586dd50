"""The package's error classes. Each maps to one documented CLI exit code (see README)."""

from __future__ import annotations


class SenetHubError(Exception):
    """Base class: a failure a user can act on. The message is one line: file, layer, what to do."""

    exit_code = 1
    max_len = 2000  # a 500,000-dim shape in a crafted file must not become a 1.5 MB error line

    def __str__(self) -> str:
        # names come from untrusted files: keep the message one printable line, of bounded length
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in super().__str__())
        if len(text) > self.max_len:
            cut = len(text) - self.max_len
            text = f"{text[: self.max_len // 2]} ...[{cut} characters cut]... {text[-self.max_len // 2 :]}"
        return text


class InputFileError(SenetHubError):
    """An input file is missing or unreadable."""

    exit_code = 3


class FormatError(SenetHubError):
    """An input file is truncated, corrupt or not in the format it claims."""

    exit_code = 4


class ModelError(SenetHubError):
    """The model is inconsistent: missing weights, wrong shapes, dangling values, mismatched files."""

    exit_code = 5


class UnsupportedError(SenetHubError):
    """The input uses layer types or features senet-hub cannot convert."""

    exit_code = 6


class OutputError(SenetHubError):
    """The output cannot be written (directory missing, not writable, disk full)."""

    exit_code = 7


class MissingFrameworkError(SenetHubError):
    """A framework needed for this command is not installed."""

    exit_code = 8


class ChecksumError(SenetHubError):
    """A downloaded or cached file does not have the expected sha256."""

    exit_code = 9


class ParityError(SenetHubError):
    """verify: a backend does not match the reference within tolerance."""

    exit_code = 10


class DownloadError(SenetHubError):
    """A download failed, or the network is needed while offline mode is on."""

    exit_code = 11


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like KeyboardInterrupt, so temporaries are removed (exit 143)."""


EXIT_CODES = {
    0: "success (verify: parity holds)",
    1: "other senet-hub error",
    2: "command-line usage error",
    3: InputFileError.__doc__,
    4: FormatError.__doc__,
    5: ModelError.__doc__,
    6: UnsupportedError.__doc__,
    7: OutputError.__doc__,
    8: MissingFrameworkError.__doc__,
    9: ChecksumError.__doc__,
    10: ParityError.__doc__,
    11: DownloadError.__doc__,
    130: "interrupted (Ctrl-C); nothing half-written is left",
    143: "terminated (SIGTERM); nothing half-written is left",
}
