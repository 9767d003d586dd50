"""The `senet-hub` console script: the CLI, with Ctrl-C caught from the first instruction.

Importing the CLI (click, numpy) takes ~0.1-0.3 s; a Ctrl-C in that window would otherwise
print a traceback, because the CLI's own handler (cli.app._Group) is not running yet.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from .cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        sys.stderr.write("senet-hub: interrupted\n")
        sys.exit(130)


if __name__ == "__main__":
    main()
