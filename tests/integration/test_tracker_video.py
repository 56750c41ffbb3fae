"""ByteTracker on real footage: the real detector over vtest.avi, ids must stay stable.

Detection is done here with a minimal, self-contained pipeline (PyAV + swscale ->
letterbox -> ONNX Runtime -> YOLOX grid decode -> NMS) so this test depends only on
the tracker under test; the detections are cached once per module.
"""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest

from agent.config.inference import TrackerConfig
from agent.tracking.bytetrack import ByteTracker
from agent.tracking.geometry import iou_matrix
from agent.types import Detections, Track

FRAMES = 150
FPS = 10.0
SIZE = 416
SCALE = 768 / 416
SCORE_THRESHOLD = 0.1  # the tracker's low_score: the second stage needs the weak boxes
NMS_IOU = 0.45
PERSON = 0


def _grid(size: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    grids, strides = [], []
    for stride in (8, 16, 32):
        n = size // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    return (
        np.concatenate(grids).astype(np.float32),
        np.concatenate(strides).astype(np.float32),
    )


def _nms(boxes: npt.NDArray[np.float32], scores: npt.NDArray[np.float32]) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        if order:
            iou = iou_matrix(boxes[best : best + 1], boxes[order])[0]
            order = [o for o, v in zip(order, iou, strict=True) if v <= NMS_IOU]
    return keep


def _decode(
    raw: npt.NDArray[np.float32], grid: npt.NDArray[np.float32], stride: npt.NDArray[np.float32]
) -> Detections:
    xy = (raw[:, :2] + grid) * stride
    wh = np.exp(raw[:, 2:4]) * stride
    cls_scores = raw[:, 5:] * raw[:, 4:5]
    class_ids = cls_scores.argmax(axis=1)
    scores = cls_scores[np.arange(raw.shape[0]), class_ids]
    sel = scores >= SCORE_THRESHOLD
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1)[sel] * SCALE
    scores, class_ids = scores[sel], class_ids[sel]
    keep: list[int] = []
    for c in np.unique(class_ids):
        idx = np.flatnonzero(class_ids == c)
        keep.extend(int(idx[k]) for k in _nms(boxes[idx], scores[idx]))
    keep.sort()
    return Detections(
        boxes=boxes[keep].astype(np.float32),
        scores=scores[keep].astype(np.float32),
        class_ids=class_ids[keep].astype(np.int32),
    )


def _detect(video: Path, model: Path, frames: int) -> list[Detections]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    grid, stride = _grid(SIZE)
    canvas = np.full((SIZE, SIZE, 3), 114, np.uint8)
    out: list[Detections] = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            img = frame.to_ndarray(width=SIZE, height=312, format="bgr24")
            canvas[:312] = img
            blob = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32)
            raw = session.run(None, {"images": blob})[0][0]
            out.append(_decode(raw, grid, stride))
            if len(out) == frames:
                break
    return out


@pytest.fixture(scope="module")
def detections(assets: Path) -> list[Detections]:
    return _detect(assets / "vtest.avi", assets / "yolox_nano.onnx", FRAMES)


def _run(dets: list[Detections], cfg: TrackerConfig | None = None) -> list[list[Track]]:
    tracker = ByteTracker(cfg or TrackerConfig())
    return [tracker.update(d, i / FPS) for i, d in enumerate(dets)]


def _matched_lifetimes(frames: list[list[Track]]) -> Counter[int]:
    return Counter(t.track_id for f in frames for t in f if t.frames_since_update == 0)


def test_detector_sees_people_in_every_frame(detections: list[Detections]) -> None:
    # the premise of the tracker tests: a busy street, mostly people
    assert len(detections) == FRAMES
    people = [int(np.sum((d.class_ids == PERSON) & (d.scores >= 0.5))) for d in detections]
    assert min(people) >= 3
    assert sum(people) > 5 * FRAMES


def test_track_ids_are_stable_on_real_footage(detections: list[Detections]) -> None:
    # given the detector's output for 15 s of street footage
    total = sum(len(d) for d in detections)
    # when tracked at the video's 10 fps
    frames = _run(detections)
    lifetimes = _matched_lifetimes(frames)
    # then few ids cover many detections, and most of them live for seconds
    assert 0 < len(lifetimes) <= 40
    assert len(lifetimes) < total / 30
    long_lived = sum(1 for n in lifetimes.values() if n > 20)
    assert long_lived / len(lifetimes) >= 0.6
    # and no id jumps to another object between consecutive matched frames
    jumps = pairs = 0
    for prev, cur in itertools.pairwise(frames):
        before = {t.track_id: t.box for t in prev if t.frames_since_update == 0}
        for t in cur:
            if t.frames_since_update == 0 and t.track_id in before:
                pairs += 1
                jumps += int(iou_matrix([before[t.track_id]], [t.box])[0, 0] < 0.3)
    assert pairs > 500
    assert jumps <= pairs // 100


def test_same_footage_gives_identical_ids(detections: list[Detections]) -> None:
    assert _run(detections) == _run(detections)


def test_dropped_frames_do_not_fragment_tracks(detections: list[Detections]) -> None:
    # given the same footage with ~30 % of frames dropped at random (a slow detector)
    rng = np.random.default_rng(11)
    keep = np.flatnonzero(rng.random(FRAMES) >= 0.3)
    baseline = len(_matched_lifetimes(_run(detections)))
    # when tracked on the real timestamps of the surviving frames
    tracker = ByteTracker(TrackerConfig())
    frames = [tracker.update(detections[i], i / FPS) for i in keep]
    # then the tracks are about as few as with every frame
    assert len(_matched_lifetimes(frames)) <= baseline + max(3, baseline // 4)
