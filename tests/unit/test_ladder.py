"""DegradingBackend with fakes of our own Backend protocol (no GPU can run here).

Each fake rung answers `tensor + rung_id`, so an output says which rung computed it.
A fake can fail to load, raise, or hang (block on an Event the test releases).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pytest

from agent.config.inference import OnnxRuntimeBackendConfig
from agent.config.ladder import LadderConfig
from agent.inference.errors import BackendError
from agent.inference.ladder import DegradingBackend, LadderCode, Rung, build_rungs

WAIT_S = 5.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class FakeRung:
    """A controllable rung: `behaviour` is 'ok', 'raise' or 'hang'; loads can fail or block."""

    rung_id: int
    behaviour: str = "ok"
    load_error: str | None = None
    load_gate: threading.Event | None = None
    release: threading.Event = field(default_factory=threading.Event)
    loads: int = 0
    infer_threads: list[str] = field(default_factory=list)
    load_threads: list[str] = field(default_factory=list)
    close_threads: list[str] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)

    def factory(self) -> FakeBackend:
        self.loads += 1
        self.load_threads.append(threading.current_thread().name)
        if self.load_gate is not None:
            self.load_gate.wait(WAIT_S)
        if self.load_error is not None:
            raise BackendError(self.load_error)
        return FakeBackend(self)


class FakeBackend:
    def __init__(self, rung: FakeRung) -> None:
        self._rung = rung

    @property
    def name(self) -> str:
        return f"fake:{self._rung.rung_id}"

    @property
    def input_name(self) -> str:
        return "images"

    @property
    def dynamic_spatial(self) -> bool:
        return False

    def infer(self, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        rung = self._rung
        rung.infer_threads.append(threading.current_thread().name)
        if rung.behaviour == "raise":
            raise BackendError(f"fake {rung.rung_id}: CUDA error 700")
        if rung.behaviour == "hang":
            rung.release.wait(WAIT_S)
        return [tensor + np.float32(rung.rung_id)]

    def close(self) -> None:
        self._rung.close_threads.append(threading.current_thread().name)
        self._rung.closed.set()


Change = tuple[str | None, str | None, LadderCode, str]


@dataclass
class Ladder:
    backend: DegradingBackend
    rungs: list[FakeRung]
    clock: FakeClock
    changes: list[Change]


MakeLadder = Callable[..., Ladder]

CFG = LadderConfig(
    inference_timeout_s=0.2,
    load_timeout_s=2.0,
    failures_to_degrade=3,
    climb_back_after_s=60,
    climb_back_max_s=240,
    cpu_fallback_max_fps=5,
)


@pytest.fixture
def make_ladder() -> Iterator[Callable[..., Ladder]]:
    made: list[Ladder] = []

    def make(*fakes: FakeRung, cfg: LadderConfig = CFG) -> Ladder:
        clock = FakeClock()
        changes: list[Change] = []
        rungs = [
            Rung(f"r{f.rung_id}", f.factory, cpu=i == len(fakes) - 1) for i, f in enumerate(fakes)
        ]
        backend = DegradingBackend(
            rungs, cfg, on_change=lambda *c: changes.append(c), clock=clock, label="t"
        )
        ladder = Ladder(backend, list(fakes), clock, changes)
        made.append(ladder)
        return ladder

    yield make
    for ladder in made:  # release hung fakes so their daemon threads end
        for fake in ladder.rungs:
            fake.release.set()
            if fake.load_gate is not None:
                fake.load_gate.set()
        ladder.backend.close()


def tensor(value: float = 1.0) -> npt.NDArray[np.float32]:
    return np.full((1, 3, 4, 4), value, np.float32)


def answered_by(outputs: list[npt.NDArray[np.generic]], base: float = 1.0) -> int:
    return round(float(outputs[0].flat[0]) - base)


def infer_until(ladder: Ladder, predicate: Callable[[], bool]) -> list[npt.NDArray[np.generic]]:
    """Keep inferring (as a worker would) until predicate holds; fail after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        out = ladder.backend.infer(tensor())
        if predicate():
            return out
        threading.Event().wait(0.01)
    raise AssertionError("condition not reached in time")


# ---------------------------------------------------------------- starting


def test_starts_on_best_rung_and_runs_everything_on_one_rung_thread(
    make_ladder: MakeLadder,
) -> None:
    # given a healthy three-rung ladder
    ladder = make_ladder(FakeRung(0), FakeRung(1), FakeRung(2))
    # when frames are inferred
    outs = [ladder.backend.infer(tensor()) for _ in range(3)]
    # then the best rung answers, undegraded, and reported once at start
    assert [answered_by(o) for o in outs] == [0, 0, 0]
    mode = ladder.backend.mode
    assert (mode.rung, mode.degraded, mode.code, mode.max_fps) == ("r0", False, LadderCode.OK, None)
    assert ladder.changes == [(None, "r0", LadderCode.OK, "loaded r0")]
    # and load and every inference ran on the same dedicated thread, not the caller's
    gpu = ladder.rungs[0]
    assert len(set(gpu.load_threads + gpu.infer_threads)) == 1
    assert gpu.load_threads[0] != threading.current_thread().name
    assert ladder.rungs[1].loads == 0


def test_load_failure_starts_on_next_rung_with_reason(make_ladder: MakeLadder) -> None:
    # given a best rung whose runtime cannot load
    ladder = make_ladder(FakeRung(0, load_error="no TensorRT"), FakeRung(1), FakeRung(2))
    # then the next rung serves, and the mode says why
    assert answered_by(ladder.backend.infer(tensor())) == 1
    mode = ladder.backend.mode
    assert mode.degraded and mode.code is LadderCode.LOAD_FAILED and mode.rung == "r1"
    assert "no TensorRT" in mode.detail and "no TensorRT" in mode.faulted["r0"]
    assert ladder.changes[0][:3] == (None, "r1", LadderCode.LOAD_FAILED)


def test_every_rung_failing_to_load_is_a_clear_error(make_ladder: MakeLadder) -> None:
    # given rungs that all fail to load, then construction fails naming each reason
    with pytest.raises(BackendError) as err:
        make_ladder(FakeRung(0, load_error="no engine"), FakeRung(1, load_error="no CUDA"))
    assert "r0: load failed: no engine" in str(err.value)
    assert "r1: load failed: no CUDA" in str(err.value)


def test_hung_load_times_out_and_next_rung_serves(make_ladder: MakeLadder) -> None:
    # given a best rung whose load never finishes
    gate = threading.Event()
    cfg = CFG.model_copy(update={"load_timeout_s": 0.2})
    slow = FakeRung(0, load_gate=gate)
    ladder = make_ladder(slow, FakeRung(1), cfg=cfg)
    # then the next rung serves and the load is reported as timed out
    assert answered_by(ladder.backend.infer(tensor())) == 1
    assert "timed out" in ladder.backend.mode.faulted["r0"]
    # and when the abandoned load finally returns, its backend is closed on its own thread
    gate.set()
    assert slow.closed.wait(WAIT_S)
    assert slow.close_threads == slow.load_threads


# ---------------------------------------------------------------- degrading


def test_consecutive_errors_degrade_and_the_frame_is_retried(make_ladder: MakeLadder) -> None:
    # given a best rung that raises on every inference
    ladder = make_ladder(FakeRung(0, behaviour="raise"), FakeRung(1), FakeRung(2))
    # when frames are inferred: the first failures are reported per frame
    for _ in range(CFG.failures_to_degrade - 1):
        with pytest.raises(BackendError, match="CUDA error 700"):
            ladder.backend.infer(tensor())
    # then the Nth failure moves down a rung and that frame still gets its answer
    assert answered_by(ladder.backend.infer(tensor())) == 1
    assert ladder.changes[-1][:3] == ("r0", "r1", LadderCode.INFER_ERROR)
    assert len(ladder.changes) == 2
    mode = ladder.backend.mode
    assert mode.degraded and mode.code is LadderCode.INFER_ERROR and "CUDA error 700" in mode.detail
    # and the faulted backend was closed on its own rung thread
    gpu = ladder.rungs[0]
    assert gpu.closed.wait(WAIT_S) and gpu.close_threads == gpu.load_threads
    assert ladder.backend.stats()["degradations"] == 1


def test_errors_that_are_not_consecutive_do_not_degrade(make_ladder: MakeLadder) -> None:
    # given a flaky best rung: fails, then works, over and over
    flaky = FakeRung(0)
    ladder = make_ladder(flaky, FakeRung(1))
    for _ in range(5):
        flaky.behaviour = "raise"
        for _ in range(CFG.failures_to_degrade - 1):
            with pytest.raises(BackendError):
                ladder.backend.infer(tensor())
        flaky.behaviour = "ok"
        assert answered_by(ladder.backend.infer(tensor())) == 0
    # then it never left the best rung
    assert ladder.backend.mode.rung == "r0" and len(ladder.changes) == 1


def test_hung_inference_times_out_and_the_frame_is_retried_below(make_ladder: MakeLadder) -> None:
    # given a best rung whose inference blocks until released
    hung = FakeRung(0, behaviour="hang")
    ladder = make_ladder(hung, FakeRung(1), FakeRung(2))
    # when a frame is inferred
    t0 = time.monotonic()
    out = ladder.backend.infer(tensor())
    elapsed = time.monotonic() - t0
    # then after the timeout the next rung answers that same frame
    assert answered_by(out) == 1
    assert CFG.inference_timeout_s <= elapsed < CFG.inference_timeout_s + 1.0
    assert ladder.changes[-1][:3] == ("r0", "r1", LadderCode.INFER_TIMEOUT)
    assert ladder.backend.stats()["timeouts"] == 1
    # and the hung backend is closed on its own thread once it returns
    assert not hung.closed.is_set()
    hung.release.set()
    assert hung.closed.wait(WAIT_S) and hung.close_threads == hung.load_threads


def test_degraded_onto_cpu_rung_reports_fps_cap(make_ladder: MakeLadder) -> None:
    # given a ladder whose last rung is a CPU rung
    ladder = make_ladder(FakeRung(0, behaviour="hang"), FakeRung(1))
    # when the accelerator hangs
    assert answered_by(ladder.backend.infer(tensor())) == 1
    # then the mode carries the CPU fallback cap
    assert ladder.backend.mode.max_fps == CFG.cpu_fallback_max_fps


def test_next_rung_failing_to_load_skips_to_the_one_below(make_ladder: MakeLadder) -> None:
    # given a hanging best rung and a middle rung that cannot load
    ladder = make_ladder(FakeRung(0, behaviour="hang"), FakeRung(1), FakeRung(2))
    ladder.rungs[1].load_error = "CUDA out of memory"
    # when a frame is inferred
    out = ladder.backend.infer(tensor())
    # then the last rung answers and one change names both problems
    assert answered_by(out) == 2
    old, new, code, detail = ladder.changes[-1]
    assert (old, new, code) == ("r0", "r2", LadderCode.INFER_TIMEOUT)
    assert "CUDA out of memory" in detail and "exceeded" in detail


def test_last_rung_errors_raise_per_frame_but_never_leave(make_ladder: MakeLadder) -> None:
    # given a single-rung ladder whose backend raises
    only = FakeRung(0, behaviour="raise")
    ladder = make_ladder(only)
    # then every frame fails with BackendError and the rung stays
    for _ in range(CFG.failures_to_degrade * 2):
        with pytest.raises(BackendError):
            ladder.backend.infer(tensor())
    assert ladder.backend.mode.rung == "r0"
    only.behaviour = "ok"
    assert answered_by(ladder.backend.infer(tensor())) == 0


def test_every_rung_faulted_raises_then_recovers_after_the_delay(make_ladder: MakeLadder) -> None:
    # given a single rung that hangs
    only = FakeRung(0, behaviour="hang")
    ladder = make_ladder(only)
    # when it times out there is no rung left: a clear error
    with pytest.raises(BackendError, match="every inference backend is faulted"):
        ladder.backend.infer(tensor())
    assert ladder.backend.mode.rung is None and ladder.backend.mode.degraded
    assert ladder.changes[-1][:3] == ("r0", None, LadderCode.INFER_TIMEOUT)
    # and before the climb-back delay frames fail fast
    only.behaviour = "ok"
    only.release.set()
    with pytest.raises(BackendError):
        ladder.backend.infer(tensor())
    # then after the delay the next frame reloads it, probes and is answered
    ladder.clock.t += CFG.climb_back_after_s
    assert answered_by(ladder.backend.infer(tensor())) == 0
    assert ladder.changes[-1][:3] == (None, "r0", LadderCode.CLIMBED_BACK)


# ---------------------------------------------------------------- climbing back


def degrade_by_errors(ladder: Ladder) -> None:
    for _ in range(CFG.failures_to_degrade - 1):
        with pytest.raises(BackendError):
            ladder.backend.infer(tensor())
    ladder.backend.infer(tensor())
    assert ladder.backend.mode.rung == "r1"


def test_climbs_back_when_the_best_rung_heals(make_ladder: MakeLadder) -> None:
    # given a ladder degraded by a faulty best rung
    gpu = FakeRung(0, behaviour="raise")
    ladder = make_ladder(gpu, FakeRung(1))
    degrade_by_errors(ladder)
    gpu.behaviour = "ok"
    loads = gpu.loads
    # when frames come before the delay, nothing is retried
    ladder.clock.t += CFG.climb_back_after_s - 1
    assert answered_by(ladder.backend.infer(tensor())) == 1
    assert gpu.loads == loads
    # then after the delay the best rung is reloaded, probed and takes over
    ladder.clock.t += 1
    out = infer_until(ladder, lambda: ladder.backend.mode.rung == "r0")
    assert answered_by(out) == 0  # the probe's outputs answer the frame at hand
    assert ladder.changes[-1][:3] == ("r1", "r0", LadderCode.CLIMBED_BACK)
    mode = ladder.backend.mode
    assert not mode.degraded and mode.faulted == {} and mode.max_fps is None
    # and the lower rung was closed on its own thread
    cpu = ladder.rungs[1]
    assert cpu.closed.wait(WAIT_S) and cpu.close_threads == cpu.load_threads
    assert ladder.backend.stats()["climbs"] == 1


def test_background_load_does_not_block_serving(make_ladder: MakeLadder) -> None:
    # given a degraded ladder whose best rung loads slowly when retried
    gpu = FakeRung(0, behaviour="raise")
    ladder = make_ladder(gpu, FakeRung(1))
    degrade_by_errors(ladder)
    gpu.behaviour, gpu.load_gate = "ok", threading.Event()
    ladder.clock.t += CFG.climb_back_after_s
    # when frames arrive while the reload is in progress
    t0 = time.monotonic()
    outs = [ladder.backend.infer(tensor()) for _ in range(5)]
    # then the current rung keeps answering promptly
    assert [answered_by(o) for o in outs] == [1] * 5
    assert time.monotonic() - t0 < 1.0
    # and once the load completes the ladder climbs
    gpu.load_gate.set()
    infer_until(ladder, lambda: ladder.backend.mode.rung == "r0")


def test_failed_climbs_back_off_exponentially_with_a_cap(make_ladder: MakeLadder) -> None:
    # given a degraded ladder whose best rung now cannot even load
    gpu = FakeRung(0, behaviour="raise")
    ladder = make_ladder(gpu, FakeRung(1))
    degrade_by_errors(ladder)
    gpu.load_error = "driver gone"
    failures_at: list[float] = []
    # when frames keep coming for a long (fake) time, one per 5 s
    start = ladder.clock.t
    for _ in range(400):
        ladder.clock.t += 5
        before = ladder.backend.stats()["climb_failures"]
        assert answered_by(ladder.backend.infer(tensor())) == 1
        infer_until(ladder, lambda: not ladder.backend.climbing)  # let a reload finish
        if ladder.backend.stats()["climb_failures"] > before:
            failures_at.append(ladder.clock.t - start)
    # then attempts are spaced 60, 120, 240, 240, ... (capped) and serving never stopped
    assert list(np.diff([0.0, *failures_at])[:5]) == [60, 120, 240, 240, 240]
    assert ladder.backend.mode.rung == "r1"
    assert gpu.loads == len(failures_at) + 1


def test_failed_probe_keeps_the_lower_rung(make_ladder: MakeLadder) -> None:
    # given a degraded ladder whose best rung loads but still fails to infer
    gpu = FakeRung(0, behaviour="raise")
    ladder = make_ladder(gpu, FakeRung(1))
    degrade_by_errors(ladder)
    ladder.clock.t += CFG.climb_back_after_s
    loads = gpu.loads
    # when the climb is attempted
    infer_until(ladder, lambda: gpu.loads > loads and ladder.backend.stats()["climb_failures"])
    # then the frame was still answered below, no rung change was reported
    assert ladder.backend.mode.rung == "r1" and len(ladder.changes) == 2
    assert "probe failed" in ladder.backend.mode.faulted["r0"]


def test_climb_tries_middle_rung_when_best_stays_broken(make_ladder: MakeLadder) -> None:
    # given a ladder that fell to its last rung, where only the middle rung heals
    gpu, mid = FakeRung(0, behaviour="hang"), FakeRung(1, behaviour="hang")
    ladder = make_ladder(gpu, mid, FakeRung(2))
    assert answered_by(ladder.backend.infer(tensor())) == 2
    gpu.load_error = "engine corrupt"
    mid.behaviour = "ok"
    mid.release.set()
    ladder.clock.t += CFG.climb_back_max_s
    # then the climb settles on the middle rung
    infer_until(ladder, lambda: ladder.backend.mode.rung == "r1")
    assert ladder.changes[-1][:3] == ("r2", "r1", LadderCode.CLIMBED_BACK)
    assert ladder.backend.mode.degraded


def test_flapping_rung_doubles_the_delay(make_ladder: MakeLadder) -> None:
    # given a best rung that fails again right after each climb back
    gpu = FakeRung(0, behaviour="raise")
    ladder = make_ladder(gpu, FakeRung(1))
    degrade_by_errors(ladder)
    # when it heals just long enough to pass the probe, then fails again
    gpu.behaviour = "ok"
    ladder.clock.t += CFG.climb_back_after_s
    infer_until(ladder, lambda: ladder.backend.mode.rung == "r0")
    gpu.behaviour = "raise"
    ladder.clock.t += 1
    degrade_by_errors(ladder)
    gpu.behaviour = "ok"
    loads = gpu.loads
    # then the next climb waits twice as long
    ladder.clock.t += CFG.climb_back_after_s
    ladder.backend.infer(tensor())
    assert gpu.loads == loads
    ladder.clock.t += CFG.climb_back_after_s
    infer_until(ladder, lambda: ladder.backend.mode.rung == "r0")


# ---------------------------------------------------------------- lifecycle and config


def test_close_is_idempotent_and_closes_the_active_rung(make_ladder: MakeLadder) -> None:
    ladder = make_ladder(FakeRung(0), FakeRung(1))
    ladder.backend.close()
    ladder.backend.close()
    assert ladder.rungs[0].closed.wait(WAIT_S)
    with pytest.raises(BackendError, match="closed"):
        ladder.backend.infer(tensor())


def test_failing_callback_does_not_break_the_ladder() -> None:
    def explode(*_: object) -> None:
        raise RuntimeError("callback bug")

    fakes = [FakeRung(0, behaviour="hang"), FakeRung(1)]
    rungs = [Rung(f"r{f.rung_id}", f.factory) for f in fakes]
    backend = DegradingBackend(rungs, CFG, on_change=explode)
    try:
        assert answered_by(backend.infer(tensor())) == 1
    finally:
        fakes[0].release.set()
        backend.close()


def test_build_rungs_names_rungs_and_plugs_in_builders_by_type() -> None:
    # given a ladder config and a builder registered for its backend type
    cfg = LadderConfig(
        rungs=[
            OnnxRuntimeBackendConfig(type="onnxruntime", providers=["CUDAExecutionProvider"]),
            OnnxRuntimeBackendConfig(type="onnxruntime"),
        ]
    )
    built: list[tuple[object, object]] = []
    fake = FakeRung(7)

    def builder(rung_cfg: object, model: object) -> FakeBackend:
        built.append((rung_cfg, model))
        return fake.factory()

    model = object()
    rungs = build_rungs(cfg, model, builders={"onnxruntime": builder})  # type: ignore[arg-type]
    # then rungs are named by type and first provider, the CPU one marked
    assert [(r.name, r.cpu) for r in rungs] == [
        ("onnxruntime:CUDAExecutionProvider", False),
        ("onnxruntime:CPUExecutionProvider", True),
    ]
    # and a rung's factory calls the type's builder with that rung's config
    assert rungs[0].factory().name == "fake:7"
    assert built == [(cfg.rungs[0], model)]


def test_config_rejects_duplicate_rungs() -> None:
    from pydantic import ValidationError

    cpu = OnnxRuntimeBackendConfig(type="onnxruntime")
    with pytest.raises(ValidationError, match="duplicate ladder rungs"):
        LadderConfig(rungs=[cpu, cpu])
    default = LadderConfig()
    assert [r.providers[0] for r in default.rungs] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
