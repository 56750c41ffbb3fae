"""One simulated device: its own MQTT 5 connection and Will, health, events, OTA walk.

All methods run on the device's `ClientHub` thread (fleet/sim_hub.py), which also
owns its paho client. Payloads are built in fleet/sim_payloads.py with
agent.protocol's models; topics come from `agent.protocol.Topics`.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.protocol import (
    CommandCode,
    CommandRequest,
    CommandResponse,
    DesiredState,
    DeviceState,
    PayloadRejectedError,
    StatusPayload,
    Topics,
    parse_payload,
)
from fleet.sim_hub import ClientHub
from fleet.sim_payloads import (
    HealthInputs,
    event_payload,
    health_payload,
    reported_payload,
    snapshot_ref,
)

log = logging.getLogger(__name__)

OTA_STEPS = ("pending", "downloading", "verifying", "staging", "validating", "activating")
FAIL_CODES = {
    "downloading": "download_failed", "verifying": "bad_signature", "staging": "staging_failed",
    "validating": "golden_mismatch", "activating": "activation_failed",
}  # fmt: skip
MAX_DESIRED_BYTES = 64 * 1024


@dataclass(frozen=True)
class SimConfig:
    """What to simulate; every rate is a probability per update or per device-second."""

    devices: int = 10
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "edge"
    id_prefix: str = "sim"
    health_interval_s: float = 5.0
    event_rate: float = 0.01
    cameras: int = 2
    model_version: str = "1.0.0"
    config_version: str = "1"
    ota_step_s: float = 1.0
    probation_s: float = 5.0
    fail_rate: float = 0.0
    probation_fail_rate: float = 0.0
    stuck_rate: float = 0.0
    degraded_fraction: float = 0.0
    bad_versions: frozenset[str] = frozenset()
    keepalive_s: int = 30
    connect_rate: float = 200.0
    threads: int = 1
    seed: int | None = None
    session_base: int | None = None

    def device_ids(self) -> list[str]:
        width = max(4, len(str(self.devices - 1)))
        return [f"{self.id_prefix}-{i:0{width}d}" for i in range(self.devices)]


@dataclass
class _Update:
    target: dict[str, str]
    step: int = 0
    outcome: str = "commit"
    fail_at: str | None = None
    since: float = field(default_factory=time.time)


class SimDevice:
    """One simulated agent; all its methods run on its hub's thread."""

    def __init__(
        self, device_id: str, cfg: SimConfig, hub: ClientHub, jpegs: list[bytes], seed: int
    ) -> None:
        self.id, self.cfg, self.hub, self.jpegs = device_id, cfg, hub, jpegs
        self.topics = Topics(cfg.prefix, device_id)
        self.rng = random.Random(seed)  # noqa: S311 - simulation, not secrets
        self.session = cfg.session_base if cfg.session_base is not None else int(time.time())
        self.session -= 1  # incremented before every connect attempt
        self.started_at = time.time()
        self.running = {"model": cfg.model_version, "config": cfg.config_version}
        self.previous = dict(self.running)
        self.degraded = self.rng.random() < cfg.degraded_fraction
        self.connected = self.stopping = self.offline_acked = False
        self.ever_connected = False
        self.attempt = self.health_seq = self.events_n = self.connects = 0
        self.sent: Counter[str] = Counter()
        self.update: _Update | None = None
        self._ota_gen = 0
        self._last_error: str | None = None
        self._offline_info: mqtt.MQTTMessageInfo | None = None
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, client_id=device_id,
            protocol=mqtt.MQTTv5,
        )  # fmt: skip
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        hub.attach(self.client)

    # ------------------------------------------------------------------ connection
    def _status(self, state: DeviceState, reason: str | None = None) -> bytes:
        versions = {"agent": "sim-0.1", "model": self.running["model"],
                    "config": self.running["config"]}  # fmt: skip
        return StatusPayload(
            state=state, device_id=self.id, session=self.session, timestamp=time.time(),
            versions=versions, protocol="5", reason=reason,
        ).to_json()  # fmt: skip

    def connect(self) -> None:
        if self.stopping:
            return
        self.session += 1
        self.client.will_set(self.topics.status, self._status(DeviceState.OFFLINE, "will"), 1, True)
        try:
            if self.ever_connected or self.attempt:
                self.client.reconnect()
            else:
                self.client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s,
                                    clean_start=True)  # fmt: skip
        except OSError as exc:
            log.debug("connect failed device=%s error=%s", self.id, exc)
            self._retry()

    def _retry(self) -> None:
        if self.stopping:
            return
        self.attempt += 1
        cap = min(30.0, 0.5 * 2 ** min(self.attempt, 8))
        self.hub.call_later(self.rng.uniform(0.1, cap), self.connect)  # full jitter

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.warning("broker refused device=%s reason=%s", self.id, rc)
            return  # paho closes; _on_disconnect retries
        first = not self.ever_connected
        self.connected = self.ever_connected = True
        self.attempt = 0
        self.connects += 1
        self._publish(self.topics.status, self._status(DeviceState.ONLINE), 1, True, "status")
        self._publish_reported()
        client.subscribe([(self.topics.desired, 1), (self.topics.cmd_filter, 1)])
        if first:
            interval = self.cfg.health_interval_s
            self.hub.call_later(self.rng.uniform(0, interval), self._health_tick)
            self._schedule_event()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected = False
        if not self.stopping:
            log.debug("device disconnected device=%s reason=%s", self.id, rc)
            self._retry()

    def shutdown(self) -> None:
        """Clean stop, step 1: retained `offline` (reason shutdown), like the agent."""
        self.stopping = True
        self._ota_gen += 1
        if self.connected:
            info = self.client.publish(
                self.topics.status, self._status(DeviceState.OFFLINE, "shutdown"), 1, True
            )
            self._offline_info = info
        else:
            self.offline_acked = True

    def offline_done(self) -> bool:
        info = self._offline_info
        return (
            self.offline_acked or not self.connected or (info is not None and info.is_published())
        )

    def disconnect(self) -> None:
        """Clean stop, step 2."""
        if self.client.socket() is not None:
            self.client.disconnect()

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool, kind: str) -> None:
        if self.connected:
            self.client.publish(topic, payload, qos, retain)
            self.sent[kind] += 1

    # ------------------------------------------------------------------ health
    def _health_tick(self) -> None:
        if self.stopping:
            return
        self.hub.call_later(self.cfg.health_interval_s, self._health_tick)
        inputs = HealthInputs(
            device_id=self.id, seq=self.health_seq, session=self.session,
            started_at=self.started_at, connected=self.connected, connects=self.connects,
            published=sum(self.sent.values()), cameras=self.cfg.cameras, degraded=self.degraded,
            bad_model=self.running["model"] in self.cfg.bad_versions, model=self.running["model"],
        )  # fmt: skip
        self.health_seq += 1  # counts reports also when they cannot be sent, like the agent
        self._publish(self.topics.health, health_payload(inputs, self.rng), 0, False, "health")

    # ------------------------------------------------------------------ events
    def _schedule_event(self) -> None:
        if self.cfg.event_rate > 0 and not self.stopping:
            self.hub.call_later(self.rng.expovariate(self.cfg.event_rate), self._event_tick)

    def _event_tick(self) -> None:
        self._schedule_event()
        if not self.connected:
            return
        self.events_n += 1
        n, camera = self.events_n, f"cam{self.rng.randint(1, self.cfg.cameras)}"
        event_id = f"{self.id}.{camera}.zone1.{self.session}.{n}"
        jpeg = self.jpegs[n % len(self.jpegs)]
        snap = snapshot_ref(self.topics, event_id, jpeg)
        make = partial(event_payload, self.rng, device_id=self.id, event_id=event_id,
                       camera=camera, n=n, started_at=self.started_at)  # fmt: skip
        start = make(phase="start", snapshot=snap)
        self._publish(self.topics.events, start, 1, False, "events")
        self._publish(snap.topic, jpeg, 1, False, "snapshot")
        end = make(phase="end", snapshot=None)
        self.hub.call_later(self.rng.uniform(2, 8), partial(self._publish_event, end))

    def _publish_event(self, payload: bytes) -> None:
        self._publish(self.topics.events, payload, 1, False, "events")

    # ------------------------------------------------------------------ desired / OTA
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topics.desired:
            self._on_desired(bytes(msg.payload))
        elif (name := self.topics.command_name(msg.topic)) is not None:
            self._on_command(name, bytes(msg.payload), msg.properties)

    def _on_desired(self, data: bytes) -> None:
        if not data:
            return
        try:
            desired = parse_payload(DesiredState, data, MAX_DESIRED_BYTES)
        except PayloadRejectedError as exc:
            self._last_error = f"desired_{exc.code.value}"
            self._publish_reported()
            return
        target = dict(self.running)
        if desired.model is not None:
            target["model"] = desired.model.version
        if desired.config is not None:
            target["config"] = desired.config.version
        if (self.update is not None and self.update.target == target) or (
            self.update is None and target == self.running
        ):
            return
        self._begin_update(target)

    def _begin_update(self, target: dict[str, str]) -> None:
        r, cfg = self.rng.random(), self.cfg
        upd = _Update(target=target)
        if r < cfg.stuck_rate:
            upd.outcome, upd.fail_at = "stuck", "downloading"
        elif r < cfg.stuck_rate + cfg.fail_rate:
            upd.outcome, upd.fail_at = "fail", self.rng.choice(OTA_STEPS[1:])
        elif r < cfg.stuck_rate + cfg.fail_rate + cfg.probation_fail_rate:
            upd.outcome = "rollback"
        self.update = upd
        self._ota_gen += 1
        self._ota_step(self._ota_gen)

    def _ota_step(self, gen: int) -> None:
        upd = self.update
        if gen != self._ota_gen or upd is None or self.stopping:
            return
        if upd.step < len(OTA_STEPS):
            state = OTA_STEPS[upd.step]
            if upd.outcome == "fail" and state == upd.fail_at:
                self._finish("failed", FAIL_CODES[state])
                return
            self._report_state(state)
            if upd.outcome == "stuck" and state == upd.fail_at:
                return  # never progresses: the controller's deadline must catch it
            upd.step += 1
            delay = self.cfg.ota_step_s * self.rng.uniform(0.7, 1.3)
        elif upd.step == len(OTA_STEPS):
            self.previous, self.running = dict(self.running), dict(upd.target)
            self._report_state("probation")
            upd.step += 1
            delay = self.cfg.probation_s
        else:
            if upd.outcome == "rollback":
                self.running = self.previous
                self._finish("rolled_back", "probation_failed")
            else:
                self._finish("committed", None)
            return
        self.hub.call_later(delay, lambda: self._ota_step(gen))

    def _report_state(self, state: str) -> None:
        if self.update is not None:
            self.update.since = time.time()
        self._publish_reported(state)

    def _finish(self, state: str, error: str | None) -> None:
        self._last_error = error
        self._report_state(state)
        self.update = None
        if state == "committed":  # a new birth carries the new versions
            self._publish(self.topics.status, self._status(DeviceState.ONLINE), 1, True, "status")

    def _publish_reported(self, state: str | None = None) -> None:
        upd, update = self.update, None
        if upd is not None and state is not None:
            update = {"state": state, "target": upd.target, "since": upd.since,
                      "error": self._last_error}  # fmt: skip
        payload = reported_payload(self.id, self.running, update, self._last_error)
        self._publish(self.topics.reported, payload, 1, True, "reported")

    def _on_command(self, name: str, data: bytes, props: Any) -> None:
        try:
            req = parse_payload(CommandRequest, data, MAX_DESIRED_BYTES)
            code, rid = (
                (CommandCode.OK if name == "ping" else CommandCode.UNSUPPORTED),
                req.request_id,
            )
        except PayloadRejectedError:
            code, rid = CommandCode.INVALID, None
        resp = CommandResponse(
            device_id=self.id, command=name, request_id=rid, code=code, timestamp=time.time(),
            result={"pong": True} if code is CommandCode.OK else {},
        ).to_json()  # fmt: skip
        topic = getattr(props, "ResponseTopic", None)
        out = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        if corr := getattr(props, "CorrelationData", None):
            out.CorrelationData = corr
        if not topic or not self.topics.owns(topic):
            topic = self.topics.response(name)
        if self.connected:
            self.client.publish(topic, resp, 1, False, properties=out)
            self.sent["response"] += 1
