"""Pipeline benchmark: the real agent on the sample video, against what a user gets without it.

Measured in one run, on one machine (see docs/benchmarks.md for how to read it):

1. end to end: the real `Agent` (configs/demo.yaml rules, unpaced file, console off),
   frames/s over the whole video, median of repeats, for 1 and 2 inference workers;
2. inference only in a default ONNX Runtime session (bench/baselines.py);
3. each stage's CPU seconds per frame in isolation, one thread, and the frames/s
   bound they imply for this machine's cores, measured twice per round: on one core
   (the others idle) and with one copy of the rig per core at once (every core loaded,
   as when the agent runs). In each round the one-core pass runs right before a 2-worker
   end-to-end run and the all-cores pass the instant it ends, so each ratio compares
   measurements taken back to back on this shared, drifting machine;
4. the naive sequential loop a user would write (bench/baselines.py), median of repeats;
5. the ratios against the targets of issue 2, PASS or MISS;
6. live capacity: how many paced 10 fps copies of the video the agent sustains with
   under 1 % dropped frames, with frame and event latency percentiles (bench/live.py).

    .venv/bin/python bench/pipeline.py --json bench/out/pipeline.json   # ~4 min on 2 cores
    .venv/bin/python bench/pipeline.py --quick                          # ~1 min
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av
import numpy as np
import onnxruntime as ort
from av.video.reformatter import VideoReformatter

from agent.app import Agent
from agent.config import AgentConfig
from agent.dispatch import EventDispatcher, build_sinks
from agent.inference.detector import Detector
from agent.inference.model import load_model_folder
from agent.inference.onnxrt import OnnxRuntimeBackend
from agent.inference.preprocess import (
    alloc_input_image,
    letterbox_frame,
    to_nchw_float,
)
from agent.ingest.source import DecodedFrame, SourceSpec, open_source
from agent.outputs.snapshot import SnapshotStore, render_snapshot
from agent.rules.engine import RuleEngine
from agent.tracking.bytetrack import ByteTracker
from agent.types import Event, EventPhase, EventRecord
from bench import baselines
from bench.common import (
    CpuMeter,
    agent_config,
    cores,
    find_video,
    fmt,
    load_average,
    median,
    now_utc,
    progress,
    rnd,
    table,
    try_plot,
)
from bench.live import live_capacity

STAGES = (
    "decode",
    "letterbox",
    "to_tensor",
    "inference",
    "postprocess",
    "tracking",
    "rules",
    "outputs",
)
TARGETS = {
    "end_to_end / default_inference": 1.2,
    "end_to_end / naive_loop": 2.5,
    "end_to_end / stage_bound": 0.8,
}


# --- 1. end to end --------------------------------------------------------------------


def end_to_end_run(video: Path, work: Path, workers: int, limit: int | None) -> dict[str, Any]:
    """One run of the real agent over the whole video: frames/s and CPU per frame."""
    cfg = agent_config(video, work, workers=workers)
    agent = Agent(cfg, max_frames=limit)
    agent.warm_up()  # sessions warm before the clock starts, as in the stage rig
    with CpuMeter() as meter:
        started = time.monotonic()
        agent.start()
        agent.wait(poll_s=0.02)
    # the clock stops at the last frame through tracking and rules, not when wait()'s
    # 20 ms poll notices: ~10 ms of a ~4 s run that would otherwise count as throughput
    last = agent.lanes["cam00"].last_frame_at
    summary = agent.close()
    frames = int(summary.cameras["cam00"]["frames_processed"])
    m = meter.result
    elapsed = m.wall_s if last is None else last - started
    return {
        "fps": round(frames / elapsed, 2),
        "frames": frames,
        "events": summary.events,
        "cpu_s_per_frame": round(m.cpu_s / max(1, frames), 5),
        "cpu_utilisation": round(m.cpu_s / (m.wall_s * cores()), 3),
        **m.as_dict(),
    }


def end_to_end(
    video: Path, work: Path, workers: int, repeats: int, limit: int | None
) -> dict[str, Any]:
    runs = []
    for r in range(repeats):
        runs.append(end_to_end_run(video, work / f"e2e-w{workers}-{r}", workers, limit))
        progress(f"end to end workers={workers} run {r + 1}/{repeats}: {runs[-1]['fps']:.1f} fps")
    return {"workers": workers, "fps": median([r["fps"] for r in runs]), "runs": runs}


# --- 3. stages in isolation -------------------------------------------------------------


class StageRig:
    """The agent's per-frame stages wired by hand on one thread, each timed on its own.

    Timed with the process CPU clock so helper threads a library starts (swscale's
    slice threads) are counted too; no other thread of ours is busy meanwhile.
    """

    def __init__(self, cfg: AgentConfig) -> None:
        model = load_model_folder(cfg.model.path)
        rect = model.manifest.input.rect  # rectangular inference, as the agent runs it
        backend = OnnxRuntimeBackend(model.onnx_path, intra_op_threads=1, dynamic_spatial=rect)
        self.det = Detector(model, backend)
        self.det.warm_up()
        self.cam = cfg.cameras[0]
        self.tracker = ByteTracker(cfg.tracker)
        labels = model.manifest.labels
        self.rules = RuleEngine(cfg.device.id, 0, self.cam.id, self.cam.rules, labels)
        self.dispatcher = EventDispatcher(build_sinks(cfg))
        self.snaps = cfg.outputs.snapshots
        self.store = SnapshotStore(self.snaps.dir) if self.snaps is not None else None
        self.inp = inp = model.manifest.input
        spec = SourceSpec.from_config(self.cam.source, self.cam.stall_timeout_s, 1)
        self.source = open_source(spec)
        w, h = self.source.width, self.source.height
        self.lb = self.det.letterbox_for(w, h)  # the agent's input geometry
        self.img = alloc_input_image(self.lb, inp.pad_value)
        self.reformatter = VideoReformatter()  # reused across frames, as the Detector does
        self.tensor = np.empty((1, 3, self.lb.dst_h, self.lb.dst_w), np.float32)
        self.events = 0

    def _outputs(self, frame: av.VideoFrame, raised: list[Event]) -> None:
        """As the lane does: a snapshot JPEG per START, every phase to the sinks."""
        for event in raised:
            jpeg = path = None
            if event.phase is EventPhase.START and self.snaps is not None:
                caption = f"{event.label} {event.score:.2f} {event.rule_id}"
                jpeg = render_snapshot(
                    frame,
                    event.box,
                    caption,
                    max_width=self.snaps.max_width,
                    quality=self.snaps.jpeg_quality,
                )
                if self.store is not None:
                    path = str(self.store.save(self.cam.id, event.event_id, jpeg))
            self.dispatcher.emit(EventRecord(event, snapshot_jpeg=jpeg, snapshot_path=path))
        self.events += len(raised)

    def step(self, decoded: DecodedFrame, seq: int) -> list[float]:
        """Run one frame through every stage after decode; CPU seconds of each."""
        clock, inp, lb = time.process_time, self.inp, self.lb
        t1 = clock()
        letterbox_frame(
            decoded.frame,
            lb,
            self.img,
            channel_order=inp.channel_order,
            pad_value=inp.pad_value,
            reformatter=self.reformatter,
        )
        t2 = clock()
        to_nchw_float(self.img, inp.scale, self.tensor)
        t3 = clock()
        outputs = self.det.backend.infer(self.tensor)
        t4 = clock()
        dets = self.det.postprocess(outputs, lb)
        t5 = clock()
        tracks = self.tracker.update(dets, decoded.stream_time)
        t6 = clock()
        raised = self.rules.update(
            tracks,
            width=lb.src_w,
            height=lb.src_h,
            stream_time=decoded.stream_time,
            wall_time=time.time(),
            frame_seq=seq,
        )
        t7 = clock()
        self._outputs(decoded.frame, raised)
        t8 = clock()
        return [t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6, t8 - t7]

    def close(self) -> None:
        self.source.close()
        self.dispatcher.close()
        self.det.close()


def efficiency_rounds(
    video: Path, work: Path, rounds: int, limit: int | None, stage_frames: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """End to end (2 workers) against the stage bound, measured in rounds.

    This machine drifts (a shared VM: the same ONNX Runtime call costs 5.9 ms for
    minutes, then 6.3 ms), so an end-to-end median and a stage pass taken a minute apart
    compare two different machines. Each round runs the stage rig on one core (the
    others idle), then the agent, then, the instant the agent's run ends, one copy of
    the rig per core at once (built beforehand, `AllCoresPass`); each end-to-end run is
    compared with the two bounds measured right before and right after it, and the
    efficiency is the median over the rounds. Returns (efficiency, the end-to-end runs,
    the one-core stages, the all-cores stages), stage costs as medians over the rounds.
    """
    runs: list[dict[str, Any]] = []
    single: list[dict[str, Any]] = []
    loaded: list[dict[str, Any]] = []
    pairs: list[dict[str, Any]] = []
    for r in range(rounds):
        with AllCoresPass(video, work / f"stages-all-{r}", stage_frames) as every_core:
            # the copies sleep at their barrier: the one-core pass has the others idle
            one = isolated_stages(
                agent_config(video, work / f"stages-{r}", workers=1), stage_frames
            )
            run = end_to_end_run(video, work / f"e2e-w2-{r}", 2, limit)
            every = every_core.run()
        runs.append(run)
        single.append(one)
        loaded.append(every)
        ratio, ratio_one = run["fps"] / every["bound_fps"], run["fps"] / one["bound_fps"]
        pairs.append(
            {
                "end_to_end_fps": run["fps"],
                "bound_fps": round(every["bound_fps"], 2),
                "ratio": round(ratio, 3),
                "bound_one_core_fps": round(one["bound_fps"], 2),
                "ratio_one_core": round(ratio_one, 3),
                "agent_cpu_s_per_frame": run["cpu_s_per_frame"],
                "stages_cpu_s_per_frame": every["sum_cpu_s_per_frame"],
                "stages_one_core_cpu_s_per_frame": one["sum_cpu_s_per_frame"],
                "background_cores": [
                    run["background_cores"],
                    one["background_cores"],
                    every["background_cores"],
                ],
            }
        )
        progress(
            f"round {r + 1}/{rounds}: end to end {run['fps']:.1f} fps; stage bound "
            f"{every['bound_fps']:.1f} fps all cores loaded (ratio {ratio:.3f}), "
            f"{one['bound_fps']:.1f} on one core (ratio {ratio_one:.3f})"
        )
    ratios = [p["ratio"] for p in pairs]
    ratios_one = [p["ratio_one_core"] for p in pairs]
    efficiency = {
        "ratio": median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "ratio_one_core": median(ratios_one),
        "min_one_core": min(ratios_one),
        "max_one_core": max(ratios_one),
        "rounds": pairs,
    }
    e2e = {"workers": 2, "fps": median([r["fps"] for r in runs]), "runs": runs}
    return efficiency, e2e, _median_stages(single), _median_stages(loaded)


def _median_stages(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-stage medians over several stage passes (rounds, or copies), and their bound."""
    per_stage = {k: median([p["cpu_s_per_frame"][k] for p in passes]) for k in STAGES}
    total = sum(per_stage.values())
    return {
        **passes[0],
        "cpu_s_per_frame": {k: round(v, 6) for k, v in per_stage.items()},
        "sum_cpu_s_per_frame": round(total, 6),
        "bound_fps": cores() / total,
        "background_cores": max(p["background_cores"] or 0.0 for p in passes),
        "passes": len(passes),
    }


def isolated_stages(
    cfg: AgentConfig, limit: int, ready: Callable[[], object] | None = None
) -> dict[str, Any]:
    """CPU seconds per frame of each stage in isolation, and the bound they imply.

    `ready` is called once the rig is built, right before the clock starts (the
    all-cores pass starts its copies together with it).
    """
    rig = StageRig(cfg)
    totals = np.zeros(len(STAGES))
    frames = 0
    stream = rig.source.frames()
    if ready is not None:
        ready()
    with CpuMeter() as meter:
        while frames < limit:
            t0 = time.process_time()
            decoded = next(stream, None)
            decode_s = time.process_time() - t0
            if decoded is None:
                break
            totals += [decode_s, *rig.step(decoded, frames)]
            frames += 1
    stream.close()
    rig.close()
    per_frame = {k: float(v) / max(1, frames) for k, v in zip(STAGES, totals, strict=True)}
    total = sum(per_frame.values())
    return {
        "frames": frames,
        "events": rig.events,
        "cpu_s_per_frame": {k: round(v, 6) for k, v in per_frame.items()},
        "sum_cpu_s_per_frame": round(total, 6),
        "cores": cores(),
        "bound_fps": cores() / total,
        "letterbox_size": [rig.lb.new_w, rig.lb.new_h],
        "background_cores": rnd(meter.result.background_cores, 2),
    }


def _stage_copy(video: str, work: str, limit: int, gates: tuple[Any, Any], results: Any) -> None:
    """One copy of the stage rig in a child process (`AllCoresPass`)."""
    cfg = agent_config(Path(video), Path(work), workers=1)
    built, start = gates

    def ready() -> None:
        built.wait()  # rig built, model warm: the parent may start the run it compares
        start.wait()  # released the moment that run ends

    results.put(isolated_stages(cfg, limit, ready=ready))


class AllCoresPass:
    """The stage rig on every core at once: one copy per core, started together.

    The single-thread pass measures each stage with the other cores idle; the agent runs
    with every core busy, when a core is slower (shared caches and memory bandwidth,
    the host's clock and its other tenants). Here each copy still times each stage on
    its own, in one thread, but under the load the agent runs under; per-stage costs
    are the median over the copies.

    The copies are built when the pass is entered (imports, model, warm session, open
    video) and then sleep at a barrier; `run()` releases them, so the pass starts the
    instant the end-to-end run it is compared with has ended, with no start-up gap in
    which this machine's state can drift.
    """

    def __init__(self, video: Path, work: Path, limit: int) -> None:
        n = cores()
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding ORT threads
        self._built, self._start = ctx.Barrier(n + 1), ctx.Barrier(n + 1)
        self._results = ctx.Queue()
        self._procs = [
            ctx.Process(
                target=_stage_copy,
                args=(
                    str(video),
                    str(work / f"copy{i}"),
                    limit,
                    (self._built, self._start),
                    self._results,
                ),
                daemon=True,
            )
            for i in range(n)
        ]

    def __enter__(self) -> AllCoresPass:
        for proc in self._procs:
            proc.start()
        try:
            deadline = time.monotonic() + 600
            while self._built.n_waiting < len(self._procs):  # polled only while building
                self._check_copies(deadline)
                time.sleep(0.05)
            self._built.wait(timeout=60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _check_copies(self, deadline: float) -> None:
        dead = [p.exitcode for p in self._procs if p.exitcode]  # 0: done, result sent
        if dead:
            raise RuntimeError(
                f"a stage-rig copy exited with code {dead[0]} (its traceback is above)"
            )
        if time.monotonic() > deadline:
            raise TimeoutError("the stage-rig copies did not finish within 600 s")

    def run(self) -> dict[str, Any]:
        self._start.wait(timeout=60)
        deadline = time.monotonic() + 600
        copies: list[dict[str, Any]] = []
        while len(copies) < len(self._procs):
            try:
                copies.append(self._results.get(timeout=1.0))
            except queue.Empty:
                self._check_copies(deadline)
        n = len(copies)
        return {
            **_median_stages(copies),
            "copy_sums_cpu_s_per_frame": [c["sum_cpu_s_per_frame"] for c in copies],
            # each copy sees its n - 1 siblings as background: what is left is others
            "background_cores": rnd(
                max(0.0, median([c["background_cores"] or 0.0 for c in copies]) - (n - 1)), 2
            ),
        }

    def __exit__(self, *exc: object) -> None:
        self._built.abort()  # a copy still waiting (a failed run) gives up
        self._start.abort()
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()


# --- report -------------------------------------------------------------------------


ROUND_HEAD = ["round", "e2e frames/s", "bound", "ratio", "bound, 1 core", "ratio", "agent CPU ms/f"]


def round_rows(eff: dict[str, Any]) -> list[list[Any]]:
    """One row per efficiency round (this report and docs/benchmarks.md, bench/run_all.py)."""
    return [
        [i + 1, fmt(r["end_to_end_fps"]), fmt(r["bound_fps"]), fmt(r["ratio"], 3),
         fmt(r["bound_one_core_fps"]), fmt(r["ratio_one_core"], 3),
         fmt(1000 * r["agent_cpu_s_per_frame"], 2)]
        for i, r in enumerate(eff["rounds"])
    ]  # fmt: skip


def ratios(fig: dict[str, Any]) -> list[dict[str, Any]]:
    e2e = fig["end_to_end"]["headline_fps"]
    values = {
        "end_to_end / default_inference": e2e / fig["default_inference"]["fps"],
        "end_to_end / naive_loop": e2e / fig["naive_loop"]["fps"],
        "end_to_end / stage_bound": fig["efficiency"]["ratio"],  # median of paired rounds
    }
    out = []
    for name, target in TARGETS.items():
        value = values[name]
        out.append(
            {"ratio": name, "value": round(value, 3), "target": target, "pass": value >= target}
        )
    return out


def report(fig: dict[str, Any]) -> str:
    e2e = fig["end_to_end"]
    rows = [
        [
            f"agent end to end, workers={w['workers']}",
            fmt(w["fps"]),
            fmt(w["runs"][0]["background_cores"], 2),
            ", ".join(fmt(r["fps"]) for r in w["runs"]),
        ]
        for w in e2e["by_workers"]
    ]
    d, p, n = fig["default_inference"], fig["parallel_inference"], fig["naive_loop"]
    rows.append(
        [
            "inference only, default ORT session (square input)",
            fmt(d["fps"]),
            fmt(d["background_cores"], 2),
            ", ".join(fmt(v) for v in d["block_fps"]),
        ]
    )
    rows.append(
        [
            f"inference only, {p['sessions']} x 1-thread sessions at "
            + "x".join(str(v) for v in reversed(p.get("input", [])[-2:])),
            fmt(p["fps"]),
            fmt(p["background_cores"], 2),
            "",
        ]
    )
    rows.append(
        [
            "naive loop (PyAV, PIL, ORT, numpy)",
            fmt(n["fps"]),
            fmt(n["background_cores"], 2),
            ", ".join(fmt(x) for x in n.get("runs_fps", [])),
        ]
    )
    st, sa = fig["stages"], fig["stages_all_cores"]
    for name, stages in (("every core loaded", sa), ("one core, the others idle", st)):
        rows.append(
            [
                f"stage bound, {name} ({st['cores']} cores / CPU per frame)",
                fmt(stages["bound_fps"]),
                fmt(stages["background_cores"], 2),
                "",
            ]
        )
    out = [table("Throughput (frames/s)", ["", "frames/s", "background cores", "runs"], rows)]
    stage_rows = [
        [k, fmt(1000 * sa["cpu_s_per_frame"][k], 3), fmt(1000 * v, 3)]
        for k, v in st["cpu_s_per_frame"].items()
    ]
    stage_rows.append(
        ["sum", fmt(1000 * sa["sum_cpu_s_per_frame"], 3), fmt(1000 * st["sum_cpu_s_per_frame"], 3)]
    )
    for w in e2e["by_workers"]:
        cpu = median([r["cpu_s_per_frame"] for r in w["runs"]])
        stage_rows.append([f"(agent, workers={w['workers']}: process CPU)", fmt(1000 * cpu, 3), ""])
    out.append(
        table(
            "Stages in isolation (CPU ms per frame, each timed alone in one thread; medians)",
            ["stage", "every core loaded", "one core"],
            stage_rows,
        )
    )
    eff = fig["efficiency"]
    out.append(
        table(
            f"End to end / stage bound in rounds: median {eff['ratio']:.3f} "
            f"({eff['min']:.3f}-{eff['max']:.3f}) every core loaded, "
            f"{eff['ratio_one_core']:.3f} one core",
            ROUND_HEAD,
            round_rows(eff),
        )
    )
    rr = [
        [r["ratio"], fmt(r["value"], 2), f">= {r['target']}", "PASS" if r["pass"] else "MISS"]
        for r in fig["ratios"]
    ]
    out.append(table("Targets", ["ratio", "value", "target", ""], rr))
    live = fig.get("live")
    if live:
        lrows = [
            [
                t["cameras"],
                fmt(100 * t["drop_fraction"], 2),
                fmt(100 * t["delivered_share"]),
                fmt(t["frame_latency_ms"]["p50"]),
                fmt(t["frame_latency_ms"]["p99"]),
                fmt(t["event_latency_ms"]["p50"]),
                fmt(t["event_latency_ms"]["p99"]),
                "yes" if t["sustained"] else "no",
            ]
            for t in live["trials"]
        ]
        head = [
            "cameras",
            "drop %",
            "delivered %",
            "frame p50 ms",
            "frame p99",
            "event p50 ms",
            "event p99",
            "sustained",
        ]
        title = (
            f"Live capacity (paced {live['camera_fps']:g} fps copies, {live['window_s']:g} s "
            f"windows): max sustained N = {live['max_sustained']}"
        )
        out.append(table(title, head, lrows))
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    ap.add_argument("--plot", type=Path, help="PNG plot path (default: next to --json)")
    ap.add_argument("--quick", action="store_true", help="short run (~1 min), rough figures")
    ap.add_argument("--video", help="video file (default: the sample vtest.avi)")
    ap.add_argument(
        "--repeats", type=int, help="end-to-end and naive-loop repeats (default 3, quick 1)"
    )
    ap.add_argument(
        "--rounds", type=int, help="paired end-to-end + stage rounds (default 7, quick 1)"
    )
    ap.add_argument("--window-s", type=float, help="live window per N (default 20, quick 5)")
    ap.add_argument("--max-cameras", type=int, default=64, help="cap of the live search")
    ap.add_argument("--skip-live", action="store_true", help="skip the live capacity search")
    return ap.parse_args(argv)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    quick = args.quick
    video = find_video(args.video)
    frames_cap = 300 if quick else 100_000
    repeats = args.repeats or (1 if quick else 3)
    fig: dict[str, Any] = {
        "meta": {
            "started_utc": now_utc(),
            "quick": quick,
            "cores": cores(),
            "python": sys.version.split()[0],
            "onnxruntime": ort.__version__,
            "av": av.__version__,
            "numpy": np.__version__,
            "video": str(video),
            "load_average_start": load_average(),
        }
    }
    model = load_model_folder(agent_config(video, work / "model", workers=1).model.path)
    limit = frames_cap if quick else None

    rounds = args.rounds or (1 if quick else 7)
    progress(f"efficiency: {rounds} rounds of end to end (2 workers) + stages in isolation")
    fig["efficiency"], e2e_w2, fig["stages"], fig["stages_all_cores"] = efficiency_rounds(
        video, work, rounds, limit, frames_cap
    )

    progress("inference only: default session, then one 1-thread session per core")
    runs = 240 if quick else 795
    square = baselines.sample_tensors(video, model, 32)  # what a default session is given
    fig["default_inference"] = baselines.default_session_fps(model.onnx_path, square, runs)
    rect = baselines.sample_tensors(video, model, 32, rect=True)  # the agent's input size
    fig["parallel_inference"] = baselines.parallel_sessions_fps(
        model.onnx_path, rect, runs, cores(), rect=model.manifest.input.rect
    )
    del square, rect

    progress(f"naive sequential loop x{repeats}")
    naive = [baselines.naive_loop(video, model, 150 if quick else 795) for _ in range(repeats)]
    fig["naive_loop"] = {
        **sorted(naive, key=lambda r: r["fps"])[len(naive) // 2],  # the median run
        "runs_fps": [round(r["fps"], 2) for r in naive],
    }

    by_workers = [end_to_end(video, work, 1, repeats, limit), e2e_w2]
    fig["end_to_end"] = {
        "by_workers": by_workers,
        "headline_workers": 2,
        "headline_fps": by_workers[1]["fps"],
    }
    fig["ratios"] = ratios(fig)

    if not args.skip_live:
        window = args.window_s or (5.0 if quick else 20.0)
        warmup = 2.0 if quick else 3.0
        max_n = min(args.max_cameras, 8 if quick else 64)
        fig["live"] = live_capacity(
            video, work, workers=2, warmup_s=warmup, window_s=window, max_n=max_n
        )
    fig["throughput_fps"] = {
        "naive loop": fig["naive_loop"]["fps"],
        "default ORT session (inference only)": fig["default_inference"]["fps"],
        "agent, 1 worker": by_workers[0]["fps"],
        "agent, 2 workers": by_workers[1]["fps"],
        "stage bound (every core loaded)": fig["stages_all_cores"]["bound_fps"],
    }
    fig["meta"]["finished_utc"] = now_utc()
    fig["meta"]["load_average_end"] = load_average()
    return fig


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        fig = run(args, Path(tmp))
    print(report(fig))
    meta = fig["meta"]
    print(
        f"\nrun {meta['started_utc']} .. {meta['finished_utc']}, {meta['cores']} cores, "
        f"load average {meta['load_average_start']} -> {meta['load_average_end']}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(fig, indent=2, default=str) + "\n", encoding="utf-8")
        progress(f"figures written to {args.json}")
    plot = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if plot is not None and "live" in fig:
        progress(try_plot(fig, plot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
