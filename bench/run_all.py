"""`make bench`: run the benchmark suite and regenerate docs/benchmarks.md and its plots.

Each benchmark runs in its own process (its stdout in `bench/out/<step>.txt`, its figures
in `bench/out/<step>.json`), in this order: pipeline (stages, bound, end to end,
without its own live search), peers (OpenCV and the naive loop vs the agent), streams
per device (vtest and 1080p30 H.264), accuracy on coco128, fleet ingest (`--quick`),
a 10-minute soak (`bench/soak.py` with its bounded state filling in 3 minutes; the
60-minute soak is run on its own), GPU (states "not measured" without one). Then the
part of docs/benchmarks.md between `<!-- bench:begin -->`
and `<!-- bench:end -->` is rewritten from the JSON files (the hand-written sections
below the markers are kept), and the PNGs under docs/bench/ are redrawn.

    .venv/bin/python bench/run_all.py            # ~24 min on 2 cores
    .venv/bin/python bench/run_all.py --quick    # ~11 min, rough figures
    .venv/bin/python bench/run_all.py --render-only   # redraw docs from bench/out/*.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, CpuMeter, cores, load_average, now_utc, progress
from bench.pipeline import ROUND_HEAD, round_rows

OUT = REPO / "bench" / "out"
DOC = REPO / "docs" / "benchmarks.md"
PLOTS = REPO / "docs" / "bench"
COCO128 = (REPO / "var" / "assets" / "coco128", REPO.parent / "shared" / "assets" / "coco128")


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    timeout_s: float


def steps(quick: bool) -> list[Step]:
    py = (sys.executable,)
    pipeline = ("--quick",) if quick else ("--repeats", "3")
    peers = ("--repeats", "1", "--limit", "300") if quick else ("--repeats", "3")
    streams = ("--window-s", "6", "--warmup-s", "2", "--max-n", "8") if quick else ()
    out = [
        Step("pipeline", (*py, "bench/pipeline.py", "--skip-live", *pipeline), 900),
        Step("peers", (*py, "bench/peers.py", *peers), 900),
        Step("streams", (*py, "bench/streams.py", *streams), 1200),
    ]
    coco = next((p for p in COCO128 if (p / "labels").is_dir()), None)
    if coco is not None:
        yolo = (str(coco / "images"), str(coco / "labels"), str(coco / "classes.yaml"))
        names = ("agent", "agent-square", "agent-agnostic", "yolox-demo")
        paths = tuple(a for name in names for a in ("--path", name))
        args = (*py, "bench/accuracy.py", "--json", str(OUT / "accuracy.json"), "detect")
        out.append(Step("accuracy", (*args, "--yolo", *yolo, *paths), 600))
    if (REPO / "bench" / "fleet.py").is_file():
        plot = ("--plot", str(PLOTS / "fleet.png"))
        out.append(Step("fleet", (*py, "bench/fleet.py", "--quick", *plot), 900))
    # a short soak whose bounded state fills in 3 minutes (drift windows sampled 5x as
    # often, a 40 MiB snapshot budget); docs/benchmarks.md, Soak, has the 60-minute one
    length = (
        ("--minutes", "3", "--interval", "3") if quick else ("--minutes", "10", "--interval", "5")
    )
    fill = ("--snapshot-max-mib", "12", "--drift-sample-every-s", "0.05") if quick else (
        "--snapshot-max-mib", "40", "--drift-sample-every-s", "0.2")  # fmt: skip
    soak_plot = ("--plot", str(PLOTS / "soak.png"))
    out.append(Step("soak", (*py, "bench/soak.py", *length, *fill, *soak_plot), 900))
    if (REPO / "bench" / "gpu.py").is_file():
        out.append(Step("gpu", (*py, "bench/gpu.py"), 600))
    return out


def run_step(step: Step) -> dict[str, Any]:
    """Run one benchmark script; its wall time, exit code and the background load meanwhile."""
    log = OUT / f"{step.name}.txt"
    argv = list(step.argv)
    if step.name != "accuracy":
        argv += ["--json", str(OUT / f"{step.name}.json")]
    progress(f"{step.name}: {' '.join(argv[1:])}")
    before = os.times()
    rc: int | str
    with (
        CpuMeter() as meter,
        open(log, "w", encoding="utf-8") as out,
        open(log.with_suffix(".log"), "w", encoding="utf-8") as err,
    ):
        try:
            rc = subprocess.run(  # noqa: S603 - our own scripts
                argv,
                check=False,
                cwd=REPO,
                stdout=out,
                stderr=err,
                timeout=step.timeout_s,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    after = os.times()
    child_cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    m = meter.result
    background = None
    if m.background_cores is not None:
        background = round(max(0.0, m.background_cores - child_cpu / m.wall_s), 2)
    progress(f"{step.name}: rc={rc} in {m.wall_s:.0f} s (background {background} cores)")
    return {
        "name": step.name,
        "rc": rc,
        "wall_s": round(m.wall_s, 1),
        "cpu_s": round(child_cpu, 1),
        "background_cores": background,
        "log": str(log.relative_to(REPO)),
    }


def load_results() -> dict[str, Any]:
    """Every bench/out/<step>.json that exists (a step that failed keeps its older file out)."""
    results: dict[str, Any] = {}
    for name in ("pipeline", "peers", "streams", "accuracy", "fleet", "soak", "gpu", "run"):
        path = OUT / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text(encoding="utf-8"))
    fleet_log = OUT / "fleet.txt"
    if "fleet" in results and fleet_log.is_file():
        results["fleet_text"] = fleet_log.read_text(encoding="utf-8")
    return results


# --- report ---------------------------------------------------------------------------

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
PUBLISHED = {"map_50_95": 0.313, "map_50": 0.487}
"""coco128 with YOLOX's own ONNX Runtime demo (../shared/assets/README.md)."""
TOLERANCE = 0.005


def _f(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _verdict(value: float | None, target: float) -> str:
    return "-" if value is None else ("PASS" if value >= target else "MISS")


def _md_table(headers: list[str], rows: list[list[Any]]) -> str:
    align = ["---"] + ["---:"] * (len(headers) - 1)
    lines = [headers, align, *[[str(c) for c in r] for r in rows]]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def _headline(r: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    pipe, peers, streams, acc = (r.get(k) for k in ("pipeline", "peers", "streams", "accuracy"))
    if pipe:
        ms = 1000 * pipe["stages_all_cores"]["sum_cpu_s_per_frame"]
        one = 1000 * pipe["stages"]["sum_cpu_s_per_frame"]
        rows.append(
            ["CPU per frame, all stages alone (every core loaded / one core)",
             f"{ms:.2f} / {one:.2f} ms", "", ""]
        )  # fmt: skip
        eff = pipe["efficiency"]
        frac, n = eff["ratio"], len(eff["rounds"])
        rows.append(
            [
                f"end to end / stage bound with every core loaded, median of {n} rounds "
                f"({eff['min']:.2f}-{eff['max']:.2f})",
                f"{frac:.3f}", ">= 0.9", _verdict(frac, 0.9),
            ]
        )  # fmt: skip
        rows.append(
            [
                "end to end / stage bound from one core, the others idle (same rounds)",
                f"{eff['ratio_one_core']:.3f}", "", "",
            ]
        )  # fmt: skip
    if peers:
        for name, target in (("agent / naive", 2.5), ("agent / opencv", 2.0)):
            value = peers["ratios"][name]
            rows.append(
                [
                    f"{name} (same run, medians)",
                    f"{value:.2f}x",
                    f">= {target}",
                    _verdict(value, target),
                ]
            )
    if streams:
        for key, res in streams["inputs"].items():
            rows.append([f"streams per device, {key}", _streams_text(res), "stated", ""])
    if acc and "agent" in acc:
        a = acc["agent"]
        ok = a["map_50_95"] >= PUBLISHED["map_50_95"] - TOLERANCE
        rows.append(
            [
                "coco128 mAP@0.5:0.95 / @0.5, agent's own path",
                f"{a['map_50_95']:.3f} / {a['map_50']:.3f}",
                f">= {PUBLISHED['map_50_95']} - {TOLERANCE}",
                "PASS" if ok else "MISS",
            ]
        )
    soak = r.get("soak")
    if soak:
        trend = {t["metric"]: t for t in soak["trends"]}
        rows.append(
            [
                f"soak, {soak['minutes']:g} min, {soak['cameras']} paced cameras: after the "
                "warm-up, RSS growth (coarse: a short window) / open fds / threads change",
                f"{trend['rss_mib']['growth_pct_per_h']:+.1f} %/h / "
                f"{trend['open_fds']['change_over_window']:+.1f} / "
                f"{trend['threads']['change_over_window']:+.1f}",
                "< 5 %/h / < 2 / < 2, exit 0",
                soak["verdict"],
            ]
        )
    gpu = r.get("gpu")
    rows.append(["GPU", _gpu_text(gpu), "", ""])
    return rows


def _soak_md(soak: dict[str, Any], plots: dict[str, str]) -> str:
    labels = {"rss_mib": "RSS (MiB)", "open_fds": "open fds", "threads": "threads",
              "rss_anon_mib": "anonymous RSS (MiB, not judged)"}  # fmt: skip
    rows = [
        [labels.get(t["metric"], t["metric"]), _f(t["mean"]), _f(t["minimum"]),
         _f(t["maximum"]), f"{t['slope_per_h']:+.2f}", f"{t['change_over_window']:+.2f}",
         f"{t['growth_pct_per_h']:+.2f}" if t["metric"].startswith("rss") else "-",
         "flat" if t["ok"] else "GROWS"]
        for t in soak["trends"]
    ]  # fmt: skip
    heads = ["metric", "mean", "min", "max", "slope per hour", "fitted change", "% of mean/h"]
    agent, snaps = soak["agent"], soak["snapshots"]
    judged_min = soak["minutes"] - soak["warmup_s"] / 60
    image = f"\n\n![soak]({plots['soak']})" if "soak" in plots else ""
    return (
        f"### Soak (`bench/soak.py`, {soak['minutes']:g} min)\n\n"
        f"The real agent process on {soak['cameras']} copies of the sample video, each paced "
        "at 10 fps and looped, every output on, watched from outside. Its bounded state "
        "fills in minutes here (drift windows sampled every "
        f"{soak.get('drift_sample_every_s') or 1:g} s, snapshot budget "
        f"{snaps['budget_mib']} MiB), so the rest of the run shows whether anything still "
        "grows. "
        f"Criterion: {soak['criterion']}. **{soak['verdict']}**. Over a window of "
        f"{judged_min:.0f} minutes the fitted RSS slope is coarse: the periodic heap trim's "
        "saw-tooth (~10 MiB a minute) and the heap settling after the budget fills move it "
        "by tens of % per hour either way. It catches gross growth; the slope that judges a "
        "slow leak is the 60-minute soak's, with the default settings (Soak, below).\n\n"
        + _md_table([*heads, "verdict"], rows)
        + f"\n\nAgent: exit {soak['exit_code']} {soak['sigterm_to_exit_s']} s after SIGTERM; "
        f"{agent.get('events_total')} events; {agent.get('frames_decoded')} frames decoded, "
        f"{agent.get('frames_dropped')} dropped ({agent.get('drop_pct')} %); snapshots "
        f"{snaps['files']} files, {snaps['mib']} MiB.{image}"
    )


def _streams_text(res: dict[str, Any]) -> str:
    inp, n = res["input"], res["max_sustained"]
    more = "+" if res["search_capped"] else ""
    size = f"{inp['width']}x{inp['height']} {inp['codec']}"
    return f"**{n}{more} x {size} at {res['camera_fps']:g} fps**"


def _gpu_text(gpu: dict[str, Any] | None) -> str:
    if not gpu:
        return "not measured (bench/gpu.py did not run)"
    if not gpu.get("measured"):
        return f"not measured: {gpu.get('reason', 'no GPU')}"
    trt = gpu["tensorrt_backend"]
    return f"{gpu['device']}: TensorRT {gpu['precision']} {trt['fps']:.0f} frames/s (bench/gpu.py)"


def _pipeline_md(pipe: dict[str, Any]) -> str:
    rows = [
        [
            f"agent end to end, workers={w['workers']}",
            _f(w["fps"]),
            _f(w["runs"][0]["background_cores"], 2),
        ]
        for w in pipe["end_to_end"]["by_workers"]
    ]
    d, n = pipe["default_inference"], pipe["naive_loop"]
    st, sa = pipe["stages"], pipe["stages_all_cores"]
    rows += [
        ["inference only, default ORT session", _f(d["fps"]), _f(d["background_cores"], 2)],
        ["naive loop", _f(n["fps"]), _f(n["background_cores"], 2)],
        [f"stage bound, every core loaded ({st['cores']} cores / CPU per frame)",
         _f(sa["bound_fps"]), _f(sa["background_cores"], 2)],
        ["stage bound, one core (the others idle)", _f(st["bound_fps"]),
         _f(st["background_cores"], 2)],
    ]  # fmt: skip
    stages = ", ".join(
        f"{k} {1000 * sa['cpu_s_per_frame'][k]:.2f} ({1000 * v:.2f})"
        for k, v in st["cpu_s_per_frame"].items()
    )
    eff = pipe["efficiency"]
    return (
        "### Throughput and efficiency (`bench/pipeline.py --skip-live`)\n\n"
        + _md_table(["frames/s", "value", "bg cores"], rows)
        + "\n\nStages alone, CPU ms per frame with every core loaded (one core, the others "
        + f"idle), medians of {st.get('passes', 1)} rounds: {stages}; sum "
        + f"{1000 * sa['sum_cpu_s_per_frame']:.2f} ({1000 * st['sum_cpu_s_per_frame']:.2f}).\n\n"
        + "End to end (2 workers) against the stage bounds, in rounds: the stage rig on one "
        + "core, the agent over the whole video, and, the instant it ends, one copy of the rig "
        + "per core at once (built beforehand), so each ratio compares the same state of this "
        + "shared machine. "
        + f"Median **{eff['ratio']:.3f}** with every core loaded, {eff['ratio_one_core']:.3f} "
        + "from one core.\n\n"
        + _md_table(ROUND_HEAD, round_rows(eff))
    )


def _peers_md(peers: dict[str, Any]) -> str:
    names = {"agent": "agent end to end (2 workers)", "naive": "naive loop (PyAV, PIL, ORT)",
             "opencv": f"OpenCV {peers['meta']['opencv']} VideoCapture + cv2.dnn"}  # fmt: skip
    rows = [
        [
            names[k],
            _f(peers["fps"][k]),
            ", ".join(_f(x["fps"]) for x in v),
            _f(peers["background_cores"][k], 2),
            _f(1000 * min(x["cpu_s_per_frame"] for x in v), 2),
        ]
        for k, v in peers["runs"].items()
    ]
    ratios = ", ".join(f"{k} **{v:.2f}x**" for k, v in peers["ratios"].items())
    return (
        "### Peers on the same video and model (`bench/peers.py`, interleaved repeats)\n\n"
        + _md_table(["frames/s", "median", "runs", "bg cores", "CPU ms/frame (best)"], rows)
        + f"\n\nRatios of medians: {ratios}. CPU ms/frame: the process's CPU time per frame "
        "in its best run, helper threads included (the peers' loops are sequential but their "
        "inference, a default ORT session or cv2.dnn, uses both cores, and their thread pools' "
        "spin-waiting counts). Frames/s swing with the background load; compare rows measured "
        "under similar load."
    )


def _streams_md(streams: dict[str, Any], plots: dict[str, str]) -> str:
    parts = ["### Streams per device (`bench/streams.py`)\n",
             "Sustained: drops < 1 %, >= 97 % of the paced rate delivered, frame latency p99 "
             "< 100 ms over every frame of the 20 s window (3 s warm-up excluded; 2 workers). "
             "All cameras start in the same instant, so N frames arrive together every frame "
             "period (phase-locked: a pessimistic case). The worst single camera's p99 is shown "
             "beside it: with ~200 frames per camera it is about that camera's 2nd-worst frame, "
             "a noisy statistic."]  # fmt: skip
    for key, res in streams["inputs"].items():
        rows = [
            [t["cameras"], _f(100 * t["drop_fraction"], 2), _f(100 * t["delivered_share"]),
             _f(t["frame_latency_ms"]["p50"]), _f(t["frame_latency_ms"]["p99"]),
             _f(t["frame_latency_ms"].get("p99_worst_camera")),
             _f(t["background_cores"], 2), "yes" if t["sustained"] else "no"]
            for t in res["trials"]
        ]  # fmt: skip
        parts.append(f"\n**{key}**: {_streams_text(res)}\n")
        heads = ["streams", "drop %", "delivered %", "p50 ms", "p99 ms", "worst camera p99 ms"]
        heads += ["bg cores", "sustained"]
        parts.append(_md_table(heads, rows))
        prof = res.get("latency_profile")
        if prof:
            worst = max(c["p99"] or 0.0 for c in prof["per_camera_ms"].values())
            parts.append(
                f"\nLatency profile (a separate {res['window_s']:g} s run at {prof['cameras']} "
                f"streams, warm-up excluded): worst camera p99 {worst:.1f} ms, background "
                f"{_f(prof['background_cores'], 2)} cores."
            )
    parts += [f"\n![{k}]({v})" for k, v in plots.items() if k in ("streams", "latency")]
    return "\n".join(parts)


def _accuracy_md(acc: dict[str, Any]) -> str:
    desc = {
        "agent": "agent's own path (swscale letterbox, rect input, class-aware NMS)",
        "agent-square": "agent's own path with a square input (rect off)",
        "agent-agnostic": "agent pre/post-processing, class-agnostic NMS",
        "yolox-demo": "YOLOX ONNX Runtime demo replica (OpenCV letterbox, agnostic NMS)",
        "yolox-demo-aware": "YOLOX demo replica, class-aware NMS",
    }
    rows = [
        [desc[k], f"{v['map_50_95']:.4f}", f"{v['map_50']:.4f}",
         f"{round(v['map_50_95'] - PUBLISHED['map_50_95'], 4) + 0.0:+.4f}", v["detections"]]
        for k, v in acc.items() if k in desc
    ]  # fmt: skip
    table_md = _md_table(
        ["path", "mAP@0.5:0.95", "mAP@0.5", "vs published 0.313", "detections"], rows
    )
    head = (
        f"### Accuracy on coco128 (`bench/accuracy.py`, {acc['images']} images, score >= "
        f"{acc['score_threshold']}, NMS IoU 0.45, pycocotools)\n\n"
    )
    return head + table_md + "\n\n" + _accuracy_notes(acc) + ACCURACY_HOWTO


def _accuracy_notes(acc: dict[str, Any]) -> str:
    if not all(k in acc for k in ("agent", "agent-agnostic", "yolox-demo")):
        return ""
    a, g, d = (acc[k]["map_50_95"] for k in ("agent", "agent-agnostic", "yolox-demo"))
    return (
        f"The published {PUBLISHED['map_50_95']} / {PUBLISHED['map_50']} is what the "
        f"`yolox-demo` replica gets ({d:.3f}): YOLOX's demo calls `multiclass_nms` with its "
        "default `class_agnostic=True` (the assets README calls it class-aware; it is not). "
        f"With the same agnostic NMS the agent's own decode and letterbox score {g - d:+.3f} "
        "(PyAV decode + swscale bilinear resize, which filters when downscaling, against "
        "`cv2.imread` + INTER_LINEAR); its class-aware NMS, which keeps overlapping boxes of "
        f"different classes, adds {a - g:+.3f}. The pipeline's pre/post-processing costs no "
        f"accuracy: {a - d:+.3f} over the reference in all.{_rect_note(acc)}\n"
    )


def _rect_note(acc: dict[str, Any]) -> str:
    if "agent-square" not in acc:
        return ""
    diff = acc["agent"]["map_50_95"] - acc["agent-square"]["map_50_95"]
    return (
        " Rectangular inference (`input.rect`: each image padded to a multiple of 32 only, "
        "not to 416x416; the agent and the other agent rows run it) changes mAP@0.5:0.95 by "
        f"{diff:+.4f} against the same path with a square input, for about a fifth less "
        "inference work on 4:3 and 3:2 images (docs/benchmarks.md, Pipeline)."
    )


ACCURACY_HOWTO = """
Evaluate on your own labelled data (detection: COCO instances json or YOLO folders;
tracking: MOTChallenge `gt.txt`, scored with py-motmetrics at IoU 0.5):

```sh
.venv/bin/python bench/accuracy.py detect --yolo IMAGES/ LABELS/ classes.yaml
.venv/bin/python bench/accuracy.py detect --coco instances.json IMAGES/ --path yolox-demo
.venv/bin/python bench/accuracy.py track --gt MOT17-04/gt/gt.txt --images MOT17-04/img1 \\
    --fps 30 --config configs/demo.yaml --tracks-out tracks.txt  # detector + ByteTracker
.venv/bin/python bench/accuracy.py track --gt gt.txt --detections det.txt --fps 30   # tracker only
.venv/bin/python bench/accuracy.py track --gt gt.txt --tracks tracks.txt   # any tracker's output
```

Add `--json out.json` before the subcommand to keep the figures (per-class AP included).
Ground-truth rows with confidence 0, and classes other than `--gt-classes` (default 1,
pedestrian), are ignored; TrackEval's distractor handling is not replicated.
"""


def _run_md(r: dict[str, Any]) -> str:
    run = r.get("run", {})
    rows = [[s["name"], s["rc"], _f(s["wall_s"] / 60, 1), _f(s["background_cores"], 2), s["log"]]
            for s in run.get("steps", [])]  # fmt: skip
    head = (
        f"Run {run.get('started_utc')} .. {run.get('finished_utc')}: "
        f"**{_f(run.get('wall_s', 0) / 60, 1)} min** on {run.get('cores')} cores"
        f"{' (--quick)' if run.get('quick') else ''}; load average {run.get('load_average')}. "
        "Background cores = CPU other processes kept busy meanwhile (this is a shared machine: "
        "rows with background load above ~0.3 ran on less than the whole machine)."
    )
    return head + "\n\n" + _md_table(["step", "rc", "minutes", "bg cores", "log"], rows)


def render_markdown(r: dict[str, Any], plots: dict[str, str]) -> str:
    parts = [
        "<!-- generated by bench/run_all.py (make bench): edit the code, not this block -->",
        "## Results of the last `make bench`\n",
        _run_md(r),
        "\n### Headline\n",
        _md_table(["question", "answer", "target", ""], _headline(r)),
    ]
    if "throughput" in plots:
        parts.append(f"\n![throughput]({plots['throughput']})")
    sections = (
        ("pipeline", _pipeline_md), ("peers", _peers_md),
        ("streams", lambda x: _streams_md(x, plots)), ("accuracy", _accuracy_md),
    )  # fmt: skip
    parts += [f"\n{fn(r[key])}" for key, fn in sections if key in r]
    if "fleet_text" in r:
        text = r["fleet_text"].strip()
        image = f"\n\n![fleet]({plots['fleet']})" if "fleet" in plots else ""
        parts.append(f"\n### Fleet ingest (`bench/fleet.py --quick`)\n\n```\n{text}\n```{image}")
    if "soak" in r:
        parts.append(f"\n{_soak_md(r['soak'], plots)}")
    parts.append(f"\n### GPU (`bench/gpu.py`)\n\n{_gpu_text(r.get('gpu'))}.")
    return "\n".join(parts)


def draw_plots(r: dict[str, Any]) -> dict[str, str]:
    """PNGs under docs/bench/; returns {name: path relative to docs/}."""
    from bench.streams import plot_capacity, plot_latency

    made: dict[str, Path | None] = {}
    if "streams" in r:
        made["streams"] = plot_capacity(r["streams"], PLOTS / "streams.png")
        made["latency"] = plot_latency(r["streams"], PLOTS / "latency.png")
    if "pipeline" in r and "peers" in r:
        made["throughput"] = _plot_throughput(r, PLOTS / "throughput.png")
    for name in ("fleet", "soak"):  # drawn by their own scripts
        if (PLOTS / f"{name}.png").is_file():
            made[name] = PLOTS / f"{name}.png"
    return {k: str(v.relative_to(DOC.parent)) for k, v in made.items() if v is not None}


def _plot_throughput(r: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers, pipe = r["peers"]["fps"], r["pipeline"]
    bars = {
        "OpenCV\n(cv2.dnn)": peers["opencv"],
        "naive loop": peers["naive"],
        "agent\n(2 workers)": peers["agent"],
        "default ORT\n(inference only)": pipe["default_inference"]["fps"],
        "stage bound\n(cores loaded)": pipe["stages_all_cores"]["bound_fps"],
    }
    figure, ax = plt.subplots(figsize=(8, 3.8))
    ax.bar(list(bars), list(bars.values()), color=["grey", "grey", "tab:blue", "silver", "silver"])
    for i, v in enumerate(bars.values()):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("frames/s (vtest.avi, yolox_nano)")
    ax.set_title("Throughput on this machine (same run)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def splice(doc: str, generated: str) -> str:
    """Replace the text between the markers (or insert them after the title)."""
    begin, end = BEGIN, END
    block = f"{begin}\n{generated.strip()}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    lines = doc.splitlines(keepends=True)
    if lines and lines[0].startswith("# "):
        return lines[0] + "\n" + block + "\n\n" + "".join(lines[1:]).lstrip("\n")
    return block + "\n\n" + doc


def render(results: dict[str, Any]) -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    plots = draw_plots(results)
    generated = render_markdown(results, plots)
    old = DOC.read_text(encoding="utf-8") if DOC.is_file() else "# Benchmarks\n"
    DOC.write_text(splice(old, generated), encoding="utf-8")
    progress(
        f"wrote {DOC.relative_to(REPO)} and {len(plots)} plots under {PLOTS.relative_to(REPO)}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs, rough figures")
    ap.add_argument("--render-only", action="store_true", help="only redraw from bench/out")
    ap.add_argument("--skip", action="append", default=[], help="skip a step (repeatable)")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    PLOTS.mkdir(parents=True, exist_ok=True)
    if not args.render_only:
        t0 = time.monotonic()
        started, load_start = now_utc(), load_average()
        done = []
        for step in steps(args.quick):
            if step.name in args.skip:
                continue
            stale = OUT / f"{step.name}.json"
            stale.unlink(missing_ok=True)
            done.append(run_step(step))
        run = {
            "started_utc": started,
            "finished_utc": now_utc(),
            "wall_s": round(time.monotonic() - t0, 1),
            "quick": args.quick,
            "cores": cores(),
            "load_average": [load_start, load_average()],
            "steps": done,
        }
        (OUT / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    render(load_results())
    failed = [s["name"] for s in load_results().get("run", {}).get("steps", []) if s["rc"] != 0]
    if failed:
        progress(f"steps that failed: {', '.join(failed)} (see bench/out/<step>.txt)")
    return 1 if failed and not args.render_only else 0


if __name__ == "__main__":
    raise SystemExit(main())
