"""The agent's top-level configuration and its YAML loader."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from agent.config.base import StrictModel
from agent.config.health import DriftConfig, ResourceConfig
from agent.config.inference import (
    BackendConfig,
    ModelConfig,
    OnnxRuntimeBackendConfig,
    TrackerConfig,
)
from agent.config.ladder import LadderConfig, OverloadConfig
from agent.config.metrics import MetricsConfig
from agent.config.mqtt import MqttConfig
from agent.config.ota import OtaConfig
from agent.config.sources import CameraConfig

SCHEMA_VERSION = 1

DeviceId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Device id: letters, digits, '_', '.', '-' (no MQTT wildcards, '/' or "
        "control characters).",
    ),
]


class DeviceConfig(StrictModel):
    id: DeviceId
    state_dir: Path = Field(
        default=Path("/var/lib/edge-agent"),
        description="Writable folder for durable state (boot counter, outbox, snapshots).",
    )


class ConsoleOutputConfig(StrictModel):
    enabled: bool = Field(default=True, description="Print one line per event on stdout.")


class JsonlOutputConfig(StrictModel):
    path: Path = Field(description="Append one JSON object per event to this file.")
    fsync: bool = Field(default=False, description="fsync after each event (slower, durable).")
    max_bytes: int = Field(
        default=64 << 20,
        ge=1 << 16,
        le=1 << 40,
        description="Rotate the file when it grows past this size (FILE -> FILE.1 -> ...).",
    )
    backups: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Rotated files kept (FILE.1 newest); 0 truncates instead of keeping any.",
    )


class SnapshotOutputConfig(StrictModel):
    dir: Path = Field(description="Folder for snapshot JPEGs, one per event start.")
    jpeg_quality: int = Field(default=85, ge=10, le=100, description="JPEG quality.")
    max_width: int = Field(
        default=1280, ge=64, le=8192, description="Downscale wider frames to this width."
    )
    max_files: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Keep at most this many snapshots; the oldest are deleted first.",
    )
    max_bytes: int = Field(
        default=1 << 30,
        ge=1 << 20,
        description="Keep at most this many bytes of snapshots; the oldest are deleted first.",
    )


class OutputsConfig(StrictModel):
    console: ConsoleOutputConfig = Field(
        default_factory=ConsoleOutputConfig, description="Human-readable event lines."
    )
    jsonl: JsonlOutputConfig | None = Field(default=None, description="JSON-lines event log.")
    snapshots: SnapshotOutputConfig | None = Field(default=None, description="Snapshot JPEGs.")


class LoggingConfig(StrictModel):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    format: Literal["text", "json"] = Field(
        default="text", description="'json' writes one JSON object per line (for journald)."
    )


class SupervisorConfig(StrictModel):
    stage_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A stage (inference worker, camera thread) that has not beaten for this "
        "long counts as wedged: the systemd watchdog is no longer pinged. Keep it above the "
        "longest legitimate inference and below the unit's WatchdogSec.",
    )
    watchdog_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Ping interval when systemd sets no WATCHDOG_USEC (otherwise half of it).",
    )


class AgentConfig(StrictModel):
    schema_version: Literal[1] = Field(description="Config schema version (this agent reads 1).")
    device: DeviceConfig = Field(description="Identity and state.")
    model: ModelConfig = Field(description="The detector.")
    backend: BackendConfig = Field(
        default_factory=lambda: OnnxRuntimeBackendConfig(type="onnxruntime"),
        description="Inference backend.",
    )
    tracker: TrackerConfig = Field(default_factory=TrackerConfig, description="Tracker tuning.")
    cameras: list[CameraConfig] = Field(min_length=1, description="Cameras.")
    outputs: OutputsConfig = Field(default_factory=OutputsConfig, description="Event outputs.")
    mqtt: MqttConfig | None = Field(
        default=None, description="MQTT publishing (docs/protocol.md); null disables it."
    )
    ladder: LadderConfig | None = Field(
        default=None,
        description="Degradation ladder of backends (docs/degradation.md); null runs the "
        "single `backend` (a `tensorrt` backend always gets ONNX Runtime CPU below it).",
    )
    overload: OverloadConfig = Field(
        default_factory=OverloadConfig, description="Fair per-camera fps under overload."
    )
    metrics: MetricsConfig = Field(
        default_factory=MetricsConfig, description="Prometheus /metrics endpoint (off by default)."
    )
    ota: OtaConfig = Field(
        default_factory=OtaConfig,
        description="Follow the fleet's desired model/config (docs/ota.md); needs mqtt.",
    )
    supervisor: SupervisorConfig = Field(
        default_factory=SupervisorConfig, description="Stage heartbeats and the watchdog."
    )
    drift: DriftConfig = Field(
        default_factory=DriftConfig, description="Input and output drift monitoring."
    )
    resources: ResourceConfig = Field(
        default_factory=ResourceConfig, description="Thermal, memory and disk guards."
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Logging.")

    @model_validator(mode="after")
    def _ota_needs_mqtt(self) -> AgentConfig:
        if self.ota.enabled and self.mqtt is None:
            raise ValueError("ota.enabled needs an mqtt section (desired state arrives over MQTT)")
        return self

    @model_validator(mode="after")
    def _unique_camera_ids(self) -> AgentConfig:
        ids = [c.id for c in self.cameras]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate camera ids: {', '.join(dupes)}")
        return self


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key path and reason."""


def _line_of(node: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the YAML node at `loc`, or of its deepest existing parent."""
    line = None if node is None else node.start_mark.line + 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if getattr(k, "value", None) == key]
            node = match[0] if match else None
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            node = node.value[key] if key < len(node.value) else None
        else:
            node = None  # discriminated-union tags and the like: keep the parent's line
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def format_validation_error(exc: ValidationError, source: str, root: yaml.Node | None) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if isinstance(p, (int, str)))
        data_loc = tuple(p for p in loc if not (isinstance(p, str) and p in _UNION_TAGS))
        path = ".".join(str(p) for p in data_loc) or "<root>"
        line = _line_of(root, data_loc)
        where = f"{source}:{line}" if line else source
        lines.append(f"{where}: {path}: {err['msg']}")
    return "\n".join(lines)


_UNION_TAGS = {"file", "rtsp", "usb", "zone", "line", "count", "onnxruntime", "tensorrt"}


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> AgentConfig:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"{source}: top level must be a mapping of keys, not {kind}")
    try:
        cfg = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source, root)) from exc
    return _rebase(cfg, base_dir) if base_dir is not None else cfg


def _rebase(cfg: AgentConfig, base: Path) -> AgentConfig:
    """Make relative paths relative to the config file's folder."""

    def fix(p: Path) -> Path:
        return p if p.is_absolute() else Path(os.path.normpath(base / p))

    cams = []
    for cam in cfg.cameras:
        src = cam.source
        if src.type == "file":
            src = src.model_copy(update={"path": fix(src.path)})
        cams.append(cam.model_copy(update={"source": src}))
    outputs = cfg.outputs
    if outputs.jsonl is not None:
        outputs = outputs.model_copy(
            update={"jsonl": outputs.jsonl.model_copy(update={"path": fix(outputs.jsonl.path)})}
        )
    if outputs.snapshots is not None:
        snaps = outputs.snapshots.model_copy(update={"dir": fix(outputs.snapshots.dir)})
        outputs = outputs.model_copy(update={"snapshots": snaps})
    mqtt = cfg.mqtt
    if mqtt is not None:
        tls = mqtt.tls
        if tls is not None:
            tls = tls.model_copy(
                update={
                    k: fix(v)
                    for k in ("ca_file", "cert_file", "key_file")
                    if (v := getattr(tls, k)) is not None
                }
            )
        pw = mqtt.password_file
        mqtt = mqtt.model_copy(
            update={"tls": tls, "password_file": fix(pw) if pw is not None else None}
        )
    ota = cfg.ota
    if ota.public_key is not None or ota.ca_file is not None:
        ota = ota.model_copy(
            update={
                k: fix(v) for k in ("public_key", "ca_file") if (v := getattr(ota, k)) is not None
            }
        )
    backend = cfg.backend
    if backend.type == "tensorrt" and backend.cache_dir is not None:
        backend = backend.model_copy(update={"cache_dir": fix(backend.cache_dir)})
    return cfg.model_copy(
        update={
            "backend": backend,
            "ota": ota,
            "mqtt": mqtt,
            "device": cfg.device.model_copy(update={"state_dir": fix(cfg.device.state_dir)}),
            "model": cfg.model.model_copy(update={"path": fix(cfg.model.path)}),
            "cameras": cams,
            "outputs": outputs,
        }
    )


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read, validate and rebase a YAML config file; raise ConfigError naming the problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read config: {exc}") from exc
    return parse_config(text, str(p), p.resolve().parent)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors (yaml-language-server)."""
    return AgentConfig.model_json_schema()
