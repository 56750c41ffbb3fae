"""The real detector on real images and video, checked against an independent reference.

The reference below shares no code with `agent.inference`: its own float64 letterbox
(plain bilinear resize), its own ONNX Runtime session, grid decode and greedy NMS
written out plainly. The detector must find the same objects with the same boxes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import onnxruntime as ort
import pytest

from agent.config import OnnxRuntimeBackendConfig
from agent.inference.detector import Detector, detections_to_json, load_image
from agent.inference.errors import BackendError, GoldenError, ImageError
from agent.inference.golden import check_golden
from agent.inference.model import ModelFolder, load_model_folder
from agent.inference.onnxrt import OnnxRuntimeBackend, create_backend
from agent.types import Detections
from tests.model_helpers import make_model_dir, shipped_manifest

PERSON, BICYCLE, CAR, DOG, HORSE = 0, 1, 2, 16, 17

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> ModelFolder:
    return load_model_folder(make_model_dir(tmp_path_factory.mktemp("models"), assets))


@pytest.fixture(scope="module")
def detector(model: ModelFolder) -> Iterator[Detector]:
    det = Detector(model, create_backend(OnnxRuntimeBackendConfig(type="onnxruntime"), model))
    yield det
    det.close()


@pytest.fixture(scope="module")
def vtest_frames(assets: Path) -> list[av.VideoFrame]:
    with av.open(str(assets / "vtest.avi")) as container:
        return [f for _, f in zip(range(40), container.decode(video=0), strict=False)]


# ---------------------------------------------------------------- the reference


def ref_letterbox(bgr: np.ndarray, size: int = 416) -> tuple[np.ndarray, float]:
    """float64 bilinear resize (half-pixel centres), placed top-left on 114 padding."""
    h, w = bgr.shape[:2]
    r = min(size / w, size / h)
    nw, nh = int(w * r), int(h * r)
    xs = np.clip((np.arange(nw) + 0.5) / r - 0.5, 0, w - 1)
    ys = np.clip((np.arange(nh) + 0.5) / r - 0.5, 0, h - 1)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (xs - x0)[None, :, None], (ys - y0)[:, None, None]
    img = bgr.astype(np.float64)
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    out = np.full((size, size, 3), 114.0)
    out[:nh, :nw] = top * (1 - fy) + bottom * fy
    return out, r


def ref_iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ref_decode(
    raw: np.ndarray,
    ratios: tuple[float, float],
    img_size: tuple[int, int],
    *,
    score_thr: float = 0.3,
    nms_thr: float = 0.45,
    input_wh: tuple[int, int] = (416, 416),
) -> list[tuple[list[float], float, int]]:
    """YOLOX grid decode in float64, class-aware greedy NMS, back to image pixels.

    ratios: the resize's (x, y) ratios, input pixels per image pixel; img_size: (w, h);
    input_wh: the network input the raw output was made from.
    """
    pred = raw[0].astype(np.float64)
    cells = []
    for stride in (8, 16, 32):
        nw, nh = input_wh[0] // stride, input_wh[1] // stride
        cells += [(x, y, stride) for y in range(nh) for x in range(nw)]
    grid = np.array(cells, dtype=np.float64)
    cx = (pred[:, 0] + grid[:, 0]) * grid[:, 2]
    cy = (pred[:, 1] + grid[:, 1]) * grid[:, 2]
    bw = np.exp(pred[:, 2]) * grid[:, 2]
    bh = np.exp(pred[:, 3]) * grid[:, 2]
    cls = pred[:, 5:].argmax(axis=1)
    score = pred[:, 4] * pred[np.arange(len(pred)), 5 + cls]
    cands = [
        (
            [cx[i] - bw[i] / 2, cy[i] - bh[i] / 2, cx[i] + bw[i] / 2, cy[i] + bh[i] / 2],
            score[i],
            cls[i],
        )
        for i in np.flatnonzero(score > score_thr)
    ]
    cands.sort(key=lambda c: -c[1])
    kept: list[tuple[list[float], float, int]] = []
    for box, s, c in cands:
        if all(kc != c or ref_iou(box, kb) <= nms_thr for kb, _, kc in kept):
            kept.append((box, float(s), int(c)))
    out = []
    (rx, ry), (img_w, img_h) = ratios, img_size
    for (x1, y1, x2, y2), s, c in kept:
        clipped = [
            min(max(x1 / rx, 0), img_w),
            min(max(y1 / ry, 0), img_h),
            min(max(x2 / rx, 0), img_w),
            min(max(y2 / ry, 0), img_h),
        ]
        out.append((clipped, s, c))
    return out


def ref_detect(bgr: np.ndarray, onnx: Path) -> list[tuple[list[float], float, int]]:
    img, r = ref_letterbox(bgr)
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    tensor = img.transpose(2, 0, 1)[None].astype(np.float32)
    raw = session.run(None, {"images": tensor})[0]
    return ref_decode(raw, (r, r), (bgr.shape[1], bgr.shape[0]))


def assert_matched(
    want: list[tuple[list[float], float, int]], got: Detections, min_iou: float, min_score: float
) -> int:
    """Every `want` detection above min_score has a same-class `got` box with IoU > min_iou."""
    matched = 0
    for box, score, cls in want:
        if score <= min_score:
            continue
        ious = [
            ref_iou(box, g)
            for g, c in zip(got.boxes.tolist(), got.class_ids.tolist(), strict=True)
            if c == cls
        ]
        assert ious and max(ious) > min_iou, f"class {cls} box {box} score {score:.3f}: {ious}"
        matched += 1
    return matched


def as_ref(dets: Detections) -> list[tuple[list[float], float, int]]:
    return list(
        zip(dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(), strict=True)
    )


def to_detections(ref: list[tuple[list[float], float, int]]) -> Detections:
    return Detections(
        np.array([b for b, _, _ in ref], np.float32).reshape(-1, 4),
        np.array([s for _, s, _ in ref], np.float32),
        np.array([c for _, _, c in ref], np.int32),
    )


def classes_above(dets: Detections, score: float) -> set[int]:
    return set(dets.class_ids[dets.scores > score].tolist())


# ---------------------------------------------------------------- behaviour


def test_person_jpg_finds_the_person_and_the_dog(detector: Detector, assets: Path) -> None:
    dets = detector.detect_image(load_image(assets / "person.jpg"))
    assert {PERSON, DOG} <= classes_above(dets, 0.7)


def test_horses_jpg_finds_horses(detector: Detector, assets: Path) -> None:
    dets = detector.detect_image(load_image(assets / "horses.jpg"))
    assert int(np.sum((dets.class_ids == HORSE) & (dets.scores > 0.5))) >= 3


def test_dog_jpg_finds_dog_bicycle_and_car(detector: Detector, assets: Path) -> None:
    dets = detector.detect_image(load_image(assets / "dog.jpg"))
    assert {DOG, BICYCLE, CAR} <= classes_above(dets, 0.7)


@pytest.mark.parametrize("name", ["person.jpg", "dog.jpg", "horses.jpg"])
def test_boxes_lie_in_the_image_sorted_by_score(
    detector: Detector, assets: Path, name: str
) -> None:
    img = load_image(assets / name)
    dets = detector.detect_image(img)
    h, w = img.shape[:2]
    assert len(dets) > 0
    b = dets.boxes
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
    assert (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    assert (np.diff(dets.scores) <= 0).all()
    assert (dets.scores >= detector.score_threshold).all()


@pytest.mark.parametrize("name", ["person.jpg", "dog.jpg", "horses.jpg"])
def test_agrees_with_an_independent_float64_reference(
    detector: Detector, model: ModelFolder, assets: Path, name: str
) -> None:
    # given the reference pipeline's detections on the same image
    img = load_image(assets / name)
    ref = ref_detect(img, model.onnx_path)
    # when the detector runs (swscale letterbox, vectorised decode and NMS)
    dets = detector.detect_image(img)
    # then every confident detection of either side has a matching box on the other
    assert assert_matched(ref, dets, 0.9, 0.5) >= 3
    assert assert_matched(as_ref(dets), to_detections(ref), 0.9, 0.5) >= 3


def test_decode_matches_reference_on_the_same_raw_output(detector: Detector, assets: Path) -> None:
    # given the raw network output for the detector's own input tensor
    img = load_image(assets / "person.jpg")
    tensor, lb = detector.preprocess_image(img)
    raw = detector.backend.infer(tensor)
    # when both decode it
    ours = detector.postprocess(raw, lb)
    h, w = img.shape[:2]
    assert tensor.shape == (1, 3, 288, 416)  # rectangular inference: 640x424 -> 416x276
    ratios = (lb.new_w / w, lb.new_h / h)  # the resize's true ratios
    ref = ref_decode(raw[0], ratios, (w, h), input_wh=(lb.dst_w, lb.dst_h))
    # then they keep the same detections with the same scores and near-identical boxes
    assert len(ours) == len(ref)
    np.testing.assert_allclose(ours.scores, [s for _, s, _ in ref], rtol=1e-5)
    assert ours.class_ids.tolist() == [c for _, _, c in ref]
    assert assert_matched(ref, ours, 0.99, 0.0) == len(ref)


def test_video_frames_find_pedestrians(
    detector: Detector, vtest_frames: list[av.VideoFrame]
) -> None:
    for frame in vtest_frames[::10]:
        dets = detector.detect_frame(frame)
        people = int(np.sum(dets.class_ids == PERSON))
        assert people >= 4, f"frame pts={frame.pts}: {people} people"
        assert (dets.boxes[:, 2] <= 768).all() and (dets.boxes[:, 3] <= 576).all()


def test_video_frame_agrees_with_the_reference(
    detector: Detector, model: ModelFolder, vtest_frames: list[av.VideoFrame]
) -> None:
    # given a decoder frame (YUV: the detector converts it in swscale at input size)
    frame = vtest_frames[30]
    ref = ref_detect(frame.to_ndarray(format="bgr24"), model.onnx_path)
    dets = detector.detect_frame(frame)
    # then both find the same confident objects in the same places
    assert assert_matched(ref, dets, 0.9, 0.5) >= 5
    assert assert_matched(as_ref(dets), to_detections(ref), 0.9, 0.5) >= 5


def test_results_do_not_alias_the_reused_buffers(detector: Detector, assets: Path) -> None:
    first = detector.detect_image(load_image(assets / "person.jpg"))
    snapshot = first.boxes.copy()
    detector.detect_image(load_image(assets / "horses.jpg"))
    np.testing.assert_array_equal(first.boxes, snapshot)


def test_threshold_overrides(model: ModelFolder, assets: Path) -> None:
    backend = create_backend(OnnxRuntimeBackendConfig(type="onnxruntime"), model)
    strict = Detector(model, backend, score_threshold=0.85, nms_threshold=0.3)
    dets = strict.detect_image(load_image(assets / "person.jpg"))
    strict.close()
    assert len(dets) >= 1 and (dets.scores > 0.85).all()


def test_json_for_the_cli(detector: Detector, model: ModelFolder, assets: Path) -> None:
    dets = detector.detect_image(load_image(assets / "person.jpg"))
    out = detections_to_json(dets, model.manifest.labels)
    assert out[0].keys() == {"label", "class_id", "score", "box"}
    labels = {d["label"] for d in out if d["score"] > 0.7}
    assert {"person", "dog"} <= labels
    assert all(len(d["box"]) == 4 and isinstance(d["score"], float) for d in out)


def test_unreadable_images_raise_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        load_image(tmp_path / "missing.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\xff\xd8 this is not a jpeg" * 10)
    with pytest.raises(ImageError, match=r"junk\.jpg"):
        load_image(junk)


def test_load_image_reads_png_as_bgr(tmp_path: Path) -> None:
    img = np.zeros((20, 30, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    path = tmp_path / "blue.png"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = 30, 20, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    back = load_image(path)
    np.testing.assert_array_equal(back, img)


def test_shipped_golden_passes(detector: Detector, model: ModelFolder) -> None:
    assert check_golden(detector, model) is not None


def _golden_model(tmp_path: Path, assets: Path, expected: list[dict[str, Any]]) -> ModelFolder:
    folder = make_model_dir(
        tmp_path, assets, golden={"image": "golden.jpg", "expected": expected, "allow_extra": True}
    )
    (folder / "golden.jpg").symlink_to(assets / "person.jpg")
    return load_model_folder(folder)


def test_golden_image_with_its_expected_detections(
    tmp_path: Path, assets: Path, detector: Detector
) -> None:
    expected = [
        {"class_id": PERSON, "score": 0.88, "box": [189.0, 98.0, 277.0, 374.0]},
        {"class_id": DOG, "score": 0.88, "box": [62.0, 263.0, 200.0, 351.0]},
    ]
    good = _golden_model(tmp_path / "good", assets, expected)
    assert len(check_golden(detector, good) or ()) >= 2
    wrong = _golden_model(tmp_path / "bad", assets, [{**expected[0], "class_id": CAR}])
    with pytest.raises(GoldenError, match="not reproduced"):
        check_golden(detector, wrong)


def test_missing_provider_falls_back_to_cpu_with_a_warning(
    model: ModelFolder, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = OnnxRuntimeBackendConfig(
        type="onnxruntime", providers=["TensorrtExecutionProvider", "CPUExecutionProvider"]
    )
    with caplog.at_level(logging.WARNING, logger="agent.inference.onnxrt"):
        backend = create_backend(cfg, model)
    assert backend.name == "onnxruntime:CPUExecutionProvider"
    assert "TensorrtExecutionProvider" in caplog.text
    backend.close()


def test_backend_errors_are_wrapped(model: ModelFolder, tmp_path: Path) -> None:
    backend = OnnxRuntimeBackend(model.onnx_path)
    with pytest.raises(BackendError, match="inference failed"):
        backend.infer(np.zeros((1, 3, 10, 10), np.float32))
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.infer(np.zeros((1, 3, 416, 416), np.float32))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"nope")
    with pytest.raises(BackendError, match="cannot create a session"):
        OnnxRuntimeBackend(bad)


def test_shipped_manifest_thresholds_are_used(detector: Detector) -> None:
    manifest = shipped_manifest()
    assert detector.score_threshold == manifest["score_threshold"]
    assert detector.nms_threshold == manifest["nms_threshold"]
