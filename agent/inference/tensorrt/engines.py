"""From a model folder to a running TensorRT backend: key, cache, build, load, check.

    create_tensorrt_backend(cfg, model)     what the degradation ladder calls
      -> probe()                            TensorRT, pycuda, a CUDA device? else
                                            BackendError("TensorRT unavailable: ...")
      -> ensure_engine()                    key -> cache HIT, or build + store
      -> TensorRTBackend(engine)            deserialise; refused -> invalidate, rebuild once
      -> check_io(manifest)                 shapes fit the model's family

`ensure_engine` is also what `edge-agent models build-engine` and OTA staging run,
off the serving path, so that the serving backend is only ever created from a
cached engine (`allow_build=False` raises `EngineNotReady` instead of blocking
start-up for minutes; the ladder serves with ONNX Runtime meanwhile).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from agent.config.tensorrt import TensorRTBackendConfig, engine_dir
from agent.inference.backend import Backend
from agent.inference.errors import BackendError
from agent.inference.model import ModelFolder, check_io
from agent.inference.tensorrt.availability import Availability, TensorRTUnavailable, probe
from agent.inference.tensorrt.backend import EngineLoadError, TensorRTBackend
from agent.inference.tensorrt.builder import BuildPlan, ProgressSink, build_engine, plan_build
from agent.inference.tensorrt.engine_cache import (
    EngineCache,
    EngineKey,
    EngineRecord,
    LookupStatus,
)
from agent.inference.tensorrt.onnx_facts import read_onnx_facts

log = logging.getLogger(__name__)


class EngineNotReady(BackendError):
    """No valid cached engine and building was not allowed here (build it off the serving path)."""


@dataclass(frozen=True, slots=True)
class EngineReady:
    key: EngineKey
    plan: BuildPlan
    record: EngineRecord
    path: Path
    engine: bytes
    built: bool
    """True when this call built the engine, False when it came from the cache."""


def _key(avail: Availability, cfg: TensorRTBackendConfig, plan: BuildPlan, sha: str) -> EngineKey:
    return EngineKey(
        onnx_sha256=sha,
        trt_version=avail.trt_version or "",
        compute_capability=avail.compute_capability or "",
        precision=plan.precision,
        max_batch=plan.input.max_batch,
        workspace_mb=cfg.workspace_mb,
        platform=avail.platform,
    )


def plan_for(
    cfg: TensorRTBackendConfig,
    model: ModelFolder,
    avail: Availability,
    expected_batch: int | None = None,
) -> tuple[EngineKey, BuildPlan, bytes]:
    """The cache key, the build plan and the ONNX bytes they were computed from."""
    facts, onnx = read_onnx_facts(model.onnx_path)
    inp = model.manifest.input
    plan = plan_build(
        avail.trt_version or "",
        cfg.precision,
        facts,
        cfg.max_batch,
        expected_batch=expected_batch,
        input_hw=(inp.height, inp.width),
    )
    return _key(avail, cfg, plan, facts.sha256), plan, onnx


def ensure_engine(
    cfg: TensorRTBackendConfig,
    model: ModelFolder,
    avail: Availability,
    *,
    state_dir: Path | None = None,
    allow_build: bool = True,
    sink: ProgressSink | None = None,
    expected_batch: int | None = None,
) -> EngineReady:
    """A checked engine for `model`: from the cache, or built now (allow_build) and stored."""
    key, plan, onnx = plan_for(cfg, model, avail, expected_batch)
    cache = EngineCache(engine_dir(cfg, state_dir))
    found, data = cache.load(key)
    hit = found.status is LookupStatus.HIT
    if hit and data is not None and found.record is not None and found.path is not None:
        return EngineReady(key, plan, found.record, found.path, data, built=False)
    log.info("engine cache status=%s reason=%s", found.status.value, found.reason)
    if found.status is LookupStatus.STALE:
        for old in cache.prune(key):
            log.info("engine pruned file=%s trt=%s", old.file, old.key.trt_version)
    elif found.status is LookupStatus.CORRUPT:
        cache.invalidate(key, found.reason)
    if not allow_build:
        name = f"{model.manifest.name}@{model.manifest.version}"
        raise EngineNotReady(
            f"no usable TensorRT engine for model {name} ({found.status.value}: {found.reason}); "
            "build it with 'edge-agent models build-engine'"
        )
    if sink is not None:
        sink(f"building engine ({found.status.value}: {found.reason})")
    result = build_engine(
        onnx,
        model.onnx_path,
        plan,
        workspace_mb=cfg.workspace_mb,
        budget_s=cfg.build_timeout_s,
        sink=sink,
    )
    record = cache.store(key, result.engine, result.build_s)
    return EngineReady(key, plan, record, cache.engine_path(key), result.engine, built=True)


def _load(cfg: TensorRTBackendConfig, ready: EngineReady) -> TensorRTBackend:
    label = f"tensorrt:{ready.plan.precision}"
    return TensorRTBackend(ready.engine, device_index=cfg.device_index, label=label)


def open_engine(
    cfg: TensorRTBackendConfig,
    model: ModelFolder,
    *,
    state_dir: Path | None = None,
    allow_build: bool = True,
    sink: ProgressSink | None = None,
    expected_batch: int | None = None,
) -> tuple[Backend, EngineReady]:
    """The backend and where its engine came from; see `create_tensorrt_backend`."""
    avail = probe(cfg.device_index)
    if not avail.ok:
        raise TensorRTUnavailable(avail.message())

    def ensure(build: bool) -> EngineReady:
        return ensure_engine(
            cfg,
            model,
            avail,
            state_dir=state_dir,
            allow_build=build,
            sink=sink,
            expected_batch=expected_batch,
        )

    ready = ensure(allow_build)
    try:
        backend = _load(cfg, ready)
    except EngineLoadError as exc:
        EngineCache(engine_dir(cfg, state_dir)).invalidate(ready.key, str(exc))
        if ready.built or not allow_build:
            raise
        ready = ensure(True)
        backend = _load(cfg, ready)
    try:
        m = model.manifest
        check_io(backend.io, m, f"model {m.name}@{m.version} (TensorRT engine)")
    except BaseException:
        backend.close()
        raise
    return backend, ready


def create_tensorrt_backend(
    cfg: TensorRTBackendConfig,
    model: ModelFolder,
    *,
    state_dir: Path | None = None,
    allow_build: bool = True,
) -> Backend:
    """A TensorRT backend for `model`, on the calling thread (which then owns it).

    Raises BackendError("TensorRT unavailable: <reason>") (`TensorRTUnavailable`) when
    tensorrt, pycuda or a CUDA device is missing, `EngineNotReady` when no engine is
    cached and `allow_build` is False, `EngineBuildError`/`BuildTimeoutError` when a
    build fails: every one a BackendError, so the ladder falls to ONNX Runtime.
    """
    backend, _ready = open_engine(cfg, model, state_dir=state_dir, allow_build=allow_build)
    return backend


__all__ = [
    "EngineNotReady",
    "EngineReady",
    "create_tensorrt_backend",
    "ensure_engine",
    "open_engine",
    "plan_for",
]
