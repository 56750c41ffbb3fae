"""Build a TensorRT engine from ONNX on the device: a plan, a progress indicator, a time budget.

`plan_build` (pure) decides, from the TensorRT version, the requested precision and
the ONNX's own facts, how the network is created and which builder flags are set:

    TensorRT 8.6   network flag EXPLICIT_BATCH; BuilderFlag.FP16 for fp16;
                   BuilderFlag.INT8 only when the ONNX has Q/DQ nodes (explicit
                   quantisation: no calibrator, ever)
    TensorRT 10.x  explicit batch is implicit (flag ignored, not set); flags as 8.6
    TensorRT 11+   weak typing is gone (no FP16/INT8 flags): the network is strongly
                   typed, so the engine has the ONNX's own types. fp16 needs an FP16
                   ONNX made at staging time; an FP32 ONNX builds FP32, with a note.

The plan's `precision` label goes into the engine cache key, so an FP32 fallback
on TensorRT 11 never masquerades as an FP16 engine.

`build_engine` runs the build on the calling thread (callers keep it off the serving
path: OTA staging, `edge-agent models build-engine`, or a background thread while
the old backend serves). Progress: a `tensorrt.IProgressMonitor` (TensorRT >= 10)
reports phases and steps, and its `step_complete` returning False cancels a build
that ran past its budget; TensorRT 8.6 has no monitor, so a heartbeat thread logs
"still building" and an over-budget result is discarded. Either way a build over
budget raises `BuildTimeoutError`.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.inference.errors import BackendError
from agent.inference.tensorrt.availability import trt_major
from agent.inference.tensorrt.batching import InputPlan, select_profile
from agent.inference.tensorrt.onnx_facts import OnnxFacts

log = logging.getLogger(__name__)

MIN_TRT = (8, 6)
ProgressSink = Callable[[str], None]


class EngineBuildError(BackendError):
    """TensorRT could not parse the ONNX or build an engine from it (fatal for this model)."""


class BuildTimeoutError(EngineBuildError):
    """The build ran past its time budget and was cancelled or discarded."""


def version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.strip().split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class BuildPlan:
    trt_version: str
    network_flags: tuple[str, ...]
    """Names of `tensorrt.NetworkDefinitionCreationFlag` members to set."""
    builder_flags: tuple[str, ...]
    """Names of `tensorrt.BuilderFlag` members to set."""
    cleared_flags: tuple[str, ...]
    """Names of `tensorrt.BuilderFlag` members to clear (TF32 for a strict fp32 engine)."""
    precision: str
    """Effective precision label (cache key): fp32, fp16, fp32+qdq, fp16+qdq."""
    strongly_typed: bool
    input: InputPlan
    notes: tuple[str, ...] = ()
    """Human-readable decisions worth logging (e.g. an FP16 request built as FP32)."""


def plan_build(
    trt_version: str,
    precision: str,
    facts: OnnxFacts,
    max_batch: int,
    *,
    expected_batch: int | None = None,
    input_hw: tuple[int, int] | None = None,
) -> BuildPlan:
    """How to build this ONNX on this TensorRT; EngineBuildError when it cannot be done."""
    if precision not in ("fp16", "fp32"):
        raise EngineBuildError(f"precision must be fp16 or fp32, not {precision!r}")
    if version_tuple(trt_version)[:2] < MIN_TRT:
        raise EngineBuildError(
            f"TensorRT {trt_version} is too old: the backend needs {MIN_TRT[0]}.{MIN_TRT[1]}+ "
            "(tensor-address API, execute_async_v3)"
        )
    if len(facts.inputs) != 1:
        raise EngineBuildError(f"the ONNX has {len(facts.inputs)} inputs; the backend feeds one")
    inp = facts.inputs[0]
    input_plan = select_profile(inp.name, inp.shape, max_batch, expected_batch, input_hw)
    qdq = "+qdq" if facts.has_qdq else ""
    major = trt_major(trt_version)
    notes: list[str] = []
    if major >= 11:
        effective = "fp16" if facts.has_fp16_weights else "fp32"
        if precision == "fp16" and effective == "fp32":
            notes.append(
                f"TensorRT {trt_version} builds strongly typed networks and this ONNX is FP32: "
                "the engine is FP32 (convert the ONNX to FP16 at staging time, e.g. ModelOpt "
                "AutoCast, for an FP16 engine)"
            )
        cleared = ("TF32",) if effective == "fp32" else ()
        return BuildPlan(
            trt_version, (), (), cleared, effective + qdq, True, input_plan, tuple(notes)
        )
    flags: list[str] = ["FP16"] if precision == "fp16" else []
    if facts.has_qdq:
        flags.append("INT8")
        notes.append("explicit quantisation (Q/DQ) in the ONNX: INT8 enabled for those layers")
    net_flags = ("EXPLICIT_BATCH",) if major < 10 else ()
    cleared = ("TF32",) if precision == "fp32" else ()
    return BuildPlan(
        trt_version,
        net_flags,
        tuple(flags),
        cleared,
        precision + qdq,
        False,
        input_plan,
        tuple(notes),
    )


class BuildProgress:
    """Phase/step bookkeeping shared by the TensorRT monitor and the heartbeat; thread-safe.

    `step_complete` returns False (cancel) once the deadline has passed.
    """

    def __init__(
        self,
        budget_s: float,
        sink: ProgressSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._start = clock()
        self.budget_s = budget_s
        self._sink = sink
        self._lock = threading.Lock()
        self._phases: dict[str, tuple[int, int]] = {}
        self._order: list[str] = []
        self.cancelled = False

    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def over_budget(self) -> bool:
        return self.elapsed() > self.budget_s

    def emit(self, text: str) -> None:
        if self._sink is not None:
            self._sink(text)

    def phase_start(self, phase: str, parent: str | None, num_steps: int) -> None:
        with self._lock:
            self._phases[phase] = (0, max(0, num_steps))
            self._order.append(phase)
        if parent is None:
            self.emit(f"build phase started: {phase} ({num_steps} steps)")

    def step_complete(self, phase: str, step: int) -> bool:
        with self._lock:
            total = self._phases.get(phase, (0, 0))[1]
            self._phases[phase] = (step + 1, total)
            if self.over_budget:
                self.cancelled = True
            return not self.cancelled

    def phase_finish(self, phase: str) -> None:
        with self._lock:
            self._phases.pop(phase, None)
            if phase in self._order:
                self._order.remove(phase)

    def snapshot(self) -> str:
        """'elapsed=12s budget=600s phase=Building engine 3/10' style one-liner."""
        with self._lock:
            current = [f"{p} {self._phases[p][0]}/{self._phases[p][1]}" for p in self._order]
        where = " > ".join(current) if current else "-"
        return f"elapsed={self.elapsed():.0f}s budget={self.budget_s:.0f}s phase={where}"


class Heartbeat:
    """A daemon thread that reports `progress.snapshot()` every `interval_s` until stopped."""

    def __init__(self, progress: BuildProgress, interval_s: float = 10.0) -> None:
        self._progress = progress
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trt-build-heartbeat", daemon=True)
        self.beats = 0

    def _run(self) -> None:
        warned = False
        while not self._stop.wait(self._interval_s):
            self.beats += 1
            log.info("engine build running %s", self._progress.snapshot())
            self._progress.emit(f"still building: {self._progress.snapshot()}")
            if self._progress.over_budget and not warned:
                warned = True
                log.warning("engine build over budget %s", self._progress.snapshot())

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)


def _trt_monitor(trt: Any, progress: BuildProgress) -> Any:
    """A tensorrt.IProgressMonitor forwarding to `progress` (TensorRT >= 10 only)."""

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                progress.phase_start(phase_name, parent_phase, num_steps)
            except Exception:  # never let a callback exception cross into TensorRT
                log.exception("progress monitor failed")

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                return progress.step_complete(phase_name, step)
            except Exception:
                log.exception("progress monitor failed")
                return True

        def phase_finish(self, phase_name: str) -> None:
            try:
                progress.phase_finish(phase_name)
            except Exception:
                log.exception("progress monitor failed")

    return _Monitor()


def _parse(trt: Any, builder: Any, logger: Any, onnx: bytes, path: Path, *, plan: BuildPlan) -> Any:
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx, str(path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {path}: {errors or 'unknown error'}")
    return network, parser


def _configure(trt: Any, builder: Any, plan: BuildPlan, workspace_mb: int) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    for name in plan.cleared_flags:
        if hasattr(trt.BuilderFlag, name):
            config.clear_flag(getattr(trt.BuilderFlag, name))
    if not plan.input.static_batch:
        profile = builder.create_optimization_profile()
        profile.set_shape(plan.input.name, *plan.input.profile_shapes())
        config.add_optimization_profile(profile)
    return config


@dataclass(frozen=True, slots=True)
class BuildResult:
    engine: bytes
    build_s: float


def _serialize(
    trt: Any,
    onnx: bytes,
    onnx_path: Path,
    plan: BuildPlan,
    *,
    workspace_mb: int,
    heartbeat_s: float,
    progress: BuildProgress,
) -> bytes | None:
    """Parse, configure, build; None when TensorRT returned no engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, onnx, onnx_path, plan=plan)
    config = _configure(trt, builder, plan, workspace_mb)
    monitor = None
    if hasattr(trt, "IProgressMonitor"):
        monitor = _trt_monitor(trt, progress)
        config.progress_monitor = monitor
    with Heartbeat(progress, heartbeat_s):
        serialized = builder.build_serialized_network(network, config)
    engine = None if serialized is None else bytes(memoryview(serialized))
    del serialized, config, parser, network, builder  # the monitor outlives its users
    del monitor
    return engine


def build_engine(
    onnx: bytes,
    onnx_path: Path,
    plan: BuildPlan,
    *,
    workspace_mb: int,
    budget_s: float,
    sink: ProgressSink | None = None,
    heartbeat_s: float = 10.0,
) -> BuildResult:
    """Serialized engine bytes for `onnx` per `plan` (minutes on a Jetson). Raises
    EngineBuildError (parse/build failure) or BuildTimeoutError (over budget)."""
    trt = importlib.import_module("tensorrt")
    for note in plan.notes:
        log.warning("engine build note: %s", note)
    log.info(
        "engine build start onnx=%s trt=%s precision=%s flags=%s batch=%s budget_s=%.0f",
        onnx_path.name,
        plan.trt_version,
        plan.precision,
        ",".join(plan.builder_flags) or "-",
        plan.input.profile,
        budget_s,
    )
    progress = BuildProgress(budget_s, sink)
    try:
        engine = _serialize(
            trt,
            onnx,
            onnx_path,
            plan,
            workspace_mb=workspace_mb,
            heartbeat_s=heartbeat_s,
            progress=progress,
        )
    except EngineBuildError:
        raise
    except Exception as exc:  # TensorRT raises RuntimeError/TypeError from its bindings
        raise EngineBuildError(f"TensorRT engine build for {onnx_path.name} failed: {exc}") from exc
    elapsed = progress.elapsed()
    if progress.cancelled or progress.over_budget:
        raise BuildTimeoutError(
            f"engine build for {onnx_path.name} exceeded its budget of {budget_s:.0f}s "
            f"(ran {elapsed:.0f}s); raise build_timeout_s or build off-line"
        )
    if engine is None:
        raise EngineBuildError(f"TensorRT failed to build an engine for {onnx_path.name}")
    log.info("engine build done onnx=%s seconds=%.1f size=%d", onnx_path.name, elapsed, len(engine))
    return BuildResult(engine, elapsed)


__all__ = [
    "BuildPlan",
    "BuildProgress",
    "BuildResult",
    "BuildTimeoutError",
    "EngineBuildError",
    "Heartbeat",
    "ProgressSink",
    "build_engine",
    "plan_build",
    "version_tuple",
]
