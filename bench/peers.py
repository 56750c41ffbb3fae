"""Peers: what people use instead of the agent, on the same input and model, in one run.

- OpenCV: `cv2.VideoCapture` decode, the YOLOX letterbox in OpenCV (`cv2.resize`
  INTER_LINEAR, top-left pad 114) and `cv2.dnn.blobFromImage`, `cv2.dnn` inference
  (`readNetFromONNX`, default engine, backend, target and threads), numpy YOLOX decode and
  `cv2.dnn.NMSBoxesBatched` (class-aware); sequential, end to end.
- The naive loop (`bench/baselines.py`): PyAV + PIL + ONNX Runtime + numpy.
- The agent end to end (`bench/pipeline.py`'s `end_to_end`, 2 workers).

The three are run interleaved (one of each per repeat) so that background load on a
shared machine hits them alike; each figure is the median of the repeats, and the
ratios are the agent's median over each peer's.

Also here, for `bench/accuracy.py`: `YoloxDemoDetector`, a replica of the pre- and
post-processing of YOLOX's own ONNX Runtime demo (`demo/ONNXRuntime/onnx_inference.py`:
`cv2.imread`, the OpenCV letterbox, `demo_postprocess`, `multiclass_nms` with its default
`class_agnostic=True` and its `+1` pixel IoU), the published reference for accuracy.

    .venv/bin/python bench/peers.py --json bench/out/peers.json   # ~2 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from agent.inference.decoders import yolox_grid
from agent.inference.model import ModelFolder, ModelManifest, load_model_folder
from agent.types import Detections
from bench import baselines
from bench.common import (
    MODEL_DIR,
    CpuMeter,
    cores,
    find_video,
    fmt,
    load_average,
    median,
    now_utc,
    progress,
    rnd,
    table,
)

F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


# --- YOLOX's own pre/post-processing, in OpenCV and numpy -----------------------------


def yolox_letterbox(img: U8, width: int, height: int, pad_value: int = 114) -> tuple[U8, float]:
    """YOLOX `preproc`: resize by min ratio (sizes truncated), INTER_LINEAR, pad bottom-right."""
    h, w = img.shape[:2]
    ratio = min(width / w, height / h)
    new_w, new_h = int(w * ratio), int(h * ratio)
    padded = np.full((height, width, 3), pad_value, np.uint8)
    padded[:new_h, :new_w] = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return padded, ratio


def yolox_decode(raw: npt.NDArray[Any], manifest: ModelManifest) -> tuple[F32, F32]:
    """YOLOX `demo_postprocess`: boxes xyxy in input pixels (N, 4), class scores (N, C)."""
    inp = manifest.input
    grid, stride = yolox_grid(inp.width, inp.height, tuple(manifest.strides))
    pred = np.asarray(raw, np.float32).reshape(raw.shape[-2], raw.shape[-1])
    xy = (pred[:, :2] + grid) * stride
    half = np.exp(pred[:, 2:4]) * stride / 2
    boxes = np.concatenate((xy - half, xy + half), axis=1)
    scores = pred[:, 4:5] * pred[:, 5:]
    return boxes.astype(np.float32), scores.astype(np.float32)


def yolox_nms(boxes: F32, scores: F32, threshold: float) -> list[int]:
    """YOLOX `demo_utils.nms`: greedy, areas and overlaps with the `+1` pixel convention."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep: list[int] = []
    while order.size:
        i, rest = int(order[0]), order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        keep.append(i)
        order = rest[inter / (areas[i] + areas[rest] - inter) <= threshold]
    return keep


def yolox_multiclass_nms(
    boxes: F32, scores: F32, nms_thr: float, score_thr: float, *, class_agnostic: bool
) -> Detections:
    """YOLOX `multiclass_nms`: agnostic (its default) or per class with every class a box has."""
    if class_agnostic:
        cls = scores.argmax(axis=1)
        best = scores[np.arange(len(cls)), cls]
        valid = np.flatnonzero(best > score_thr)
        kept = valid[yolox_nms(boxes[valid], best[valid], nms_thr)]
        return Detections(boxes[kept], best[kept].astype(np.float32), cls[kept].astype(np.int32))
    parts: list[tuple[F32, F32, npt.NDArray[np.int32]]] = []
    for k in np.flatnonzero((scores > score_thr).any(axis=0)):
        valid = np.flatnonzero(scores[:, k] > score_thr)
        keep = valid[yolox_nms(boxes[valid], scores[valid, k], nms_thr)]
        parts.append((boxes[keep], scores[keep, k], np.full(len(keep), k, np.int32)))
    if not parts:
        return Detections(
            np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int32)
        )
    return Detections(
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]).astype(np.float32),
        np.concatenate([p[2] for p in parts]),
    )


class YoloxDemoDetector:
    """YOLOX's published ONNX Runtime demo, end to end, for a still image file."""

    def __init__(
        self, model: ModelFolder, score_threshold: float, nms_threshold: float, *, agnostic: bool
    ) -> None:
        self.manifest = model.manifest
        self.session = ort.InferenceSession(
            str(model.onnx_path), providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.agnostic = agnostic

    def detect_path(self, path: Path) -> Detections:
        img = cast("U8 | None", cv2.imread(str(path)))
        if img is None:
            raise ValueError(f"OpenCV cannot read {path}")
        inp = self.manifest.input
        padded, ratio = yolox_letterbox(img, inp.width, inp.height, inp.pad_value)
        tensor = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
        raw = self.session.run(None, {self.input_name: tensor})[0]
        boxes, scores = yolox_decode(raw, self.manifest)
        return yolox_multiclass_nms(
            boxes / ratio,
            scores,
            self.nms_threshold,
            self.score_threshold,
            class_agnostic=self.agnostic,
        )


# --- the OpenCV peer pipeline ---------------------------------------------------------


def opencv_pipeline(video: Path, model: ModelFolder, limit: int | None = None) -> dict[str, Any]:
    """Frames/s of VideoCapture + OpenCV letterbox + blobFromImage + cv2.dnn + NMSBoxesBatched."""
    manifest = model.manifest
    inp = manifest.input
    net = cv2.dnn.readNetFromONNX(str(model.onnx_path))
    capture = cv2.VideoCapture(str(video))
    frames = detections = 0
    with CpuMeter() as meter:
        while limit is None or frames < limit:
            ok, img = capture.read()
            if not ok:
                break
            padded, ratio = yolox_letterbox(cast(U8, img), inp.width, inp.height, inp.pad_value)
            blob = cv2.dnn.blobFromImage(padded, 1.0, (inp.width, inp.height), swapRB=False)
            net.setInput(blob)
            boxes, scores = yolox_decode(net.forward(), manifest)
            cls = scores.argmax(axis=1)
            best = scores[np.arange(len(cls)), cls]
            xywh = np.concatenate((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), axis=1) / ratio
            keep = cv2.dnn.NMSBoxesBatched(
                xywh.tolist(),
                best.tolist(),
                cls.tolist(),
                manifest.score_threshold,
                manifest.nms_threshold,
            )
            detections += len(keep)
            frames += 1
    capture.release()
    m = meter.result
    return {
        "fps": frames / m.wall_s,
        "frames": frames,
        "detections": detections,
        "cpu_s_per_frame": round(m.cpu_s / max(1, frames), 5),
        "opencv": cv2.__version__,
        "cv2_threads": cv2.getNumThreads(),
        **m.as_dict(),
    }


def compare(video: Path, work: Path, repeats: int, limit: int | None) -> dict[str, Any]:
    """OpenCV, naive loop and agent, interleaved `repeats` times; medians and ratios."""
    from bench.pipeline import end_to_end  # heavy: the whole agent

    model = load_model_folder(MODEL_DIR)
    runs: dict[str, list[dict[str, Any]]] = {"opencv": [], "naive": [], "agent": []}
    naive_limit = limit or 100_000
    for r in range(repeats):
        runs["opencv"].append(opencv_pipeline(video, model, limit))
        progress(f"peers run {r + 1}/{repeats}: opencv {runs['opencv'][-1]['fps']:.1f} fps")
        runs["naive"].append(baselines.naive_loop(video, model, naive_limit))
        progress(f"peers run {r + 1}/{repeats}: naive {runs['naive'][-1]['fps']:.1f} fps")
        e2e = end_to_end(video, work / f"peer-{r}", 2, 1, limit)
        runs["agent"].append(e2e["runs"][0])
    fps = {k: median([x["fps"] for x in v]) for k, v in runs.items()}
    return {
        "runs": runs,
        "fps": fps,
        "background_cores": {
            k: rnd(median([x["background_cores"] or 0.0 for x in v]), 2) for k, v in runs.items()
        },
        "ratios": {
            "agent / opencv": fps["agent"] / fps["opencv"],
            "agent / naive": fps["agent"] / fps["naive"],
            "naive / opencv": fps["naive"] / fps["opencv"],
        },
        "targets": {"agent / opencv": 2.0, "agent / naive": 2.5},
    }


def report(fig: dict[str, Any]) -> str:
    names = {
        "agent": "agent end to end (2 workers)",
        "naive": "naive loop (PyAV, PIL, ORT, numpy)",
        "opencv": f"OpenCV {fig['meta']['opencv']} (VideoCapture + cv2.dnn)",
    }
    rows = [
        [
            names[k],
            fmt(fig["fps"][k]),
            ", ".join(fmt(x["fps"]) for x in v),
            fmt(fig["background_cores"][k], 2),
        ]
        for k, v in fig["runs"].items()
    ]
    out = [
        table("Peers (frames/s, same video and model)", ["", "median", "runs", "bg cores"], rows)
    ]
    ratio_rows = [
        [k, fmt(v, 2), f">= {fig['targets'][k]}" if k in fig["targets"] else "", ""]
        for k, v in fig["ratios"].items()
    ]
    for row in ratio_rows:
        target = fig["targets"].get(row[0])
        if target is not None:
            row[3] = "PASS" if fig["ratios"][row[0]] >= target else "MISS"
    out.append(table("Ratios", ["ratio", "value", "target", ""], ratio_rows))
    return "\n".join(out)


def run(video_arg: str | None, repeats: int, limit: int | None) -> dict[str, Any]:
    video = find_video(video_arg)
    meta = {
        "started_utc": now_utc(),
        "cores": cores(),
        "opencv": cv2.__version__,
        "onnxruntime": ort.__version__,
        "video": str(video),
        "load_average_start": load_average(),
    }
    with tempfile.TemporaryDirectory(prefix="edge-peers-") as tmp:
        fig = compare(video, Path(tmp), repeats, limit)
    meta["finished_utc"] = now_utc()
    meta["load_average_end"] = load_average()
    return {"meta": meta, **fig}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    ap.add_argument("--video", help="video file (default: the sample vtest.avi)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    ap.add_argument("--limit", type=int, default=None, help="frames per run (default: all)")
    args = ap.parse_args(argv)
    fig = run(args.video, args.repeats, args.limit)
    print(report(fig))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(fig, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
