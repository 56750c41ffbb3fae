"""What differs between a model update and a config update: staging, checks, switching.

The updater drives both through the same state machine; a handler does the
kind-specific work at each step. The running pipeline is reached only through two
small protocols the composition root implements:

- `ModelSwapper`: `swap_model(folder)` builds the new detectors and hands them to
  the inference workers between frames (cameras keep streaming); `current_model()`
  says what serves now.
- `ConfigApplier`: `apply_config(text)` applies an already validated config, live
  where it can (cameras, rules, thresholds) or by arranging a clean restart, and
  returns how (`"live"` or `"restart"`); it raises if it cannot, and must then leave
  the old config running (never a partial change).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from agent.config import ConfigError, parse_config
from agent.config.ota import OtaConfig
from agent.inference.errors import ModelError
from agent.inference.model import ModelFolder, load_model_folder
from agent.ota.errors import OtaError, ReasonCode
from agent.ota.manifest import Manifest
from agent.ota.staging import ConfigStore, ModelStore
from agent.ota.validate import BackendFactory, validate_model

log = logging.getLogger(__name__)


class ModelSwapper(Protocol):
    def swap_model(self, folder: ModelFolder) -> None:
        """Serve `folder` from the next frame on; raise if it cannot (the old one stays)."""
        ...

    def current_model(self) -> ModelFolder:
        """The model folder serving now."""
        ...


class ConfigApplier(Protocol):
    def apply_config(self, text: str) -> str:
        """Apply a validated config; return "live" or "restart"; raise to refuse it."""
        ...


def _same(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and a.resolve() == b.resolve()


class ModelHandler:
    kind = "model"

    def __init__(
        self,
        cfg: OtaConfig,
        store: ModelStore,
        swapper: ModelSwapper,
        backend_factory: BackendFactory,
    ) -> None:
        self._cfg = cfg
        self.store = store
        self._swapper = swapper
        self._backend_factory = backend_factory

    def running_version(self) -> str:
        return self._swapper.current_model().manifest.version

    def current_path(self) -> Path:
        return self._swapper.current_model().path

    def extra_bytes(self, m: Manifest) -> int:
        return m.size  # the tar is unpacked beside it

    def stage(self, artifact: Path, m: Manifest) -> Path:
        self.store.clean()
        return self.store.stage_archive(artifact, m.name, m.version, self._cfg.max_artifact_bytes)

    def validate(self, staged: Path, m: Manifest) -> str:
        report = validate_model(
            staged,
            m.name,
            m.version,
            backend_factory=self._backend_factory,
            latency_budget_ms=self._cfg.latency_budget_ms,
            runs=self._cfg.latency_runs,
        )
        return f"latency_ms_median={report.latency_ms_median:.1f}"

    def activate(self, staged: Path, previous: Path | None) -> str:
        self.store.pointers.activate(staged, previous)
        self._serve(staged)
        return "live"

    def point_to(self, target: Path) -> None:
        """Make `target` active and serving (rollback and recovery; idempotent)."""
        if not _same(self.store.pointers.active(), target):
            self.store.pointers.point_active(target)
        self._serve(target)

    def _serve(self, target: Path) -> None:
        if _same(self.current_path(), target):
            return
        try:
            folder = load_model_folder(target, verify_sha256=True, probe=True)
            self._swapper.swap_model(folder)
        except ModelError as exc:
            raise OtaError(ReasonCode.ACTIVATION_FAILED, str(exc)) from exc
        except Exception as exc:
            raise OtaError(
                ReasonCode.ACTIVATION_FAILED, f"swap failed: {type(exc).__name__}: {exc}"
            ) from exc

    def commit(self) -> None:
        self.store.prune(self._cfg.retention)


class ConfigHandler:
    kind = "config"

    def __init__(
        self, store: ConfigStore, applier: ConfigApplier, base_config: Path | None
    ) -> None:
        self.store = store
        self._applier = applier
        self._applied = store.pointers.active() or base_config

    def running_version(self) -> str | None:
        active = self.store.pointers.active()
        return None if active is None else active.stem

    def current_path(self) -> Path | None:
        return self._applied

    def extra_bytes(self, m: Manifest) -> int:
        return m.size

    @staticmethod
    def _read(path: Path) -> str:
        try:
            text = path.read_text(encoding="utf-8")
            parse_config(text, path.name)
        except (OSError, UnicodeDecodeError) as exc:
            raise OtaError(ReasonCode.INVALID_CONFIG, f"{path}: unreadable: {exc}") from exc
        except ConfigError as exc:
            raise OtaError(ReasonCode.INVALID_CONFIG, str(exc)) from exc
        return text

    def stage(self, artifact: Path, m: Manifest) -> Path:
        self.store.clean()
        return self.store.stage_text(m.version, self._read(artifact))

    def validate(self, staged: Path, m: Manifest) -> str:
        self._read(staged)
        return "config valid"

    def activate(self, staged: Path, previous: Path | None) -> str:
        text = self._read(staged)
        self.store.pointers.activate(staged, previous)
        mode = self._apply(text)
        self._applied = staged
        return mode

    def point_to(self, target: Path) -> None:
        if not _same(self.store.pointers.active(), target):
            self.store.pointers.point_active(target)
        if not _same(self._applied, target):
            self._apply(self._read(target))
            self._applied = target

    def _apply(self, text: str) -> str:
        try:
            return str(self._applier.apply_config(text))
        except Exception as exc:
            raise OtaError(
                ReasonCode.ACTIVATION_FAILED, f"config not applied: {type(exc).__name__}: {exc}"
            ) from exc

    def commit(self) -> None:
        return None


__all__ = ["ConfigApplier", "ConfigHandler", "ModelHandler", "ModelSwapper"]
