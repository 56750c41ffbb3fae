"""The OTA updater: follows the desired state on its own `ota` thread.

`on_desired` (called on the MQTT thread) only stores the newest desired state and
wakes the thread. The thread recovers any update a crash interrupted, then, per
kind (model first, then config, one update at a time), plans (state.plan) and steps
the persisted state machine, reporting every transition through `reporter` (wire
it to `MqttPublisher.publish_reported`). Long steps (download, validation) run on
this thread, never on the inference or MQTT threads; waits are on the stop event.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.config.inference import OnnxRuntimeBackendConfig
from agent.config.ota import OtaConfig
from agent.inference.backend import Backend
from agent.inference.model import ModelFolder
from agent.ota.download import Artifact, Downloader, fetch_small
from agent.ota.errors import OtaError, ReasonCode
from agent.ota.handlers import ConfigApplier, ConfigHandler, ModelHandler, ModelSwapper
from agent.ota.manifest import (
    MAX_ENVELOPE_BYTES,
    Manifest,
    ManifestError,
    ManifestPolicy,
    SequenceStore,
    clock_synchronized,
)
from agent.ota.probation import HealthSample, Verdict, judge
from agent.ota.staging import ConfigStore, ModelStore
from agent.ota.state import Plan, StateFile, UpdateRecord, UpdateState, plan
from agent.ota.validate import BackendFactory
from agent.protocol import ArtifactRef, DesiredState

log = logging.getLogger(__name__)

Reporter = Callable[[dict[str, Any]], None]
HealthProbe = Callable[[], Mapping[str, Any]]
Handler = ModelHandler | ConfigHandler
_IDLE_S = 5.0
PLANNED_RESTART = "applied restart"
"""Probation detail of a config that is applied by a clean restart (ConfigApplier)."""
_S = UpdateState


def _default_backend(model: ModelFolder) -> Backend:
    from agent.inference.onnxrt import create_backend  # noqa: PLC0415 - ORT only when used

    return create_backend(OnnxRuntimeBackendConfig(type="onnxruntime", workers=1), model)


class OtaUpdater:
    """Desired state -> verified, staged, validated, activated, probated, committed."""

    def __init__(  # noqa: PLR0917 - the signature the composition root wires
        self,
        cfg: OtaConfig,
        state_dir: Path,
        public_key: Ed25519PublicKey,
        swapper: ModelSwapper,
        reporter: Reporter,
        health_probe: HealthProbe,
        clock: Callable[[], float] = time.time,
        *,
        config_applier: ConfigApplier | None = None,
        base_config: Path | None = None,
        backend_factory: BackendFactory | None = None,
        clock_synced: Callable[[], bool] = clock_synchronized,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._mono = monotonic
        self._reporter = reporter
        self._swapper = swapper
        self._probe = health_probe
        ota_dir = state_dir / "ota"
        self._policy = ManifestPolicy(
            public_key, SequenceStore(ota_dir / "sequences.json"), clock, clock_synced
        )
        self._downloader = Downloader(
            ota_dir / "downloads",
            timeout_s=cfg.download_timeout_s,
            ca_file=cfg.ca_file,
            min_free_bytes=cfg.min_free_bytes,
        )
        self._handlers: dict[str, Handler] = {
            "model": ModelHandler(
                cfg, ModelStore(state_dir / "models"), swapper, backend_factory or _default_backend
            )
        }
        if config_applier is not None:
            self._handlers["config"] = ConfigHandler(
                ConfigStore(state_dir / "configs"), config_applier, base_config
            )
        self._files = {k: StateFile(ota_dir / f"{k}.json") for k in self._handlers}
        self._records: dict[str, UpdateRecord | None] = dict.fromkeys(self._handlers)
        self._lock = threading.Lock()
        self._desired: DesiredState | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry: dict[str, tuple[int, float]] = {}  # kind -> (attempts, not before)
        self._watch: dict[str, tuple[HealthSample, float]] = {}  # kind -> (start, mono)
        self._progress: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Recover interrupted updates (synchronously), then start the `ota` thread."""
        if self._thread is not None:
            raise RuntimeError("updater already started")
        for kind in self._handlers:
            self._recover(kind)
        self._report()
        self._thread = threading.Thread(target=self._run, name="ota", daemon=True)
        self._thread.start()

    def on_desired(self, desired: DesiredState | None) -> None:
        """The newest desired state (MQTT thread): store and wake, nothing else."""
        with self._lock:
            self._desired = desired
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def record(self, kind: str = "model") -> UpdateRecord | None:
        return self._records.get(kind)

    def status(self) -> dict[str, Any]:
        """The `reported` payload: versions, the latest update and each kind's record."""
        records = {k: r for k, r in self._records.items() if r is not None}
        latest = max(records.values(), key=lambda r: r.updated_at, default=None)
        current = self._swapper.current_model().manifest
        versions = {"model": f"{current.name}@{current.version}"}
        if "config" in self._handlers:
            versions["config"] = self._handlers["config"].running_version() or "provisioned"
        updates = {k: self._summary(k, r) for k, r in records.items()}
        return {
            "versions": versions,
            "update": None if latest is None else updates[latest.kind],
            "updates": updates,
        }

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                wait = self._tick()
            except Exception:  # never let one bad step kill the updater thread
                log.exception("ota step error")
                wait = _IDLE_S
            self._wake.wait(wait)
            self._wake.clear()

    def _tick(self) -> float:
        """Advance each kind in turn; a kind with an unfinished update blocks the next."""
        with self._lock:
            desired = self._desired
        busy = [k for k, r in self._records.items() if r is not None and not r.state.terminal]
        for kind in busy or list(self._handlers):
            ref = None if desired is None else getattr(desired, kind)
            wait = self._advance(kind, ref)
            rec = self._records[kind]
            if rec is not None and not rec.state.terminal:
                return wait
        return _IDLE_S

    def _advance(self, kind: str, ref: ArtifactRef | None) -> float:
        rec = self._records[kind]
        key = None if ref is None else (ref.manifest_url, ref.sequence, ref.version)
        decision = plan(key, rec, self._handlers[kind].running_version())
        if decision is Plan.SUPERSEDE and rec is not None:
            self._finish(kind, rec, _S.FAILED, ReasonCode.SUPERSEDED, f"superseded by {key}")
        if decision in (Plan.START, Plan.SUPERSEDE) and ref is not None:
            now = self._clock()
            self._save(
                UpdateRecord(kind, ref.version, ref.manifest_url, ref.sequence,
                             started_at=now, updated_at=now)
            )  # fmt: skip
            self._retry.pop(kind, None)
            log.info("update start kind=%s version=%s sequence=%d", kind, ref.version, ref.sequence)
        return self._drive(kind)

    def _drive(self, kind: str) -> float:
        """Step until terminal, a wait (probation, retry backoff) or stop."""
        while not self._stop.is_set():
            rec = self._records[kind]
            if rec is None or rec.state.terminal:
                return _IDLE_S
            attempts, not_before = self._retry.get(kind, (0, 0.0))
            if self._mono() < not_before:
                return not_before - self._mono()
            try:
                wait = self._step(kind, rec)
            except OtaError as exc:
                wait = self._failed_step(kind, rec, exc, attempts)
            if wait is not None:
                return wait
        return _IDLE_S

    def _failed_step(
        self, kind: str, rec: UpdateRecord, exc: OtaError, attempts: int
    ) -> float | None:
        if self._stop.is_set():
            return 0.0  # interrupted by shutdown: resume on the next start
        if exc.retriable:
            # Transient: retry without limit (capped backoff, jitter) so that a device that
            # was offline still converges; a newer desired ref supersedes it meanwhile.
            delay = min(self._cfg.retry_max_s, self._cfg.retry_initial_s * 2 ** min(attempts, 20))
            delay *= secrets.SystemRandom().uniform(0.5, 1.0)
            self._retry[kind] = (attempts + 1, self._mono() + delay)
            log.warning("update step retry kind=%s state=%s attempt=%d wait_s=%.1f error=%s",
                        kind, rec.state.value, attempts + 1, delay, exc)  # fmt: skip
            state = _S.DOWNLOADING if exc.reason is ReasonCode.SHA_MISMATCH else rec.state
            self._save(rec.to(state, self._clock(),
                              detail=f"retry {attempts + 1}: {exc}"))  # fmt: skip
            return None
        if rec.state.live:
            self._rollback(kind, rec, exc.reason, exc.detail)
        else:
            self._finish(kind, rec, _S.FAILED, exc.reason, exc.detail)
        return None

    # ------------------------------------------------------------------ steps
    def _step(self, kind: str, rec: UpdateRecord) -> float | None:
        """Do the work of `rec.state`; return a wait in seconds, or None to step again."""
        h = self._handlers[kind]
        if rec.state is _S.PENDING:
            m = self._verified_manifest(kind, rec)
            self._save(rec.to(
                _S.DOWNLOADING, self._clock(), manifest=m.to_dict(),
                previous_version=h.running_version(),
                previous_path=None if h.current_path() is None else str(h.current_path()),
            ))  # fmt: skip
        elif rec.state is _S.DOWNLOADING:
            m = self._manifest(rec)
            self._downloader.fetch(
                _artifact(m), extra_bytes=h.extra_bytes(m), stop=self._stop,
                progress=lambda done, total: self._on_progress(kind, done, total),
            )  # fmt: skip
            self._save(rec.to(_S.VERIFYING, self._clock()))
        elif rec.state is _S.VERIFYING:
            self._downloader.verify(_artifact(self._manifest(rec)))
            self._save(rec.to(_S.STAGING, self._clock()))
        elif rec.state is _S.STAGING:
            m = self._manifest(rec)
            staged = h.stage(self._downloader.final_path(_artifact(m)), m)
            self._save(rec.to(_S.VALIDATING, self._clock(), staged_path=str(staged)))
        elif rec.state is _S.VALIDATING:
            detail = h.validate(Path(str(rec.staged_path)), self._manifest(rec))
            baseline = HealthSample.of(self._probe()).baseline()
            self._save(rec.to(_S.ACTIVATING, self._clock(), baseline=baseline, detail=detail))
        elif rec.state is _S.ACTIVATING:
            mode = h.activate(Path(str(rec.staged_path)), _path(rec.previous_path))
            self._watch.pop(kind, None)
            self._save(rec.to(_S.PROBATION, self._clock(), detail=f"applied {mode}"))
        elif rec.state is _S.PROBATION:
            return self._probation(kind, rec)
        self._retry.pop(kind, None)
        return None

    def _verified_manifest(self, kind: str, rec: UpdateRecord) -> Manifest:
        data = fetch_small(
            rec.manifest_url, MAX_ENVELOPE_BYTES, self._cfg.download_timeout_s, self._cfg.ca_file
        )
        try:
            m = self._policy.verify(data, kind)
        except ManifestError as exc:
            raise OtaError(ReasonCode(exc.code.value), exc.detail) from exc
        if m.version != rec.version:
            raise OtaError(
                ReasonCode.MISMATCH, f"desired {rec.version}, signed manifest {m.version}"
            )
        if m.size > self._cfg.max_artifact_bytes:
            raise OtaError(ReasonCode.TOO_LARGE, f"{m.size} bytes > {self._cfg.max_artifact_bytes}")
        self._policy.accept(m)  # from here on this sequence is spent, whatever happens
        log.info("manifest accepted kind=%s name=%s version=%s sequence=%d",
                 kind, m.name, m.version, m.sequence)  # fmt: skip
        return m

    def _probation(self, kind: str, rec: UpdateRecord) -> float | None:
        sample = HealthSample.of(self._probe())
        start, t0 = self._watch.setdefault(kind, (sample, self._mono()))
        elapsed = self._mono() - t0
        j = judge(self._cfg.probation, rec.baseline, start, sample, elapsed)
        if j.verdict is Verdict.WATCHING:
            return min(self._cfg.probation.poll_s, max(self._cfg.probation.window_s - elapsed, 0))
        self._watch.pop(kind, None)
        if j.verdict is Verdict.FAILED and j.reason is not None:
            self._rollback(kind, rec, j.reason, j.detail)
        else:
            self._finish(kind, rec, _S.COMMITTED, None, f"probation passed after {elapsed:.1f}s")
            self._handlers[kind].commit()
        return None

    # ------------------------------------------------------------------ endings
    def _rollback(self, kind: str, rec: UpdateRecord, reason: ReasonCode, detail: str) -> None:
        """Persist the decision first, then switch back: a crash in between ends the same."""
        self._finish(kind, rec, _S.ROLLED_BACK, reason, detail, report=False)
        self._restore(kind, self._records[kind])
        self._report()  # once switched back: `versions` names the restored version

    def _restore(self, kind: str, rec: UpdateRecord | None) -> None:
        previous = None if rec is None else _path(rec.previous_path)
        if previous is None:
            log.error("rollback has no previous version kind=%s", kind)
            return
        try:
            self._handlers[kind].point_to(previous)
        except OtaError as exc:
            log.error("rollback switch failed kind=%s error=%s", kind, exc)

    def _finish(
        self,
        kind: str,
        rec: UpdateRecord,
        state: UpdateState,
        reason: ReasonCode | None,
        detail: str | None,
        *,
        report: bool = True,
    ) -> None:
        self._save(rec.to(state, self._clock(), reason=reason, detail=detail), report=False)
        self._retry.pop(kind, None)
        self._progress.pop(kind, None)
        if rec.manifest is not None:
            self._downloader.discard(_artifact(self._manifest(rec)))
        if report:
            self._report()
        level = logging.INFO if state is _S.COMMITTED else logging.WARNING
        log.log(level, "update %s kind=%s version=%s reason=%s detail=%s", state.value, kind,
                rec.version, None if reason is None else reason.value, detail)  # fmt: skip

    # ------------------------------------------------------------------ recovery
    def _recover(self, kind: str) -> None:
        rec = self._files[kind].load()
        self._records[kind] = rec
        if rec is None:
            return
        if rec.state.live and rec.detail == PLANNED_RESTART:
            # the restart a config activation asked for is not a crash: don't count it
            rec = rec.to(rec.state, self._clock(), detail="restarted as planned")
            self._save(rec)
            self._resume_live(kind, rec)
        elif rec.state.live:
            rec = rec.to(rec.state, self._clock(), restarts=rec.restarts + 1)
            self._save(rec)
            if rec.restarts > self._cfg.probation.crash_restarts:
                self._rollback(kind, rec, ReasonCode.CRASH_LOOP,
                               f"{rec.restarts} restarts while {rec.state.value}")  # fmt: skip
                return
            log.warning("resuming update after restart kind=%s state=%s restarts=%d",
                        kind, rec.state.value, rec.restarts)  # fmt: skip
            self._resume_live(kind, rec)
        elif rec.state is _S.ROLLED_BACK:
            self._restore(kind, rec)  # a crash may have come before the switch back
        elif rec.state is _S.COMMITTED and rec.staged_path is not None:
            self._ensure(kind, Path(rec.staged_path))

    def _resume_live(self, kind: str, rec: UpdateRecord) -> None:
        """Activating or probation after a restart: make sure the new version serves."""
        if rec.staged_path is None:
            return
        try:
            self._handlers[kind].point_to(Path(rec.staged_path))
        except OtaError as exc:
            self._rollback(kind, rec, exc.reason, exc.detail)
            return
        if rec.state is _S.ACTIVATING:
            self._save(rec.to(_S.PROBATION, self._clock(), detail="resumed after restart"))

    def _ensure(self, kind: str, target: Path) -> None:
        try:
            self._handlers[kind].point_to(target)
        except OtaError as exc:
            log.error("cannot restore committed version kind=%s error=%s", kind, exc)

    # ------------------------------------------------------------------ helpers
    def _save(self, rec: UpdateRecord, *, report: bool = True) -> None:
        self._files[rec.kind].save(rec)
        self._records[rec.kind] = rec
        if report:
            self._report()

    def _manifest(self, rec: UpdateRecord) -> Manifest:
        if rec.manifest is None:
            raise OtaError(ReasonCode.INTERNAL, f"{rec.state.value} without a manifest")
        return Manifest(**rec.manifest)

    def _on_progress(self, kind: str, done: int, total: int) -> None:
        self._progress[kind] = {"bytes": done, "total": total}
        self._report()

    def _summary(self, kind: str, rec: UpdateRecord) -> dict[str, Any]:
        out = rec.summary()
        if kind in self._progress and rec.state is _S.DOWNLOADING:
            out["progress"] = dict(self._progress[kind])
        return out

    def _report(self) -> None:
        try:
            self._reporter(self.status())
        except Exception:
            log.exception("reporting the update state failed")


def _artifact(m: Manifest) -> Artifact:
    return Artifact(m.url, m.size, m.sha256)


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


__all__ = ["HealthProbe", "OtaUpdater", "Reporter"]
