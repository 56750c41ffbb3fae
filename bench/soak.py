"""Soak benchmark: the real agent process with paced cameras for a long run, watched from outside.

Starts `python -m agent run` in a subprocess on N copies of the sample video, each paced at
10 fps and looped (a live camera), every output on (JSONL and snapshots in a temp dir; console
off), and samples the child's RSS, open file descriptors, thread count and CPU from
`/proc/<pid>` every `--interval` seconds. At the end it sends SIGTERM, checks the exit code,
reads the agent's `--summary-json`, and fits a linear trend to each metric after a warm-up:
by default the time the agent's bounded state takes to fill (drift baseline and recent
window, snapshot budget; see `warmup_plan`), at least 20 % of the run.

Verdict (PASS/FAIL), stated in the output: after the warm-up, open fds and threads are flat
(the fitted change across the window is under `--count-tolerance`), and RSS grows by less than
`--rss-growth-pct` of its post-warm-up mean per hour. Disk use of the snapshot folder is
reported, not judged; `--snapshot-max-mib` sets the agent's snapshot budget low enough that
the run reaches it, so the soak also exercises the eviction of old snapshots.

    .venv/bin/python bench/soak.py --minutes 60 --json bench/out/soak.json --plot docs/soak.png
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import yaml

from agent.config.root import load_config
from bench.common import DEMO_CONFIG, MODEL_DIR, REPO, cores, find_video, now_utc, progress, table

SHARED_ONNX = REPO.parent / "shared" / "assets" / "yolox_nano.onnx"
TICK_S = os.sysconf("SC_CLK_TCK")
METRICS = ("rss_mib", "open_fds", "threads")
"""Judged by the verdict."""
INFO_METRICS = ("rss_anon_mib",)
"""Trend reported, not judged: anonymous memory, without the evictable file-backed pages."""


@dataclass(frozen=True)
class Sample:
    t_s: float
    rss_mib: float
    rss_anon_mib: float
    """Anonymous resident memory (heap, arenas): what a leak grows. RSS also counts file pages
    (shared libraries, the model) that the kernel evicts and re-reads under page-cache pressure."""
    open_fds: int
    threads: int
    cpu_pct: float
    """Child CPU over the last interval, in % of one core."""
    background_cores: float | None
    """Cores kept busy by every other process over the last interval."""
    snapshot_files: int
    snapshot_mib: float


@dataclass(frozen=True)
class Trend:
    metric: str
    mean: float
    first: float
    last: float
    minimum: float
    maximum: float
    slope_per_h: float
    change_over_window: float
    """Fitted slope times the post-warm-up duration."""
    growth_pct_per_h: float
    ok: bool


def model_dir(workdir: Path) -> Path:
    """The repo's model folder when its ONNX is present, else a temp one linking the shared ONNX."""
    manifest = json.loads((MODEL_DIR / "model.json").read_text(encoding="utf-8"))
    if (MODEL_DIR / manifest["onnx"]).is_file():
        return MODEL_DIR
    folder = workdir / "model"
    folder.mkdir()
    (folder / "model.json").write_text(json.dumps(manifest), encoding="utf-8")
    (folder / manifest["onnx"]).symlink_to(SHARED_ONNX)
    return folder


def write_config(
    workdir: Path,
    video: Path,
    cameras: int,
    workers: int,
    snapshot_max_mib: int,
    *,
    drift_sample_every_s: float | None = None,
) -> Path:
    """configs/demo.yaml's camera and rules, `cameras` paced looped copies, all outputs on.

    The snapshot budget is set to `snapshot_max_mib` so that the run reaches it and the
    store's eviction (oldest deleted first) runs for most of the soak.
    `drift_sample_every_s` makes the drift monitor sample more often than its default
    (1 s), so its windows (the same number of samples) fill sooner: a short soak then
    judges the agent with all of its bounded state full.
    """
    data: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    template = data["cameras"][0]
    template["source"] = {"type": "file", "path": str(video), "pace": True, "loop": True}
    data["cameras"] = [{**template, "id": f"cam{i:02d}"} for i in range(cameras)]
    data["device"]["state_dir"] = str(workdir / "state")
    data["model"]["path"] = str(model_dir(workdir))
    data["backend"] = {"type": "onnxruntime", "workers": workers, "intra_op_threads": 1}
    data["outputs"] = {
        "console": {"enabled": False},
        "jsonl": {"path": str(workdir / "events.jsonl")},
        "snapshots": {"dir": str(workdir / "snapshots"), "max_bytes": snapshot_max_mib << 20},
    }
    data["logging"] = {"level": "INFO", "format": "json"}
    if drift_sample_every_s is not None:
        data["drift"] = {**data.get("drift", {}), "sample_every_s": drift_sample_every_s}
    path = workdir / "soak.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (its threads included)."""
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    fields = text.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK_S


def system_busy_s() -> float:
    """CPU seconds all processes have spent busy since boot."""
    with open("/proc/stat", encoding="ascii") as fh:
        ticks = [int(v) for v in fh.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / TICK_S


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon (kB) and Threads from /proc/<pid>/status, open fds from /proc/<pid>/fd."""
    out = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "Threads"):
            out[key] = int(rest.split()[0])
    return out


def dir_usage(path: Path) -> tuple[int, int]:
    """Files and bytes under `path` (0, 0 when absent)."""
    files = size = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            try:
                size += os.stat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue  # a temp file renamed meanwhile
            files += 1
    return files, size


class Sampler:
    """Reads one Sample of a child process per call; CPU is over the time since the last call."""

    def __init__(self, pid: int, snapshots: Path) -> None:
        self.pid = pid
        self.snapshots = snapshots
        self.t0 = time.monotonic()
        self._last = (self.t0, proc_cpu_s(pid), system_busy_s())

    def sample(self) -> Sample:
        now, cpu, busy = time.monotonic(), proc_cpu_s(self.pid), system_busy_s()
        st = proc_status(self.pid)
        t_prev, cpu_prev, busy_prev = self._last
        self._last = (now, cpu, busy)
        dt = max(now - t_prev, 1e-6)
        files, size = dir_usage(self.snapshots)
        return Sample(
            t_s=round(now - self.t0, 2),
            rss_mib=round(st.get("VmRSS", 0) / 1024, 2),
            rss_anon_mib=round(st.get("RssAnon", 0) / 1024, 2),
            open_fds=st["fds"],
            threads=st.get("Threads", 0),
            cpu_pct=round(100 * (cpu - cpu_prev) / dt, 1),
            background_cores=round(max(0.0, (busy - busy_prev - (cpu - cpu_prev)) / dt), 2),
            snapshot_files=files,
            snapshot_mib=round(size / 2**20, 2),
        )


def describe(s: Sample) -> str:
    """One progress line for a sample."""
    return (
        f"t={s.t_s / 60:5.1f}min rss={s.rss_mib:.1f}MiB anon={s.rss_anon_mib:.1f}MiB "
        f"fds={s.open_fds} threads={s.threads} cpu={s.cpu_pct:.0f}% bg={s.background_cores} "
        f"snapshots={s.snapshot_files} ({s.snapshot_mib:.0f} MiB)"
    )


def run_soak(
    argv: list[str], workdir: Path, duration_s: float, interval_s: float
) -> tuple[list[Sample], int, float]:
    """Run the agent for `duration_s`, sampling every `interval_s`; SIGTERM it.

    Returns the samples, the exit code and the seconds from SIGTERM to exit.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (
        open(workdir / "agent.out", "wb") as out,
        open(workdir / "agent.log", "wb") as err,
    ):
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=REPO, env=env)  # noqa: S603
        samples: list[Sample] = []
        try:
            sampler = Sampler(proc.pid, workdir / "snapshots")
            end = sampler.t0 + duration_s
            next_t = sampler.t0 + interval_s
            while (now := time.monotonic()) < end:
                try:
                    proc.wait(timeout=max(0.0, min(next_t, end) - now))
                    raise SystemExit(f"agent exited early rc={proc.returncode}: {workdir}")
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() >= next_t:
                    samples.append(s := sampler.sample())
                    next_t += interval_s
                    progress(describe(s))
            if not samples or samples[-1].t_s < duration_s - interval_s / 2:
                samples.append(sampler.sample())
        finally:
            stop_t = time.monotonic()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
    return samples, rc, round(time.monotonic() - stop_t, 2)


def fit_trend(
    metric: str, samples: list[Sample], warmup_s: float, rss_pct: float, tolerance: float
) -> Trend:
    """Least-squares line through the samples after `warmup_s`, with the metric's verdict."""
    post = [s for s in samples if s.t_s >= warmup_s]
    t = np.array([s.t_s for s in post]) / 3600
    y = np.array([getattr(s, metric) for s in post], dtype=float)
    slope = float(np.polyfit(t, y, 1)[0]) if len(post) >= 2 and np.ptp(t) > 0 else 0.0
    mean = float(y.mean()) if len(y) else 0.0
    change = slope * float(np.ptp(t)) if len(t) else 0.0
    growth = 100 * slope / mean if mean else 0.0
    ok = growth < rss_pct if metric.startswith("rss") else abs(change) < tolerance
    return Trend(
        metric=metric,
        mean=round(mean, 2),
        first=float(y[0]) if len(y) else 0.0,
        last=float(y[-1]) if len(y) else 0.0,
        minimum=float(y.min()) if len(y) else 0.0,
        maximum=float(y.max()) if len(y) else 0.0,
        slope_per_h=round(slope, 3),
        change_over_window=round(change, 3),
        growth_pct_per_h=round(growth, 3),
        ok=ok,
    )


def agent_totals(summary: dict[str, Any]) -> dict[str, Any]:
    """Events and per-camera frame counts from the agent's summary JSON."""
    cams = summary.get("cameras", {})
    keys = ("frames_decoded", "frames_processed", "frames_dropped", "frames_skipped", "reconnects")
    totals: dict[str, Any] = {k: sum(int(c.get(k, 0)) for c in cams.values()) for k in keys}
    decoded = totals["frames_decoded"]
    totals["drop_pct"] = round(100 * totals["frames_dropped"] / decoded, 3) if decoded else None
    totals["events_total"] = summary.get("events")
    totals["duration_s"] = summary.get("duration_s")
    totals["camera_states"] = {cid: c.get("state") for cid, c in cams.items()}
    return totals


def log_levels(path: Path) -> dict[str, int]:
    """Count of JSON log lines per level in the agent's stderr."""
    counts: dict[str, int] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            level = str(json.loads(line).get("level", "?"))
        except (json.JSONDecodeError, AttributeError):
            level = "non-json"
        counts[level] = counts.get(level, 0) + 1
    return counts


_LABELS = {
    "rss_mib": "RSS (MiB)",
    "rss_anon_mib": "anonymous RSS (MiB)",
    "open_fds": "open fds",
    "threads": "threads",
}


def plot(samples: list[Sample], trends: list[Trend], warmup_s: float, path: Path) -> str:
    """Each metric and snapshot disk use over time, with the post-warm-up trend lines."""
    try:
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "matplotlib is not installed: no plot written (pip install matplotlib)"
    importlib.import_module("matplotlib").use("Agg")
    minutes = np.array([s.t_s for s in samples]) / 60
    post = minutes[minutes >= warmup_s / 60]
    fig, axes = plt.subplots(len(trends) + 1, 1, figsize=(9, 2.4 * (len(trends) + 1)), sharex=True)
    for ax, trend in zip(axes, trends, strict=False):
        ax.plot(minutes, [getattr(s, trend.metric) for s in samples], marker=".", lw=1)
        if len(post):
            line = trend.mean + trend.slope_per_h * (post - float(post.mean())) / 60
            judged = "" if trend.metric in METRICS else " (not judged)"
            ax.plot(post, line, "--", label=f"trend {trend.slope_per_h:+.2f}/h{judged}")
            ax.legend(loc="lower right")
        ax.set_ylabel(_LABELS.get(trend.metric, trend.metric))
    axes[-1].plot(minutes, [s.snapshot_mib for s in samples], color="tab:gray")
    axes[-1].set_ylabel("snapshots (MiB)")
    axes[-1].set_xlabel("minutes")
    for ax in axes:
        ax.axvspan(0, warmup_s / 60, color="0.9", zorder=0)
        ax.grid(alpha=0.3)
    axes[0].set_title("Soak: paced cameras, agent process (grey: warm-up)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    return f"plot written to {path}"


def report(result: dict[str, Any], samples: list[Sample], trends: list[Trend]) -> str:
    """The text tables: a sample every ~tenth of the run, the trends, the agent's totals."""
    step = max(1, len(samples) // 10)
    picked = [*samples[::step], *([samples[-1]] if (len(samples) - 1) % step else [])]
    rows = [
        [f"{s.t_s / 60:.1f}", f"{s.rss_mib:.1f}", f"{s.rss_anon_mib:.1f}", s.open_fds, s.threads,
         f"{s.cpu_pct:.0f}", s.background_cores, s.snapshot_files, f"{s.snapshot_mib:.1f}"]
        for s in picked
    ]  # fmt: skip
    heads = ["min", "RSS MiB", "anon MiB", "fds", "threads", "CPU %", "bg cores", "snapshots"]
    heads.append("snap MiB")
    text = table("Samples (child process)", heads, rows)
    trows = [
        [t.metric, t.mean, t.minimum, t.maximum, f"{t.slope_per_h:+.3f}",
         f"{t.change_over_window:+.3f}", f"{t.growth_pct_per_h:+.3f}", "ok" if t.ok else "GROWS",
         "" if t.metric in METRICS else "(not judged)"]
        for t in trends
    ]  # fmt: skip
    theads = ["metric", "mean", "min", "max", "slope/h", "fit change", "% of mean/h", "flat", ""]
    text += table("Trends after warm-up", theads, trows)
    agent, snaps = result["agent"], result["snapshots"]
    text += (
        f"\nagent: exit={result['exit_code']} ({result['sigterm_to_exit_s']} s after SIGTERM) "
        f"events={agent.get('events_total')} "
        f"decoded={agent.get('frames_decoded')} processed={agent.get('frames_processed')} "
        f"dropped={agent.get('frames_dropped')} ({agent.get('drop_pct')} %) "
        f"skipped={agent.get('frames_skipped')} "
        f"reconnects={agent.get('reconnects')} log_levels={result['log_levels']}\n"
        f"snapshots: {snaps['files']} files, {snaps['mib']} MiB (budget {snaps['budget_mib']} "
        f"MiB; written at {snaps['mib_per_h']} MiB/h before the budget); "
        f"events.jsonl {result['events_jsonl_mib']} MiB\n"
        f"criterion: {result['criterion']}\nverdict: {result['verdict']}\n"
    )
    return text


def warmup_plan(args: argparse.Namespace, samples: list[Sample], config: Path) -> tuple[float, str]:
    """The warm-up to leave out of the trends, and why.

    `--warmup F` takes the first fraction F of the run. By default (auto) it is the time
    the agent's bounded state needs to fill, and at least 20 % of the run: the drift
    monitor's baseline plus its recent window (`drift.baseline_samples +
    window_samples` samples at `sample_every_s`), and the moment the snapshot folder
    first reaches its budget (from then on the store deletes one old file per new one).
    Memory allocated while these fill is working set, not a leak.
    """
    run_s = args.minutes * 60
    if args.warmup is not None:
        return args.warmup * run_s, f"the first {args.warmup:.0%} of the run"
    drift = load_config(config).drift
    drift_s = (drift.baseline_samples + drift.window_samples) * drift.sample_every_s
    full = [s.t_s for s in samples if s.snapshot_mib >= 0.99 * args.snapshot_max_mib]
    budget_s = full[0] if full else 0.0
    warm = min(0.8 * run_s, max(0.2 * run_s, drift_s if drift.enabled else 0.0, budget_s))
    budget = f"reached at {budget_s / 60:.1f} min" if full else "not reached"
    why = (
        f"the first {warm / 60:.1f} min (auto: the longest of 20 % of the run, the drift "
        f"baseline + recent window {drift_s / 60:.1f} min, the snapshot budget {budget}; "
        "at most 80 % of the run)"
    )
    return warm, why


def analyse(
    args: argparse.Namespace,
    samples: list[Sample],
    rc: int,
    stop_s: float,
    workdir: Path,
    *,
    config: Path,
) -> Any:
    warmup_s, warmup_why = warmup_plan(args, samples, config)
    trends = [
        fit_trend(m, samples, warmup_s, args.rss_growth_pct, args.count_tolerance)
        for m in (*METRICS, *INFO_METRICS)
    ]
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    files, size = dir_usage(workdir / "snapshots")
    jsonl = workdir / "events.jsonl"
    passed = rc == 0 and all(t.ok for t in trends if t.metric in METRICS)
    result: dict[str, Any] = {
        "started": args.started,
        "finished": now_utc(),
        "command": " ".join(sys.argv),
        "cameras": args.cameras,
        "workers": args.workers,
        "minutes": args.minutes,
        "interval_s": args.interval,
        "drift_sample_every_s": args.drift_sample_every_s,
        "warmup_s": warmup_s,
        "cores": cores(),
        "exit_code": rc,
        "sigterm_to_exit_s": stop_s,
        "criterion": (
            f"after {warmup_why}: open fds and threads change by "
            f"less than {args.count_tolerance:g} along the fitted line, RSS slope below "
            f"{args.rss_growth_pct:g} % of its mean per hour; agent exits 0 on SIGTERM"
        ),
        "verdict": "PASS" if passed else "FAIL",
        "trends": [asdict(t) for t in trends],
        "agent": agent_totals(summary),
        "log_levels": log_levels(workdir / "agent.log"),
        "snapshots": {
            "files": files,
            "mib": round(size / 2**20, 1),
            "budget_mib": args.snapshot_max_mib,
            "mib_per_h": rate_mib_per_h(samples, args.snapshot_max_mib),
        },
        "events_jsonl_mib": round(jsonl.stat().st_size / 2**20, 1) if jsonl.is_file() else 0,
        "samples": [asdict(s) for s in samples],
    }
    return result, trends


def rate_mib_per_h(samples: list[Sample], budget_mib: float) -> float | None:
    """Snapshot MiB written per hour while under 90 % of the budget (eviction not yet running)."""
    early = [s for s in samples if s.snapshot_mib < 0.9 * budget_mib]
    if len(early) < 2 or early[-1].t_s <= early[0].t_s:
        return None
    slope = (early[-1].snapshot_mib - early[0].snapshot_mib) / (early[-1].t_s - early[0].t_s)
    return round(3600 * slope, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0, help="run length (default 30)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--cameras", type=int, default=4, help="paced 10 fps cameras (default 4)")
    p.add_argument("--workers", type=int, default=2, help="inference sessions (default 2)")
    p.add_argument(
        "--warmup",
        type=float,
        default=None,
        help="warm-up fraction (default: auto, the agent's fill time, at least 0.2)",
    )
    p.add_argument("--rss-growth-pct", type=float, default=5.0, help="RSS %%/h limit")
    p.add_argument("--count-tolerance", type=float, default=2.0, help="fds/threads limit")
    p.add_argument(
        "--snapshot-max-mib", type=int, default=150, help="agent snapshot budget (default 150)"
    )
    p.add_argument(
        "--drift-sample-every-s",
        type=float,
        default=None,
        help="drift monitor sampling period (default: the config's, 1 s); shorter fills its "
        "windows sooner, for short soaks",
    )
    p.add_argument("--video", default=None, help="video file (default: vtest.avi)")
    p.add_argument("--json", default=None, help="write the result and all samples here")
    p.add_argument("--plot", default=None, help="write the PNG plot here")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, snapshots)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.started = now_utc()
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    video = find_video(args.video)
    config = write_config(
        workdir,
        video,
        args.cameras,
        args.workers,
        args.snapshot_max_mib,
        drift_sample_every_s=args.drift_sample_every_s,
    )
    agent_argv = [sys.executable, "-m", "agent", "run", "-c", str(config), "--log-format"]
    agent_argv += ["json", "--summary-json", str(workdir / "summary.json")]
    progress(f"soak: {args.cameras} cameras for {args.minutes:g} min in {workdir}")
    samples, rc, stop_s = run_soak(agent_argv, workdir, args.minutes * 60, args.interval)
    result, trends = analyse(args, samples, rc, stop_s, workdir, config=config)
    print(report(result, samples, trends))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.plot:
        progress(plot(samples, trends, result["warmup_s"], Path(args.plot)))
    if args.keep or rc != 0:
        progress(f"kept {workdir} (agent.log, agent.out, snapshots)")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result["verdict"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
