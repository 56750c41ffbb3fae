"""`edge-fleet mqtt issue|rotate|revoke|list|export`: broker credentials (fleet/mqtt_auth.py).

Like the other registry commands these work on the controller's database directly
(`-c fleet.yaml`). A password is shown once (stdout) or written with mode 0600 to
`--out FILE` for the flashing step; only its hash is kept. `export` writes the
broker's password and ACL files; Mosquitto applies them on SIGHUP (`--reload-pid`, or
`systemctl reload mosquitto`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from fleet.cli_common import Subparsers, format_table, open_db, out, when
from fleet.config import FleetConfigError
from fleet.mqtt_auth import (
    AclOptions,
    Deliver,
    Issued,
    MqttAuthError,
    MqttRole,
    check_password,
    export_files,
    issue_credential,
    list_credentials,
    parse_role,
    revoke_credential,
    rotate_credential,
)
from fleet.mqtt_files import MqttFileError, reload_mosquitto, write_secret

Command = Callable[[argparse.Namespace], int]


def _adopted(args: argparse.Namespace) -> str | None:
    """The password in `--password-file` (first line), e.g. provision-device.sh's."""
    if args.password_file is None:
        return None
    path = Path(args.password_file)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MqttAuthError(f"cannot read password from {path}: {exc}") from exc
    try:
        return check_password(lines[0] if lines else "")
    except MqttAuthError as exc:
        raise MqttAuthError(f"{path}: {exc}") from None


def _deliver(args: argparse.Namespace, replace: bool) -> Deliver | None:
    if args.out is None:
        return None
    path = Path(args.out)

    def write(issued: Issued) -> None:
        write_secret(path, issued.password + "\n", replace=replace)

    return write


def _report(args: argparse.Namespace, issued: Issued) -> None:
    verb = "rotated" if issued.rotated else "issued"
    what = f"{verb} {issued.role.value} credential {issued.username}"
    if args.out is not None:
        out(f"{what}; password written to {args.out} (mode 0600)")
    elif args.password_file is not None:
        out(f"{what}; password taken from {args.password_file}")
    else:
        out(issued.password)
        sys.stderr.write(f"{what}: store this password now, only its hash is kept\n")
    sys.stderr.write("run `edge-fleet mqtt export` to give the broker the change\n")


# --------------------------------------------------------------------------- commands
def cmd_issue(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    issued = issue_credential(
        db, args.user, parse_role(args.role), rotate=args.rotate,
        password=_adopted(args), deliver=_deliver(args, replace=args.rotate),
    )  # fmt: skip
    _report(args, issued)
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    deliver = _deliver(args, replace=True)
    _report(args, rotate_credential(db, args.user, password=_adopted(args), deliver=deliver))
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    if revoke_credential(db, args.user):
        out(f"revoked {args.user}; run `edge-fleet mqtt export` and reload the broker")
    else:
        out(f"{args.user} was already revoked")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    rows = [
        (c.username, c.role.value, "revoked" if c.revoked else "active", when(c.created_at),
         when(c.rotated_at), when(c.revoked_at),
         ("never" if c.last_seen is None else when(c.last_seen))
         if c.role is MqttRole.DEVICE else "")
        for c in list_credentials(db)
    ]  # fmt: skip
    headers = ("USER", "ROLE", "STATE", "CREATED", "ROTATED", "REVOKED", "DEVICE LAST SEEN")
    out(format_table(headers, rows))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    cfg, db = open_db(args)
    prefix = args.prefix or (cfg.mqtt.prefix if cfg.mqtt is not None else "edge")
    opts = AclOptions(prefix=prefix, discovery_prefix=args.discovery_prefix)
    mode = 0o600 if args.private else 0o640
    result = export_files(db, Path(args.passwd), Path(args.acl), opts, mode=mode, group=args.group)
    state = "changed" if result.changed else "unchanged"
    out(f"wrote {args.passwd} and {args.acl} (mode {mode:04o}): {result.users} users, "
         f"{result.devices} devices, {state}")  # fmt: skip
    if args.reload_pid is not None:
        reload_mosquitto(args.reload_pid)
        out(f"sent SIGHUP to mosquitto (pid {args.reload_pid})")
    return 0


# --------------------------------------------------------------------------- parser
def _guarded(fn: Command) -> Command:
    """Operator mistakes (bad id, existing credential, unwritable file) exit 2, one line."""

    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except (MqttAuthError, MqttFileError, FleetConfigError) as exc:
            sys.stderr.write(f"edge-fleet: {exc}\n")
            return 2

    return run


def _password_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--out", default=None, help="write the new password to FILE (mode 0600)")
    src.add_argument(
        "--password-file",
        default=None,
        help="use the password in FILE (first line, e.g. provision-device.sh's mqtt-password)",
    )


def add_mqtt_commands(sub: Subparsers) -> None:
    """Register `mqtt ...` under the `edge-fleet` parser's subcommands."""
    group = sub.add_parser("mqtt", help="broker credentials, password and ACL files")
    cmds = group.add_subparsers(dest="sub", required=True)

    def add(name: str, fn: Command, help_: str, user: bool = True) -> argparse.ArgumentParser:
        p = cmds.add_parser(name, help=help_)
        p.set_defaults(fn=_guarded(fn))
        p.add_argument("-c", "--config", default="fleet.yaml", help="fleet config file")
        if user:
            p.add_argument("user", help="MQTT user name (the device id for role device)")
        return p

    iss = add("issue", cmd_issue, "issue a credential (refuses an existing one)")
    iss.add_argument("--role", default=MqttRole.DEVICE.value,
                     choices=[r.value for r in MqttRole], help="what the user may do")  # fmt: skip
    iss.add_argument("--rotate", action="store_true", help="replace an existing credential")
    _password_source(iss)
    _password_source(add("rotate", cmd_rotate, "a new password (reinstates a revoked user)"))
    add("revoke", cmd_revoke, "revoke a credential (absent from the next export)")
    add("list", cmd_list, "list credentials (no hashes)", user=False)
    ex = add("export", cmd_export, "write Mosquitto's password and ACL files", user=False)
    ex.add_argument("--passwd", required=True, help="password_file to write")
    ex.add_argument("--acl", required=True, help="acl_file to write")
    ex.add_argument("--prefix", default=None, help="topic prefix (default: mqtt.prefix)")
    ex.add_argument("--discovery-prefix", default="homeassistant",
                    help="Home Assistant discovery prefix")  # fmt: skip
    ex.add_argument("--group", default=None, help="group of both files (e.g. mosquitto)")
    ex.add_argument("--private", action="store_true", help="mode 0600 instead of 0640")
    ex.add_argument("--reload-pid", type=int, default=None, help="SIGHUP this mosquitto pid")
