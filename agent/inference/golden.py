"""Golden validation: a model folder proves itself on its own known input before serving.

The manifest's `golden` names an image (or none: a uniform image of the pad value)
and the detections it must give. OTA staging runs this on the device with the real
backend, so a model that loads but computes garbage (wrong export, wrong
preprocessing, broken engine) is rejected before it is activated.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.inference.detector import Detector, load_image
from agent.inference.errors import GoldenError
from agent.inference.model import GoldenSpec, ModelFolder
from agent.inference.nms import iou_matrix
from agent.types import Detections


def golden_image(model: ModelFolder, spec: GoldenSpec) -> npt.NDArray[np.uint8]:
    """The golden input as a BGR image."""
    if spec.image is None:
        inp = model.manifest.input
        return np.full((inp.height, inp.width, 3), inp.pad_value, np.uint8)
    return load_image(model.path / spec.image)


def _unmatched(dets: Detections, spec: GoldenSpec) -> tuple[list[int], set[int]]:
    """Greedy one-to-one match: (expected indices left unmatched, detection indices used)."""
    used: set[int] = set()
    missing: list[int] = []
    if spec.expected:
        exp_boxes = np.array([e.box for e in spec.expected], dtype=np.float64)
        ious = iou_matrix(exp_boxes, dets.boxes)
    for i, exp in enumerate(spec.expected):
        ok = (
            (dets.class_ids == exp.class_id)
            & (ious[i] >= spec.iou_min)
            & (np.abs(dets.scores - exp.score) <= spec.score_tolerance)
        )
        ok[list(used)] = False
        if ok.any():
            used.add(int(np.argmax(np.where(ok, ious[i], -1.0))))
        else:
            missing.append(i)
    return missing, used


def check_golden(detector: Detector, model: ModelFolder) -> Detections | None:
    """Run the golden input; raise GoldenError when the output disagrees. None: no golden."""
    spec = model.manifest.golden
    if spec is None:
        return None
    dets = detector.detect_image(golden_image(model, spec))
    missing, used = _unmatched(dets, spec)
    name = f"model {model.manifest.name}@{model.manifest.version}"
    if missing:
        want = [spec.expected[i].model_dump() for i in missing]
        raise GoldenError(f"{name}: golden detections not reproduced: {want}")
    extra = len(dets) - len(used)
    if extra and not spec.allow_extra:
        raise GoldenError(f"{name}: golden input gave {extra} unexpected detection(s)")
    return dets


__all__ = ["check_golden", "golden_image"]
