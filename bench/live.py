"""Live capacity: how many paced copies of a video the agent sustains.

N cameras play the same file at its native rate (`pace: true, loop: true`), like live
cameras; after a warm-up, one window is measured from the agent's own summary: frames
dropped at the hub's one-slot mailboxes against frames decoded, the share of the paced
rate actually delivered (a CPU-starved decoder falls behind without dropping), and the
frame and event latency percentiles. A doubling search finds the first N that is not
sustained, then bisection narrows it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av

from agent.app import Agent
from agent.health.report import RunSummary
from bench.common import CpuMeter, agent_config, cores, largest_passing, median, progress, rnd

DROP_LIMIT = 0.01
RATE_LIMIT = 0.97
"""A paced camera must also deliver this share of its frames (a starved decoder drops none)."""


def _latency(summary: RunSummary, key: str) -> dict[str, float | None]:
    """p50: median over cameras of their p50; p99: the worst camera's p99."""
    p50 = [c[key]["p50"] for c in summary.cameras.values() if c[key]["p50"] is not None]
    p99 = [c[key]["p99"] for c in summary.cameras.values() if c[key]["p99"] is not None]
    return {"p50": rnd(median(p50), 1) if p50 else None, "p99": rnd(max(p99), 1) if p99 else None}


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
    with CpuMeter() as meter:
        agent.stop_event.wait(window_s)
    after_summary = agent.summary()
    after = _totals(after_summary)
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
        "frame_latency_ms": _latency(after_summary, "frame_latency_ms"),
        "event_latency_ms": _latency(after_summary, "event_latency_ms"),
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
