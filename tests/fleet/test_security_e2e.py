"""Security of the controller as a device and an operator meet it, over real HTTP.

Complements test_api.py (401 on the read routes), test_artifacts.py (unsafe names)
and test_signing.py (the verification function itself): here every operator route of
the OpenAPI document refuses bad tokens and a refused request changes nothing; versions
and download paths cannot traverse; oversized artifacts are refused before anything is
stored; and manifests served by the real controller are checked with the agent's own
code path (`fetch_small` + `ManifestPolicy`, then the whole `OtaUpdater`), which refuses
another key's signature, tampered or truncated envelopes and oversized ones.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from agent.config.ota import OtaConfig
from agent.ota.download import fetch_small
from agent.ota.errors import OtaError, ReasonCode
from agent.ota.manifest import (
    MAX_ENVELOPE_BYTES,
    ManifestCode,
    ManifestError,
    ManifestPolicy,
    SequenceStore,
    load_public_key,
)
from agent.ota.updater import OtaUpdater
from agent.protocol import DesiredState, StatusPayload
from fleet import store
from fleet.artifacts import (
    MAX_CONFIG_BYTES,
    ArtifactError,
    ArtifactKind,
    PublishedArtifact,
    publish_artifact,
)
from fleet.auth import create_token, hash_token
from fleet.db import open_database
from fleet.models import ApiToken, Artifact, Device, Event
from fleet.rollout_models import Rollout, RolloutHistory
from fleet.signing import Manifest, generate_keypair, load_private_key, sign_manifest
from tests.fleet.helpers import FleetServer, fleet_config, http_port
from tests.ota_helpers import RecordingSwapper, Reports, ScriptedProbe, ended, make_version

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo.yaml"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[FleetServer]:
    cfg = fleet_config(tmp_path / "fleet", None, http_port())
    db = open_database(cfg.database_url)
    srv = FleetServer(cfg, db).start()
    yield srv
    srv.stop()
    db.dispose()


def _publish(
    srv: FleetServer, path: Path, *, kind: ArtifactKind = "config", version: str | None = "1",
    name: str | None = "demo", max_bytes: int = 4 * 1024**3,
) -> PublishedArtifact:  # fmt: skip
    assert srv.cfg.signing is not None
    return publish_artifact(
        srv.db, srv.cfg.blobs_dir, load_private_key(srv.cfg.signing.private_key), kind=kind,
        path=path, public_url=srv.cfg.http.public_url, ttl_s=3600, name=name, version=version,
        max_bytes=max_bytes,
    )  # fmt: skip


def _stored(srv: FleetServer) -> tuple[int, list[str]]:
    """(artifact rows, files under data_dir) — what a refused publish must not leave."""
    with srv.db.session() as s:
        rows = int(s.scalar(select(func.count()).select_from(Artifact)) or 0)
    data = srv.cfg.blobs_dir.parent
    files = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    return rows, files


def _add_device(srv: FleetServer, device_id: str) -> None:
    status = StatusPayload.model_validate(
        {"state": "online", "device_id": device_id, "session": 1, "timestamp": 1.0, "versions": {}}
    )
    with srv.db.session() as s:
        store.apply_status(s, status, 1.0)


# --------------------------------------------------------------------------- tokens
def _operator_routes(srv: FleetServer) -> list[tuple[str, str]]:
    """Every (method, path) under /api in the published OpenAPI, parameters filled in."""
    spec = httpx.get(srv.url + "/openapi.json").json()
    out = []
    for path, ops in spec["paths"].items():
        if path.startswith("/api/"):
            concrete = re.sub(r"\{[a-z_]+\}", "1", path).replace("/devices/1", "/devices/cam-1")
            out += [(method.upper(), concrete) for method in ops]
    return out


def test_every_operator_route_refuses_bad_tokens_and_a_refused_request_changes_nothing(
    server: FleetServer,
) -> None:
    # given a registered device, a published config and one valid and one revoked token
    _add_device(server, "cam-1")
    _publish(server, DEMO)
    valid = create_token(server.db, "ops")
    revoked = create_token(server.db, "former-ops")
    with server.db.session() as s:
        s.execute(update(ApiToken).where(ApiToken.token_sha256 == hash_token(revoked))
                  .values(revoked=True))  # fmt: skip
    routes = _operator_routes(server)
    assert ("POST", "/api/rollouts") in routes and ("PUT", "/api/devices/cam-1/desired") in routes
    pick = {"config": {"name": "demo", "version": "1"}}
    bodies = {"/api/rollouts": {"name": "x", "target": {"device_ids": ["cam-1"]}, **pick},
              "/api/devices/cam-1/desired": pick}  # fmt: skip
    attempts: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer eft_" + "A" * 43},
        {"Authorization": f"Bearer {revoked}"},
        {"Authorization": f"Bearer {valid}x"},
        {"Authorization": f"Basic {valid}"},
        {"Authorization": f"bearer{valid}"},
        {"Cookie": f"edge_fleet_token={valid}"},  # the dashboard's cookie is not an API token
    ]
    # when each route is called with each of them (and with the token as a query parameter)
    with httpx.Client(base_url=server.url) as c:
        for method, path in routes:
            for headers in attempts:
                r = c.request(method, path, headers=headers, json=bodies.get(path))
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
                assert valid not in r.text
            r = c.request(method, path, params={"token": valid}, json=bodies.get(path))
            assert r.status_code == 401, (method, path)
        # then nothing was created or published, and the valid token still works
        assert c.get("/api/rollouts", headers={"Authorization": f"Bearer {valid}"}).json() == []
    with server.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Rollout)) == 0
        assert s.scalar(select(func.count()).select_from(RolloutHistory)) == 0
        dev = s.get(Device, "cam-1")
        assert dev is not None and dev.desired is None


# --------------------------------------------------------------------------- traversal
@pytest.mark.parametrize(
    "version", ["../../etc", "..", "1/../../x", "1\\..\\x", "/abs", "1\x00", ".1", "1 2"]
)
def test_versions_that_could_traverse_are_refused_and_nothing_is_stored(
    server: FleetServer, version: str
) -> None:
    with pytest.raises(ArtifactError, match="invalid version"):
        _publish(server, DEMO, version=version)
    assert _stored(server) == (0, [])


def test_download_paths_cannot_leave_the_blob_store(server: FleetServer) -> None:
    # given a published artifact, next to the signing key and the database on disk
    pub = _publish(server, DEMO)
    base = f"{server.url}/artifacts/{pub.sha256}/"
    key_text = server.cfg.signing.private_key.read_text() if server.cfg.signing else ""
    # when a device asks for names other than the artifact's own file
    probes = ["..%2F..%2Fkeys%2Ffleet.key", "..%2F..%2Ffleet.sqlite3", "%2e%2e%2fmanifest.json",
              "..%5C..%5Cfleet.sqlite3", pub.sha256, f"{pub.filename}%00.txt", "..",
              "."]  # fmt: skip
    for probe in probes:
        r = httpx.get(base + probe)
        # then it gets 404 (or a redirect-free 4xx), never file contents
        assert 400 <= r.status_code < 500, (probe, r.status_code)
        assert "PRIVATE KEY" not in r.text and "SQLite format" not in r.text
        assert key_text not in r.text
    assert httpx.get(base + pub.filename).status_code == 200


def test_a_tampered_snapshot_path_in_the_database_is_not_served(server: FleetServer) -> None:
    # given an event row whose snapshot path was rewritten to point outside snapshots/
    _add_device(server, "cam-1")
    with server.db.session() as s:
        s.add(Event(event_id="e1", phase="start", device_id="cam-1", camera_id="c", rule_id="r",
                    rule_type="zone", label="person", score=0.9, received_at=1.0, wall_time=1.0,
                    payload={}, snapshot_path="../../keys/fleet.key"))  # fmt: skip
    token = create_token(server.db, "ops")
    # when an operator asks for its snapshot
    r = httpx.get(f"{server.url}/api/events/e1/snapshot",
                  headers={"Authorization": f"Bearer {token}"})  # fmt: skip
    # then the key file is not served
    assert r.status_code == 404
    assert "PRIVATE KEY" not in r.text


# --------------------------------------------------------------------------- size limits
def test_a_config_over_the_publish_limit_is_refused_before_anything_is_stored(
    server: FleetServer, tmp_path: Path
) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(DEMO.read_text() + "#" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ArtifactError, match="larger than"):
        _publish(server, big)
    assert _stored(server) == (0, [])


def test_a_model_folder_over_the_publish_limit_is_refused_and_leaves_no_temp_files(
    server: FleetServer, tmp_path: Path, assets: Path
) -> None:
    folder = make_version(tmp_path, assets, "0.2.0")
    onnx_bytes = (assets / "yolox_nano.onnx").stat().st_size
    with pytest.raises(ArtifactError, match="byte limit"):
        _publish(server, folder, kind="model", name=None, version=None, max_bytes=onnx_bytes)
    assert _stored(server) == (0, [])


# --------------------------------------------------------------------------- the device's check
def _policy(tmp_path: Path, public_key: Path) -> tuple[ManifestPolicy, SequenceStore]:
    seqs = SequenceStore(tmp_path / "device" / "sequences.json")
    return ManifestPolicy(load_public_key(public_key), seqs, clock_synced=lambda: True), seqs


def _device_fetch(url: str) -> bytes:
    """What OtaUpdater._verified_manifest fetches before verifying."""
    return fetch_small(url, MAX_ENVELOPE_BYTES, 5.0)


def _set_envelope(srv: FleetServer, sha256: str, text: str) -> None:
    with srv.db.session() as s:
        s.execute(update(Artifact).where(Artifact.sha256 == sha256).values(manifest=text))


def test_the_devices_check_refuses_a_manifest_signed_by_another_key(
    server: FleetServer, tmp_path: Path
) -> None:
    assert server.cfg.signing is not None
    fleet_pub = server.cfg.signing.private_key.with_suffix(".pub")
    rogue = tmp_path / "rogue" / "rogue.key"
    generate_keypair(rogue, rogue.with_suffix(".pub"))
    pub = _publish(server, DEMO)
    # given a device pinned to another key than the controller's
    policy, seqs = _policy(tmp_path / "a", rogue.with_suffix(".pub"))
    # when it fetches the controller's manifest, then it refuses it as a bad signature
    with pytest.raises(ManifestError) as err:
        policy.verify(_device_fetch(pub.manifest_url), "config")
    assert err.value.code is ManifestCode.BAD_SIGNATURE
    assert seqs.last("config") is None
    # given instead an attacker who replaced the stored envelope with one signed by their key
    forged = sign_manifest(_manifest_of(pub), load_private_key(rogue))
    _set_envelope(server, pub.sha256, json.dumps(forged))
    policy, seqs = _policy(tmp_path / "b", fleet_pub)
    # then a device pinned to the fleet key refuses it too, and accepts nothing
    with pytest.raises(ManifestError) as err:
        policy.verify(_device_fetch(pub.manifest_url), "config")
    assert err.value.code is ManifestCode.BAD_SIGNATURE
    assert seqs.last("config") is None


def _manifest_of(pub: PublishedArtifact) -> Manifest:
    return Manifest(**pub.envelope["manifest"])


@pytest.mark.parametrize("case", ["tampered", "unsigned", "truncated", "not_json", "oversized",
                                  "extra_field", "wrong_kind"])  # fmt: skip
def test_the_devices_check_refuses_malformed_or_altered_manifests_from_the_controller(
    server: FleetServer, tmp_path: Path, case: str
) -> None:
    assert server.cfg.signing is not None
    pub = _publish(server, DEMO)
    envelope = json.loads(json.dumps(pub.envelope))
    good = json.dumps(envelope)
    # given the stored envelope altered in one way
    if case == "tampered":
        envelope["manifest"]["url"] = "http://evil.example/x.yaml"
    elif case == "unsigned":
        envelope["signature"] = ""
    elif case == "extra_field":
        envelope["manifest"]["debug"] = True
    text = json.dumps(envelope)
    if case == "truncated":
        text = good[: len(good) // 2]
    elif case == "not_json":
        text = "<html>proxy error</html>"
    elif case == "oversized":
        text = good[:-1] + ', "pad": "' + "x" * MAX_ENVELOPE_BYTES + '"}'
    _set_envelope(server, pub.sha256, text)
    policy, seqs = _policy(tmp_path, server.cfg.signing.private_key.with_suffix(".pub"))
    kind = "model" if case == "wrong_kind" else "config"
    # when the device fetches and verifies it, then it is refused with the reason
    codes = {"tampered": ManifestCode.BAD_SIGNATURE, "unsigned": ManifestCode.UNSIGNED,
             "extra_field": ManifestCode.BAD_SIGNATURE}  # fmt: skip
    expected = codes.get(case, ManifestCode.MALFORMED)
    if case == "oversized":
        with pytest.raises(OtaError) as ota_err:
            _device_fetch(pub.manifest_url)
        assert ota_err.value.reason is ReasonCode.MALFORMED
    else:
        with pytest.raises(ManifestError) as err:
            policy.verify(_device_fetch(pub.manifest_url), kind)
        assert err.value.code is expected, err.value
    assert seqs.last("config") is None and seqs.last("model") is None


def test_the_agents_updater_refuses_the_controllers_model_signed_by_another_key(
    server: FleetServer, tmp_path: Path, assets: Path
) -> None:
    # given model 0.2.0 published by the controller and a device pinned to a rogue key
    assert server.cfg.signing is not None
    pub = _publish(server, make_version(tmp_path, assets, "0.2.0"), kind="model", name=None,
                   version=None)  # fmt: skip
    rogue = tmp_path / "rogue" / "rogue.key"
    generate_keypair(rogue, rogue.with_suffix(".pub"))
    swapper = RecordingSwapper(make_version(tmp_path, assets, "0.1.1"))
    reports = Reports()
    cfg = OtaConfig.model_validate({"enabled": True, "public_key": str(rogue.with_suffix(".pub")),
                                    "min_free_bytes": 0})  # fmt: skip
    updater = OtaUpdater(
        cfg, tmp_path / "state", load_public_key(rogue.with_suffix(".pub")), swapper, reports,
        ScriptedProbe(swapper), clock_synced=lambda: True,
    )  # fmt: skip
    updater.start()
    try:
        # when the desired state names the controller's manifest
        ref = {"version": "0.2.0", "manifest_url": pub.manifest_url, "sequence": pub.sequence}
        updater.on_desired(DesiredState.model_validate({"schema": 1, "model": ref}))
        final = reports.wait(ended("0.2.0"))
    finally:
        updater.stop()
    # then the update fails as bad_signature before any byte of the model is used
    assert (final["update"]["state"], final["update"]["reason"]) == ("failed", "bad_signature")
    assert swapper.swaps == []
    assert not (tmp_path / "state" / "models" / "yolox_nano" / "0.2.0").exists()
