"""Pieces every `edge-fleet` command module shares: table output, times, the database.

fleet/cli.py, fleet/rollout_cli.py and fleet/mqtt_auth_cli.py import these; this
module imports none of them, so the command modules import each other freely.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TypeAlias

from fleet.config import FleetConfig, load_fleet_config
from fleet.db import Database, open_database

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Row = Sequence[object]


def format_table(headers: Sequence[str], rows: Sequence[Row]) -> str:
    """Left-aligned columns separated by two spaces, a dashed rule under the header."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def out(text: str) -> None:
    """One line of command output on stdout."""
    sys.stdout.write(text + "\n")


def when(t: float | None) -> str:
    """A wall-clock time as local `YYYY-MM-DD HH:MM:SS`; `-` for none."""
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def open_db(args: argparse.Namespace) -> tuple[FleetConfig, Database]:
    """The fleet config named by `-c/--config` and the database it names."""
    cfg = load_fleet_config(args.config)
    return cfg, open_database(cfg.database_url)
