"""MQTT configuration (owned by the publishing stage; see docs/protocol.md).

Secrets never live in the YAML: the password is read from a file, or from a
systemd credential (`$CREDENTIALS_DIRECTORY/<name>`), each time a connection is
made, so a rotated credential is picked up without a restart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from agent.config.base import StrictModel

TOPIC_LEVEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class MqttCredentialError(Exception):
    """The configured password file or credential cannot be read."""


class MqttTlsConfig(StrictModel):
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signs the broker's certificate; null uses the system store.",
    )
    cert_file: Path | None = Field(
        default=None, description="Client certificate (PEM) for mutual TLS; CN = device id."
    )
    key_file: Path | None = Field(default=None, description="Private key (PEM) of cert_file.")
    verify_hostname: bool = Field(
        default=True,
        description="Check the broker certificate's name against `host`. The chain is always "
        "verified; turn this off only for brokers reached by an address not in the certificate.",
    )

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> MqttTlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttBackoffConfig(StrictModel):
    initial_s: float = Field(default=1.0, gt=0, le=60, description="First reconnect delay.")
    max_s: float = Field(default=60.0, gt=0, le=3600, description="Cap on the reconnect delay.")
    multiplier: float = Field(default=2.0, ge=1, le=10, description="Delay growth per failure.")
    jitter: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Each delay is drawn uniformly from [(1 - jitter) * d, d], so a fleet "
        "does not reconnect in lockstep after a broker restart (1 = full jitter).",
    )

    @model_validator(mode="after")
    def _cap_not_below_initial(self) -> MqttBackoffConfig:
        if self.max_s < self.initial_s:
            raise ValueError("max_s must be >= initial_s")
        return self


class OutboxConfig(StrictModel):
    max_messages: int = Field(
        default=10000, ge=1, le=10_000_000, description="Most messages kept; oldest evicted."
    )
    max_bytes: int = Field(
        default=256 * 1024 * 1024,
        ge=1024,
        le=64 * 1024**3,
        description="Most payload bytes kept (snapshots included); oldest evicted.",
    )
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="SQLite synchronous mode. FULL fsyncs every event before emit returns "
        "(survives power loss); NORMAL survives a process crash but may lose the last "
        "events on power loss.",
    )
    max_inflight: int = Field(
        default=20, ge=1, le=1000, description="Messages sent but not yet acknowledged."
    )


class HomeAssistantConfig(StrictModel):
    enabled: bool = Field(
        default=False,
        description="Publish retained Home Assistant MQTT discovery configs after each "
        "connect, so cameras and rule sensors appear there without configuration. The "
        "broker ACL must let the device write `<discovery_prefix>/+/<device id>/+/config`.",
    )
    discovery_prefix: str = Field(
        default="homeassistant",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Home Assistant's discovery prefix (one topic level).",
    )
    line_hold_s: int = Field(
        default=5,
        ge=1,
        le=3600,
        description="A line crossing is instantaneous: its sensor stays on this long.",
    )


class MqttConfig(StrictModel):
    host: str = Field(min_length=1, description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS).")
    prefix: str = Field(
        default="edge", pattern=TOPIC_LEVEL, description="First topic level (one level)."
    )
    client_id: str | None = Field(
        default=None,
        pattern=TOPIC_LEVEL,
        description="MQTT client id; null uses the device id (the ACL's %c / %u).",
    )
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto",
        description="'auto' tries MQTT 5 and falls back to 3.1.1 if the broker refuses it.",
    )
    keepalive_s: int = Field(
        default=30, ge=2, le=3600, description="Keepalive; the broker fires the Will after 1.5x."
    )
    connect_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Give up on a connect without CONNACK after this."
    )
    tls: MqttTlsConfig | None = Field(default=None, description="TLS; null is plain TCP.")
    username: str | None = Field(default=None, description="MQTT user name.")
    password_file: Path | None = Field(
        default=None, description="File holding the MQTT password (first line)."
    )
    password_credential: str | None = Field(
        default=None,
        pattern=TOPIC_LEVEL,
        description="Name of a systemd credential holding the password "
        "($CREDENTIALS_DIRECTORY/<name>).",
    )
    events_qos: Literal[1, 2] = Field(
        default=1,
        description="QoS of events and snapshots: 1 deletes on PUBACK, 2 on PUBCOMP. Either "
        "way consumers deduplicate by event_id (see docs/protocol.md).",
    )
    health_qos: Literal[0, 1] = Field(default=0, description="QoS of health reports.")
    health_interval_s: float = Field(
        default=30.0, ge=0.1, le=3600, description="Seconds between health reports."
    )
    max_incoming_bytes: int = Field(
        default=65536,
        ge=256,
        le=16 * 1024 * 1024,
        description="Larger payloads on desired/cmd topics are rejected unread.",
    )
    flush_timeout_s: float = Field(
        default=5.0, ge=0, le=300, description="On shutdown, keep sending queued events this long."
    )
    reconnect: MqttBackoffConfig = Field(
        default_factory=MqttBackoffConfig, description="Reconnect backoff."
    )
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, description="Durable outbox.")
    home_assistant: HomeAssistantConfig = Field(
        default_factory=HomeAssistantConfig, description="Home Assistant MQTT discovery."
    )

    @model_validator(mode="after")
    def _one_password_source(self) -> MqttConfig:
        if self.password_file is not None and self.password_credential is not None:
            raise ValueError("give password_file or password_credential, not both")
        has_password = self.password_file is not None or self.password_credential is not None
        if has_password and self.username is None:
            raise ValueError("a password needs a username")
        return self

    def read_password(self) -> str | None:
        """The password from its file or systemd credential (None when none is configured)."""
        if self.password_file is not None:
            path = self.password_file
        elif self.password_credential is not None:
            cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
            if not cred_dir:
                raise MqttCredentialError(
                    f"password_credential={self.password_credential} but "
                    "$CREDENTIALS_DIRECTORY is not set"
                )
            path = Path(cred_dir) / self.password_credential
        else:
            return None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MqttCredentialError(f"cannot read MQTT password from {path}: {exc}") from exc
        lines = text.splitlines()
        return lines[0] if lines else ""
