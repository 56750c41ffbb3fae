"""Publishing artifacts: a model folder or an agent config, stored and signed.

A model folder is checked with the agent's own loader (model.json valid, ONNX
present with the sha256 it declares) and packed as a deterministic tar (sorted
names, zero times and owners), so the same folder always gives the same sha256.
A config is validated with the agent's `parse_config` and stored as-is; an invalid
one is refused. Blobs are content-addressed (`blobs/<sha256>`); the signed
manifest carries a sequence number one above the fleet's highest so far.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select

from agent.config import ConfigError, parse_config
from agent.inference.errors import ModelError
from agent.inference.model import load_model_folder
from fleet.db import Database
from fleet.models import Artifact
from fleet.signing import Manifest, canonical_json, sign_manifest

log = logging.getLogger(__name__)

ArtifactKind = Literal["model", "config"]
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")
MAX_CONFIG_BYTES = 1024 * 1024
_CHUNK = 1024 * 1024


class ArtifactError(Exception):
    """An artifact that cannot be published (invalid, too large, duplicate)."""


@dataclass(frozen=True)
class PublishedArtifact:
    kind: str
    name: str
    version: str
    sha256: str
    size: int
    filename: str
    sequence: int
    manifest_url: str
    envelope: dict[str, Any]


def artifact_url(public_url: str, sha256: str, filename: str) -> str:
    return f"{public_url.rstrip('/')}/artifacts/{sha256}/{filename}"


def manifest_url(public_url: str, sha256: str) -> str:
    return artifact_url(public_url, sha256, "manifest.json")


def publish_artifact(
    db: Database,
    blobs_dir: Path,
    key: Ed25519PrivateKey,
    *,
    kind: ArtifactKind,
    path: Path,
    public_url: str,
    ttl_s: int,
    name: str | None = None,
    version: str | None = None,
    max_bytes: int = 4 * 1024**3,
    now: float | None = None,
) -> PublishedArtifact:
    """Validate, store and sign one artifact; raise ArtifactError naming the problem."""
    if kind == "model":
        name, version, data_path = _pack_model(path, blobs_dir, name, version, max_bytes)
        filename = f"{name}-{version}.tar"
    elif kind == "config":
        if name is None or version is None:
            raise ArtifactError("a config artifact needs --name and --version")
        data_path = _check_config(path, blobs_dir)
        filename = f"{name}-{version}.yaml"
    else:
        raise ArtifactError(f"unknown artifact kind {kind!r}")
    try:
        _check_name(name, version)  # inside: a refused name must not leave the temp copy
        sha, size = _store_blob(data_path, blobs_dir)
    finally:
        data_path.unlink(missing_ok=True)
    issued = int(time.time() if now is None else now)
    with db.session() as s:
        _refuse_duplicate(s, kind, name, version, sha)
        sequence = int(s.scalar(select(func.max(Artifact.sequence))) or 0) + 1
        manifest = Manifest(
            kind=kind, name=name, version=version, sha256=sha, size=size,
            url=artifact_url(public_url, sha, filename), sequence=sequence,
            issued_at=issued, expires_at=issued + ttl_s,
        )  # fmt: skip
        envelope = sign_manifest(manifest, key)
        s.add(
            Artifact(
                kind=kind, name=name, version=version, sha256=sha, size=size,
                filename=filename, sequence=sequence, created_at=float(issued),
                manifest=canonical_json(envelope).decode(),
            )
        )  # fmt: skip
    log.info("artifact published kind=%s name=%s version=%s sequence=%d sha256=%s",
             kind, name, version, sequence, sha)  # fmt: skip
    url = manifest_url(public_url, sha)
    return PublishedArtifact(kind, name, version, sha, size, filename, sequence, url, envelope)


def _check_name(name: str, version: str) -> None:
    if not NAME_RE.fullmatch(name):
        raise ArtifactError(f"invalid artifact name {name!r}: use letters, digits, '_', '.', '-'")
    if not VERSION_RE.fullmatch(version):
        raise ArtifactError(f"invalid version {version!r}: use letters, digits, '_.+-'")


def _refuse_duplicate(s: Any, kind: str, name: str, version: str, sha: str) -> None:
    same_version = s.scalar(
        select(Artifact).where(
            Artifact.kind == kind, Artifact.name == name, Artifact.version == version
        )
    )
    if same_version is not None:
        raise ArtifactError(f"{kind} {name}@{version} is already published")
    same_bytes = s.scalar(select(Artifact).where(Artifact.sha256 == sha))
    if same_bytes is not None:
        raise ArtifactError(
            f"identical content already published as {same_bytes.name}@{same_bytes.version}"
        )


def _check_config(path: Path, tmp_dir: Path) -> Path:
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ArtifactError(f"{path}: config larger than {MAX_CONFIG_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"cannot read config {path}: {exc}") from exc
    try:
        parse_config(text, str(path))
    except ConfigError as exc:
        raise ArtifactError(f"invalid config, not published: {exc}") from exc
    return _temp_with(tmp_dir, text.encode("utf-8"))


def _temp_with(tmp_dir: Path, data: bytes) -> Path:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=".incoming-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def _model_files(folder: Path) -> Iterator[tuple[str, Path]]:
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_dir():
            continue
        if not p.is_file():
            raise ArtifactError(f"{p}: not a regular file")
        yield rel, p


def _pack_model(
    folder: Path, tmp_dir: Path, name: str | None, version: str | None, max_bytes: int
) -> tuple[str, str, Path]:
    try:
        model = load_model_folder(folder, verify_sha256=True, probe=False)
    except ModelError as exc:
        raise ArtifactError(f"invalid model folder, not published: {exc}") from exc
    m = model.manifest
    if (name or m.name) != m.name or (version or m.version) != m.version:
        raise ArtifactError(
            f"--name/--version differ from model.json ({m.name}@{m.version}); edit model.json"
        )
    files = list(_model_files(folder))
    total = sum(p.stat().st_size for _, p in files)
    if total > max_bytes:
        raise ArtifactError(f"model folder is {total} bytes, over the {max_bytes} byte limit")
    out = _temp_with(tmp_dir, b"")
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel, p in files:
            info = tarfile.TarInfo(f"{m.name}/{rel}")
            info.size, info.mode, info.mtime = p.stat().st_size, 0o644, 0
            with open(p, "rb") as fh:
                tar.addfile(info, fh)
    return m.name, m.version, out


def _store_blob(src: Path, blobs_dir: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(src, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    sha = digest.hexdigest()
    dest = blob_path(blobs_dir, sha)
    if not dest.exists():
        with open(src, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(src, dest)
    return sha, size


def blob_path(blobs_dir: Path, sha256: str) -> Path:
    return blobs_dir / sha256
