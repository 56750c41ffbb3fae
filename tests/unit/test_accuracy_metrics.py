"""bench/accuracy.py: YOLO -> COCO conversion, mAP matching and MOT metrics on known answers."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools", reason="pycocotools is a bench-only dependency (extra: bench)")
pytest.importorskip("motmetrics", reason="py-motmetrics is a bench-only dependency (extra: bench)")

from agent.config.inference import OnnxRuntimeBackendConfig, TrackerConfig
from agent.inference.detector import Detector, load_image
from agent.inference.model import load_model_folder
from agent.inference.onnxrt import create_backend
from agent.tracking.bytetrack import ByteTracker
from agent.types import Detections
from bench import accuracy
from tests.model_helpers import make_model_dir

NAMES = ["cat", "dog", "bird"]


def _dets(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Detections:
    return Detections(
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(classes, np.int32),
    )


def _yolo_set(root: Path, labels: dict[str, str], sizes: dict[str, tuple[int, int]]) -> Path:
    """images/ (blank PNGs of the given sizes), labels/ (given text), names.yaml."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for stem, size in sizes.items():
        Image.new("RGB", size).save(root / "images" / f"{stem}.png")
    for stem, text in labels.items():
        (root / "labels" / f"{stem}.txt").write_text(text, encoding="utf-8")
    (root / "names.yaml").write_text("names:\n  0: cat\n  1: dog\n  2: bird\n", encoding="utf-8")
    return root


def test_yolo_rows_convert_to_pixel_xywh_and_polygons_are_boxed() -> None:
    # given: a box row and a polygon row on a 200x100 image
    rows = [[1, 0.5, 0.5, 0.2, 0.4], [2, 0.1, 0.2, 0.3, 0.2, 0.2, 0.6]]
    # when
    classes, boxes = accuracy.yolo_rows_to_xywh(rows, 200, 100)
    # then: cx 100 cy 50 w 40 h 40 -> x 80 y 30; polygon extent x 0.1..0.3, y 0.2..0.6
    assert classes.tolist() == [1, 2]
    np.testing.assert_allclose(boxes, [[80, 30, 40, 40], [20, 20, 40, 40]], atol=1e-9)


def test_load_yolo_pairs_images_with_labels_and_numbers_annotations_uniquely(
    tmp_path: Path,
) -> None:
    # given: two labelled images, one without labels, one label file without an image
    root = _yolo_set(
        tmp_path,
        {
            "a": "0 0.5 0.5 0.5 0.5\n1 0.25 0.25 0.1 0.1\n",
            "b": "2 0.5 0.5 1 1\n",
            "x": "0 .5 .5 .1 .1",
        },
        {"a": (100, 80), "b": (50, 40), "c": (10, 10)},
    )
    names = accuracy.read_names(root / "names.yaml")
    # when
    gt = accuracy.load_yolo(root / "images", root / "labels", names)
    with_negatives = accuracy.load_yolo(
        root / "images", root / "labels", names, include_unlabelled=True
    )
    # then
    assert names == NAMES
    assert [p.name for _, p in gt.files] == ["a.png", "b.png"]
    anns = gt.dataset["annotations"]
    assert sorted(a["id"] for a in anns) == [1, 2, 3]
    assert anns[0]["bbox"] == pytest.approx([25, 20, 50, 40])
    assert anns[2]["image_id"] == gt.files[1][0] and anns[2]["bbox"] == pytest.approx(
        [0, 0, 50, 40]
    )
    assert [c["name"] for c in gt.dataset["categories"]] == NAMES
    assert len(with_negatives.files) == 3


@pytest.fixture
def two_object_gt(tmp_path: Path) -> accuracy.GroundTruth:
    """One 100x100 image: a cat at [10, 10, 50, 50] and a dog at [60, 60, 90, 90] (xyxy)."""
    root = _yolo_set(tmp_path, {"a": "0 0.3 0.3 0.4 0.4\n1 0.75 0.75 0.3 0.3\n"}, {"a": (100, 100)})
    return accuracy.load_yolo(root / "images", root / "labels", NAMES)


def _score(gt: accuracy.GroundTruth, dets: Detections) -> accuracy.DetectionScores:
    image_id = gt.files[0][0]
    cats = accuracy.class_to_category(NAMES, gt.dataset["categories"])
    return accuracy.coco_map(gt.dataset, accuracy.coco_results(image_id, dets, cats))


def test_perfect_detections_score_one(two_object_gt: accuracy.GroundTruth) -> None:
    dets = _dets([[10, 10, 50, 50], [60, 60, 90, 90]], [0.9, 0.8], [0, 1])
    scores = _score(two_object_gt, dets)
    assert scores.map_50_95 == pytest.approx(1.0)
    assert scores.map_50 == pytest.approx(1.0)


def test_a_box_at_iou_062_counts_at_three_of_ten_thresholds(
    two_object_gt: accuracy.GroundTruth,
) -> None:
    # given: the dog box grown so IoU = 900 / 1444 ~ 0.623 (matches at 0.50, 0.55, 0.60)
    dets = _dets([[10, 10, 50, 50], [60, 60, 98, 98]], [0.9, 0.8], [0, 1])
    # when
    scores = _score(two_object_gt, dets)
    # then: cat AP 1.0, dog AP 0.3 -> mean 0.65; at IoU 0.5 both 1.0
    assert scores.per_class_ap == {"cat": pytest.approx(1.0), "dog": pytest.approx(0.3)}
    assert scores.map_50_95 == pytest.approx(0.65)
    assert scores.map_50 == pytest.approx(1.0)


def test_a_higher_scoring_false_positive_halves_precision(
    two_object_gt: accuracy.GroundTruth,
) -> None:
    # given: a cat box far from the cat, scored above the true one; a bird (no GT) ignored
    dets = _dets(
        [[10, 10, 50, 50], [60, 60, 90, 90], [0, 60, 30, 95], [0, 0, 9, 9]],
        [0.5, 0.8, 0.9, 0.99],
        [0, 1, 0, 2],
    )
    # when
    scores = _score(two_object_gt, dets)
    # then: cat precision 1/2 at recall 1 -> AP 0.5; dog 1.0; bird (no objects) not averaged
    assert scores.per_class_ap == {"cat": pytest.approx(0.5), "dog": pytest.approx(1.0)}
    assert scores.map_50 == pytest.approx(0.75)
    assert scores.detections == 4  # the bird is scored, but its class has no ground truth


def test_cli_scores_the_agent_detector_one_on_labels_made_from_its_own_output(
    tmp_path: Path, assets: Path
) -> None:
    # given: YOLO labels written from the detector's detections >= 0.3 on three real images
    model_dir = make_model_dir(tmp_path / "models", assets)
    model = load_model_folder(model_dir)
    backend = create_backend(OnnxRuntimeBackendConfig(type="onnxruntime"), model)
    det = Detector(model, backend, score_threshold=0.3)  # as the CLI builds it (rect input)
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("person.jpg", "dog.jpg", "horses.jpg"):
        (root / "images" / name).symlink_to(assets / name)
        image = load_image(assets / name)
        h, w = image.shape[:2]
        d = det.detect_image(image)
        lines = [
            f"{c} {(b[0] + b[2]) / 2 / w:.6f} {(b[1] + b[3]) / 2 / h:.6f} "
            f"{(b[2] - b[0]) / w:.6f} {(b[3] - b[1]) / h:.6f}"
            for b, c in zip(d.boxes.tolist(), d.class_ids.tolist(), strict=True)
        ]
        (root / "labels" / f"{Path(name).stem}.txt").write_text("\n".join(lines) + "\n")
    det.close()
    names = root / "names.txt"
    names.write_text("\n".join(model.manifest.labels) + "\n")
    out = tmp_path / "acc.json"
    # when: the CLI at its evaluation threshold 0.01 (lower-score extras rank below)
    rc = accuracy.main(
        [
            "--json", str(out), "--model", str(model_dir), "detect",
            "--yolo", str(root / "images"), str(root / "labels"), str(names),
        ]
    )  # fmt: skip
    # then
    assert rc == 0
    figures = json.loads(out.read_text())["agent"]
    assert figures["images"] == 3 and figures["annotations"] >= 5
    assert figures["map_50_95"] == pytest.approx(1.0, abs=1e-6)
    assert figures["map_50"] == pytest.approx(1.0, abs=1e-6)


def _write(path: Path, rows: Sequence[tuple[float, ...]]) -> Path:
    path.write_text("\n".join(",".join(str(v) for v in r) for r in rows) + "\n")
    return path


def test_mot_metrics_on_a_hand_checked_pair(tmp_path: Path) -> None:
    # given: 2 pedestrians over 4 frames (+ an ignored row and a non-pedestrian row)
    gt_rows = [(f, 1, 10 + f, 10, 20, 40, 1, 1, 1.0) for f in range(1, 5)]
    gt_rows += [(f, 2, 100, 10, 20, 40, 1, 1, 1.0) for f in range(1, 5)]
    gt_rows += [(2, 3, 200, 10, 20, 40, 0, 1, 1.0), (3, 4, 300, 10, 20, 40, 1, 3, 1.0)]
    gt = _write(tmp_path / "gt.txt", gt_rows)
    # hypothesis: id 10 follows object 1; object 2 is id 20, then id 30 (a switch), then
    # missed in frame 4, where a false positive (id 40) appears far away
    hyp_rows = [(f, 10, 10 + f, 10, 20, 40, 0.9, -1, -1, -1) for f in range(1, 5)]
    hyp_rows += [
        (1, 20, 100, 10, 20, 40, 0.9, -1, -1, -1),
        (2, 20, 101, 11, 20, 40, 0.9, -1, -1, -1),
    ]
    hyp_rows += [
        (3, 30, 100, 10, 20, 40, 0.9, -1, -1, -1),
        (4, 40, 500, 10, 20, 40, 0.9, -1, -1, -1),
    ]
    hyp = _write(tmp_path / "hyp.txt", hyp_rows)
    out = tmp_path / "mot.json"
    # when
    rc = accuracy.main(["--json", str(out), "track", "--gt", str(gt), "--tracks", str(hyp)])
    # then: 8 objects; FN 1, FP 1, IDSW 1 -> MOTA = 1 - 3/8; IDTP 6 -> IDF1 = 12/16
    assert rc == 0
    m = json.loads(out.read_text())
    assert m["num_objects"] == 8 and m["num_frames"] == 4
    assert (m["num_misses"], m["num_false_positives"], m["num_switches"]) == (1, 1, 1)
    assert m["mota"] == pytest.approx(0.625)
    assert m["idf1"] == pytest.approx(0.75)


def test_byte_tracker_on_clean_detections_keeps_identities(tmp_path: Path) -> None:
    # given: two pedestrians walking apart for 20 frames at 10 fps, detected every frame
    rows = []
    for f in range(1, 21):
        rows += [
            (f, 1, 50 + 3 * f, 100, 30, 80, 1, 1, 1.0),
            (f, 2, 400 - 3 * f, 120, 30, 80, 1, 1, 1.0),
        ]
    gt = _write(tmp_path / "gt.txt", rows)
    det = _write(tmp_path / "det.txt", [(r[0], -1, *r[2:6], 0.9) for r in rows])
    frames = accuracy.frames_from_detections(det, fps=10.0)
    # when
    hyp = accuracy.run_tracker(frames, ByteTracker(TrackerConfig()), classes=[0])
    m = accuracy.mot_scores(accuracy.read_mot(gt, gt_classes=[1], ignore_zero_confidence=True), hyp)
    # then: no switch, one identity per person, only the unconfirmed first frames missed
    assert m["num_switches"] == 0
    assert len(np.unique(hyp[:, 1])) == 2
    assert m["num_misses"] <= 2 * (TrackerConfig().min_hits - 1)
    assert m["mota"] >= 0.9
