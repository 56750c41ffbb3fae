"""Ed25519 keys and signed artifact manifests.

Only the standard library and `cryptography` are imported here, so the device's
OTA code can verify manifests with exactly this module (no FastAPI, no SQLAlchemy).

A manifest is signed over its canonical JSON (sorted keys, no spaces, UTF-8)
prefixed with a domain tag, and travels as an envelope:
`{"manifest": {...}, "signature": "<base64>", "key_id": "<hex>"}`.
Times are whole Unix seconds so the canonical form never depends on float printing.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = b"edge-fleet-manifest-v1\n"
MANIFEST_SCHEMA = 1
MAX_ENVELOPE_BYTES = 64 * 1024
CLOCK_SKEW_S = 300
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


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
def generate_keypair(private_path: Path, public_path: Path) -> Ed25519PublicKey:
    """Write a new key pair: private PEM with mode 0600, public PEM. Never overwrites."""
    for p in (private_path, public_path):
        if p.exists():
            raise SigningKeyError(f"{p} already exists; refusing to overwrite a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(private_path, pem, 0o600)
    pub = key.public_key()
    _write_new(public_path, public_pem(pub), 0o644)
    return pub


def _write_new(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise SigningKeyError(f"{path} already exists; refusing to overwrite a key") from exc
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)  # the umask may have narrowed it; make it exact


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Load the signing key; refuse a file readable or writable by group or others."""
    try:
        st = path.stat()
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key {path}: {exc}") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: the private key must not be "
            f"accessible to group or others (chmod 600 {path})"
        )
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(f"{path}: not a PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 key")
    return key


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


def sign_manifest(manifest: Manifest, key: Ed25519PrivateKey) -> dict[str, Any]:
    """The signed envelope for `manifest`."""
    body = manifest.to_dict()
    parse_manifest(body)
    sig = key.sign(DOMAIN + canonical_json(body))
    return {
        "manifest": body,
        "signature": base64.b64encode(sig).decode("ascii"),
        "key_id": key_id(key.public_key()),
    }


def verify_manifest(
    manifest: Mapping[str, Any],
    signature: str | bytes | None,
    public_key: Ed25519PublicKey,
    now: float | None = None,
    last_sequence: int | None = None,
) -> Manifest:
    """Check the signature, then validity window and replay; return the parsed manifest.

    `signature` is base64 text or raw bytes. `last_sequence` is the highest sequence the
    device has accepted: an equal or lower one is a replay.
    """
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
    m = parse_manifest(manifest)
    t = time.time() if now is None else now
    if t >= m.expires_at:
        raise ManifestError(ManifestCode.EXPIRED, f"expired at {m.expires_at}, now {int(t)}")
    if m.issued_at > t + CLOCK_SKEW_S:
        raise ManifestError(ManifestCode.NOT_YET_VALID, f"issued in the future ({m.issued_at})")
    if last_sequence is not None and m.sequence <= last_sequence:
        raise ManifestError(
            ManifestCode.REPLAYED, f"sequence {m.sequence} <= last accepted {last_sequence}"
        )
    return m


def verify_envelope(
    data: bytes,
    public_key: Ed25519PublicKey,
    now: float | None = None,
    last_sequence: int | None = None,
) -> Manifest:
    """Verify a downloaded envelope (bytes as served by the controller)."""
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
    return verify_manifest(env["manifest"], sig, public_key, now, last_sequence)
