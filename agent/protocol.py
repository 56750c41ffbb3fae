"""The MQTT protocol shared by the agent and the fleet controller.

Topic strings are built here and nowhere else, and every payload is a pydantic
model here, so both sides validate with exactly the same code. The JSON Schemas in
`docs/schemas/` are generated from these models by `export_schemas` (run
`python -m agent.protocol docs/schemas`); a test keeps them in step.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PAYLOAD_SCHEMA = 1
"""The `schema` field of every JSON payload this module defines."""

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HA_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_HA_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_-]")


class ProtocolError(Exception):
    """Something that cannot be put on, or taken off, the wire."""


class InvalidIdError(ProtocolError, ValueError):
    """An id that is not safe as one topic level (wildcards, '/', control characters)."""


def validate_id(value: str, what: str = "device id") -> str:
    """Return `value` if it is a safe single topic level, else raise InvalidIdError."""
    if not _ID_RE.fullmatch(value):
        raise InvalidIdError(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '_', '.', '-' "
            "(no '+', '#', '/', spaces or control characters)"
        )
    return value


def ha_id(value: str) -> str:
    """`value` as a Home Assistant node or object id (`[A-Za-z0-9_-]+`).

    Safe values pass unchanged; otherwise the other characters (from our ids: '.')
    become '_' and a short hash of the original is appended, so `a.b` and `a_b`
    never share a discovery topic."""
    if _HA_ID_RE.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:6]
    return f"{_HA_UNSAFE_RE.sub('_', value)[:57]}_{digest}"


class Topics:
    """Every topic of one device, and the wildcard filters consumers use."""

    def __init__(self, prefix: str, device_id: str) -> None:
        self.prefix = validate_id(prefix, "topic prefix")
        self.device_id = validate_id(device_id)
        self.root = f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.root}/status"

    @property
    def health(self) -> str:
        return f"{self.root}/health"

    @property
    def events(self) -> str:
        return f"{self.root}/events"

    def snapshot(self, event_id: str) -> str:
        return f"{self.root}/events/{validate_id(event_id, 'event id')}/snapshot"

    @property
    def desired(self) -> str:
        return f"{self.root}/desired"

    @property
    def reported(self) -> str:
        return f"{self.root}/reported"

    def cmd(self, name: str) -> str:
        return f"{self.root}/cmd/{validate_id(name, 'command name')}"

    @property
    def cmd_filter(self) -> str:
        return f"{self.root}/cmd/+"

    def response(self, name: str) -> str:
        return f"{self.root}/response/{validate_id(name, 'command name')}"

    def owns(self, topic: str) -> bool:
        """True if `topic` lies in this device's namespace (what the broker ACL allows)."""
        return topic.startswith(self.root + "/")

    def command_name(self, topic: str) -> str | None:
        """The `<name>` of `<root>/cmd/<name>`, or None for any other topic."""
        head = f"{self.root}/cmd/"
        if not topic.startswith(head):
            return None
        name = topic[len(head) :]
        return name if _ID_RE.fullmatch(name) else None

    def ha_discovery(self, discovery_prefix: str, component: str, object_id: str) -> str:
        """Home Assistant discovery config topic of one entity of this device:
        `<discovery_prefix>/<component>/<node_id>/<object_id>/config`, node_id being
        `ha_id(device_id)` (the device id itself when it has no '.')."""
        levels = {"discovery prefix": discovery_prefix, "component": component, "id": object_id}
        for what, level in levels.items():
            if not _HA_ID_RE.fullmatch(level):
                raise InvalidIdError(f"invalid Home Assistant {what} {level!r}")
        return f"{discovery_prefix}/{component}/{ha_id(self.device_id)}/{object_id}/config"

    @staticmethod
    def fleet_filter(prefix: str, kind: str, device: str = "+") -> str:
        """A consumer's filter, e.g. `edge/+/events`; `device` may be '+' or one id."""
        dev = device if device == "+" else validate_id(device)
        return f"{validate_id(prefix, 'topic prefix')}/{dev}/{kind}"


class _Payload(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_serialization_defaults_required=True
    )
    schema_: Literal[1] = Field(default=1, alias="schema", description="Payload schema version.")

    def to_json(self) -> bytes:
        return self.model_dump_json(by_alias=True, exclude_none=False).encode("utf-8")


class DeviceState(str, enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


class StatusPayload(_Payload):
    """Retained on `status`: the birth (`online`) and the Last Will (`offline`)."""

    state: DeviceState = Field(description="online (birth) or offline (Will / clean stop).")
    device_id: str = Field(description="The device id.")
    session: int = Field(
        ge=0,
        description="Connect-session counter (like Sparkplug's bdSeq): the birth and the Will "
        "of one connection carry the same value; an `offline` with a lower session than "
        "the last `online` is a stale Will and must be ignored.",
    )
    timestamp: float = Field(description="Unix time the message was built.")
    versions: dict[str, str] = Field(description="agent, model, config versions and the like.")
    protocol: Literal["5", "3.1.1"] | None = Field(
        default=None, description="MQTT protocol version of this session."
    )
    reason: str | None = Field(
        default=None, description="Code for an offline state: will, shutdown."
    )


class BoxModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SnapshotRef(BoxModel):
    topic: str = Field(description="Topic carrying the JPEG bytes (QoS as events, not retained).")
    content_type: Literal["image/jpeg"] = Field(description="MIME type of the bytes.")
    size: int = Field(ge=0, description="Length in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the bytes, hex.")


class EventPhaseCode(str, enum.Enum):
    START = "start"
    END = "end"


class EventPayload(_Payload):
    """Published on `events`, QoS 1 (or 2). `event_id` is the deduplication key."""

    event_id: str = Field(description="Stable id, the same for start and end of an episode.")
    phase: EventPhaseCode = Field(description="start or end of the episode.")
    device_id: str = Field(description="The device id.")
    camera_id: str = Field(description="Camera id.")
    rule_id: str = Field(description="Rule id, unique per camera.")
    rule_type: str = Field(description="zone, line, count, ...")
    label: str = Field(description="Object class label.")
    class_id: int = Field(description="Model class index.")
    track_id: int | None = Field(description="Tracker id (null for count rules).")
    episode: int = Field(ge=0, description="Episode counter of this rule and subject.")
    score: float = Field(description="Detector score of the subject, 0-1.")
    box: list[float] | None = Field(
        min_length=4, max_length=4, description="x1, y1, x2, y2 in source pixels."
    )
    started_at: float = Field(description="Stream time (s) the episode started.")
    stream_time: float = Field(description="Stream time (s) of the frame that raised this phase.")
    wall_time: float = Field(description="Unix time of that frame.")
    frame_seq: int = Field(description="Per-camera decode counter of that frame.")
    attributes: dict[str, Any] = Field(description="Rule-specific extras (dwell, count, ...).")
    snapshot: SnapshotRef | None = Field(
        default=None, description="Where the JPEG follows, if this event has one."
    )


class OutboxStats(BoxModel):
    depth: int = Field(ge=0, description="Messages waiting in the outbox.")
    bytes: int = Field(ge=0, description="Payload bytes waiting in the outbox.")
    evicted: int = Field(ge=0, description="Messages evicted (oldest first) since install.")
    oversize_dropped: int = Field(ge=0, description="Messages larger than the whole outbox.")


class PublisherStats(BoxModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    connected: bool = Field(description="Connected to the broker now.")
    state: str = Field(description="connecting, connected, backoff, refused, stopped.")
    session: int = Field(ge=0, description="Current connect-session counter.")
    published: int = Field(ge=0, description="Outbox messages acknowledged by the broker.")
    broker_rejected: int = Field(ge=0, description="Messages the broker refused (dropped).")
    connects: int = Field(ge=0, description="Successful connects since start.")
    incoming_rejected: dict[str, int] = Field(description="Rejected incoming payloads by reason.")
    outbox: OutboxStats = Field(description="Durable outbox.")


class HealthPayload(_Payload):
    """Published on `health` every interval. Sections other than the publisher's are
    filled by the agent; consumers must ignore fields they do not know."""

    model_config = ConfigDict(extra="allow", frozen=True)
    device_id: str = Field(description="The device id.")
    seq: int = Field(
        ge=0,
        description="Counts health reports since process start, also those that could not "
        "be sent: a gap means reports were lost or the device was offline.",
    )
    session: int = Field(ge=0, description="Connect-session counter at publication.")
    started_at: float = Field(description="Unix time the publisher started.")
    timestamp: float = Field(description="Unix time the report was built.")
    uptime_s: float = Field(ge=0, description="Seconds since the publisher started.")
    publisher: PublisherStats = Field(description="MQTT publisher and outbox.")
    cameras: dict[str, dict[str, Any]] | None = Field(
        default=None, description="Per camera: state, fps_in, fps_processed, drops, reconnects."
    )
    inference: dict[str, Any] | None = Field(
        default=None, description="backend, degraded mode, latency_ms p50/p95/p99."
    )
    system: dict[str, Any] | None = Field(
        default=None, description="cpu_percent, memory, temperatures_c."
    )
    provider_error: str | None = Field(
        default=None, description="Code when the agent's health sections could not be built."
    )


class ReportedState(_Payload):
    """Retained on `reported`: what the device runs and where its updates stand."""

    model_config = ConfigDict(extra="allow", frozen=True)
    device_id: str = Field(description="The device id.")
    timestamp: float = Field(description="Unix time the report was built.")


class ArtifactRef(BoxModel):
    version: str = Field(min_length=1, max_length=128, description="Artifact version.")
    manifest_url: str = Field(
        min_length=1, max_length=2048, description="URL of the signed manifest."
    )
    sequence: int = Field(ge=0, description="Monotonic manifest sequence number.")


class DesiredState(_Payload):
    """Retained on `desired` by the fleet: what the device should run."""

    schema_: Literal[1] = Field(alias="schema", description="Payload schema version (required).")
    model: ArtifactRef | None = Field(default=None, description="Desired model.")
    config: ArtifactRef | None = Field(default=None, description="Desired agent config.")


class CommandRequest(_Payload):
    """Payload of `cmd/<name>`. MQTT 5 requesters set Response Topic + Correlation Data;
    3.1.1 requesters set `request_id` and read `response/<name>`."""

    schema_: Literal[1] = Field(alias="schema", description="Payload schema version (required).")
    request_id: str | None = Field(
        default=None, max_length=128, description="Echoed in the response."
    )
    args: dict[str, Any] = Field(default_factory=dict, description="Command arguments.")


class CommandCode(str, enum.Enum):
    OK = "ok"
    UNSUPPORTED = "unsupported"
    INVALID = "invalid"
    ERROR = "error"


class CommandResponse(_Payload):
    device_id: str = Field(description="The device id.")
    command: str = Field(description="Command name.")
    request_id: str | None = Field(default=None, description="The request's request_id.")
    code: CommandCode = Field(description="Outcome code.")
    detail: str | None = Field(default=None, description="Human-readable detail.")
    result: dict[str, Any] = Field(default_factory=dict, description="Command output.")
    timestamp: float = Field(description="Unix time of the response.")


class RejectCode(str, enum.Enum):
    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    SCHEMA = "schema"


class PayloadRejectedError(ProtocolError):
    """An incoming payload failed validation; `code` says at which step."""

    def __init__(self, code: RejectCode, detail: str) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail


M = TypeVar("M", bound=BaseModel)


def parse_payload(model: type[M], data: bytes, max_bytes: int) -> M:
    """Validate an untrusted payload: size, UTF-8, JSON object, then the model."""
    if len(data) > max_bytes:
        raise PayloadRejectedError(RejectCode.TOO_LARGE, f"{len(data)} bytes > {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadRejectedError(RejectCode.NOT_UTF8, f"at byte {exc.start}") from exc
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise PayloadRejectedError(RejectCode.NOT_JSON, str(exc)[:200]) from exc
    if not isinstance(obj, dict):
        raise PayloadRejectedError(RejectCode.NOT_OBJECT, type(obj).__name__)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        detail = f"{exc.error_count()} error(s), first {where}: {first['msg']}"
        raise PayloadRejectedError(RejectCode.SCHEMA, detail[:300]) from exc


SCHEMA_MODELS: dict[str, tuple[type[BaseModel], Literal["serialization", "validation"]]] = {
    # Device output: every field is always present on the wire (serialization view).
    "status": (StatusPayload, "serialization"),
    "health": (HealthPayload, "serialization"),
    "event": (EventPayload, "serialization"),
    "reported": (ReportedState, "serialization"),
    "command_response": (CommandResponse, "serialization"),
    # Device input: what the device accepts (validation view; defaults may be omitted).
    "desired": (DesiredState, "validation"),
    "command_request": (CommandRequest, "validation"),
}


def schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (draft 2020-12) of every payload, keyed by file stem."""
    out = {}
    for name, (model, mode) in SCHEMA_MODELS.items():
        schema = model.model_json_schema(by_alias=True, mode=mode)
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://edge-vision.invalid/schemas/{name}.json"
        out[name] = schema
    return out


def export_schemas(directory: str | Path) -> list[Path]:
    """Write `<name>.json` for every payload into `directory`; return the paths."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, schema in schemas().items():
        path = folder / f"{name}.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in export_schemas(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"):
        print(written)
