"""Errors of the inference stage, one small hierarchy.

    InferenceError
    +-- ModelError          the model folder cannot be used (fatal for that model version)
    |   +-- ManifestError   model.json missing, unreadable or invalid
    |   +-- ModelFileError  ONNX missing, sha256 mismatch, or ONNX Runtime cannot load it
    |   +-- ModelShapeError input/output shapes disagree with the manifest's family
    |   +-- GoldenError     the model's golden input does not give its expected detections
    +-- BackendError        the runtime failed to create a session or to run it
    +-- ImageError          a still image cannot be read or decoded

A `ModelError` is fatal for that model (retrying will not help: roll back); a
`BackendError` during `infer` may be transient (the caller counts and carries on).
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base of every error raised by `agent.inference`."""


class ModelError(InferenceError):
    """A model folder that cannot be used; the message names the folder and the problem."""


class ManifestError(ModelError):
    """model.json is missing, not JSON, or fails validation (the message names the field)."""


class ModelFileError(ModelError):
    """The ONNX file is missing, has the wrong sha256, or ONNX Runtime cannot load it."""


class ModelShapeError(ModelError):
    """The ONNX inputs/outputs do not match what the manifest's family and labels require."""


class GoldenError(ModelError):
    """The golden input did not reproduce the manifest's expected detections."""


class BackendError(InferenceError):
    """The inference runtime failed (session creation or a run)."""


class ImageError(InferenceError):
    """A still image could not be opened or decoded."""


__all__ = [
    "BackendError",
    "GoldenError",
    "ImageError",
    "InferenceError",
    "ManifestError",
    "ModelError",
    "ModelFileError",
    "ModelShapeError",
]
