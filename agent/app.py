"""Composition root: builds the pipeline from a config, starts and stops it in order.

    cameras (ingest threads) -> FrameHub (one-slot mailboxes) -> inference workers
        -> CameraLane per camera (reorder, track, rules) -> EventDispatcher -> sinks

Side channels: the supervisor (heartbeats, systemd watchdog, drift checks, resource
guard), system events (camera offline, drift), the MQTT publisher (health, events).

Start order: sinks (MQTT connects), inference workers (after a warm-up inference),
READY=1, cameras, supervisor.
Stop order: STOPPING=1, supervisor and cameras, hub, workers, lanes (open episodes
end), sinks (the MQTT outbox flushes what it can; the rest waits for the next start).
Nothing else in the agent constructs these objects.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import AgentConfig, CameraConfig, parse_config
from agent.dispatch import EventDispatcher, build_sinks
from agent.health.drift import DriftMonitor
from agent.health.periodic import PeriodicWork
from agent.health.prometheus import MetricsServer
from agent.health.report import RunSummary, camera_health, camera_summary
from agent.health.sdnotify import Notifier, watchdog_interval_s
from agent.health.supervisor import Supervisor
from agent.health.system_events import SystemEvents
from agent.inference.detector import Detector
from agent.inference.factory import (
    BackendFactory,
    backend_factory,
    start_engine_builds,
    worker_count,
)
from agent.inference.ladder import ChangeCallback, DegradingBackend, LadderCode
from agent.inference.model import ModelFolder, load_model_folder
from agent.ingest.camera import CameraState, CameraWorker
from agent.ingest.mailbox import FrameHub
from agent.lane import CameraLane, SnapshotPolicy
from agent.ota.manifest import load_public_key
from agent.ota.staging import active_model_path
from agent.ota.updater import OtaUpdater
from agent.outputs.base import EventSink
from agent.outputs.snapshot import SnapshotStore
from agent.publish import MqttPublisher
from agent.publish.homeassistant import discovery_from_config
from agent.rules.engine import RuleEngine
from agent.state import next_boot_id
from agent.tracking.bytetrack import ByteTracker
from agent.workers import InferenceWorker

log = logging.getLogger(__name__)

_TERMINAL = {CameraState.FINISHED, CameraState.FAILED}
_OFFLINE = {CameraState.RECONNECTING, CameraState.STALLED, CameraState.FAILED}


class Agent:
    """The running agent. `start()`, then `wait()` until done or `stop()`; then `close()`."""

    def __init__(
        self,
        cfg: AgentConfig,
        *,
        max_frames: int | None = None,
        extra_sinks: list[EventSink] | None = None,
        backends: BackendFactory | None = None,
        notifier: Notifier | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self._started = 0.0
        self.boot_id = next_boot_id(cfg.device.state_dir)
        self.config_path = config_path
        self.restart_requested = False
        model_path = active_model_path(cfg.device.state_dir, cfg.model.path)  # OTA's, if any
        self.model = load_model_folder(model_path, verify_sha256=cfg.model.verify_sha256)
        self._workers_n = worker_count(cfg)
        self._make_backend = backends or backend_factory(cfg, self._ladder_callback)
        self._swap_lock = threading.Lock()
        self.detectors = self._make_detectors(self.model)
        self.notifier = notifier or Notifier()
        self.publisher = self._make_publisher()
        sinks = build_sinks(cfg) + list(extra_sinks or [])
        if self.publisher is not None:
            sinks.append(self.publisher)
        self.dispatcher = EventDispatcher(sinks)
        self.metrics = self._make_metrics()
        self.system_events = SystemEvents(cfg.device.id, self.boot_id, self.dispatcher.emit)
        self.hub = FrameHub()
        self.snapshots: SnapshotStore | None = None  # one store (one budget) for all cameras
        self._live: set[str] = set()
        cameras = [c for c in cfg.cameras if c.enabled]
        self.lanes = {c.id: self._make_lane(c, max_frames) for c in cameras}
        self.camera_states: dict[str, CameraState] = {c.id: CameraState.CONNECTING for c in cameras}
        self.cameras = [self._make_camera(c) for c in cameras]
        self.workers = [
            InferenceWorker(i, hub=self.hub, detector=det, lanes=self.lanes, stop=self.stop_event)
            for i, det in enumerate(self.detectors)
        ]
        self.periodic = PeriodicWork(
            cfg,
            hub=self.hub,
            lanes=self.lanes,
            cameras=[c for c in self.cameras if c.camera_id in self._live],
            workers=self.workers,
            ladders=self._ladders,
            system_events=self.system_events,
        )
        self._warm = False
        self.supervisor = self._make_supervisor()
        self.ota = self._make_ota()

    def _make_detectors(self, model: ModelFolder) -> list[Detector]:
        """One detector (own backend session) per inference worker."""
        return [
            Detector(
                model,
                self._make_backend(model, f"infer-{i}"),
                score_threshold=self.cfg.model.score_threshold,
                nms_threshold=self.cfg.model.nms_threshold,
            )
            for i in range(self._workers_n)
        ]

    def current_model(self) -> ModelFolder:
        return self.model

    def swap_model(self, model: ModelFolder) -> None:
        """Serve `model` from the next frame on, without a restart (OTA activation).

        The new sessions are built and warmed up while the old model keeps serving;
        then each worker's detector reference is replaced, which a worker reads once
        per frame, so no frame is lost and none sees a mix. Rules are rebuilt only if
        the labels changed (their open episodes end first). The old sessions are
        released by reference counting once the last in-flight frame finishes.
        """
        detectors = self._make_detectors(model)
        for det in detectors:
            det.warm_up()
        with self._swap_lock:
            relabel = tuple(model.manifest.labels) != tuple(self.model.manifest.labels)
            for worker, det in zip(self.workers, detectors, strict=True):
                worker.detector = det
            self.detectors = detectors
            self.model = model
            if relabel:
                for cam in self.cfg.cameras:
                    if cam.id in self.lanes:
                        self.lanes[cam.id].replace_rules(self._make_rules(cam))
        start_engine_builds(self.cfg, model)  # TensorRT rungs climb to it once it is built
        log.info(
            "model swapped model=%s@%s relabelled=%s",
            model.manifest.name,
            model.manifest.version,
            relabel,
        )

    def _make_rules(self, cam: CameraConfig) -> RuleEngine:
        return RuleEngine(
            self.cfg.device.id, self.boot_id, cam.id, cam.rules, self.model.manifest.labels
        )

    def _make_publisher(self) -> MqttPublisher | None:
        if self.cfg.mqtt is None:
            return None

        versions = {
            "agent": __version__,
            "model": f"{self.model.manifest.name}@{self.model.manifest.version}",
            "config": str(self.cfg.schema_version),
        }
        publisher = MqttPublisher(
            self.cfg.mqtt, self.cfg.device.id, self.cfg.device.state_dir, versions, self.health
        )
        publisher.register_command("rebaseline", self._cmd_rebaseline)
        publisher.set_discovery(discovery_from_config(self.cfg, versions))
        return publisher

    def _make_ota(self) -> OtaUpdater | None:
        ota, publisher = self.cfg.ota, self.publisher
        if not ota.enabled or publisher is None or ota.public_key is None:
            return None
        updater = OtaUpdater(
            ota,
            self.cfg.device.state_dir,
            load_public_key(ota.public_key),
            self,
            publisher.publish_reported,
            self._ota_probe,
            config_applier=self,
            base_config=self.config_path,
            backend_factory=lambda m: self._make_backend(m, "ota-validate"),
        )
        publisher.on_desired = updater.on_desired
        return updater

    def _ota_probe(self) -> dict[str, Any]:
        """Cumulative counters (and current fps) that OTA probation watches."""
        lanes = self.lanes.values()
        return {
            "frames": sum(lane.frames_processed for lane in lanes),
            "detections": sum(lane.detections for lane in lanes),
            "inference_errors": sum(w.failures for w in self.workers),
            "fps": sum(lane.fps() for lane in lanes),
        }

    def apply_config(self, text: str) -> str:
        """OTA config activation: rules of existing cameras live, anything else by restart.

        The text is validated first with the same models the controller used; nothing is
        applied when it is invalid. A restart is a clean exit with status 75 that
        systemd (Restart=always) turns into a start on the new active config.
        """
        base = self.config_path.resolve().parent if self.config_path is not None else None
        new = parse_config(text, "ota config", base)
        same_except_rules = new.model_copy(
            update={"cameras": [c.model_copy(update={"rules": []}) for c in new.cameras]}
        ) == self.cfg.model_copy(
            update={"cameras": [c.model_copy(update={"rules": []}) for c in self.cfg.cameras]}
        )
        if same_except_rules:
            for cam in new.cameras:
                if cam.id in self.lanes:
                    self.lanes[cam.id].replace_rules(self._make_rules(cam))
            self.cfg = new
            log.info("config applied live rules=%d", sum(len(c.rules) for c in new.cameras))
            return "live"
        log.warning("config needs a restart: stopping cleanly so systemd starts the new one")
        self.restart_requested = True
        threading.Timer(1.0, self.stop_event.set).start()
        return "restart"

    def _make_metrics(self) -> MetricsServer | None:
        if not self.cfg.metrics.enabled:
            return None
        publisher = self.publisher
        return MetricsServer(
            self.cfg.metrics,
            collect=self.health,
            publisher_stats=publisher.stats if publisher is not None else None,
            info={"device": self.cfg.device.id, "agent": __version__},
        )

    def _cmd_rebaseline(self, _request: object) -> dict[str, Any]:
        for lane in self.lanes.values():
            if lane.drift is not None:
                lane.drift.rebaseline()
        return {"rebaselined": sorted(self.lanes)}

    def _make_supervisor(self) -> Supervisor:
        return Supervisor(
            notifier=self.notifier,
            stop=self.stop_event,
            heartbeats=self.heartbeats,
            status=self.status_line,
            stage_timeout_s=self.cfg.supervisor.stage_timeout_s,
            watchdog_interval_s=watchdog_interval_s() or self.cfg.supervisor.watchdog_interval_s,
            jobs=self.periodic.jobs(),
        )

    def _make_lane(self, cam: CameraConfig, max_frames: int | None) -> CameraLane:
        snaps = self.cfg.outputs.snapshots
        policy = None
        if snaps is not None:
            store = self.snapshots or SnapshotStore(snaps.dir, snaps.max_files, snaps.max_bytes)
            self.snapshots = store
            policy = SnapshotPolicy(store, snaps.max_width, snaps.jpeg_quality)
        drift = DriftMonitor(self.cfg.drift, cam.id) if self.cfg.drift.enabled else None
        return CameraLane(
            cam.id,
            ByteTracker(self.cfg.tracker),
            self._make_rules(cam),
            self.dispatcher.emit,
            snapshots=policy,
            max_frames=max_frames,
            drift=drift,
        )

    def _make_camera(self, cam: CameraConfig) -> CameraWorker:
        live = not (cam.source.type == "file" and not cam.source.pace)
        self.hub.register(cam.id, "latest" if live else "block")
        if live:
            self._live.add(cam.id)
        return CameraWorker(cam, self.hub, self.stop_event, on_state=self._on_camera_state)

    def _on_camera_state(self, camera_id: str, state: CameraState, reason: str) -> None:
        self.camera_states[camera_id] = state
        level = logging.WARNING if state in _OFFLINE else logging.INFO
        log.log(level, "camera state camera=%s state=%s reason=%s", camera_id, state.value, reason)
        attrs = {"state": state.value, "reason": reason}
        if state in _OFFLINE:
            self.system_events.raise_(camera_id, "camera-offline", "camera", attrs)
        elif state is CameraState.STREAMING:
            self.system_events.clear(camera_id, "camera-offline", "camera", attrs)

    def _ladder_callback(self, label: str) -> ChangeCallback:
        """Backend rung changes become a `backend-degraded.<worker>` condition (once each)."""
        rule = f"backend-degraded.{label}"

        def changed(old: str | None, new: str | None, code: LadderCode, detail: str) -> None:
            attrs = {"from": old, "to": new, "code": code.value, "detail": detail}
            log.warning("backend rung worker=%s from=%s to=%s code=%s", label, old, new, code.value)
            ladder = self._ladders().get(label)
            degraded = ladder.mode.degraded if ladder is not None else code is not LadderCode.OK
            if new is None or degraded:
                self.system_events.raise_("device", rule, "backend", attrs)
            else:
                self.system_events.clear("device", rule, "backend", attrs)

        return changed

    def _ladders(self) -> dict[str, DegradingBackend]:
        detectors = getattr(self, "detectors", [])
        return {
            f"infer-{i}": d.backend
            for i, d in enumerate(detectors)
            if isinstance(d.backend, DegradingBackend)
        }

    def heartbeats(self) -> dict[str, float]:
        """Last beat (monotonic) of each essential stage; a dead live camera thread is 0."""
        beats = {w.name: w.last_beat for w in self.workers}
        now = time.monotonic()
        for camera in self.cameras:
            terminal = self.camera_states.get(camera.camera_id) in _TERMINAL
            beats[f"camera-{camera.camera_id}"] = now if terminal or camera.is_alive() else 0.0
        return beats

    def status_line(self) -> str:
        states = ",".join(f"{cid}={s.value}" for cid, s in self.camera_states.items())
        processed = sum(lane.frames_processed for lane in self.lanes.values())
        return f"cameras {states}; frames {processed}; events {self.dispatcher.emitted}"

    def warm_up(self) -> None:
        """One inference on every worker's session (idempotent; `start` calls it).

        Proves each session runs before any camera opens, and the first frames then meet
        warm sessions (a session's first run plans its memory: several times a normal one).
        """
        if self._warm:
            return
        for det in self.detectors:
            det.warm_up()
        self._warm = True

    def start(self) -> None:
        self._started = time.monotonic()
        if self.metrics is not None:
            self.metrics.start()  # a busy port fails the start before any camera opens
        # READY semantics: the first inference must succeed before any camera opens.
        self.warm_up()
        if self.publisher is not None:
            self.publisher.start()
        for worker in self.workers:
            worker.start()
        self.notifier.ready(f"model {self.model.manifest.name} loaded; starting cameras")
        for camera in self.cameras:
            camera.start()
        self.supervisor.start()
        start_engine_builds(self.cfg, self.model)
        if self.ota is not None:
            self.ota.start()  # after READY: recovers an interrupted update first
        log.info(
            "agent started device=%s boot=%d cameras=%d workers=%d model=%s@%s",
            self.cfg.device.id,
            self.boot_id,
            len(self.cameras),
            len(self.workers),
            self.model.manifest.name,
            self.model.manifest.version,
        )

    def _lane_done(self, camera_id: str) -> bool:
        lane = self.lanes[camera_id]
        if lane.reached_max_frames:
            return True
        if self.camera_states.get(camera_id) not in _TERMINAL:
            return False
        stats = self.hub.stats()[camera_id]
        return stats["pending"] == 0 and lane.tickets_done >= stats["taken"]

    def finished(self) -> bool:
        return all(self._lane_done(cid) for cid in self.lanes)

    def wait(self, poll_s: float = 0.1) -> None:
        """Block until every camera is done (file ended, max frames, failed) or stop()."""
        while not self.stop_event.wait(poll_s):
            if self.finished():
                break

    def stop(self) -> None:
        self.stop_event.set()

    def close(self, join_timeout_s: float = 5.0) -> RunSummary:
        """Stop everything in order, end open episodes, close sinks; bounded in time."""
        self.stop_event.set()
        self.notifier.stopping()
        if self.metrics is not None:
            self.metrics.stop()
        if self.ota is not None:
            self.ota.stop(timeout_s=max(1.0, join_timeout_s / 2))
        deadline = time.monotonic() + join_timeout_s
        if self.supervisor.is_alive():
            self.supervisor.join(timeout=1.0)
        for camera in self.cameras:
            camera.stop(timeout_s=max(0.1, deadline - time.monotonic()))
        self.hub.close()
        for worker in self.workers:
            if worker.is_alive():  # never started: a failed start, or closed unstarted
                worker.join(timeout=max(0.1, deadline - time.monotonic()))
        for lane in self.lanes.values():
            lane.close()
        self.system_events.close_all("shutdown")
        self.dispatcher.close()
        for det in self.detectors:
            det.close()
        self.notifier.close()
        return self.summary()

    def health(self) -> dict[str, Any]:
        """Sections of the periodic health report (docs/protocol.md); called off-thread."""
        hub = self.hub.stats()
        ladders = self._ladders()
        return {
            "cameras": {
                c.camera_id: camera_health(
                    c, self.lanes[c.camera_id], self.camera_states[c.camera_id], hub
                )
                for c in self.cameras
            },
            "inference": {
                "backend": self.detectors[0].backend.name,
                "degraded": any(lad.mode.degraded for lad in ladders.values()),
                "ladders": {k: lad.stats() for k, lad in ladders.items()},
                "latency_ms": self.workers[0].inference_latency.percentiles_ms(),
                "workers": len(self.workers),
                "failures": sum(w.failures for w in self.workers),
                "wedged": self.supervisor.wedged,
            },
            "snapshots": None if self.snapshots is None else self.snapshots.stats(),
            **self.periodic.health(),
        }

    def summary(self) -> RunSummary:
        hub = self.hub.stats()
        return RunSummary(
            boot_id=self.boot_id,
            duration_s=round(time.monotonic() - self._started, 3) if self._started else 0.0,
            events=self.dispatcher.emitted,
            sink_failures=self.dispatcher.failures,
            cameras={
                c.camera_id: camera_summary(
                    c, self.lanes[c.camera_id], self.camera_states[c.camera_id], hub
                )
                for c in self.cameras
            },
        )
