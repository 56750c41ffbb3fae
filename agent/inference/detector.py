"""The detector: frame -> letterbox (swscale) -> backend -> family decoder -> NMS -> Detections.

A `Detector` owns one backend session and its pre-allocated input buffers, so it
is NOT thread-safe: build one per inference worker thread. Everything it returns
is freshly allocated (safe to hand to other threads); the buffers it reuses never
leave it.

Also here, for the CLI and tests: `load_image` (JPEG/PNG through PyAV, as BGR) and
`detections_to_json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import VideoReformatter

from agent.inference.backend import Backend
from agent.inference.decoders import Candidates, decode_nms, decode_yolov8, decode_yolox
from agent.inference.errors import BackendError, ImageError
from agent.inference.model import ModelFolder
from agent.inference.nms import nms
from agent.inference.preprocess import (
    Letterbox,
    alloc_input_image,
    compute_letterbox,
    letterbox_array,
    letterbox_frame,
    to_nchw_float,
    unletterbox_boxes,
)
from agent.types import Detections

Outputs = Sequence[npt.NDArray[Any]]
Prepared = tuple[npt.NDArray[np.float32], Letterbox]
"""The network input tensor and the letterbox that made it."""


class Detector:
    """Detections for one frame at a time, boxes in source pixels, best score first.

    Not thread-safe (reuses its buffers): one Detector per worker thread.
    """

    def __init__(
        self,
        model: ModelFolder,
        backend: Backend,
        score_threshold: float | None = None,
        nms_threshold: float | None = None,
        max_detections: int | None = None,
    ) -> None:
        m = model.manifest
        self.model = model
        self.backend = backend
        self._reformatter = VideoReformatter()
        self.labels: list[str] = list(m.labels)
        self.score_threshold = m.score_threshold if score_threshold is None else score_threshold
        self.nms_threshold = m.nms_threshold if nms_threshold is None else nms_threshold
        self.max_detections = m.max_detections if max_detections is None else max_detections
        self._input = m.input
        self._strides = tuple(m.strides)
        self.rect_multiple = max(m.strides) if m.input.rect and backend.dynamic_spatial else None
        """Rectangular inference: inputs are padded to this multiple only (None: square)."""
        self._lb: Letterbox | None = None
        # input buffers, (re)allocated by letterbox_for for the input size a source needs
        self._img = np.empty((0, 0, 3), np.uint8)
        self._tensor = np.empty((1, 3, 0, 0), np.float32)

    def letterbox_for(self, src_w: int, src_h: int) -> Letterbox:
        """The (cached) letterbox for a source size; recomputed only when the size changes.

        With rectangular inference the input size follows the source's aspect ratio, so
        the reused input buffers are reallocated when it changes.
        """
        lb = self._lb
        if lb is None or (lb.src_w, lb.src_h) != (src_w, src_h):
            inp = self._input
            lb = compute_letterbox(
                src_w, src_h, inp.width, inp.height, inp.letterbox, multiple=self.rect_multiple
            )
            self._lb = lb
            if self._img.shape[:2] != (lb.dst_h, lb.dst_w):
                self._img = alloc_input_image(lb, inp.pad_value)
                self._tensor = np.empty((1, 3, lb.dst_h, lb.dst_w), np.float32)
        return lb

    def preprocess_frame(self, frame: av.VideoFrame) -> Prepared:
        """The network input for `frame` (a view of this Detector's reused buffer)."""
        lb = self.letterbox_for(frame.width, frame.height)
        inp = self._input
        letterbox_frame(
            frame,
            lb,
            self._img,
            channel_order=inp.channel_order,
            pad_value=inp.pad_value,
            reformatter=self._reformatter,
        )
        return to_nchw_float(self._img, inp.scale, self._tensor), lb

    def preprocess_image(self, bgr: npt.NDArray[np.uint8]) -> Prepared:
        lb = self.letterbox_for(int(bgr.shape[1]), int(bgr.shape[0]))
        inp = self._input
        letterbox_array(
            bgr, lb, self._img, channel_order=inp.channel_order, pad_value=inp.pad_value
        )
        return to_nchw_float(self._img, inp.scale, self._tensor), lb

    def decode(self, outputs: Outputs, lb: Letterbox) -> Candidates:
        """Family decoder + NMS: kept candidates in network-input pixels, best first."""
        family = self.model.manifest.family
        if family == "nms":
            num, boxes, scores, classes = outputs[:4]
            cands = decode_nms(num, boxes, scores, classes, self.score_threshold)
            order = np.argsort(-cands.scores, kind="stable")[: self.max_detections]
            return Candidates(cands.boxes[order], cands.scores[order], cands.class_ids[order])
        if family == "yolox":
            cands = decode_yolox(
                outputs[0], lb.dst_w, lb.dst_h, self._strides, self.score_threshold
            )
        else:
            cands = decode_yolov8(outputs[0], self.score_threshold)
        keep = nms(
            cands.boxes, cands.scores, self.nms_threshold, cands.class_ids, self.max_detections
        )
        return Candidates(cands.boxes[keep], cands.scores[keep], cands.class_ids[keep])

    def postprocess(self, outputs: Outputs, lb: Letterbox) -> Detections:
        """Raw backend outputs -> Detections in source pixels (empty boxes dropped)."""
        cands = self.decode(outputs, lb)
        boxes = unletterbox_boxes(cands.boxes, lb)
        visible = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return Detections(
            boxes=boxes[visible],
            scores=cands.scores[visible].astype(np.float32),
            class_ids=cands.class_ids[visible].astype(np.int32),
        )

    def detect_frame(self, frame: av.VideoFrame) -> Detections:
        tensor, lb = self.preprocess_frame(frame)
        return self.postprocess(self.backend.infer(tensor), lb)

    def detect_image(self, bgr: npt.NDArray[np.uint8]) -> Detections:
        """Detect on an HxWx3 uint8 BGR image (e.g. from `load_image`)."""
        tensor, lb = self.preprocess_image(bgr)
        return self.postprocess(self.backend.infer(tensor), lb)

    def warm_up(self) -> Detections:
        """One inference on a blank input image: proves the backend runs (BackendError if not).

        With rectangular inference the blank is 4:3, so the graph must prove it runs (and
        gives as many rows as the decoder's grid) at a non-square size too.
        """
        inp = self._input
        height = inp.height * 3 // 4 if self.rect_multiple is not None else inp.height
        blank = np.full((height, inp.width, 3), inp.pad_value, np.uint8)
        try:
            return self.detect_image(blank)
        except (BackendError, ValueError) as exc:  # ValueError: the decoder's row count
            if self.rect_multiple is None:
                raise
            raise BackendError(
                f"model {self.model.manifest.name} sets input.rect, but its graph does not "
                f"run at {inp.width}x{height} input: {exc}"
            ) from exc

    def close(self) -> None:
        self.backend.close()


def load_image(path: str | Path) -> npt.NDArray[np.uint8]:
    """Decode a still image (JPEG, PNG, ...) with PyAV into an HxWx3 uint8 BGR array."""
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"image {p} does not exist or is not a file")
    try:
        with av.open(str(p)) as container:
            frame = next(container.decode(video=0), None)
            if frame is None:
                raise ImageError(f"image {p}: no picture could be decoded")
            image: npt.NDArray[np.uint8] = frame.to_ndarray(format="bgr24")
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise ImageError(f"image {p} cannot be decoded: {exc}") from exc
    return image


def detections_to_json(dets: Detections, labels: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per detection: label, class_id, score, box [x1, y1, x2, y2] (source pixels)."""
    out = []
    for box, score, cid in zip(
        dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(), strict=True
    ):
        out.append(
            {
                "label": labels[cid] if 0 <= cid < len(labels) else str(cid),
                "class_id": int(cid),
                "score": round(float(score), 4),
                "box": [round(float(v), 1) for v in box],
            }
        )
    return out


__all__ = ["Detector", "detections_to_json", "load_image"]
