"""Baselines the pipeline is compared with: what a user gets without the agent.

- `default_session_fps`: the model alone in a default ONNX Runtime session
  (`ort.InferenceSession(path)`, default options: all cores for intra-op), on
  preprocessed frames of the sample video. Pure inference, nothing else.
- `parallel_sessions_fps`: the agent's layout without the agent: one
  single-threaded session per core, each on its own thread, on tensors of the
  agent's input size (rectangular when the manifest says so). The ceiling for
  inference alone on this machine.
- `naive_loop`: the sequential loop a user would write: PyAV decode,
  `frame.to_image()` + PIL resize + pad, numpy float NCHW, default session,
  numpy YOLOX decode and a simple greedy NMS.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image

from agent.inference.detector import Detector
from agent.inference.model import ModelFolder, ModelManifest
from agent.inference.onnxrt import CPU_PROVIDER, OnnxRuntimeBackend
from bench.common import CpuMeter, Meter

F32 = npt.NDArray[np.float32]


def sample_tensors(video: Path, model: ModelFolder, count: int, *, rect: bool = False) -> list[F32]:
    """`count` network inputs from frames spread evenly over the video (agent's preprocessing).

    `rect`: at the agent's rectangular input size when the manifest asks for it (416x320
    for vtest); otherwise at the manifest's full input size, as a default session takes it.
    """
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        total = stream.frames or 795
        step = max(1, total // count)
        dynamic = rect and model.manifest.input.rect
        det = Detector(model, OnnxRuntimeBackend(model.onnx_path, dynamic_spatial=dynamic))
        tensors: list[F32] = []
        for i, frame in enumerate(container.decode(stream)):
            if i % step == 0 and len(tensors) < count:
                tensor, _ = det.preprocess_frame(frame)
                tensors.append(tensor.copy())
        det.close()
    return tensors


def _default_session(onnx_path: Path) -> Any:
    return ort.InferenceSession(str(onnx_path), providers=[CPU_PROVIDER])


def default_session_fps(
    onnx_path: Path, tensors: list[F32], runs: int, blocks: int = 3
) -> dict[str, Any]:
    """Inference-only frames/s of a default session: the median of `blocks` timed blocks."""
    session = _default_session(onnx_path)
    name = session.get_inputs()[0].name
    for tensor in tensors[:10]:
        session.run(None, {name: tensor})
    per_block = max(1, runs // blocks)
    fps, meters = [], []
    for b in range(blocks):
        with CpuMeter() as meter:
            for i in range(per_block):
                session.run(None, {name: tensors[(b * per_block + i) % len(tensors)]})
        fps.append(per_block / meter.result.wall_s)
        meters.append(meter.result)
    del session
    return {
        "fps": float(np.median(fps)),
        "block_fps": [round(v, 1) for v in fps],
        "runs": per_block * blocks,
        "intra_op_threads": "default (all cores)",
        "cpu_s_per_frame": round(sum(m.cpu_s for m in meters) / (per_block * blocks), 5),
        "background_cores": _mean_background(meters),
    }


def parallel_sessions_fps(
    onnx_path: Path, tensors: list[F32], runs: int, sessions: int, *, rect: bool = False
) -> dict[str, Any]:
    """Frames/s of `sessions` single-threaded sessions on as many threads (inference only);
    `rect`: sessions that take the rectangular tensors of `sample_tensors(rect=True)`."""
    backends = [
        OnnxRuntimeBackend(onnx_path, intra_op_threads=1, dynamic_spatial=rect)
        for _ in range(sessions)
    ]
    per_thread = max(1, runs // sessions)

    def work(backend: OnnxRuntimeBackend, count: int) -> None:
        for i in range(count):
            backend.infer(tensors[i % len(tensors)])

    for backend in backends:
        work(backend, 5)
    threads = [threading.Thread(target=work, args=(b, per_thread)) for b in backends]
    with CpuMeter() as meter:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for backend in backends:
        backend.close()
    total = per_thread * sessions
    return {
        "fps": total / meter.result.wall_s,
        "sessions": sessions,
        "input": list(tensors[0].shape[2:]),
        "runs": total,
        "cpu_s_per_frame": round(meter.result.cpu_s / total, 5),
        "background_cores": meter.result.background_cores,
    }


def _mean_background(meters: list[Meter]) -> float | None:
    values = [m.background_cores for m in meters if m.background_cores is not None]
    return round(sum(values) / len(values), 2) if values else None


# --- the naive loop -------------------------------------------------------------------


def _naive_grid(manifest: ModelManifest) -> tuple[F32, F32]:
    grids, strides = [], []
    for stride in manifest.strides:
        hs, ws = manifest.input.height // stride, manifest.input.width // stride
        ys, xs = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
        grids.append(np.stack((xs, ys), axis=-1).reshape(-1, 2))
        strides.append(np.full((hs * ws, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(strides).astype(np.float32)


def _naive_decode(out: F32, grid: F32, strides: F32, threshold: float) -> tuple[F32, F32, Any]:
    xy = (out[:, :2] + grid) * strides
    wh = np.exp(out[:, 2:4]) * strides
    class_scores = out[:, 4:5] * out[:, 5:]
    class_ids = class_scores.argmax(axis=1)
    scores = class_scores.max(axis=1)
    keep = scores > threshold
    boxes = np.concatenate((xy - wh / 2, xy + wh / 2), axis=1)
    return boxes[keep], scores[keep], class_ids[keep]


def _naive_nms(boxes: F32, scores: F32, class_ids: Any, threshold: float) -> list[int]:
    order = np.argsort(-scores)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        area_i = np.prod(boxes[i, 2:] - boxes[i, :2])
        areas = np.prod(boxes[rest, 2:] - boxes[rest, :2], axis=1)
        iou = inter / (area_i + areas - inter + 1e-9)
        order = rest[(iou <= threshold) | (class_ids[rest] != class_ids[i])]
    return keep


def naive_loop(video: Path, model: ModelFolder, limit: int) -> dict[str, Any]:
    """Frames/s of the sequential PyAV + PIL + ORT (default session) + numpy loop."""
    manifest = model.manifest
    width, height = manifest.input.width, manifest.input.height
    session = _default_session(model.onnx_path)
    name = session.get_inputs()[0].name
    grid, strides = _naive_grid(manifest)
    frames = detections = 0
    with CpuMeter() as meter, av.open(str(video)) as container:
        for frame in container.decode(video=0):
            if frames >= limit:
                break
            image = frame.to_image()
            ratio = min(width / image.width, height / image.height)
            resized = image.resize((round(image.width * ratio), round(image.height * ratio)))
            canvas = Image.new("RGB", (width, height), (114, 114, 114))
            canvas.paste(resized, (0, 0))
            bgr = np.asarray(canvas)[:, :, ::-1]
            tensor = bgr.transpose(2, 0, 1)[None].astype(np.float32)
            out = session.run(None, {name: tensor})[0][0]
            boxes, scores, class_ids = _naive_decode(out, grid, strides, manifest.score_threshold)
            keep = _naive_nms(boxes, scores, class_ids, manifest.nms_threshold)
            source_boxes = boxes[keep] / ratio
            detections += len(source_boxes)
            frames += 1
    del session
    return {
        "fps": frames / meter.result.wall_s,
        "frames": frames,
        "detections": detections,
        "cpu_s_per_frame": round(meter.result.cpu_s / max(1, frames), 5),
        "background_cores": meter.result.background_cores,
    }
