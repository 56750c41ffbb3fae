"""Model folders: the ONNX file plus its `model.json` manifest, loaded and checked.

A model folder is the unit that is deployed, validated and rolled back:

    models/yolox_nano/
        model.json        manifest (this module's `ModelManifest`)
        yolox_nano.onnx   the network, named by the manifest's `onnx` field

`load_model_folder` refuses anything it cannot serve, with a `ModelError` that names
the folder and the problem: a missing folder or file, an invalid manifest field, an
ONNX whose sha256 differs from the manifest, a file ONNX Runtime cannot parse, or
input/output shapes that do not fit the manifest's family and label count.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import onnxruntime as ort
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from agent.inference.errors import ManifestError, ModelError, ModelFileError, ModelShapeError

MANIFEST_NAME = "model.json"
MANIFEST_SCHEMA_VERSION = 1
_CHUNK = 1 << 20

Family = Literal["yolox", "yolov8", "nms"]


def _parse_scale(value: Any) -> Any:
    """Accept "1/255" as well as 0.00392156862745098 (JSON has no fractions)."""
    if isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*/\s*\d+(\.\d+)?\s*", value):
        num, den = (Fraction(part.strip()) for part in value.split("/"))
        if den == 0:
            raise ValueError("scale denominator is zero")
        return float(num / den)
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    width: int = Field(ge=8, le=8192, description="Network input width in pixels.")
    height: int = Field(ge=8, le=8192, description="Network input height in pixels.")
    channel_order: Literal["bgr", "rgb"] = Field(description="Channel order the network expects.")
    scale: Annotated[float, BeforeValidator(_parse_scale)] = Field(
        gt=0, le=1, description='Pixel multiplier: 1.0 for 0-255 input, 1/255 (or "1/255") for 0-1.'
    )
    pad_value: int = Field(default=114, ge=0, le=255, description="Letterbox fill (0-255).")
    letterbox: Literal["top_left", "center"] = Field(
        default="top_left",
        description="Where the resized image sits in the input: YOLOX trains with it top-left, "
        "Ultralytics centres it.",
    )
    rect: bool = Field(
        default=False,
        description="Rectangular inference: pad the resized image only to a multiple of the "
        "largest stride (416x320 for a 4:3 camera instead of 416x416), on backends that "
        "accept a dynamic input size (ONNX Runtime). Only for fully convolutional graphs; "
        "the agent proves the graph runs at a non-square size when it loads the model.",
    )


class GoldenDetection(_Strict):
    class_id: int = Field(ge=0, description="Expected class id.")
    score: float = Field(ge=0, le=1, description="Expected score.")
    box: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 in image pixels.")


def _inside_folder(value: str | None) -> str | None:
    """A manifest (which may arrive over the air) must not point outside its folder."""
    if value is None:
        return None
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError("must be a relative path inside the model folder (no '..')")
    return value


class GoldenSpec(_Strict):
    image: str | None = Field(
        description="Image file relative to the model folder; null means a uniform image of "
        "the pad value at the input size."
    )
    expected: list[GoldenDetection] = Field(description="Detections the image must give.")
    iou_min: float = Field(default=0.8, gt=0, le=1, description="Box match threshold.")
    score_tolerance: float = Field(default=0.05, ge=0, le=1, description="Allowed score drift.")
    allow_extra: bool = Field(
        default=False, description="Accept detections beyond the expected ones."
    )

    _image_inside = field_validator("image")(_inside_folder)


class ModelManifest(_Strict):
    schema_version: Literal[1] = Field(description="Manifest schema version (this agent reads 1).")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Model name.")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$", description="Version.")
    family: Family = Field(description="Output decoder: yolox | yolov8 | nms.")
    onnx: str = Field(min_length=1, description="ONNX file, relative to the model folder.")
    input: InputSpec = Field(description="Input geometry and pixel encoding.")
    labels: list[str] = Field(min_length=1, max_length=100_000, description="Class names.")
    score_threshold: float = Field(ge=0, le=1, description="Default score threshold.")
    nms_threshold: float = Field(ge=0, le=1, description="Default NMS IoU threshold.")
    max_detections: int = Field(default=300, ge=1, le=100_000, description="Cap per frame.")
    strides: tuple[int, ...] = Field(
        default=(8, 16, 32), min_length=1, description="Grid strides (yolox)."
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the ONNX file (hex).")
    golden: GoldenSpec | None = Field(default=None, description="Validation input and output.")

    _onnx_inside = field_validator("onnx")(_inside_folder)

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, labels: list[str]) -> list[str]:
        if any(not label.strip() for label in labels):
            raise ValueError("labels must be non-empty strings")
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        if dupes:
            raise ValueError(f"duplicate labels: {', '.join(dupes)}")
        return labels

    @model_validator(mode="after")
    def _geometry(self) -> ModelManifest:
        if self.family == "yolox":
            bad = [s for s in self.strides if self.input.width % s or self.input.height % s]
            if bad:
                raise ValueError(f"input size must be a multiple of every stride (not {bad})")
        if self.golden is not None:
            n = len(self.labels)
            bad_ids = [d.class_id for d in self.golden.expected if d.class_id >= n]
            if bad_ids:
                raise ValueError(f"golden class ids {bad_ids} out of range for {n} labels")
        return self


Dim = int | str | None


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    shape: tuple[Dim, ...]
    dtype: str


@dataclass(frozen=True, slots=True)
class ModelIO:
    """Inputs and outputs as ONNX Runtime reports them (symbolic dims are str or None)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True, slots=True)
class ModelFolder:
    path: Path
    manifest: ModelManifest
    onnx_path: Path
    io: ModelIO | None = None
    """Tensor signature read at load (None when loaded with probe=False)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"field '{loc}': {err['msg']}")
    return "; ".join(parts)


def parse_manifest(text: str, source: str = MANIFEST_NAME) -> ModelManifest:
    """Parse and validate manifest JSON text; ManifestError names the field and the reason."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(
            f"{source}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: must be a JSON object, not {type(data).__name__}")
    try:
        return ModelManifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{source}: {_format_validation(exc)}") from exc


def _read_manifest(folder: Path) -> ModelManifest:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"model folder {folder}: {MANIFEST_NAME} is missing")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read: {exc}") from exc
    return parse_manifest(text, str(path))


def probe_onnx(onnx_path: Path) -> ModelIO:
    """Load the file in ONNX Runtime (CPU, no graph optimisation) and read its signature."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
        raise ModelFileError(
            f"ONNX Runtime cannot load {onnx_path} (truncated or corrupt?): {exc}"
        ) from exc

    return session_io(session)


def session_io(session: Any) -> ModelIO:
    """The tensor signature of an onnxruntime InferenceSession."""

    def spec(arg: Any) -> TensorSpec:
        return TensorSpec(arg.name, tuple(arg.shape), str(arg.type))

    return ModelIO(
        inputs=tuple(spec(a) for a in session.get_inputs()),
        outputs=tuple(spec(a) for a in session.get_outputs()),
    )


def _dim_ok(actual: Dim, expected: int | None) -> bool:
    """A symbolic (dynamic) dimension fits anything; `expected=None` accepts any size."""
    return expected is None or not isinstance(actual, int) or actual == expected


def _shape_ok(actual: tuple[Dim, ...], expected: tuple[int | None, ...]) -> bool:
    return len(actual) == len(expected) and all(
        _dim_ok(a, e) for a, e in zip(actual, expected, strict=True)
    )


def _fmt(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def expected_output_shapes(manifest: ModelManifest) -> tuple[tuple[int | None, ...], ...]:
    """Output shapes the family requires (None: any size)."""
    n_cls = len(manifest.labels)
    w, h = manifest.input.width, manifest.input.height
    if manifest.family == "yolox":
        anchors = sum((w // s) * (h // s) for s in manifest.strides)
        return ((1, anchors, 5 + n_cls),)
    if manifest.family == "yolov8":
        return ((1, 4 + n_cls, None),)
    return ((1, 1), (1, None, 4), (1, None), (1, None))


def check_io(io: ModelIO, manifest: ModelManifest, source: str = "model") -> None:
    """Raise ModelShapeError unless the tensors fit the manifest's input size and family."""
    inp = manifest.input
    if len(io.inputs) != 1:
        raise ModelShapeError(f"{source}: expected 1 input tensor, the ONNX has {len(io.inputs)}")
    want_in = (1, 3, inp.height, inp.width)
    got_in = io.inputs[0]
    if not _shape_ok(got_in.shape, want_in):
        raise ModelShapeError(
            f"{source}: input '{got_in.name}' has shape {_fmt(got_in.shape)}, the manifest's "
            f"input says {_fmt(want_in)} (NCHW, {inp.width}x{inp.height})"
        )
    want_out = expected_output_shapes(manifest)
    got_out = tuple(o.shape for o in io.outputs)
    if len(got_out) != len(want_out) or not all(
        _shape_ok(g, w) for g, w in zip(got_out, want_out, strict=True)
    ):
        got = ", ".join(f"{o.name} {_fmt(o.shape)}" for o in io.outputs)
        want = ", ".join(_fmt(w) for w in want_out)
        raise ModelShapeError(
            f"{source}: outputs ({got}) do not match family '{manifest.family}' with "
            f"{len(manifest.labels)} labels, which needs {want}"
        )


def load_model_folder(
    path: str | Path, verify_sha256: bool = True, probe: bool = True
) -> ModelFolder:
    """Load and check a model folder; raise a ModelError subclass naming the problem.

    `probe` loads the ONNX in ONNX Runtime to check it parses and that its shapes fit
    the manifest (a few tens of milliseconds for small models).
    """
    folder = Path(path)
    if not folder.exists():
        raise ModelError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} is not a folder")
    manifest = _read_manifest(folder)
    onnx_path = folder / manifest.onnx
    if not onnx_path.is_file():
        raise ModelFileError(
            f"model folder {folder}: ONNX file '{manifest.onnx}' named in {MANIFEST_NAME} "
            "is missing (for the sample model run 'edge-agent assets fetch')"
        )
    if verify_sha256:
        actual = sha256_file(onnx_path)
        if actual != manifest.sha256:
            raise ModelFileError(
                f"{onnx_path}: sha256 mismatch: {MANIFEST_NAME} says {manifest.sha256}, "
                f"the file has {actual}"
            )
    io = None
    if probe:
        io = probe_onnx(onnx_path)
        check_io(io, manifest, f"model {manifest.name}@{manifest.version} ({onnx_path})")
    return ModelFolder(path=folder, manifest=manifest, onnx_path=onnx_path, io=io)


__all__ = [
    "MANIFEST_NAME",
    "Family",
    "GoldenDetection",
    "GoldenSpec",
    "InputSpec",
    "ModelFolder",
    "ModelIO",
    "ModelManifest",
    "TensorSpec",
    "check_io",
    "expected_output_shapes",
    "load_model_folder",
    "parse_manifest",
    "probe_onnx",
    "session_io",
    "sha256_file",
]
