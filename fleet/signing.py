"""Ed25519 keys and signed artifact manifests: the controller's signing side.

The manifest format and its verification live in `agent.ota.manifest` (the device
verifies with exactly that code and must not import `fleet`); they are re-exported
here so the controller and its tests have one place to import from.

A manifest is signed over its canonical JSON (sorted keys, no spaces, UTF-8)
prefixed with a domain tag, and travels as an envelope:
`{"manifest": {...}, "signature": "<base64>", "key_id": "<hex>"}`.
Times are whole Unix seconds so the canonical form never depends on float printing.
"""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.ota.manifest import (
    CLOCK_SKEW_S,
    DOMAIN,
    MANIFEST_SCHEMA,
    MAX_ENVELOPE_BYTES,
    Manifest,
    ManifestCode,
    ManifestError,
    SigningError,
    SigningKeyError,
    canonical_json,
    key_id,
    load_public_key,
    parse_manifest,
    public_pem,
    verify_envelope,
    verify_manifest,
)


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


# --------------------------------------------------------------------------- manifests
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


__all__ = [
    "CLOCK_SKEW_S",
    "DOMAIN",
    "MANIFEST_SCHEMA",
    "MAX_ENVELOPE_BYTES",
    "Manifest",
    "ManifestCode",
    "ManifestError",
    "SigningError",
    "SigningKeyError",
    "canonical_json",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "parse_manifest",
    "public_pem",
    "sign_manifest",
    "verify_envelope",
    "verify_manifest",
]
