"""Signed artifact manifests: the format, its verification, and the device's trust policy.

This module is the single implementation of manifest verification: the device's OTA
code uses it directly and `fleet.signing` (which signs) re-exports it, so the agent
never imports `fleet`. Only the standard library and `cryptography` are used.

A manifest is signed over its canonical JSON (sorted keys, no spaces, UTF-8)
prefixed with a domain tag, and travels as an envelope:
`{"manifest": {...}, "signature": "<base64>", "key_id": "<hex>"}`.
Times are whole Unix seconds so the canonical form never depends on float printing.

Device policy (`ManifestPolicy`): the signature against the pinned fleet key first,
then the sequence number (the primary replay defence: it must be above the last one
the device accepted for that kind, persisted in the state folder), then expiry, which
is enforced only once the clock is known to be synchronised: Jetsons often boot at
1970 or at the image's build date until NTP answers.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.state import atomic_write

log = logging.getLogger(__name__)

DOMAIN = b"edge-fleet-manifest-v1\n"
MANIFEST_SCHEMA = 1
MAX_ENVELOPE_BYTES = 64 * 1024
CLOCK_SKEW_S = 300
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
PLAUSIBLE_EPOCH = 1_735_689_600  # 2025-01-01: a clock before this is certainly not set


class SigningError(Exception):
    """Base of key and manifest errors."""


class SigningKeyError(SigningError):
    """A key file is missing, malformed, already exists, or has unsafe permissions."""


class ManifestCode(str, enum.Enum):
    MALFORMED = "malformed"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REPLAYED = "replayed"


class ManifestError(SigningError):
    """A manifest that must not be trusted; `code` is the reason to report."""

    def __init__(self, code: ManifestCode, detail: str) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail


# --------------------------------------------------------------------------- keys
def load_public_key(data: bytes | Path) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM bytes or a PEM file."""
    try:
        raw = data.read_bytes() if isinstance(data, Path) else data
        key = serialization.load_pem_public_key(raw)
    except (OSError, ValueError) as exc:
        raise SigningKeyError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError("not an Ed25519 public key")
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: Ed25519PublicKey) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# --------------------------------------------------------------------------- manifests
@dataclass(frozen=True)
class Manifest:
    kind: str
    name: str
    version: str
    sha256: str
    size: int
    url: str
    sequence: int
    issued_at: int
    expires_at: int
    schema: int = MANIFEST_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_FIELD_TYPES: dict[str, type] = {
    "kind": str, "name": str, "version": str, "sha256": str, "size": int, "url": str,
    "sequence": int, "issued_at": int, "expires_at": int, "schema": int,
}  # fmt: skip


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def parse_manifest(obj: object) -> Manifest:
    """Check fields, types and values strictly; raise ManifestError(MALFORMED)."""
    if not isinstance(obj, Mapping):
        raise ManifestError(ManifestCode.MALFORMED, "manifest is not a JSON object")
    missing = sorted(set(_FIELD_TYPES) - set(obj))
    extra = sorted(set(obj) - set(_FIELD_TYPES))
    if missing or extra:
        raise ManifestError(ManifestCode.MALFORMED, f"missing {missing}, unknown {extra}")
    for name, typ in _FIELD_TYPES.items():
        value = obj[name]
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ManifestError(ManifestCode.MALFORMED, f"{name} must be {typ.__name__}")
    checks = [
        (obj["schema"] == MANIFEST_SCHEMA, f"schema must be {MANIFEST_SCHEMA}"),
        (obj["kind"] in ("model", "config"), "kind must be model or config"),
        (bool(_NAME_RE.fullmatch(obj["name"])), "invalid name"),
        (bool(_VERSION_RE.fullmatch(obj["version"])), "invalid version"),
        (bool(_SHA_RE.fullmatch(obj["sha256"])), "sha256 must be 64 lowercase hex digits"),
        (obj["size"] >= 0 and obj["sequence"] >= 0, "size and sequence must be >= 0"),
        (obj["url"].startswith(("http://", "https://")), "url must be http(s)"),
        (obj["expires_at"] > obj["issued_at"], "expires_at must be after issued_at"),
    ]
    for ok, why in checks:
        if not ok:
            raise ManifestError(ManifestCode.MALFORMED, why)
    return Manifest(**{k: obj[k] for k in _FIELD_TYPES})


def _check_signature(
    manifest: Mapping[str, Any], signature: str | bytes | None, public_key: Ed25519PublicKey
) -> None:
    if signature is None or signature in ("", b""):
        raise ManifestError(ManifestCode.UNSIGNED, "no signature")
    try:
        sig = (
            signature
            if isinstance(signature, bytes)
            else base64.b64decode(signature, validate=True)
        )
    except (binascii.Error, ValueError) as exc:
        raise ManifestError(ManifestCode.BAD_SIGNATURE, "signature is not base64") from exc
    try:
        body = canonical_json(manifest)
    except (TypeError, ValueError) as exc:
        raise ManifestError(ManifestCode.MALFORMED, f"not JSON-encodable: {exc}") from exc
    try:
        public_key.verify(sig, DOMAIN + body)
    except InvalidSignature as exc:
        raise ManifestError(
            ManifestCode.BAD_SIGNATURE, "signature does not match (tampered or another key)"
        ) from exc


def verify_manifest(
    manifest: Mapping[str, Any],
    signature: str | bytes | None,
    public_key: Ed25519PublicKey,
    now: float | None = None,
    last_sequence: int | None = None,
    *,
    check_time: bool = True,
) -> Manifest:
    """Check the signature, then replay and validity window; return the parsed manifest.

    `signature` is base64 text or raw bytes. `last_sequence` is the highest sequence the
    device has accepted: an equal or lower one is a replay. `check_time=False` skips the
    validity window (a device whose clock is not known to be right).
    """
    _check_signature(manifest, signature, public_key)
    m = parse_manifest(manifest)
    if last_sequence is not None and m.sequence <= last_sequence:
        raise ManifestError(
            ManifestCode.REPLAYED, f"sequence {m.sequence} <= last accepted {last_sequence}"
        )
    if check_time:
        t = time.time() if now is None else now
        if t >= m.expires_at:
            raise ManifestError(ManifestCode.EXPIRED, f"expired at {m.expires_at}, now {int(t)}")
        if m.issued_at > t + CLOCK_SKEW_S:
            raise ManifestError(ManifestCode.NOT_YET_VALID, f"issued in the future ({m.issued_at})")
    return m


def parse_envelope(data: bytes) -> tuple[dict[str, Any], str | None]:
    """The (manifest, signature) of an envelope; ManifestError(MALFORMED) if unusable."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise ManifestError(ManifestCode.MALFORMED, f"envelope of {len(data)} bytes is too large")
    try:
        env = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ManifestError(ManifestCode.MALFORMED, "envelope is not JSON") from exc
    if not isinstance(env, dict) or not isinstance(env.get("manifest"), dict):
        raise ManifestError(ManifestCode.MALFORMED, "envelope has no manifest object")
    sig = env.get("signature")
    if sig is not None and not isinstance(sig, str):
        raise ManifestError(ManifestCode.MALFORMED, "signature must be a string")
    return env["manifest"], sig


def verify_envelope(
    data: bytes,
    public_key: Ed25519PublicKey,
    now: float | None = None,
    last_sequence: int | None = None,
    *,
    check_time: bool = True,
) -> Manifest:
    """Verify a downloaded envelope (bytes as served by the controller)."""
    body, sig = parse_envelope(data)
    return verify_manifest(body, sig, public_key, now, last_sequence, check_time=check_time)


# --------------------------------------------------------------------------- device policy
def clock_synchronized(flag: Path = TIMESYNC_FLAG, now: Callable[[], float] = time.time) -> bool:
    """True when the system clock is known to be synchronised (NTP).

    systemd-timesyncd touches `flag` once synchronised; otherwise `timedatectl` is asked
    (chrony and ntpd report through it too). A clock before 2025 is never trusted.
    """
    if now() < PLAUSIBLE_EPOCH:
        return False
    if flag.exists():
        return True
    exe = shutil.which("timedatectl")
    if exe is None:
        return False
    try:
        out = subprocess.run(  # noqa: S603 - fixed argv, absolute path from which()
            [exe, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and out.stdout.strip() == "yes"


class SequenceStore:
    """The last accepted manifest sequence per artifact kind, persisted atomically."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._values: dict[str, int] = {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            # A corrupt file must not reopen replays silently: keep it for inspection.
            raise SigningError(f"{path}: cannot read the accepted sequences: {exc}") from exc
        if isinstance(data, dict):
            self._values = {k: v for k, v in data.items() if isinstance(v, int)}

    def last(self, kind: str) -> int | None:
        return self._values.get(kind)

    def accept(self, kind: str, sequence: int) -> None:
        if sequence <= self._values.get(kind, -1):
            return
        self._values[kind] = sequence
        self._path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path, json.dumps(self._values, sort_keys=True).encode())


class ManifestPolicy:
    """Verify envelopes with the pinned key, the persisted sequence and (if known) the clock."""

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        sequences: SequenceStore,
        clock: Callable[[], float] = time.time,
        clock_synced: Callable[[], bool] = clock_synchronized,
    ) -> None:
        self.public_key = public_key
        self.sequences = sequences
        self._clock = clock
        self._clock_synced = clock_synced

    def verify(self, data: bytes, kind: str) -> Manifest:
        """The trusted manifest, or ManifestError with the reason. Does not accept it yet."""
        synced = self._clock_synced()
        m = verify_envelope(
            data,
            self.public_key,
            now=self._clock(),
            last_sequence=self.sequences.last(kind),
            check_time=synced,
        )
        if m.kind != kind:
            raise ManifestError(ManifestCode.MALFORMED, f"a {m.kind} manifest offered as {kind}")
        if not synced:
            log.info("clock not synchronised: manifest expiry not checked sequence=%d", m.sequence)
        return m

    def accept(self, m: Manifest) -> None:
        """Record `m` as accepted: no manifest of its kind with this sequence or lower again."""
        self.sequences.accept(m.kind, m.sequence)


__all__ = [
    "CLOCK_SKEW_S",
    "DOMAIN",
    "MANIFEST_SCHEMA",
    "MAX_ENVELOPE_BYTES",
    "Manifest",
    "ManifestCode",
    "ManifestError",
    "ManifestPolicy",
    "SequenceStore",
    "SigningError",
    "SigningKeyError",
    "canonical_json",
    "clock_synchronized",
    "key_id",
    "load_public_key",
    "parse_envelope",
    "parse_manifest",
    "public_pem",
    "verify_envelope",
    "verify_manifest",
]
