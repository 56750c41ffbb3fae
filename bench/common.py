"""Helpers shared by the benchmarks: paths, configs, CPU meters, tables, plots.

Nothing here measures the pipeline itself (that is `bench/pipeline.py`); these are
the instruments: a wall/CPU meter that also reports how busy *other* processes kept
the machine (benchmarks here run on shared machines), the agent config the
benchmarks derive from `configs/demo.yaml`, and plain-text table formatting.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.config import AgentConfig

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"
MODEL_DIR = REPO / "models" / "yolox_nano"
VIDEO_CANDIDATES = (
    REPO / "var" / "assets" / "vtest.avi",
    REPO.parent / "shared" / "assets" / "vtest.avi",
)

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One progress line on stderr (the tables go to stdout)."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def find_video(explicit: str | None) -> Path:
    """The sample video: `explicit`, else var/assets (make assets), else ../shared/assets."""
    candidates = (Path(explicit),) if explicit else VIDEO_CANDIDATES
    for path in candidates:
        if path.is_file():
            return path.resolve()
    names = ", ".join(str(p) for p in candidates)
    raise SystemExit(f"sample video not found (tried {names}); run 'edge-agent assets fetch'")


def cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def agent_config(
    video: Path,
    workdir: Path,
    *,
    workers: int,
    cameras: int = 1,
    paced: bool = False,
    model_dir: Path = MODEL_DIR,
) -> AgentConfig:
    """configs/demo.yaml with its rules, for `cameras` copies of `video`.

    Console output off; state, JSONL and snapshots under `workdir`; backend with
    `workers` single-threaded sessions. `paced` plays the file as a live 10 fps camera
    (paced and looped); otherwise it is read as fast as the pipeline takes frames.
    """
    data: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    template = data["cameras"][0]
    template["source"] = {"type": "file", "path": str(video), "pace": paced, "loop": paced}
    data["cameras"] = [{**template, "id": f"cam{i:02d}"} for i in range(cameras)]
    data["device"]["state_dir"] = str(workdir / "state")
    data["model"]["path"] = str(model_dir)
    data["backend"] = {"type": "onnxruntime", "workers": workers, "intra_op_threads": 1}
    data["outputs"] = {
        "console": {"enabled": False},
        "jsonl": {"path": str(workdir / "events.jsonl")},
        "snapshots": {"dir": str(workdir / "snapshots")},
    }
    data["logging"] = {"level": "WARNING", "format": "text"}
    return AgentConfig.model_validate(data)


def _system_busy_s() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal ...
    ticks = [int(v) for v in fields[1:]]
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Meter:
    """Wall time, this process's CPU time and other processes' CPU over one measurement."""

    wall_s: float
    cpu_s: float
    background_cores: float | None
    """Average cores kept busy by *other* processes meanwhile (None where unknown)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 4),
            "cpu_s": round(self.cpu_s, 4),
            "background_cores": rnd(self.background_cores, 2),
        }


class CpuMeter:
    """`with CpuMeter() as m: ...` then `m.result` (a Meter)."""

    def __init__(self) -> None:
        self._wall = self._cpu = 0.0
        self._busy: float | None = None
        self.result = Meter(0.0, 0.0, None)

    def __enter__(self) -> CpuMeter:
        self._busy = _system_busy_s()
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        busy_end = _system_busy_s()
        background = None
        if self._busy is not None and busy_end is not None and wall > 0:
            background = max(0.0, (busy_end - self._busy - cpu) / wall)
        self.result = Meter(wall, cpu, background)


def rnd(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts)

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    body = [line(cells[0]), rule, *(line(r) for r in cells[1:])]
    return "\n".join([f"\n{title}", rule, *body, ""])


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def try_plot(figures: dict[str, Any], path: Path) -> str:
    """Write a PNG of the throughput bars and the live-capacity search, if matplotlib exists."""
    try:
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib is not installed: no plot written (the tables and JSON have it all)"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    bars = figures["throughput_fps"]
    left.barh(list(bars), list(bars.values()))
    left.set_xlabel("frames/s")
    left.set_title("Throughput on the sample video")
    trials = sorted(figures["live"]["trials"], key=lambda t: t["cameras"])
    right.plot(
        [t["cameras"] for t in trials], [100 * t["drop_fraction"] for t in trials], marker="o"
    )
    right.axhline(1.0, linestyle="--")
    right.set_xlabel("paced 10 fps cameras")
    right.set_ylabel("dropped frames (%)")
    right.set_title("Live capacity")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return f"plot written to {path}"


def largest_passing(check: Callable[[int], bool], max_n: int) -> tuple[int, int | None]:
    """Largest n in 1..max_n with check(n) true, assuming it is monotone: doubling, then
    bisection. Returns (largest passing n or 0, smallest failing n or None)."""
    good, bad, n = 0, None, 1
    while n <= max_n:
        if not check(n):
            bad = n
            break
        good, n = n, n * 2
    while bad is not None and bad - good > 1:
        mid = (good + bad) // 2
        if check(mid):
            good = mid
        else:
            bad = mid
    return good, bad
