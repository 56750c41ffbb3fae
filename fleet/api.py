"""HTTP routes: the operator API under /api (Bearer token) and device downloads.

Device downloads (`/artifacts/<sha256>/...`) need no token: blobs are addressed by
their hash and every manifest is signed, so integrity does not depend on the
channel (per-device download credentials are listed under "Not yet" in
docs/fleet.md). Files are served with `FileResponse`, which honours HTTP Range,
so interrupted downloads resume.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select

from agent.protocol import InvalidIdError, validate_id
from fleet.artifacts import blob_path, manifest_url
from fleet.auth import check_token
from fleet.config import FleetConfig
from fleet.db import Database
from fleet.desired import DesiredError, DesiredSink, set_desired
from fleet.health_history import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    HealthPoint,
    HistoryQueryError,
    check_window,
    query_points,
)
from fleet.models import Artifact, Device, Event, Reported
from fleet.mqtt_client import FleetMqttError
from fleet.schemas import ArtifactOut, DesiredIn, DeviceDetailOut, DeviceOut, EventOut, artifact_out

SHA_PATTERN = r"^[0-9a-f]{64}$"
_SHA_RE = re.compile(SHA_PATTERN)


@dataclass
class FleetState:
    """What the routes need; built by fleet.app and kept on `app.state.fleet`."""

    cfg: FleetConfig
    db: Database
    sink: DesiredSink | None
    mqtt_connected: Any = None  # a callable returning bool, or None without MQTT


def state(request: Request) -> FleetState:
    st: FleetState = request.app.state.fleet
    return st


StateDep = Annotated[FleetState, Depends(state)]
_bearer = HTTPBearer(auto_error=False)


def require_token(
    st: StateDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The token's name; 401 without a valid Bearer token."""
    name = check_token(st.db, creds.credentials) if creds is not None else None
    if name is None:
        raise HTTPException(
            status_code=401,
            detail="missing or invalid API token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return name


api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])
public = APIRouter()


def _device_id(device_id: str) -> str:
    try:
        return validate_id(device_id)
    except InvalidIdError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc


@public.get("/healthz")
def healthz(st: StateDep) -> dict[str, Any]:
    connected = st.mqtt_connected() if st.mqtt_connected is not None else None
    return {"status": "ok", "mqtt_connected": connected}


@api.get("/devices", response_model=list[DeviceOut])
def list_devices(st: StateDep) -> list[DeviceOut]:
    with st.db.session() as s:
        return [DeviceOut.of(d) for d in s.scalars(select(Device).order_by(Device.id))]


@api.get("/devices/{device_id}", response_model=DeviceDetailOut)
def get_device(device_id: str, st: StateDep) -> DeviceDetailOut:
    with st.db.session() as s:
        dev = s.get(Device, _device_id(device_id))
        if dev is None:
            raise HTTPException(status_code=404, detail=f"unknown device {device_id!r}")
        return DeviceDetailOut.detail(dev, s.get(Reported, dev.id))


@api.get("/devices/{device_id}/health", response_model=list[HealthPoint])
def device_health(
    device_id: str,
    st: StateDep,
    *,
    since: Annotated[float | None, Query(description="Unix time, inclusive.")] = None,
    until: Annotated[float | None, Query(description="Unix time, exclusive.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> list[HealthPoint]:
    """Health history, oldest first: the newest `limit` rows in [since, until)."""
    try:
        check_window(since, until, limit)
    except HistoryQueryError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    with st.db.session() as s:
        dev = s.get(Device, _device_id(device_id))
        if dev is None:
            raise HTTPException(status_code=404, detail=f"unknown device {device_id!r}")
        return query_points(s, dev.id, since, until, limit)


@api.put("/devices/{device_id}/desired")
def put_desired(device_id: str, body: DesiredIn, st: StateDep) -> dict[str, Any]:
    """Publish the retained `desired` of a device and record it."""
    if st.sink is None:
        raise HTTPException(status_code=503, detail="MQTT is not configured")
    try:
        desired = set_desired(st.db, st.sink, _device_id(device_id), body, st.cfg.http.public_url)
    except DesiredError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc
    except FleetMqttError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    return desired.model_dump(mode="json", by_alias=True)


@api.get("/events", response_model=list[EventOut])
def list_events(
    st: StateDep,
    *,
    device: str | None = None,
    camera: str | None = None,
    rule: str | None = None,
    since: Annotated[float | None, Query(description="Unix time, inclusive.")] = None,
    until: Annotated[float | None, Query(description="Unix time, exclusive.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[EventOut]:
    """Newest first."""
    q = select(Event).order_by(Event.wall_time.desc(), Event.id.desc()).limit(limit)
    for column, value in ((Event.device_id, device), (Event.camera_id, camera),
                          (Event.rule_id, rule)):  # fmt: skip
        if value is not None:
            q = q.where(column == value)
    if since is not None:
        q = q.where(Event.wall_time >= since)
    if until is not None:
        q = q.where(Event.wall_time < until)
    with st.db.session() as s:
        return [EventOut.of(e) for e in s.scalars(q)]


@api.get("/events/{event_id}/snapshot", response_class=FileResponse)
def event_snapshot(event_id: str, st: StateDep) -> FileResponse:
    with st.db.session() as s:
        rel = s.scalar(
            select(Event.snapshot_path).where(
                Event.event_id == event_id, Event.snapshot_path.is_not(None)
            )
        )
    if rel is None:
        raise HTTPException(status_code=404, detail="no snapshot for this event")
    root = st.cfg.snapshots_dir.resolve()
    path = (root / rel).resolve()
    if root not in path.parents or not path.is_file():
        raise HTTPException(status_code=404, detail="snapshot file missing")
    return FileResponse(path, media_type="image/jpeg")


@api.get("/artifacts", response_model=list[ArtifactOut])
def list_artifacts(st: StateDep) -> list[ArtifactOut]:
    url = st.cfg.http.public_url
    with st.db.session() as s:
        rows = s.scalars(select(Artifact).order_by(Artifact.sequence))
        return [artifact_out(a, manifest_url(url, a.sha256)) for a in rows]


def _artifact(st: FleetState, sha256: str) -> Artifact:
    with st.db.session() as s:
        row = s.scalar(select(Artifact).where(Artifact.sha256 == sha256))
    if row is None:
        raise HTTPException(status_code=404, detail="unknown artifact")
    return row


@public.get("/artifacts/{sha256}/manifest.json")
def artifact_manifest(sha256: str, st: StateDep) -> Response:
    """The signed manifest envelope, byte for byte as signed and stored."""
    _check_sha(sha256)
    row = _artifact(st, sha256)
    return Response(row.manifest.encode("utf-8"), media_type="application/json")


@public.get("/artifacts/{sha256}/{filename}", response_class=FileResponse)
def artifact_file(sha256: str, filename: str, st: StateDep) -> FileResponse:
    """The artifact bytes; supports `Range: bytes=...` for resumed downloads."""
    _check_sha(sha256)
    row = _artifact(st, sha256)
    if filename != row.filename:
        raise HTTPException(status_code=404, detail="unknown artifact file")
    path: Path = blob_path(st.cfg.blobs_dir, row.sha256)
    if not path.is_file():
        raise HTTPException(status_code=404, detail="artifact blob missing")
    media = "application/x-tar" if row.kind == "model" else "application/yaml"
    return FileResponse(path, media_type=media, filename=row.filename)


def _check_sha(sha256: str) -> None:
    if not _SHA_RE.fullmatch(sha256):
        raise HTTPException(status_code=404, detail="unknown artifact")
