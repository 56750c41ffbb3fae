"""Ed25519 keys and signed manifests: what the device's verification accepts and refuses."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from fleet.signing import (
    Manifest,
    ManifestCode,
    ManifestError,
    SigningKeyError,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_manifest,
    verify_envelope,
    verify_manifest,
)

NOW = 1_800_000_000


def _manifest(**over: Any) -> Manifest:
    fields: dict[str, Any] = {
        "kind": "model", "name": "yolox_nano", "version": "0.2.0", "sha256": "ab" * 32,
        "size": 1234, "url": "http://fleet.example/artifacts/x/yolox_nano-0.2.0.tar",
        "sequence": 7, "issued_at": NOW, "expires_at": NOW + 3600,
    }  # fmt: skip
    fields.update(over)
    return Manifest(**fields)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    private, public = tmp_path / "k" / "fleet.key", tmp_path / "k" / "fleet.pub"
    generate_keypair(private, public)
    return private, public


def test_generated_private_key_is_0600_and_never_overwritten(keys: tuple[Path, Path]) -> None:
    # given a generated key pair
    private, public = keys
    # then the private key is owner-only and a second generate refuses to clobber it
    assert (private.stat().st_mode & 0o777) == 0o600
    before = private.read_bytes()
    with pytest.raises(SigningKeyError, match="refusing to overwrite"):
        generate_keypair(private, public)
    assert private.read_bytes() == before


def test_loading_a_group_readable_private_key_is_refused(keys: tuple[Path, Path]) -> None:
    # given a private key whose mode was widened
    private, _ = keys
    os.chmod(private, 0o640)
    # when / then loading it fails naming the fix
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_private_key(private)


def test_signed_manifest_verifies_and_returns_its_fields(keys: tuple[Path, Path]) -> None:
    private, public = keys
    env = sign_manifest(_manifest(), load_private_key(private))
    data = json.dumps(env).encode()
    m = verify_envelope(data, load_public_key(public), now=NOW + 10, last_sequence=6)
    assert (m.name, m.version, m.sequence, m.size) == ("yolox_nano", "0.2.0", 7, 1234)


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", "0.2.1"), ("sha256", "cd" * 32), ("size", 1235), ("url", "http://evil/x")],
)
def test_tampered_manifest_fails_with_bad_signature(
    keys: tuple[Path, Path], field: str, value: object
) -> None:
    # given a signed manifest with one field changed after signing
    private, public = keys
    env = sign_manifest(_manifest(), load_private_key(private))
    body = copy.deepcopy(env["manifest"])
    body[field] = value
    # then verification refuses it as a bad signature
    with pytest.raises(ManifestError) as err:
        verify_manifest(body, env["signature"], load_public_key(public), now=NOW)
    assert err.value.code is ManifestCode.BAD_SIGNATURE


def test_manifest_signed_by_another_key_is_rejected(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    private, _ = keys
    other_pub = tmp_path / "other.pub"
    generate_keypair(tmp_path / "other.key", other_pub)
    env = sign_manifest(_manifest(), load_private_key(private))
    with pytest.raises(ManifestError) as err:
        verify_envelope(json.dumps(env).encode(), load_public_key(other_pub), now=NOW)
    assert err.value.code is ManifestCode.BAD_SIGNATURE


@pytest.mark.parametrize("signature", [None, ""])
def test_unsigned_manifest_is_rejected(keys: tuple[Path, Path], signature: str | None) -> None:
    _, public = keys
    with pytest.raises(ManifestError) as err:
        verify_manifest(_manifest().to_dict(), signature, load_public_key(public), now=NOW)
    assert err.value.code is ManifestCode.UNSIGNED


def test_expired_manifest_is_rejected_even_with_a_good_signature(keys: tuple[Path, Path]) -> None:
    private, public = keys
    env = sign_manifest(_manifest(), load_private_key(private))
    with pytest.raises(ManifestError) as err:
        verify_envelope(json.dumps(env).encode(), load_public_key(public), now=NOW + 3600)
    assert err.value.code is ManifestCode.EXPIRED


def test_replayed_older_sequence_is_rejected(keys: tuple[Path, Path]) -> None:
    private, public = keys
    env = sign_manifest(_manifest(sequence=7), load_private_key(private))
    with pytest.raises(ManifestError) as err:
        verify_envelope(json.dumps(env).encode(), load_public_key(public), now=NOW, last_sequence=7)
    assert err.value.code is ManifestCode.REPLAYED


@pytest.mark.parametrize(
    "data",
    [b"not json", b"[]", b'{"signature": "x"}', b'{"manifest": {"kind": "model"}, "signature": 5}',
     b"{" * 100_000],
)  # fmt: skip
def test_malformed_envelopes_are_rejected(keys: tuple[Path, Path], data: bytes) -> None:
    _, public = keys
    with pytest.raises(ManifestError) as err:
        verify_envelope(data, load_public_key(public), now=NOW)
    assert err.value.code is ManifestCode.MALFORMED


def test_signed_but_malformed_manifest_is_rejected(keys: tuple[Path, Path]) -> None:
    # given a validly signed body that breaks the schema (the signer is not trusted to be sane)
    private, public = keys
    from fleet.signing import DOMAIN, canonical_json

    body = {**_manifest().to_dict(), "size": -1}
    sig = load_private_key(private).sign(DOMAIN + canonical_json(body))
    with pytest.raises(ManifestError) as err:
        verify_manifest(body, sig, load_public_key(public), now=NOW)
    assert err.value.code is ManifestCode.MALFORMED
