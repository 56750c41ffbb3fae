"""`edge-agent listen`: print events from a broker, one line each (operators, tests).

Each payload on `<prefix>/<device>/events` is validated against the published
EventPayload model; valid ones are printed (text or JSON lines) on `out`, invalid
ones are reported on stderr and not counted.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config.mqtt import MqttConfig, MqttTlsConfig
from agent.protocol import (
    EventPayload,
    InvalidIdError,
    PayloadRejectedError,
    Topics,
    parse_payload,
)
from agent.publish.client import MqttClientError, new_client

log = logging.getLogger(__name__)

_MAX_EVENT_BYTES = 1024 * 1024


def format_event(event: EventPayload) -> str:
    """One human-readable line: time, device, camera, rule, phase, label, id."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event.wall_time))
    snap = f" snapshot={event.snapshot.size}B" if event.snapshot else ""
    return (
        f"{stamp}Z device={event.device_id} camera={event.camera_id} rule={event.rule_id} "
        f"{event.phase.value} {event.label} score={event.score:.2f} id={event.event_id}{snap}"
    )


class _Printer:
    def __init__(self, out: TextIO, json_lines: bool, max_events: int | None) -> None:
        self.out = out
        self.json_lines = json_lines
        self.max_events = max_events
        self.count = 0
        self.done = threading.Event()
        self.connack: ReasonCode | None = None

    def on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            event = parse_payload(EventPayload, bytes(msg.payload), _MAX_EVENT_BYTES)
        except PayloadRejectedError as exc:
            print(f"invalid payload topic={msg.topic} reason={exc}", file=sys.stderr)
            return
        if self.json_lines:
            line = json.dumps(event.model_dump(mode="json", by_alias=True), sort_keys=True)
        else:
            line = format_event(event)
        self.out.write(line + "\n")
        self.out.flush()
        self.count += 1
        if self.max_events is not None and self.count >= self.max_events:
            self.done.set()


def listen(
    host: str,
    port: int = 1883,
    prefix: str = "edge",
    device_filter: str = "+",
    *,
    tls: MqttTlsConfig | None = None,
    username: str | None = None,
    password_file: Path | None = None,
    out: TextIO = sys.stdout,
    json_lines: bool = False,
    max_events: int | None = None,
    timeout_s: float | None = None,
    ready: threading.Event | None = None,
) -> int:
    """Print events until `max_events` arrived, `timeout_s` passed, or Ctrl-C.

    Returns a process exit code: 0 on success (also on timeout), 1 if the broker
    cannot be reached or refuses the connection, 2 for a bad device filter. `ready`
    is set once the subscription is in place.
    """
    cfg = MqttConfig(
        host=host, port=port, prefix=prefix, tls=tls, username=username, password_file=password_file
    )
    try:
        topic = Topics.fleet_filter(prefix, "events", device_filter)
    except InvalidIdError as exc:
        print(f"listen: {exc}", file=sys.stderr)
        return 2
    printer = _Printer(out, json_lines, max_events)
    try:
        client = new_client(cfg, f"edge-listen-{uuid.uuid4().hex[:12]}", "5")
    except MqttClientError as exc:
        print(f"listen: {exc}", file=sys.stderr)
        return 1

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Properties | None) -> None:
        printer.connack = rc
        if not rc.is_failure:
            c.subscribe(topic, qos=1)

    client.on_connect = on_connect
    if ready is not None:
        client.on_subscribe = lambda *_a: ready.set()
    client.on_message = printer.on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        print(f"listen: cannot connect to {host}:{port}: {exc}", file=sys.stderr)
        return 1
    client.loop_start()
    try:
        printer.done.wait(timeout_s)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    if printer.connack is not None and printer.connack.is_failure:
        print(f"listen: broker refused the connection: {printer.connack}", file=sys.stderr)
        return 1
    return 0
