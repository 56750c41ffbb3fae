"""`edge-fleet rollout start|status|pause|resume|abort|list`.

Like the other list commands these work on the controller's database directly
(`-c fleet.yaml`); the running controller's engine picks the changes up on its
next tick and publishes what they leave pending (waves, rollbacks).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fleet.cli_common import Subparsers, format_table, open_db, out, when
from fleet.config import FleetConfig
from fleet.db import Database
from fleet.rollout_api import list_rollouts, rollout_detail, rollout_devices, rollout_history
from fleet.rollout_commands import (
    RolloutError,
    abort_rollout,
    create_rollout,
    pause_rollout,
    resume_rollout,
)
from fleet.rollout_models import ensure_tables
from fleet.rollout_spec import RolloutSpec


def _open(args: argparse.Namespace) -> tuple[FleetConfig, Database]:
    cfg, db = open_db(args)
    ensure_tables(db)
    return cfg, db


def _actor() -> str:
    return f"cli:{getpass.getuser()}"[:64]


def _pick(value: str | None) -> dict[str, str] | None:
    if value is None:
        return None
    name, sep, version = value.partition("@")
    if not sep or not name or not version:
        raise RolloutError("invalid", f"expected NAME@VERSION, got {value!r}")
    return {"name": name, "version": version}


def spec_from_args(args: argparse.Namespace) -> RolloutSpec:
    """The spec from `--spec FILE` (YAML or JSON) or from the flags."""
    if args.spec:
        loaded = yaml.safe_load(Path(args.spec).read_text(encoding="utf-8"))
        return RolloutSpec.model_validate(loaded)
    data: dict[str, Any] = {
        "name": args.name,
        "target": {"tags": args.tag or [], "device_ids": args.device or []},
        "model": _pick(args.model),
        "config": _pick(args.config_artifact),
        "waves": [w.strip() for w in args.waves.split(",") if w.strip()],
        "probation_s": args.probation,
        "success_threshold": args.success,
        "failure_threshold": args.failure,
        "quality_gate": {"enabled": not args.no_gate},
    }
    return RolloutSpec.model_validate(data)


def _show(db: Database, rollout_id: int, history: int, devices: bool) -> None:
    d = rollout_detail(db, rollout_id)
    out(f"rollout {d.id} {d.name!r}: {d.state}" + (f" ({d.reason})" if d.reason else ""))
    out(f"updated (committed) {d.updated}/{d.total_devices}, failed {d.failed}, "
         f"started {when(d.created_at)} by {d.created_by}")  # fmt: skip
    rows = [
        (w.index, w.label, w.size, w.state, w.devices.get("committed", 0),
         sum(n for s, n in w.devices.items() if s in ("failed", "rolled_back", "timed_out")),
         when(w.started_at), when(w.probation_until),
         (w.gate or {}).get("verdict", "-"))
        for w in d.waves
    ]  # fmt: skip
    headers = ("WAVE", "SIZE", "DEVICES", "STATE", "COMMITTED", "FAILED", "STARTED",
               "PROBATION UNTIL", "GATE")  # fmt: skip
    out(format_table(headers, rows))
    if devices:
        dev_rows = [(x.device_id, "-" if x.wave is None else x.wave, x.state,
                     when(x.state_since), "yes" if x.reverted else "", x.error or "")
                    for x in rollout_devices(db, rollout_id)]  # fmt: skip
        out("")
        out(format_table(("DEVICE", "WAVE", "STATE", "SINCE", "REVERTED", "ERROR"), dev_rows))
    if history:
        entries = rollout_history(db, rollout_id)[-history:]
        hist = [(when(h.at), h.kind, "-" if h.wave is None else h.wave, h.device_id or "",
                 h.actor, json.dumps(h.detail, sort_keys=True)[:100])
                for h in entries]  # fmt: skip
        out("")
        out(format_table(("TIME", "KIND", "WAVE", "DEVICE", "ACTOR", "DETAIL"), hist))


# --------------------------------------------------------------------------- commands
def cmd_start(args: argparse.Namespace) -> int:
    cfg, db = _open(args)
    rid = create_rollout(db, spec_from_args(args), cfg.http.public_url, _actor())
    _show(db, rid, history=0, devices=False)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    _show(_open(args)[1], args.id, args.history, args.devices)
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    out(f"rollout {args.id}: {pause_rollout(_open(args)[1], args.id, _actor())}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    out(f"rollout {args.id}: {resume_rollout(_open(args)[1], args.id, _actor())}")
    return 0


def cmd_abort(args: argparse.Namespace) -> int:
    state = abort_rollout(_open(args)[1], args.id, _actor(), rollback=args.rollback)
    out(f"rollout {args.id}: {state}" + (" (rollback queued)" if args.rollback else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = [(r.id, r.name, r.state, r.reason or "", r.current_wave + 1, f"{r.updated}/"
             f"{r.total_devices}", r.failed, when(r.created_at), r.created_by)
            for r in list_rollouts(_open(args)[1])]  # fmt: skip
    headers = ("ID", "NAME", "STATE", "REASON", "WAVE", "UPDATED", "FAILED", "CREATED", "BY")
    out(format_table(headers, rows))
    return 0


def _guarded(fn: Any) -> Any:
    """Operator mistakes (unknown rollout, invalid spec) exit 2 with one line, no traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            code: int = fn(args)
        except RolloutError as exc:
            sys.stderr.write(f"edge-fleet: {exc}\n")
            return 2
        except ValidationError as exc:
            sys.stderr.write(f"edge-fleet: invalid rollout spec: {exc}\n")
            return 2
        return code

    return run


def add_rollout_commands(sub: Subparsers) -> None:
    """Register `rollout ...` under the `edge-fleet` parser's subcommands."""
    group = sub.add_parser("rollout", help="staged rollouts").add_subparsers(
        dest="sub", required=True
    )

    def add(name: str, fn: Any, help_: str, with_id: bool = True) -> argparse.ArgumentParser:
        p = group.add_parser(name, help=help_)
        p.set_defaults(fn=_guarded(fn))
        p.add_argument("-c", "--config", default="fleet.yaml", help="fleet config file")
        if with_id:
            p.add_argument("id", type=int, help="rollout id")
        return p

    st = add("start", cmd_start, "start a staged rollout", with_id=False)
    st.add_argument("--spec", default=None, help="YAML/JSON rollout spec (instead of flags)")
    st.add_argument("--name", default="rollout", help="label")
    st.add_argument("--model", default=None, help="NAME@VERSION of a published model")
    st.add_argument("--config-artifact", default=None, help="NAME@VERSION of a published config")
    st.add_argument("--tag", action="append", help="target devices with this tag (all given)")
    st.add_argument("--device", action="append", help="target this device id")
    st.add_argument("--waves", default="1,10%,50%,100%", help="cumulative sizes, e.g. 1,10%%")
    st.add_argument("--probation", type=float, default=600, help="probation per wave (s)")
    st.add_argument("--success", type=float, default=0.95, help="fraction that must commit")
    st.add_argument("--failure", type=float, default=0.05, help="failure fraction that halts")
    st.add_argument("--no-gate", action="store_true", help="disable the quality gate")
    ss = add("status", cmd_status, "waves, progress and recent history")
    ss.add_argument("--history", type=int, default=20, help="last N history entries")
    ss.add_argument("--devices", action="store_true", help="per-device states")
    add("pause", cmd_pause, "pause (no new wave starts)")
    add("resume", cmd_resume, "resume a paused rollout")
    ab = add("abort", cmd_abort, "abort for good")
    ab.add_argument("--rollback", action="store_true", help="revert every launched device")
    add("list", cmd_list, "list rollouts", with_id=False)
