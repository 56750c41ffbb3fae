"""How the agent gets its inference backends: one plain backend, or a degradation ladder.

- No `ladder` in the config and an ONNX Runtime backend: one session per worker.
- A `ladder` (or a `tensorrt` backend, which always gets ONNX Runtime CPU below it):
  a DegradingBackend per worker, TensorRT rungs opened from the engine cache only.
  Engines are built by a background thread (`engine-build`) so a build never blocks
  serving; the ladder climbs back to the TensorRT rung once the engine is cached.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from agent.config import AgentConfig, OnnxRuntimeBackendConfig
from agent.config.ladder import LadderConfig
from agent.config.tensorrt import TensorRTBackendConfig
from agent.inference.backend import Backend
from agent.inference.errors import BackendError
from agent.inference.ladder import ChangeCallback, build_ladder
from agent.inference.model import ModelFolder
from agent.inference.onnxrt import create_backend
from agent.inference.tensorrt.availability import probe
from agent.inference.tensorrt.engines import create_tensorrt_backend, ensure_engine

log = logging.getLogger(__name__)

BackendFactory = Callable[[ModelFolder, str], Backend]
"""(model, worker label) -> a backend owned by that worker."""


def ladder_config(cfg: AgentConfig) -> LadderConfig | None:
    """The ladder to run, or None for a single plain backend."""
    if cfg.ladder is not None and cfg.ladder.enabled:
        return cfg.ladder
    if isinstance(cfg.backend, TensorRTBackendConfig):
        cpu = OnnxRuntimeBackendConfig(type="onnxruntime")
        return LadderConfig(rungs=[cfg.backend, cpu])
    return None


def worker_count(cfg: AgentConfig) -> int:
    """CPU sessions scale with workers; a GPU (one context, one stream) gets one thread."""
    ladder = ladder_config(cfg)
    rungs = ladder.rungs if ladder is not None else [cfg.backend]
    gpu = any(
        isinstance(r, TensorRTBackendConfig) or r.providers[:1] != ["CPUExecutionProvider"]
        for r in rungs
    )
    if gpu:
        return 1
    return cfg.backend.workers if isinstance(cfg.backend, OnnxRuntimeBackendConfig) else 1


def _tensorrt_rung(state_dir: Path, rung: TensorRTBackendConfig, model: ModelFolder) -> Backend:
    return create_tensorrt_backend(rung, model, state_dir=state_dir, allow_build=False)


def backend_factory(cfg: AgentConfig, on_change: Callable[[str], ChangeCallback]) -> BackendFactory:
    """The factory the composition root calls once per worker (and again on a model swap)."""
    ladder = ladder_config(cfg)
    if ladder is None:
        plain = cfg.backend
        if not isinstance(plain, OnnxRuntimeBackendConfig):  # ladder_config wraps tensorrt
            raise TypeError(f"backend {plain.type} needs a ladder")
        return lambda model, _label: create_backend(plain, model)
    builders = {"tensorrt": functools.partial(_tensorrt_rung, cfg.device.state_dir)}
    return lambda model, label: build_ladder(
        ladder, model, on_change=on_change(label), builders=builders, label=label
    )


def start_engine_builds(cfg: AgentConfig, model: ModelFolder) -> threading.Thread | None:
    """Build missing TensorRT engines for `model` off the serving path (None: nothing to do)."""
    ladder = ladder_config(cfg)
    rungs = [r for r in (ladder.rungs if ladder else []) if isinstance(r, TensorRTBackendConfig)]
    if not rungs:
        return None

    def build() -> None:
        avail = probe()
        if not avail.ok:
            log.warning("tensorrt engine build skipped reason=%s", avail.reason)
            return
        for rung in rungs:
            try:
                ensure_engine(rung, model, avail, state_dir=cfg.device.state_dir)
            except BackendError as exc:
                log.error("tensorrt engine build failed model=%s error=%s", model.path, exc)

    thread = threading.Thread(target=build, name="engine-build", daemon=True)
    thread.start()
    return thread
