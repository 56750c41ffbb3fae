"""Per-user MQTT credentials and the Mosquitto password and ACL files made from them.

Every broker login is a row of `mqtt_credentials`: a user name, a role and the
password's hash in Mosquitto's own format, never the password itself (it is shown
once, or written to a 0600 file for the flashing step). A device's user name is its
device id, checked with the protocol's own `validate_id`; a credential may be issued
long before the device first connects.

`export_files` renders Mosquitto's `password_file` and `acl_file` from the active
rows: both deterministic (same registry, same bytes), both staged and fsynced before
either is renamed into place, revoked users absent from both. Mosquitto re-reads
both on SIGHUP (`systemctl reload mosquitto`, or fleet/mqtt_files.py's
`reload_mosquitto(pid)`; that module holds the file and signal side effects).

Hashes are what `mosquitto_passwd` (2.x) writes: `$7$<iterations>$<b64 salt>$<b64
hash>`, PBKDF2-HMAC-SHA512 over a 12-byte salt, standard padded base64, 64-byte hash.
Issued passwords carry 256 random bits, so key stretching adds nothing against
guessing; 101 iterations (mosquitto_passwd's default) keep the broker's cost per
CONNECT low when a whole fleet reconnects after a broker restart.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from agent.protocol import InvalidIdError, Topics, ha_id, validate_id
from fleet.db import Database
from fleet.models import Device, MqttCredential
from fleet.mqtt_files import read_or_none, write_files

log = logging.getLogger(__name__)

PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64
PASSWORD_BYTES = 32
PASSWORD_CHARS = (16, 256)
"""Shortest and longest password accepted from an operator's file."""
_SALT_LENGTHS = (12, 64)
"""What Mosquitto 2.x accepts when it reads a `$7$` salt."""


class MqttAuthError(Exception):
    """A credential or export request that cannot be carried out; nothing was changed."""


class MqttRole(str, enum.Enum):
    """What a user may do on the broker (the grants are in `role_grants`)."""

    DEVICE = "device"
    FLEET = "fleet"
    ALERTS = "alerts"
    HOMEASSISTANT = "homeassistant"


_ROLE_ORDER = {"fleet": 0, "alerts": 1, "homeassistant": 2, "device": 3}
"""Export order: services first, then devices (each sorted by user name)."""


# --------------------------------------------------------------------------- hashes
def new_password() -> str:
    """A fresh random password: 32 bytes of entropy, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def hash_password(
    password: str, *, iterations: int = PBKDF2_ITERATIONS, salt: bytes | None = None
) -> str:
    """`password` as a Mosquitto 2.x password_file hash (`$7$...`)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    if len(salt) not in _SALT_LENGTHS or iterations < 1:
        raise MqttAuthError(f"need a 12 or 64-byte salt and iterations >= 1, got {len(salt)}, "
                            f"{iterations}")  # fmt: skip
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode('ascii')}${b64(digest).decode('ascii')}"


def parse_hash(encoded: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, hash) of a `$7$` hash; MqttAuthError naming what is wrong."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
        raise MqttAuthError("not a Mosquitto PBKDF2-SHA512 hash ($7$<iterations>$<salt>$<hash>)")
    if not parts[2].isdigit() or int(parts[2]) < 1:
        raise MqttAuthError(f"invalid iteration count {parts[2]!r} in password hash")
    try:
        salt = base64.b64decode(parts[3], validate=True)
        digest = base64.b64decode(parts[4], validate=True)
    except binascii.Error as exc:
        raise MqttAuthError(f"invalid base64 in password hash: {exc}") from exc
    if len(salt) not in _SALT_LENGTHS or len(digest) != HASH_BYTES:
        sizes = f"{len(salt)}-byte salt, {len(digest)}-byte hash"
        raise MqttAuthError(f"password hash has a {sizes}; Mosquitto needs 12 or 64, and 64")
    return int(parts[2]), salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """True if `password` matches the `$7$` hash `encoded` (constant-time compare)."""
    iterations, salt, expected = parse_hash(encoded)
    actual = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(actual, expected)


# --------------------------------------------------------------------------- validation
def check_username(username: str, role: MqttRole) -> str:
    """A user name that is one safe topic level (a device's must be a valid device id)."""
    try:
        return validate_id(username, "device id" if role is MqttRole.DEVICE else "MQTT user name")
    except InvalidIdError as exc:
        raise MqttAuthError(str(exc)) from exc


def check_password(password: str) -> str:
    """An operator-supplied password: 16-256 characters, no control characters."""
    low, high = PASSWORD_CHARS
    if not low <= len(password) <= high:
        raise MqttAuthError(f"password must be {low}-{high} characters, got {len(password)}")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise MqttAuthError("password must not contain control characters")
    return password


def parse_role(value: str) -> MqttRole:
    try:
        return MqttRole(value)
    except ValueError:
        names = ", ".join(r.value for r in MqttRole)
        raise MqttAuthError(f"unknown role {value!r}: use one of {names}") from None


# --------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Issued:
    """A password as issued: the only time the plaintext exists outside the device."""

    username: str
    role: MqttRole
    password: str
    rotated: bool


@dataclass(frozen=True)
class CredentialInfo:
    """A credential as listed (never its hash); `last_seen` from the device registry."""

    username: str
    role: MqttRole
    created_at: float
    rotated_at: float | None
    revoked: bool
    revoked_at: float | None
    last_seen: float | None


Deliver = Callable[[Issued], None]
"""Called inside the transaction before it commits (e.g. writing `--out FILE`): if it
raises, nothing is stored."""


def issue_credential(
    db: Database,
    username: str,
    role: MqttRole = MqttRole.DEVICE,
    *,
    rotate: bool = False,
    password: str | None = None,
    deliver: Deliver | None = None,
) -> Issued:
    """Issue a credential for `username`; with `rotate`, replace an existing one's
    password (and lift a revocation). Without it an existing credential is refused."""
    username = check_username(username, role)
    password = new_password() if password is None else check_password(password)
    now = time.time()
    with db.session() as s:
        row = s.get(MqttCredential, username, with_for_update=True)
        if row is not None and not rotate:
            when = _when(row.created_at)
            raise MqttAuthError(
                f"{username} already has a {row.role} credential (issued {when}); "
                "rotate it to replace the password"
            )
        if row is not None and row.role != role.value:
            raise MqttAuthError(f"{username} is a {row.role} credential, not {role.value}")
        if row is None:
            row = MqttCredential(username=username, role=role.value, created_at=now)
            s.add(row)
        else:
            row.rotated_at, row.revoked, row.revoked_at = now, False, None
        row.password_hash = hash_password(password)
        s.flush()
        issued = Issued(username, role, password, rotated=row.rotated_at is not None)
        if deliver is not None:
            deliver(issued)
    log.info("mqtt credential issued user=%s role=%s rotated=%s", username, role.value, rotate)
    return issued


def rotate_credential(
    db: Database, username: str, *, password: str | None = None, deliver: Deliver | None = None
) -> Issued:
    """A new password for an existing credential (a revoked one is reinstated)."""
    with db.session() as s:
        row = s.get(MqttCredential, username)
        if row is None:
            raise MqttAuthError(f"no MQTT credential for {username!r}; issue one first")
        role = MqttRole(row.role)
    return issue_credential(db, username, role, rotate=True, password=password, deliver=deliver)


def revoke_credential(db: Database, username: str) -> bool:
    """Revoke `username` (absent from the next export); False if it already was."""
    with db.session() as s:
        row = s.get(MqttCredential, username, with_for_update=True)
        if row is None:
            raise MqttAuthError(f"no MQTT credential for {username!r}")
        if row.revoked:
            return False
        row.revoked, row.revoked_at = True, time.time()
    log.info("mqtt credential revoked user=%s", username)
    return True


def list_credentials(db: Database) -> list[CredentialInfo]:
    q = (
        select(MqttCredential, Device.last_seen)
        .outerjoin(Device, Device.id == MqttCredential.username)
        .order_by(MqttCredential.username)
    )
    with db.session() as s:
        return [
            CredentialInfo(c.username, MqttRole(c.role), c.created_at, c.rotated_at, c.revoked,
                           c.revoked_at, seen if c.role == MqttRole.DEVICE.value else None)
            for c, seen in s.execute(q).all()
        ]  # fmt: skip


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


# --------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class AclOptions:
    prefix: str = "edge"
    """The fleet's first topic level (`mqtt.prefix` on both sides)."""
    discovery_prefix: str = "homeassistant"
    """Home Assistant's discovery prefix (the agent's `mqtt.home_assistant`)."""

    def __post_init__(self) -> None:
        try:
            validate_id(self.prefix, "topic prefix")
        except InvalidIdError as exc:
            raise MqttAuthError(str(exc)) from exc
        if not self.discovery_prefix or ha_id(self.discovery_prefix) != self.discovery_prefix:
            raise MqttAuthError(f"invalid discovery prefix {self.discovery_prefix!r}: use 1-64 "
                                "letters, digits, '_', '-'")  # fmt: skip


def role_grants(username: str, role: MqttRole, opts: AclOptions) -> list[str]:
    """The ACL `topic` lines of one user, as in configs/mosquitto/acl."""
    prefix, filt = opts.prefix, Topics.fleet_filter
    if role is MqttRole.FLEET:
        return [f"topic readwrite {prefix}/#"]
    if role is MqttRole.ALERTS:
        kinds = ("events", "events/+/snapshot", "status")
        return [f"topic read {filt(prefix, k)}" for k in kinds]
    if role is MqttRole.HOMEASSISTANT:
        kinds = ("status", "health", "events")
        lines = [f"topic read {filt(prefix, k)}" for k in kinds]
        return [*lines, f"topic read {opts.discovery_prefix}/#"]
    # A device owns <prefix>/<id>/# and its Home Assistant discovery configs, whose node
    # id is ha_id(id) (as Topics.ha_discovery builds them), so dotted ids work too.
    node = ha_id(validate_id(username))
    return [
        f"topic readwrite {filt(prefix, '#', username)}",
        f"topic write {opts.discovery_prefix}/+/{node}/+/config",
    ]


_ACL_HEADER = """\
# Mosquitto ACL generated by `edge-fleet mqtt export` from the controller's credential
# registry: change the registry (edge-fleet mqtt issue/rotate/revoke), not this file.
# Everything not granted is denied; revoked users are absent.
"""
_PASSWD_HEADER = "# Mosquitto password file generated by `edge-fleet mqtt export`; do not edit.\n"  # noqa: S105


def _ordered(rows: Sequence[MqttCredential]) -> list[MqttCredential]:
    active = [r for r in rows if not r.revoked]
    return sorted(active, key=lambda r: (_ROLE_ORDER[r.role], r.username))


def render_passwd(rows: Sequence[MqttCredential]) -> str:
    """Mosquitto's password_file: `user:hash` per active credential."""
    lines = []
    for r in _ordered(rows):
        try:  # a corrupt row fails the export, not the broker's reload
            parse_hash(r.password_hash)
        except MqttAuthError as exc:
            raise MqttAuthError(f"stored hash of {r.username}: {exc}") from exc
        lines.append(f"{r.username}:{r.password_hash}\n")
    return _PASSWD_HEADER + "".join(lines)


def render_acl(rows: Sequence[MqttCredential], opts: AclOptions) -> str:
    """Mosquitto's acl_file: one `user` block per active credential."""
    blocks = []
    for r in _ordered(rows):
        role = MqttRole(r.role)
        grants = "\n".join(role_grants(r.username, role, opts))
        blocks.append(f"# {role.value}\nuser {r.username}\n{grants}\n")
    return _ACL_HEADER + "".join("\n" + b for b in blocks)


# --------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportResult:
    users: int
    devices: int
    changed: bool
    """False when both files already held exactly these bytes."""


def export_files(
    db: Database, passwd: Path, acl: Path, opts: AclOptions, *,
    mode: int = 0o640, group: str | None = None,
) -> ExportResult:  # fmt: skip
    """Write the password and ACL files from the registry; both are staged (fsynced
    temp files beside their targets) before either is renamed into place, so a failure
    leaves the old files untouched."""
    if passwd.resolve() == acl.resolve():
        raise MqttAuthError("the password file and the ACL file must be different files")
    with db.session() as s:
        rows = list(s.scalars(select(MqttCredential)))
    active = _ordered(rows)
    files = [(passwd, render_passwd(rows).encode()), (acl, render_acl(rows, opts).encode())]
    changed = any(read_or_none(p) != data for p, data in files)
    write_files(files, mode, group)
    devices = sum(r.role == MqttRole.DEVICE.value for r in active)
    log.info("mqtt auth exported users=%d devices=%d changed=%s passwd=%s acl=%s",
             len(active), devices, changed, passwd, acl)  # fmt: skip
    return ExportResult(users=len(active), devices=devices, changed=changed)
