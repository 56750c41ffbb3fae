"""Rectangular inference (`input.rect`): a 4:3 camera runs the detector at 416x320, not
416x416, and finds the same objects; backends with a fixed input size keep it square."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from agent.config import OnnxRuntimeBackendConfig
from agent.config.ladder import LadderConfig
from agent.inference.detector import Detector, load_image
from agent.inference.errors import BackendError
from agent.inference.ladder import build_ladder
from agent.inference.model import ModelFolder, load_model_folder
from agent.inference.onnxrt import OnnxRuntimeBackend, create_backend
from agent.types import Detections
from tests.backend_helpers import WrappedBackend
from tests.model_helpers import make_model_dir, shipped_manifest

CPU = OnnxRuntimeBackendConfig(type="onnxruntime")


def _model(tmp_path: Path, assets: Path, rect: bool) -> ModelFolder:
    manifest_input = {**shipped_manifest()["input"], "rect": rect}
    return load_model_folder(make_model_dir(tmp_path, assets, input=manifest_input))


def _frames(assets: Path, count: int) -> list[av.VideoFrame]:
    with av.open(str(assets / "vtest.avi")) as container:
        return [f for _, f in zip(range(count), container.decode(video=0), strict=False)]


def _iou(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _all_matched(want: Detections, got: Detections, min_score: float) -> int:
    """Every `want` box above min_score has a same-class `got` box with IoU > 0.85."""
    matched = 0
    for box, score, cls in zip(want.boxes, want.scores, want.class_ids, strict=True):
        if score <= min_score:
            continue
        ious = [_iou(box, g) for g, c in zip(got.boxes, got.class_ids, strict=True) if c == cls]
        assert ious and max(ious) > 0.85, f"class {cls} box {box.tolist()} score {score:.2f}"
        matched += 1
    return matched


def test_the_shipped_model_runs_rect_and_finds_what_the_square_input_finds(
    tmp_path: Path, assets: Path
) -> None:
    # given the shipped manifest (rect on) and the same model with rect off
    rect_model = load_model_folder(make_model_dir(tmp_path / "a", assets))
    assert rect_model.manifest.input.rect
    rect = Detector(rect_model, create_backend(CPU, rect_model))
    square_model = _model(tmp_path / "b", assets, rect=False)
    square = Detector(square_model, create_backend(CPU, square_model))
    assert (rect.rect_multiple, square.rect_multiple) == (32, None)
    for frame in _frames(assets, 60)[::15]:
        # when both run on a 768x576 street frame
        tensor, lb = rect.preprocess_frame(frame)
        assert tensor.shape == (1, 3, 320, 416) and (lb.new_w, lb.new_h) == (416, 312)
        assert square.preprocess_frame(frame)[0].shape == (1, 3, 416, 416)
        got, want = rect.detect_frame(frame), square.detect_frame(frame)
        # then the confident detections of each have a match in the other
        assert _all_matched(want, got, 0.5) >= 4
        assert _all_matched(got, want, 0.5) >= 4
    rect.close()
    square.close()


def test_input_buffers_follow_the_source_aspect_ratio(tmp_path: Path, assets: Path) -> None:
    model = load_model_folder(make_model_dir(tmp_path, assets))
    det = Detector(model, create_backend(CPU, model))
    landscape = load_image(assets / "person.jpg")  # 640x424
    portrait = np.ascontiguousarray(landscape[:, 100:420])  # 320x424: the person and dog
    sizes = ((288, 416), (416, 320), (288, 416))
    for image, shape in zip((landscape, portrait, landscape), sizes, strict=True):
        tensor, _lb = det.preprocess_image(image)
        assert tensor.shape[2:] == shape
        dets = det.detect_image(image)
        h, w = image.shape[:2]
        assert {0, 16} <= set(dets.class_ids[dets.scores > 0.8].tolist())  # person, dog
        assert (dets.boxes[:, 2] <= w).all() and (dets.boxes[:, 3] <= h).all()
    det.close()


def test_a_ladder_keeps_the_manifest_size(tmp_path: Path, assets: Path) -> None:
    # rungs may have fixed-size engines and the ladder moves between them mid-stream
    model = load_model_folder(make_model_dir(tmp_path, assets))
    ladder = build_ladder(LadderConfig(rungs=[CPU]), model, label="test")
    det = Detector(model, ladder)
    assert not ladder.dynamic_spatial and det.rect_multiple is None
    frame = _frames(assets, 1)[0]
    assert det.preprocess_frame(frame)[0].shape == (1, 3, 416, 416)
    assert int(np.sum(det.detect_frame(frame).class_ids == 0)) >= 4
    det.close()


class SquareOnly(WrappedBackend):
    """Claims a dynamic input size but fails off the declared one, as a graph with a fixed
    Reshape does when its input declarations are rewritten."""

    dynamic_spatial = True

    def infer(self, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        if tensor.shape[2] != tensor.shape[3]:
            raise BackendError(f"Reshape: input {tensor.shape} does not fit the fixed shape")
        return self.inner.infer(tensor)


def test_a_rect_manifest_on_a_graph_that_needs_its_size_fails_at_warm_up(
    tmp_path: Path, assets: Path
) -> None:
    model = load_model_folder(make_model_dir(tmp_path, assets))
    det = Detector(model, SquareOnly(OnnxRuntimeBackend(model.onnx_path)))
    with pytest.raises(
        BackendError, match=r"sets input\.rect, but its graph does not run at 416x312"
    ):
        det.warm_up()


def test_a_corrupt_model_file_is_a_clear_backend_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07:\xff\xff\xff\x7f")  # a graph field longer than the file
    with pytest.raises(BackendError, match=r"bad\.onnx.*runs past the end"):
        OnnxRuntimeBackend(bad, dynamic_spatial=True)
