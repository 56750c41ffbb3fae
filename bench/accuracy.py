"""Accuracy: detection mAP against COCO/YOLO ground truth, tracking against MOTChallenge.

Detection (pycocotools, mAP@0.5 and mAP@0.5:0.95 over the ground truth's categories,
model labels matched to category names):

    .venv/bin/python bench/accuracy.py detect --yolo IMAGES LABELS NAMES.yaml
    .venv/bin/python bench/accuracy.py detect --coco instances.json IMAGES

`--path` picks what produces the detections (repeatable, default `agent`):
`agent` is the agent's own detection path (`load_image`, `Detector.detect_image`:
swscale letterbox, YOLOX decode, class-aware NMS at the manifest's IoU, its
max_detections cap) at `--score-threshold` (default 0.01, as for COCO evaluation);
`agent-agnostic` is the same with class-agnostic NMS; `yolox-demo` and
`yolox-demo-aware` replicate YOLOX's own ONNX Runtime demo (OpenCV letterbox,
`multiclass_nms` class-agnostic as its default, or class-aware), see bench/peers.py.
YOLO labels: one `class cx cy w h` row per object (normalised; polygon rows are
boxed); images without a label file are skipped unless `--include-unlabelled`.

Tracking (py-motmetrics: MOTA, MOTP, IDF1, ID switches, at IoU >= 0.5):

    .venv/bin/python bench/accuracy.py track --gt gt/gt.txt --video seq.mp4
    .venv/bin/python bench/accuracy.py track --gt gt/gt.txt --images img1/ --fps 30
    .venv/bin/python bench/accuracy.py track --gt gt/gt.txt --detections det/det.txt --fps 30
    .venv/bin/python bench/accuracy.py track --gt gt/gt.txt --tracks any_tracker_output.txt

The first three run the agent's `ByteTracker` (parameters from `--config`'s `tracker:`
section, else the defaults) over the agent's detector or over given detections; the
last scores a finished MOTChallenge result file. Ground-truth rows with confidence 0
and classes outside `--gt-classes` (default 1, pedestrian; -1/0 rows kept) are ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import numpy.typing as npt
import yaml
from PIL import Image

from agent.types import Detections
from bench.common import MODEL_DIR, cores

F64 = npt.NDArray[np.float64]
Detect = Callable[[Path], Detections]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PATHS = ("agent", "agent-square", "agent-agnostic", "yolox-demo", "yolox-demo-aware")


class AccuracyError(Exception):
    """Ground truth or detections that cannot be evaluated."""


# --- ground truth ---------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruth:
    """A COCO-format dataset dict and the image files it describes."""

    dataset: dict[str, Any]
    files: tuple[tuple[int, Path], ...]
    """(image id, image file) in evaluation order."""


def read_names(path: Path) -> list[str]:
    """Class names: a YOLO data yaml (`names:` list or {id: name}), or one name per line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix not in (".yaml", ".yml"):
        return [line.strip() for line in text.splitlines() if line.strip()]
    data = yaml.safe_load(text)
    names = data.get("names", data) if isinstance(data, dict) else data
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names, key=int)]
    if isinstance(names, list):
        return [str(n) for n in names]
    raise AccuracyError(f"{path}: no class names found")


def yolo_rows_to_xywh(
    rows: Sequence[Sequence[float]], width: int, height: int
) -> tuple[npt.NDArray[np.int64], F64]:
    """YOLO label rows -> class ids and COCO [x, y, w, h] boxes in pixels.

    A row is `class cx cy w h` (normalised) or `class x1 y1 x2 y2 ...` (a normalised
    polygon, as in YOLO segmentation labels), boxed by its extent.
    """
    classes = np.array([int(r[0]) for r in rows], np.int64)
    boxes = np.zeros((len(rows), 4), np.float64)
    size = np.array([width, height, width, height], np.float64)
    for i, row in enumerate(rows):
        v = np.asarray(row[1:], np.float64)
        if v.size == 4:
            boxes[i] = (v[0] - v[2] / 2, v[1] - v[3] / 2, v[2], v[3])
        elif v.size >= 6 and v.size % 2 == 0:
            lo, hi = v.reshape(-1, 2).min(axis=0), v.reshape(-1, 2).max(axis=0)
            boxes[i] = (lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1])
        else:
            raise AccuracyError(f"label row has {v.size} coordinates: {list(row)}")
    return classes, boxes * size


def _coco_dataset(
    images: list[dict[str, Any]], anns: list[dict[str, Any]], names: Sequence[str]
) -> dict[str, Any]:
    cats = [{"id": i, "name": n} for i, n in enumerate(names)]
    return {"images": images, "annotations": anns, "categories": cats}


def load_yolo(
    images_dir: Path, labels_dir: Path, names: Sequence[str], *, include_unlabelled: bool = False
) -> GroundTruth:
    """YOLO-format ground truth as COCO (category id = YOLO class id, iscrowd 0)."""
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    pairs: list[tuple[int, Path]] = []
    for image_id, path in enumerate(files, start=1):
        label = labels_dir / f"{path.stem}.txt"
        if not label.is_file() and not include_unlabelled:
            continue
        with Image.open(path) as im:
            width, height = im.size
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        pairs.append((image_id, path))
        lines = label.read_text(encoding="utf-8").splitlines() if label.is_file() else []
        rows = [[float(v) for v in line.split()] for line in lines if line.strip()]
        if not rows:
            continue
        classes, boxes = yolo_rows_to_xywh(rows, width, height)
        first_id = len(anns) + 1
        if classes.max() >= len(names) or classes.min() < 0:
            raise AccuracyError(f"{label}: class id out of range for {len(names)} names")
        anns.extend(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": int(c),
                "bbox": [float(v) for v in b],
                "area": float(b[2] * b[3]),
                "iscrowd": 0,
            }
            for k, (c, b) in enumerate(zip(classes, boxes, strict=True))
        )
    if not images:
        raise AccuracyError(f"no labelled images in {images_dir} (labels {labels_dir})")
    return GroundTruth(_coco_dataset(images, anns, names), tuple(pairs))


def load_coco(instances: Path, images_dir: Path) -> GroundTruth:
    """A COCO instances json; image files are `file_name` under `images_dir`."""
    dataset: dict[str, Any] = json.loads(instances.read_text(encoding="utf-8"))
    files = tuple((int(im["id"]), images_dir / im["file_name"]) for im in dataset["images"])
    missing = [str(p) for _, p in files if not p.is_file()]
    if missing:
        raise AccuracyError(f"{len(missing)} images missing, e.g. {missing[0]}")
    return GroundTruth(dataset, files)


def class_to_category(labels: Sequence[str], categories: Sequence[dict[str, Any]]) -> F64:
    """Category id for each model class index, matched by name (-1: not in the ground truth)."""
    by_name = {str(c["name"]).strip().lower(): int(c["id"]) for c in categories}
    ids = np.array([by_name.get(label.strip().lower(), -1) for label in labels], np.float64)
    if not (ids >= 0).any():
        raise AccuracyError("no model label matches a ground-truth category name")
    return ids


# --- detections and mAP ---------------------------------------------------------------


def coco_results(image_id: int, dets: Detections, cat_of_class: F64) -> list[dict[str, Any]]:
    """COCO result dicts for one image; classes absent from the ground truth are dropped."""
    cats = cat_of_class[dets.class_ids]
    keep = cats >= 0
    b = dets.boxes[keep].astype(np.float64)
    xywh = np.concatenate((b[:, :2], b[:, 2:] - b[:, :2]), axis=1)
    return [
        {"image_id": image_id, "category_id": int(c), "bbox": box, "score": float(s)}
        for box, s, c in zip(
            np.round(xywh, 3).tolist(), dets.scores[keep].tolist(), cats[keep], strict=True
        )
    ]


@dataclass(frozen=True)
class DetectionScores:
    map_50_95: float
    map_50: float
    map_75: float
    images: int
    annotations: int
    detections: int
    per_class_ap: dict[str, float]
    """AP@0.5:0.95 per category that has ground truth."""

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def coco_map(dataset: dict[str, Any], results: list[dict[str, Any]]) -> DetectionScores:
    """pycocotools bbox evaluation (maxDets 100, all areas) of `results` against `dataset`."""
    from pycocotools.coco import COCO  # type: ignore[import-untyped]
    from pycocotools.cocoeval import COCOeval  # type: ignore[import-untyped]

    n_images, n_anns = len(dataset["images"]), len(dataset["annotations"])
    if not results:
        return DetectionScores(0.0, 0.0, 0.0, n_images, n_anns, 0, {})
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [iou, recall, category], all areas, 100
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    per_class = {}
    for k, cat in enumerate(ev.params.catIds):
        p = precision[:, :, k]
        if (p > -1).any():
            per_class[names[cat]] = round(float(p[p > -1].mean()), 4)
    s = ev.stats
    return DetectionScores(
        float(s[0]), float(s[1]), float(s[2]), n_images, n_anns, len(results), per_class
    )


def evaluate(gt: GroundTruth, detect: Detect, labels: Sequence[str]) -> DetectionScores:
    """Run `detect` on every image of `gt` and score the detections."""
    cat_of_class = class_to_category(labels, gt.dataset["categories"])
    results: list[dict[str, Any]] = []
    for image_id, path in gt.files:
        results.extend(coco_results(image_id, detect(path), cat_of_class))
    return coco_map(gt.dataset, results)


def agent_detector(
    model_dir: Path,
    score: float | None,
    nms: float | None,
    max_det: int | None,
    *,
    square: bool = False,
) -> Any:
    """The agent's Detector as the pipeline builds it (create_backend), all cores for speed.

    `square`: the same, with rectangular inference off (the manifest's full input size).
    """
    from agent.config import OnnxRuntimeBackendConfig
    from agent.inference.detector import Detector
    from agent.inference.model import load_model_folder
    from agent.inference.onnxrt import OnnxRuntimeBackend, create_backend

    model = load_model_folder(model_dir)
    if square:
        backend = OnnxRuntimeBackend(model.onnx_path, intra_op_threads=cores())
        return Detector(model, backend, score, nms, max_det)
    cfg = OnnxRuntimeBackendConfig(type="onnxruntime", intra_op_threads=cores())
    return Detector(model, create_backend(cfg, model), score, nms, max_det)


def make_detector(
    path: str, model_dir: Path, score: float, nms: float | None, max_det: int | None
) -> tuple[Detect, list[str]]:
    """A detection function (image file -> Detections) for one of PATHS, and its labels."""
    from agent.inference.decoders import decode_yolox
    from agent.inference.detector import load_image
    from agent.inference.nms import nms as agent_nms
    from agent.inference.preprocess import unletterbox_boxes

    det = agent_detector(model_dir, score, nms, max_det, square=path == "agent-square")
    m = det.model.manifest
    labels = list(m.labels)
    if path.startswith("yolox-demo"):
        from bench.peers import YoloxDemoDetector

        det.close()
        demo = YoloxDemoDetector(det.model, score, det.nms_threshold, agnostic=path == "yolox-demo")
        return demo.detect_path, labels
    if path in ("agent", "agent-square"):
        return (lambda p: det.detect_image(load_image(p))), labels
    if m.family != "yolox":
        raise AccuracyError(f"path {path} needs a yolox model, not {m.family}")

    def agnostic(p: Path) -> Detections:
        tensor, lb = det.preprocess_image(load_image(p))
        raw = det.backend.infer(tensor)[0]
        c = decode_yolox(raw, lb.dst_w, lb.dst_h, tuple(m.strides), score)
        keep = agent_nms(c.boxes, c.scores, det.nms_threshold, None, det.max_detections)
        return Detections(unletterbox_boxes(c.boxes[keep], lb), c.scores[keep], c.class_ids[keep])

    return agnostic, labels


# --- tracking -------------------------------------------------------------------------

MOT_IOU = 0.5
MOT_METRICS = (
    "num_frames", "num_objects", "num_predictions", "mota", "motp", "idf1", "idp", "idr",
    "num_switches", "num_false_positives", "num_misses", "mostly_tracked", "mostly_lost",
)  # fmt: skip


def read_mot(
    path: Path, *, gt_classes: Sequence[int] | None = None, ignore_zero_confidence: bool = False
) -> F64:
    """MOTChallenge rows `frame, id, x, y, w, h, conf[, class, visibility]` -> (N, 7) array.

    Ground truth: rows with confidence 0 dropped and, where a class column exists, only
    `gt_classes` (and -1/0, "unknown") kept. Returns frame, id, x, y, w, h, conf.
    """
    with warnings.catch_warnings():  # an empty file is a valid (empty) sequence
        warnings.simplefilter("ignore", UserWarning)
        data = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    if data.size == 0:
        return np.zeros((0, 7), np.float64)
    if data.shape[1] < 6:
        raise AccuracyError(f"{path}: MOTChallenge rows need at least 6 columns")
    if data.shape[1] == 6:
        data = np.concatenate((data, np.ones((len(data), 1))), axis=1)
    keep = np.ones(len(data), bool)
    if ignore_zero_confidence:
        keep &= data[:, 6] != 0
    if gt_classes is not None and data.shape[1] >= 8:
        cls = data[:, 7]
        keep &= np.isin(cls, list(gt_classes)) | (cls <= 0)
    return data[keep, :7]


def iou_xywh(a: F64, b: F64) -> F64:
    """IoU matrix (len(a), len(b)) of [x, y, w, h] boxes."""
    a1, a2 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:4]
    b1, b2 = b[None, :, :2], b[None, :, :2] + b[None, :, 2:4]
    wh = np.clip(np.minimum(a2, b2) - np.maximum(a1, b1), 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    out: F64 = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return out


def mot_scores(gt: F64, hyp: F64, iou_threshold: float = MOT_IOU) -> dict[str, float]:
    """CLEAR-MOT and identity metrics of `hyp` against `gt` (both from `read_mot`)."""
    import motmetrics as mm  # type: ignore[import-untyped]

    acc = mm.MOTAccumulator(auto_id=False)
    frames = np.union1d(gt[:, 0], hyp[:, 0]).astype(int)
    for f in frames:
        g, h = gt[gt[:, 0] == f], hyp[hyp[:, 0] == f]
        dist = 1.0 - iou_xywh(g[:, 2:6], h[:, 2:6])
        dist[dist > 1.0 - iou_threshold] = np.nan
        acc.update(g[:, 1].astype(int), h[:, 1].astype(int), dist, frameid=int(f))
    summary = mm.metrics.create().compute(acc, metrics=list(MOT_METRICS), name="seq")
    return {k: float(summary[k].iloc[0]) for k in MOT_METRICS}


FrameDets = tuple[int, float, Detections]
"""(1-based frame number, stream time in seconds, detections)."""


def run_tracker(
    frames: Iterable[FrameDets], tracker: Any, classes: Sequence[int], coasting: bool = False
) -> F64:
    """MOTChallenge rows (frame, id, x, y, w, h, score) of the tracker's confirmed tracks."""
    rows: list[tuple[float, ...]] = []
    wanted = set(classes)
    for frame, t, dets in frames:
        for tr in tracker.update(dets, t):
            if tr.class_id in wanted and (coasting or tr.frames_since_update == 0):
                x1, y1, x2, y2 = tr.box
                rows.append((frame, tr.track_id, x1, y1, x2 - x1, y2 - y1, tr.score))
    return np.array(rows, np.float64).reshape(-1, 7)


def frames_from_detections(path: Path, fps: float, class_id: int = 0) -> Iterator[FrameDets]:
    """MOTChallenge det.txt rows (frame, -1, x, y, w, h, score, ...) as Detections."""
    data = read_mot(path)
    for f in range(1, int(data[:, 0].max(initial=0)) + 1):
        d = data[data[:, 0] == f]
        boxes = np.concatenate((d[:, 2:4], d[:, 2:4] + d[:, 4:6]), axis=1).astype(np.float32)
        ids = np.full(len(d), class_id, np.int32)
        yield f, (f - 1) / fps, Detections(boxes, d[:, 6].astype(np.float32), ids)


def frames_from_video(path: Path, detector: Any) -> Iterator[FrameDets]:
    """Every frame of a video file through the agent's detector (PyAV decode)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 25)
        for i, frame in enumerate(container.decode(stream), start=1):
            t = float(frame.time) if frame.time is not None else (i - 1) / rate
            yield i, t, detector.detect_frame(frame)


def frames_from_images(folder: Path, detector: Any, fps: float) -> Iterator[FrameDets]:
    """A MOTChallenge img1/ folder (sorted image files) through the agent's detector."""
    from agent.inference.detector import load_image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    for i, p in enumerate(files, start=1):
        yield i, (i - 1) / fps, detector.detect_image(load_image(p))


def write_mot(path: Path, rows: F64) -> None:
    """MOTChallenge result file: frame, id, x, y, w, h, score, -1, -1, -1."""
    lines = [
        f"{int(r[0])},{int(r[1])},{r[2]:.2f},{r[3]:.2f},{r[4]:.2f},{r[5]:.2f},{r[6]:.4f},-1,-1,-1"
        for r in rows.tolist()
    ]
    path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


# --- command line ---------------------------------------------------------------------


def _detect_main(args: argparse.Namespace) -> dict[str, Any]:
    if args.yolo:
        images, label_dir, names = (Path(p) for p in args.yolo)
        gt = load_yolo(
            images, label_dir, read_names(names), include_unlabelled=args.include_unlabelled
        )
    else:
        gt = load_coco(Path(args.coco[0]), Path(args.coco[1]))
    out: dict[str, Any] = {"images": len(gt.files), "score_threshold": args.score_threshold}
    for path in args.path or ["agent"]:
        detect, labels = make_detector(
            path, args.model, args.score_threshold, args.nms_threshold, args.max_detections
        )
        scores = evaluate(gt, detect, labels)
        out[path] = scores.as_dict()
        print(
            f"{path:18s} mAP@0.5:0.95 {scores.map_50_95:.4f}  mAP@0.5 {scores.map_50:.4f}  "
            f"({scores.images} images, {scores.annotations} objects, {scores.detections} dets)"
        )
    return out


def _tracking_frames(args: argparse.Namespace, cfg: Any) -> Iterable[FrameDets]:
    """Detections per frame: from a det.txt, or the agent's detector over a video/images."""
    if args.detections:
        return frames_from_detections(args.detections, args.fps)
    model_dir = cfg.model.path if cfg is not None and args.model is None else args.model
    score = args.score_threshold
    if score is None and cfg is not None:
        score = cfg.model.score_threshold
    nms = cfg.model.nms_threshold if cfg is not None else None
    detector = agent_detector(model_dir or MODEL_DIR, score, nms, None)
    if args.video:
        return frames_from_video(args.video, detector)
    return frames_from_images(args.images, detector, args.fps)


def _track_main(args: argparse.Namespace) -> dict[str, Any]:
    from agent.config import load_config
    from agent.config.inference import TrackerConfig
    from agent.tracking.bytetrack import ByteTracker

    gt = read_mot(args.gt, gt_classes=args.gt_classes, ignore_zero_confidence=True)
    if args.tracks:
        hyp = read_mot(args.tracks)
    else:
        cfg = load_config(args.config) if args.config else None
        tracker = ByteTracker(cfg.tracker if cfg is not None else TrackerConfig())
        frames = _tracking_frames(args, cfg)
        hyp = run_tracker(frames, tracker, args.track_classes, args.coasting)
        if args.tracks_out:
            write_mot(args.tracks_out, hyp)
    scores = mot_scores(gt, hyp, args.iou)
    print("  ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    return scores


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--json", type=Path, help="write the figures to this JSON file")
    ap.add_argument("--model", type=Path, default=None, help="model folder (default: yolox_nano)")
    sub = ap.add_subparsers(dest="command", required=True)
    det = sub.add_parser("detect", help="mAP against COCO or YOLO ground truth")
    src = det.add_mutually_exclusive_group(required=True)
    src.add_argument("--yolo", nargs=3, metavar=("IMAGES", "LABELS", "NAMES"))
    src.add_argument("--coco", nargs=2, metavar=("INSTANCES_JSON", "IMAGES"))
    det.add_argument("--path", action="append", choices=PATHS, help="repeatable; default agent")
    det.add_argument("--score-threshold", type=float, default=0.01)
    det.add_argument("--nms-threshold", type=float, default=None, help="default: manifest")
    det.add_argument("--max-detections", type=int, default=None, help="default: manifest")
    det.add_argument("--include-unlabelled", action="store_true", help="YOLO: negatives too")
    det.set_defaults(func=_detect_main)
    trk = sub.add_parser("track", help="MOTA / IDF1 against MOTChallenge gt.txt")
    trk.add_argument("--gt", type=Path, required=True, help="MOTChallenge gt.txt")
    what = trk.add_mutually_exclusive_group(required=True)
    what.add_argument("--video", type=Path, help="video file: agent detector + tracker")
    what.add_argument("--images", type=Path, help="image folder (img1/): detector + tracker")
    what.add_argument("--detections", type=Path, help="MOTChallenge det.txt: tracker only")
    what.add_argument("--tracks", type=Path, help="a finished MOTChallenge result file")
    trk.add_argument("--fps", type=float, default=30.0, help="frame rate for images/det.txt")
    trk.add_argument("--config", type=Path, help="agent config: tracker and model settings")
    trk.add_argument("--score-threshold", type=float, default=None, help="detector override")
    trk.add_argument("--track-classes", type=int, nargs="+", default=[0], help="model class ids")
    trk.add_argument("--gt-classes", type=int, nargs="+", default=[1], help="gt class column")
    trk.add_argument("--iou", type=float, default=MOT_IOU, help="match IoU (default 0.5)")
    trk.add_argument("--coasting", action="store_true", help="also report coasting tracks")
    trk.add_argument("--tracks-out", type=Path, help="write the tracker's MOTChallenge rows")
    trk.set_defaults(func=_track_main)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "detect" and args.model is None:
        args.model = MODEL_DIR
    try:
        figures = args.func(args)
    except AccuracyError as exc:
        print(f"accuracy: {exc}", file=sys.stderr)
        return 2
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
