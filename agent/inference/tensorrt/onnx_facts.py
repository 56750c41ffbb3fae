"""Facts about an ONNX file that decide how its TensorRT engine is built, read without `onnx`.

The engine build needs to know: the input tensor's name, element type and shape
(static or dynamic batch), whether the graph carries explicit quantisation
(QuantizeLinear/DequantizeLinear nodes: INT8 through Q/DQ, never calibration) and
whether it already holds FP16 weights (TensorRT 11 builds strongly typed networks,
so FP16 must be in the ONNX). The `onnx` package is not a dependency of the agent,
so this module walks the protobuf wire format directly (`agent.inference.onnx_wire`),
reading only the fields listed below and skipping everything else by length.

    ModelProto.graph = 7
    GraphProto.node = 1, .initializer = 5, .input = 11
    NodeProto.op_type = 4
    TensorProto.data_type = 2, .name = 8
    ValueInfoProto.name = 1, .type = 2 -> TypeProto.tensor_type = 1
    TypeProto.Tensor.elem_type = 1, .shape = 2 -> TensorShapeProto.dim = 1
    Dimension.dim_value = 1, .dim_param = 2
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from agent.inference.errors import ModelFileError
from agent.inference.onnx_wire import VARINT, WireError, fields, int_field, sub, text_field

Dim = int | str | None

ELEM_FLOAT = 1
ELEM_FLOAT16 = 10
ELEM_BFLOAT16 = 16
ELEM_NAMES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    16: "bfloat16",
}
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True, slots=True)
class InputFacts:
    name: str
    elem_type: int
    shape: tuple[Dim, ...]
    """Static dims are ints; symbolic ones the dim_param string; unknown ones None."""

    @property
    def dtype(self) -> str:
        return ELEM_NAMES.get(self.elem_type, f"elem_type {self.elem_type}")


@dataclass(frozen=True, slots=True)
class OnnxFacts:
    sha256: str
    inputs: tuple[InputFacts, ...]
    """Graph inputs that are not initializers (the tensors the caller feeds)."""
    op_types: frozenset[str]
    has_fp16_weights: bool

    @property
    def has_qdq(self) -> bool:
        """Explicit quantisation present: INT8 kernels are allowed for those layers."""
        return bool(self.op_types & QDQ_OPS)


def _dim(buf: memoryview) -> Dim:
    for num, wire, value in fields(buf):
        if num == 1 and wire == VARINT and isinstance(value, int):
            return value
        if num == 2 and isinstance(value, memoryview):
            return bytes(value).decode("utf-8", "replace")
    return None


def _value_info(buf: memoryview) -> InputFacts:
    name = text_field(buf, 1)
    elem = 0
    shape: tuple[Dim, ...] = ()
    for type_proto in sub(buf, 2):
        for tensor in sub(type_proto, 1):
            elem = int_field(tensor, 1)
            for shape_proto in sub(tensor, 2):
                shape = tuple(_dim(d) for d in sub(shape_proto, 1))
    return InputFacts(name, elem, shape)


def _graph_facts(graph: memoryview, digest: str) -> OnnxFacts:
    ops: set[str] = set()
    init_names: set[str] = set()
    values: list[InputFacts] = []
    fp16 = False
    for num, _wire, value in fields(graph):
        if not isinstance(value, memoryview):
            continue
        if num == 1:
            ops.add(text_field(value, 4))
        elif num == 5:
            init_names.add(text_field(value, 8))
            fp16 = fp16 or int_field(value, 2) in (ELEM_FLOAT16, ELEM_BFLOAT16)
        elif num == 11:
            values.append(_value_info(value))
    inputs = tuple(v for v in values if v.name not in init_names)
    return OnnxFacts(digest, inputs, frozenset(ops), fp16)


def parse_onnx(data: bytes, source: str = "<onnx>") -> OnnxFacts:
    """Facts of a serialised ModelProto; ModelFileError when it is not one."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        graphs = list(sub(memoryview(data), 7))
        if not graphs:
            raise WireError("no graph in the model")
        facts = _graph_facts(graphs[-1], digest)
    except WireError as exc:
        raise ModelFileError(f"{source}: not a readable ONNX model ({exc})") from exc
    if not facts.inputs:
        raise ModelFileError(f"{source}: the ONNX graph declares no input tensor")
    return facts


def read_onnx_facts(path: Path) -> tuple[OnnxFacts, bytes]:
    """The file's facts and its bytes (the builder's parser takes the same bytes)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"cannot read ONNX {path}: {exc}") from exc
    return parse_onnx(data, str(path)), data


__all__ = [
    "ELEM_FLOAT",
    "ELEM_FLOAT16",
    "QDQ_OPS",
    "InputFacts",
    "OnnxFacts",
    "fields",
    "parse_onnx",
    "read_onnx_facts",
]
