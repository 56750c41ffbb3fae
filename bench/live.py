"""Live capacity: how many paced copies of a video the agent sustains.

N cameras play the same file at its native rate (`pace: true, loop: true`), like live
cameras; after a warm-up, one window is measured from the agent's own summary: frames
dropped at the hub's one-slot mailboxes against frames decoded, the share of the paced
rate actually delivered (a CPU-starved decoder falls behind without dropping), and the
frame and event latency percentiles of the window's frames (warm-up samples dropped).
A doubling search finds the first N that is not sustained, then bisection narrows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np

from agent.app import Agent
from agent.health.report import RunSummary
from bench.common import CpuMeter, agent_config, cores, largest_passing, median, progress, rnd

DROP_LIMIT = 0.01
RATE_LIMIT = 0.97
"""A paced camera must also deliver this share of its frames (a starved decoder drops none)."""


def _latency(agent: Agent, key: str) -> dict[str, float | None]:
    """Over the measured window only (the windows are cleared when it starts).

    p99: over every frame of every camera (the usual p99); p99_worst_camera: the worst
    camera's own p99 (with ~200 frames per camera in 20 s, about its 2nd-worst frame);
    p50: the median over cameras of their p50.
    """
    windows = [getattr(lane, key) for lane in agent.lanes.values()]
    per_camera = [w.samples_s() * 1000.0 for w in windows]
    per_camera = [s for s in per_camera if s.size]
    if not per_camera:
        return {"p50": None, "p99": None, "p99_worst_camera": None}
    every = np.concatenate(per_camera)
    return {
        "p50": rnd(median([float(np.percentile(s, 50)) for s in per_camera]), 1),
        "p99": rnd(float(np.percentile(every, 99)), 1),
        "p99_worst_camera": rnd(max(float(np.percentile(s, 99)) for s in per_camera), 1),
    }


def _totals(summary: RunSummary) -> dict[str, int]:
    keys = ("frames_decoded", "frames_dropped", "frames_processed")
    return {k: sum(int(c[k]) for c in summary.cameras.values()) for k in keys}


def live_trial(
    video: Path, work: Path, n: int, *, workers: int, warmup_s: float, window_s: float, rate: float
) -> dict[str, Any]:
    cfg = agent_config(video, work / f"live-{n}", workers=workers, cameras=n, paced=True)
    agent = Agent(cfg)
    agent.start()
    agent.stop_event.wait(warmup_s)
    before = _totals(agent.summary())
    for lane in agent.lanes.values():  # latency over the window only, not the warm-up
        lane.frame_latency.clear()
        lane.event_latency.clear()
    with CpuMeter() as meter:
        agent.stop_event.wait(window_s)
    after_summary = agent.summary()
    after = _totals(after_summary)
    latency = {k: _latency(agent, k) for k in ("frame_latency", "event_latency")}
    agent.close()
    delta = {k: after[k] - before[k] for k in after}
    decoded = max(1, delta["frames_decoded"])
    drop = delta["frames_dropped"] / decoded
    rate_share = delta["frames_decoded"] / (n * rate * meter.result.wall_s)
    failed = [cid for cid, c in after_summary.cameras.items() if c["state"] == "failed"]
    result = {
        "cameras": n,
        **delta,
        "drop_fraction": round(drop, 5),
        "delivered_share": round(rate_share, 4),
        "sustained": drop < DROP_LIMIT and rate_share >= RATE_LIMIT and not failed,
        "frame_latency_ms": latency["frame_latency"],
        "event_latency_ms": latency["event_latency"],
        "events": after_summary.events,
        "cpu_utilisation": round(meter.result.cpu_s / (meter.result.wall_s * cores()), 3),
        "background_cores": rnd(meter.result.background_cores, 2),
    }
    verdict = "sustained" if result["sustained"] else "NOT sustained"
    progress(f"live N={n}: drops {100 * drop:.2f} %, delivered {100 * rate_share:.1f} %: {verdict}")
    return result


def live_capacity(
    video: Path, work: Path, *, workers: int, warmup_s: float, window_s: float, max_n: int
) -> dict[str, Any]:
    """Doubling search for the first N not sustained, then bisection."""
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 10)
    trials: dict[int, dict[str, Any]] = {}

    def trial(n: int) -> bool:
        trials[n] = live_trial(
            video, work, n, workers=workers, warmup_s=warmup_s, window_s=window_s, rate=rate
        )
        return bool(trials[n]["sustained"])

    good, bad = largest_passing(trial, max_n)
    return {
        "camera_fps": rate,
        "workers": workers,
        "window_s": window_s,
        "max_sustained": good,
        "search_capped": bad is None,
        "trials": [trials[k] for k in sorted(trials)],
        "at_1": trials.get(1),
        "at_max": trials.get(good),
    }
