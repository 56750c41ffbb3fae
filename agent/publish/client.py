"""Building paho clients and deciding what a connect outcome means.

paho's own reconnect has no jitter and reconnects in lockstep across a fleet, so
the publisher drives connects itself: one fresh paho client per connect session
(the Will carries that session's counter), `backoff_delay` between attempts, and
`classify_connack` to tell retriable refusals from protocol and auth ones.
"""

from __future__ import annotations

import enum
import random
import ssl
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config.mqtt import MqttBackoffConfig, MqttConfig, MqttTlsConfig

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}

_UNSUPPORTED_PROTOCOL = 0x84
_AUTH_REFUSALS = {0x86, 0x87, 0x8C}  # bad user/password, not authorized, bad auth method


class MqttClientError(Exception):
    """A client that cannot be built from the config (TLS files, credentials)."""


class ConnackOutcome(str, enum.Enum):
    OK = "ok"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    REFUSED_AUTH = "refused_auth"
    REFUSED = "refused"


def classify_connack(reason: ReasonCode | int) -> ConnackOutcome:
    """Map a CONNACK reason (MQTT 5 code, or paho's translation of a 3.1.1 one)."""
    value = reason.value if isinstance(reason, ReasonCode) else int(reason)
    if value == 0:
        return ConnackOutcome.OK
    if value == _UNSUPPORTED_PROTOCOL:
        return ConnackOutcome.UNSUPPORTED_PROTOCOL
    if value in _AUTH_REFUSALS:
        return ConnackOutcome.REFUSED_AUTH
    return ConnackOutcome.REFUSED


def backoff_delay(
    failures: int, cfg: MqttBackoffConfig, rand: Callable[[], float] = random.random
) -> float:
    """Delay before the next attempt after `failures` consecutive failures (>= 1).

    Capped exponential, then jittered downwards: uniform in [(1 - jitter) * d, d].
    """
    exponent = max(failures - 1, 0)
    base = cfg.max_s if exponent > 60 else min(cfg.max_s, cfg.initial_s * cfg.multiplier**exponent)
    return base * (1.0 - cfg.jitter * rand())


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails (paho leaves that socket open)."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(cfg: MqttTlsConfig) -> ssl.SSLContext:
    """A client context that always verifies the broker's chain (TLS 1.2+)."""
    try:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca_file) if cfg.ca_file else None
        )
        ctx.sslsocket_class = _ClosingSSLSocket
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = cfg.verify_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        if cfg.cert_file is not None and cfg.key_file is not None:
            ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise MqttClientError(f"cannot load TLS files: {exc}") from exc
    return ctx


def new_client(cfg: MqttConfig, client_id: str, protocol: str) -> mqtt.Client:
    """A paho client for one connect session; callbacks are set by the caller."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=PROTOCOLS[protocol],
        reconnect_on_failure=False,
    )
    client.connect_timeout = cfg.connect_timeout_s
    if cfg.tls is not None:
        client.tls_set_context(tls_context(cfg.tls))
    if cfg.username is not None:
        try:
            password = cfg.read_password()
        except Exception as exc:
            raise MqttClientError(str(exc)) from exc
        client.username_pw_set(cfg.username, password)
    return client


def connect_properties(protocol: str, max_packet: int) -> Properties | None:
    """MQTT 5 CONNECT properties: a Maximum Packet Size so the broker never sends us
    anything bigger (3.1.1 has no such property; the payload check still applies)."""
    if protocol != "5":
        return None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.MaximumPacketSize = max_packet
    props.SessionExpiryInterval = 0
    return props
