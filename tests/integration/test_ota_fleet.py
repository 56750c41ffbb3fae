"""The device side of OTA against the real fleet controller: artifacts published and signed
by `fleet.artifacts`, served by the real FastAPI app under uvicorn (FileResponse, Range)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config.ota import OtaConfig
from agent.ota.download import Artifact, Downloader
from agent.ota.manifest import load_public_key
from agent.ota.staging import Pointers
from agent.ota.updater import OtaUpdater
from agent.protocol import DesiredState
from fleet.artifacts import publish_artifact
from fleet.db import open_database
from fleet.signing import load_private_key
from tests.fleet.helpers import FleetServer, fleet_config, http_port
from tests.ota_helpers import RecordingSwapper, Reports, ScriptedProbe, ended, make_version


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetServer]:
    cfg = fleet_config(tmp_path / "fleet", None, http_port())
    db = open_database(cfg.database_url)
    srv = FleetServer(cfg, db).start()
    yield srv
    srv.stop()
    db.dispose()


def test_rollout_of_a_fleet_published_model_commits_on_the_device(
    fleet: FleetServer, tmp_path: Path, assets: Path
) -> None:
    # given v2 published (packed, stored, signed) by the real controller code
    assert fleet.cfg.signing is not None
    private = fleet.cfg.signing.private_key
    published = publish_artifact(
        fleet.db, fleet.cfg.blobs_dir, load_private_key(private), kind="model",
        path=make_version(tmp_path, assets, "0.2.0"), public_url=fleet.url, ttl_s=3600,
    )  # fmt: skip
    # and a device pinned to the fleet's public key, running the factory v1
    swapper = RecordingSwapper(make_version(tmp_path, assets, "0.1.1"))
    reports = Reports()
    cfg = OtaConfig.model_validate({
        "enabled": True, "public_key": str(private.with_suffix(".pub")), "min_free_bytes": 0,
        "latency_budget_ms": 5000, "latency_runs": 2, "probation": {"window_s": 0.2},
    })  # fmt: skip
    updater = OtaUpdater(
        cfg, tmp_path / "state", load_public_key(private.with_suffix(".pub")), swapper,
        reports, ScriptedProbe(swapper), clock_synced=lambda: True,
    )  # fmt: skip
    updater.start()
    try:
        # when the desired state names the published manifest
        ref = {"version": "0.2.0", "manifest_url": published.manifest_url,
               "sequence": published.sequence}  # fmt: skip
        updater.on_desired(DesiredState.model_validate({"schema": 1, "model": ref}))
        final = reports.wait(ended("0.2.0"))
    finally:
        updater.stop()
    # then v2 is committed and serves from its staged folder
    assert final["update"]["state"] == "committed", final
    assert swapper.swaps == ["0.2.0"]
    active = Pointers(tmp_path / "state" / "models").active()
    assert active == tmp_path / "state" / "models" / "yolox_nano" / "0.2.0"
    assert (active / "yolox_nano.onnx").stat().st_size == (
        assets / "yolox_nano.onnx"
    ).stat().st_size


def test_partial_download_resumes_against_the_fleets_file_response(
    fleet: FleetServer, tmp_path: Path, assets: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # given a published model and a part file holding its first half (an interrupted fetch)
    assert fleet.cfg.signing is not None
    published = publish_artifact(
        fleet.db, fleet.cfg.blobs_dir, load_private_key(fleet.cfg.signing.private_key),
        kind="model", path=make_version(tmp_path, assets, "0.2.0"), public_url=fleet.url,
        ttl_s=3600,
    )  # fmt: skip
    blob = (fleet.cfg.blobs_dir / published.sha256).read_bytes()
    m = published.envelope["manifest"]
    art = Artifact(m["url"], m["size"], m["sha256"])
    dl = Downloader(tmp_path / "dl", timeout_s=5)
    dl.part_path(art).parent.mkdir(parents=True)
    dl.part_path(art).write_bytes(blob[: len(blob) // 2])
    # when the download runs
    with caplog.at_level(logging.INFO, logger="agent.ota.download"):
        path = dl.download(art)
    # then the controller answered the Range request and the bytes verify
    assert path.read_bytes() == blob
    assert f"resume_from={len(blob) // 2}" in caplog.text
    assert "server ignored Range" not in caplog.text
