"""Publishing artifacts: configs validated with the agent's models, models packed
deterministically, every manifest signed with a monotonic sequence."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fleet.artifacts import (
    ArtifactError,
    ArtifactKind,
    PublishedArtifact,
    blob_path,
    publish_artifact,
)
from fleet.db import Database, open_database
from fleet.models import Artifact
from fleet.signing import load_private_key, load_public_key, verify_envelope
from tests.fleet.helpers import fleet_config
from tests.model_helpers import make_model_dir

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


@pytest.fixture
def env(tmp_path: Path) -> tuple[Database, Path, Path]:
    cfg = fleet_config(tmp_path, None, 8080)
    assert cfg.signing is not None
    return open_database(cfg.database_url), cfg.blobs_dir, cfg.signing.private_key


def _publish(
    env: tuple[Database, Path, Path],
    kind: ArtifactKind,
    path: Path,
    name: str | None = None,
    version: str | None = None,
) -> PublishedArtifact:
    db, blobs, key = env
    return publish_artifact(
        db, blobs, load_private_key(key), kind=kind, path=path,
        public_url="http://127.0.0.1:8080", ttl_s=3600, name=name, version=version,
    )  # fmt: skip


def test_valid_config_is_stored_by_hash_with_a_verifiable_manifest(
    env: tuple[Database, Path, Path],
) -> None:
    # when the demo config is published
    pub = _publish(env, "config", DEMO_CONFIG, name="demo", version="1")
    # then the blob is the file's bytes under its sha256, and the manifest verifies
    data = DEMO_CONFIG.read_bytes()
    assert pub.sha256 == hashlib.sha256(data).hexdigest()
    assert blob_path(env[1], pub.sha256).read_bytes() == data
    m = verify_envelope(
        json.dumps(pub.envelope).encode(),
        load_public_key(env[2].with_suffix(".pub")),
    )
    assert (m.kind, m.name, m.version, m.size, m.sequence) == ("config", "demo", "1", len(data), 1)
    assert m.url.endswith(f"/artifacts/{m.sha256}/demo-1.yaml")


def test_invalid_config_is_refused_and_nothing_is_stored(
    env: tuple[Database, Path, Path], tmp_path: Path
) -> None:
    # given a config with a key the agent's schema does not know
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEMO_CONFIG.read_text().replace("workers: 2", "wrokers: 2"))
    # when / then publishing refuses it, naming the key
    with pytest.raises(ArtifactError, match="wrokers"):
        _publish(env, "config", bad, name="demo", version="2")
    with env[0].session() as s:
        assert s.scalar(select(func.count()).select_from(Artifact)) == 0
    assert not env[1].exists() or list(env[1].iterdir()) == []


@pytest.mark.parametrize("name", ["../etc", "a/b", "", ".hidden", "x" * 65])
def test_names_with_path_traversal_are_refused(env: tuple[Database, Path, Path], name: str) -> None:
    with pytest.raises(ArtifactError, match="invalid artifact name"):
        _publish(env, "config", DEMO_CONFIG, name=name, version="1")


def test_model_folder_packs_deterministically_and_sequences_increase(
    env: tuple[Database, Path, Path], tmp_path: Path, assets: Path
) -> None:
    # given a model folder and a config already published
    folder = make_model_dir(tmp_path / "m", assets)
    first = _publish(env, "config", DEMO_CONFIG, name="demo", version="1")
    # when the model is published
    pub = _publish(env, "model", folder)
    # then it is a tar of model.json + ONNX named from model.json, sequence one higher
    assert (pub.name, pub.version, pub.sequence) == ("yolox_nano", "0.1.1", 2)
    assert first.sequence == 1
    with tarfile.open(blob_path(env[1], pub.sha256)) as tar:
        names = tar.getnames()
        onnx = tar.extractfile("yolox_nano/yolox_nano.onnx")
        assert onnx is not None
        assert (
            hashlib.sha256(onnx.read()).hexdigest()
            == hashlib.sha256((assets / "yolox_nano.onnx").read_bytes()).hexdigest()
        )
    assert names == ["yolox_nano/model.json", "yolox_nano/yolox_nano.onnx"]
    # and publishing the same version again is refused
    with pytest.raises(ArtifactError, match="already published"):
        _publish(env, "model", folder)


def test_model_folder_whose_onnx_does_not_match_its_hash_is_refused(
    env: tuple[Database, Path, Path], tmp_path: Path, assets: Path
) -> None:
    folder = make_model_dir(tmp_path / "m", assets, sha256="0" * 64)
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        _publish(env, "model", folder)
