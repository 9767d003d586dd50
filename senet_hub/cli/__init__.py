"""The `senet-hub` command line. Frameworks are imported inside commands, never at import time.

app.py holds the click group; each command module registers its commands on it when imported,
so this file imports them all, explicitly (the order of `senet-hub --help` is click's, alphabetical).
"""

from __future__ import annotations

from . import convert, demo, hub, inspect, verify  # noqa: F401  (each registers its commands on main)
from .app import main

__all__ = ["main"]
