"""The fleet controller's own configuration (`fleet.yaml`).

Pydantic v2, `extra="forbid"`, a description on every field. Secrets never live
in the YAML: the MQTT password is read from a file, the signing key is a path to a
0600 PEM file. Relative paths are taken relative to the YAML file's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TOPIC_LEVEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class FleetConfigError(Exception):
    """The fleet configuration file cannot be read or is invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class FleetMqttConfig(_Strict):
    host: str = Field(default="127.0.0.1", description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port.")
    prefix: str = Field(default="edge", pattern=TOPIC_LEVEL, description="Topic prefix.")
    client_id: str = Field(
        default="edge-fleet", pattern=TOPIC_LEVEL, description="MQTT client id of this replica."
    )
    shared_group: str | None = Field(
        default="fleet",
        pattern=TOPIC_LEVEL,
        description="Shared-subscription group for health, events and snapshots "
        "(`$share/<group>/...`, MQTT 5), so replicas split the load; null subscribes plainly.",
    )
    protocol: Literal["5", "3.1.1"] = Field(
        default="5", description="MQTT protocol; shared subscriptions need 5."
    )
    username: str | None = Field(default=None, description="Broker user name.")
    password_file: Path | None = Field(
        default=None, description="File holding the broker password (never in the YAML)."
    )
    ca_file: Path | None = Field(default=None, description="CA bundle for TLS; null: no TLS.")
    cert_file: Path | None = Field(default=None, description="Client certificate for mTLS.")
    key_file: Path | None = Field(default=None, description="Client key for mTLS.")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keepalive.")
    receive_maximum: int = Field(
        default=1000, ge=1, le=65535, description="Unacknowledged QoS>0 messages in flight to us."
    )
    max_payload_bytes: int = Field(
        default=256 * 1024, ge=1024, description="JSON payloads larger than this are rejected."
    )
    max_snapshot_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="Snapshots larger than this are rejected."
    )


class HttpConfig(_Strict):
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port (0: any free port).")
    public_url: str = Field(
        default="http://127.0.0.1:8080",
        description="Base URL devices use to reach this controller (manifest and artifact URLs).",
    )


class SigningConfig(_Strict):
    private_key: Path = Field(description="Ed25519 private key (PEM, mode 0600).")
    manifest_ttl_s: int = Field(
        default=90 * 86400, ge=60, description="Seconds a signed manifest stays valid."
    )


class RolloutsConfig(_Strict):
    tick_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Rollout engine period; it also wakes early on a device's end state "
        "and at each probation end, so this bounds only timeouts and gate checks.",
    )


class HealthHistoryConfig(_Strict):
    hours: float = Field(
        default=24.0,
        gt=0,
        le=24 * 90,
        description="Hours of health history kept per device; older rows are pruned.",
    )
    interval_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="At most one history row per device per this many seconds (reports in "
        "between update only the last health); 0 stores every report.",
    )
    prune_interval_s: float = Field(
        default=300.0,
        gt=0,
        le=86400,
        description="How often the ingest worker deletes history older than `hours`.",
    )


class FleetConfig(_Strict):
    schema_version: Literal[1] = Field(default=1, description="Config schema version.")
    database_url: str = Field(
        default="sqlite:///fleet.sqlite3",
        description="SQLAlchemy URL: sqlite:///PATH (default) or postgresql+psycopg://...",
    )
    data_dir: Path = Field(
        default=Path("fleet-data"), description="Artifacts (blobs/) and snapshots (snapshots/)."
    )
    mqtt: FleetMqttConfig | None = Field(
        default_factory=FleetMqttConfig, description="Broker; null runs without MQTT ingest."
    )
    http: HttpConfig = Field(default_factory=HttpConfig, description="HTTP API server.")
    signing: SigningConfig | None = Field(
        default=None, description="Manifest signing key; needed to publish artifacts."
    )
    rollouts: RolloutsConfig = Field(
        default_factory=RolloutsConfig, description="Rollout engine settings."
    )
    health_history: HealthHistoryConfig = Field(
        default_factory=HealthHistoryConfig,
        description="Per-device health time series (device page charts, /api/devices/{id}/health).",
    )
    max_artifact_bytes: int = Field(
        default=4 * 1024**3, ge=1024, description="Largest artifact accepted for publishing."
    )

    @property
    def blobs_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def snapshots_dir(self) -> Path:
        return self.data_dir / "snapshots"


def _rebase(cfg: FleetConfig, base: Path) -> FleetConfig:
    def fix(p: Path | None) -> Path | None:
        return None if p is None or p.is_absolute() else Path(os.path.normpath(base / p))

    url = cfg.database_url
    sqlite_head = "sqlite:///"
    if url.startswith(sqlite_head) and not url.startswith("sqlite:////"):
        rel = url[len(sqlite_head) :]
        if rel and rel != ":memory:":
            url = sqlite_head + os.path.normpath(base / rel)
    update: dict[str, object] = {"database_url": url, "data_dir": fix(cfg.data_dir) or cfg.data_dir}
    if cfg.signing is not None:
        key = fix(cfg.signing.private_key) or cfg.signing.private_key
        update["signing"] = cfg.signing.model_copy(update={"private_key": key})
    if cfg.mqtt is not None:
        names = ("password_file", "ca_file", "cert_file", "key_file")
        fixed = {n: fix(getattr(cfg.mqtt, n)) or getattr(cfg.mqtt, n) for n in names}
        update["mqtt"] = cfg.mqtt.model_copy(update=fixed)
    return cfg.model_copy(update=update)


def load_fleet_config(path: str | os.PathLike[str]) -> FleetConfig:
    """Read and validate `fleet.yaml`; raise FleetConfigError naming the key and reason."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FleetConfigError(f"{p}: cannot read fleet config: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise FleetConfigError(f"{p}: top level must be a mapping, not {type(data).__name__}")
    try:
        cfg = FleetConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "<root>"
        raise FleetConfigError(f"{p}: {where}: {first['msg']}") from exc
    return _rebase(cfg, p.resolve().parent)
