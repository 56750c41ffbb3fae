"""`edge-fleet`: the operator's command line.

Subcommands work on the controller's own database and broker, named by
`-c fleet.yaml`: serve, keys generate, token create, devices list, events list,
artifact publish / list, desired set, mqtt (broker credentials: fleet/mqtt_auth_cli.py).
Output is plain aligned tables.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sqlalchemy import select

from fleet.artifacts import ArtifactError, manifest_url, publish_artifact
from fleet.auth import create_token
from fleet.cli_common import Subparsers, format_table, open_db, out
from fleet.config import FleetConfig, FleetConfigError, load_fleet_config
from fleet.db import open_database
from fleet.desired import DesiredError, set_desired
from fleet.models import Artifact, Device, Event
from fleet.mqtt_auth_cli import add_mqtt_commands
from fleet.mqtt_client import FleetMqttError, OneShotSink
from fleet.rollout_cli import add_rollout_commands
from fleet.schemas import ArtifactPick, DesiredIn
from fleet.signing import SigningError, generate_keypair, key_id, load_private_key
from fleet.simulator import add_simulate_command

__all__ = ["format_table", "main"]  # format_table: re-exported from fleet/cli_common.py

log = logging.getLogger(__name__)


def _ago(t: float | None) -> str:
    if t is None:
        return "-"
    s = max(0.0, time.time() - t)
    return (
        f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"
    )


def _cfg(args: argparse.Namespace) -> FleetConfig:
    return load_fleet_config(args.config)


# --------------------------------------------------------------------------- commands
def cmd_serve(args: argparse.Namespace) -> int:
    from fleet.app import serve  # noqa: PLC0415 - uvicorn only for this command

    serve(_cfg(args))
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    private = Path(args.private)
    public = Path(args.public) if args.public else private.with_suffix(".pub")
    pub = generate_keypair(private, public)
    out(f"private key: {private} (mode 0600)\npublic key:  {public}\nkey id:      {key_id(pub)}")
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    token = create_token(db, args.name)
    out(token)
    sys.stderr.write("store this token now: only its hash is kept\n")
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    with db.session() as s:
        rows = [
            (d.id, "online" if d.online else f"offline ({d.offline_reason or '-'})", d.session,
             _ago(d.last_seen), d.versions.get("model", "-"), d.versions.get("agent", "-"),
             ",".join(d.tags))
            for d in s.scalars(select(Device).order_by(Device.id))
        ]  # fmt: skip
    out(format_table(("DEVICE", "STATE", "SESSION", "LAST SEEN", "MODEL", "AGENT", "TAGS"), rows))
    return 0


def cmd_events_list(args: argparse.Namespace) -> int:
    _, db = open_db(args)
    q = select(Event).order_by(Event.wall_time.desc()).limit(args.limit)
    if args.device:
        q = q.where(Event.device_id == args.device)
    if args.camera:
        q = q.where(Event.camera_id == args.camera)
    if args.rule:
        q = q.where(Event.rule_id == args.rule)
    with db.session() as s:
        rows = [
            (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.wall_time)), e.device_id,
             e.camera_id, e.rule_id, e.phase, e.label, f"{e.score:.2f}",
             "yes" if e.snapshot_path else "", e.event_id)
            for e in s.scalars(q)
        ]  # fmt: skip
    headers = ("TIME", "DEVICE", "CAMERA", "RULE", "PHASE", "LABEL", "SCORE", "SNAP", "EVENT ID")
    out(format_table(headers, rows))
    return 0


def cmd_artifact_publish(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    if cfg.signing is None:
        raise ArtifactError("fleet config has no signing.private_key")
    key = load_private_key(cfg.signing.private_key)
    pub = publish_artifact(
        open_database(cfg.database_url), cfg.blobs_dir, key, kind=args.kind, path=Path(args.path),
        public_url=cfg.http.public_url, ttl_s=cfg.signing.manifest_ttl_s, name=args.name,
        version=args.version, max_bytes=cfg.max_artifact_bytes,
    )  # fmt: skip
    rows = [(pub.kind, pub.name, pub.version, pub.sequence, pub.size, pub.sha256)]
    out(format_table(("KIND", "NAME", "VERSION", "SEQ", "SIZE", "SHA256"), rows))
    out(f"manifest: {pub.manifest_url}")
    return 0


def cmd_artifact_list(args: argparse.Namespace) -> int:
    cfg, db = open_db(args)
    with db.session() as s:
        rows = [
            (a.kind, a.name, a.version, a.sequence, a.size, a.sha256[:16],
             manifest_url(cfg.http.public_url, a.sha256))
            for a in s.scalars(select(Artifact).order_by(Artifact.sequence))
        ]  # fmt: skip
    out(format_table(("KIND", "NAME", "VERSION", "SEQ", "SIZE", "SHA256", "MANIFEST"), rows))
    return 0


def _pick(value: str | None) -> ArtifactPick | None:
    if value is None:
        return None
    name, sep, version = value.partition("@")
    if not sep or not name or not version:
        raise DesiredError(f"expected NAME@VERSION, got {value!r}")
    return ArtifactPick(name=name, version=version)


def cmd_desired_set(args: argparse.Namespace) -> int:
    cfg = _cfg(args)
    if cfg.mqtt is None:
        raise FleetMqttError("fleet config has no mqtt section")
    body = DesiredIn(model=_pick(args.model), config=_pick(args.config_artifact))
    db = open_database(cfg.database_url)
    with OneShotSink(cfg.mqtt) as sink:
        desired = set_desired(db, sink, args.device, body, cfg.http.public_url)
    out(desired.to_json().decode())
    return 0


# --------------------------------------------------------------------------- parser
def _group(sub: Subparsers, name: str, help_: str) -> Subparsers:
    group: Subparsers = sub.add_parser(name, help=help_).add_subparsers(dest="sub", required=True)
    return group


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-fleet", description="Fleet controller for edge agents")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING, ERROR")
    sub = p.add_subparsers(dest="command", required=True)

    def add(parent: Subparsers, name: str,
            fn: Callable[[argparse.Namespace], int], help_: str,
            config: bool = True) -> argparse.ArgumentParser:  # fmt: skip
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help_)
        sp.set_defaults(fn=fn)
        if config:
            sp.add_argument("-c", "--config", default="fleet.yaml", help="fleet config file")
        return sp

    add(sub, "serve", cmd_serve, "run the controller (HTTP API + MQTT ingest)")
    keys = _group(sub, "keys", "signing keys")
    kg = add(keys, "generate", cmd_keys_generate, "make an Ed25519 key pair", config=False)
    kg.add_argument("--private", default="fleet-signing.key", help="private key path (0600)")
    kg.add_argument("--public", default=None, help="public key path (default: .pub beside)")
    tok = _group(sub, "token", "API tokens")
    add(tok, "create", cmd_token_create, "create an API token").add_argument("name")
    dev = sub.add_parser("devices", help="device registry").add_subparsers(
        dest="sub", required=True
    )
    add(dev, "list", cmd_devices_list, "list devices")
    ev = _group(sub, "events", "events")
    el = add(ev, "list", cmd_events_list, "list recent events")
    for flag in ("--device", "--camera", "--rule"):
        el.add_argument(flag, default=None)
    el.add_argument("--limit", type=int, default=50)
    art = _group(sub, "artifact", "artifacts")
    ap = add(art, "publish", cmd_artifact_publish, "publish a model folder or config file")
    ap.add_argument("path")
    ap.add_argument("--kind", choices=("model", "config"), required=True)
    ap.add_argument("--name", default=None, help="artifact name (configs; models: model.json)")
    ap.add_argument("--version", default=None, help="artifact version")
    add(art, "list", cmd_artifact_list, "list published artifacts")
    des = _group(sub, "desired", "desired state")
    ds = add(des, "set", cmd_desired_set, "publish a device's retained desired state")
    ds.add_argument("device")
    ds.add_argument("--model", default=None, help="NAME@VERSION of a published model")
    ds.add_argument("--config-artifact", default=None, help="NAME@VERSION of a published config")
    add_simulate_command(sub)
    add_rollout_commands(sub)
    add_mqtt_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s %(message)s")
    try:
        code: int = args.fn(args)
    except (FleetConfigError, SigningError, ArtifactError, DesiredError, FleetMqttError) as exc:
        sys.stderr.write(f"edge-fleet: {exc}\n")
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
