"""Facts about an ONNX file that decide how its TensorRT engine is built, read without `onnx`.

The engine build needs to know: the input tensor's name, element type and shape
(static or dynamic batch), whether the graph carries explicit quantisation
(QuantizeLinear/DequantizeLinear nodes: INT8 through Q/DQ, never calibration) and
whether it already holds FP16 weights (TensorRT 11 builds strongly typed networks,
so FP16 must be in the ONNX). The `onnx` package is not a dependency of the agent,
so this module walks the protobuf wire format directly: a few dozen lines that
read only the fields listed below and skip everything else by length.

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.inference.errors import ModelFileError

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

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
Field = tuple[int, int, "int | memoryview"]


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


class _Truncated(ValueError):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise _Truncated("varint runs past the end")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise _Truncated("varint too long")


def fields(buf: memoryview) -> Iterator[Field]:
    """(field number, wire type, int or sub-buffer) for each field of one message."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
            yield number, wire, value
        elif wire in (_I64, _I32):
            size = 8 if wire == _I64 else 4
            if pos + size > end:
                raise _Truncated("fixed field runs past the end")
            yield number, wire, int.from_bytes(buf[pos : pos + size], "little")
            pos += size
        elif wire == _LEN:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise _Truncated("length-delimited field runs past the end")
            yield number, wire, buf[pos : pos + size]
            pos += size
        else:
            raise _Truncated(f"unsupported wire type {wire}")


def _sub(buf: memoryview, number: int) -> Iterator[memoryview]:
    for num, wire, value in fields(buf):
        if num == number and wire == _LEN and isinstance(value, memoryview):
            yield value


def _int(buf: memoryview, number: int, default: int = 0) -> int:
    found = default
    for num, wire, value in fields(buf):
        if num == number and wire == _VARINT and isinstance(value, int):
            found = value
    return found


def _text(buf: memoryview, number: int) -> str:
    return next((bytes(v).decode("utf-8", "replace") for v in _sub(buf, number)), "")


def _dim(buf: memoryview) -> Dim:
    for num, wire, value in fields(buf):
        if num == 1 and wire == _VARINT and isinstance(value, int):
            return value
        if num == 2 and isinstance(value, memoryview):
            return bytes(value).decode("utf-8", "replace")
    return None


def _value_info(buf: memoryview) -> InputFacts:
    name = _text(buf, 1)
    elem = 0
    shape: tuple[Dim, ...] = ()
    for type_proto in _sub(buf, 2):
        for tensor in _sub(type_proto, 1):
            elem = _int(tensor, 1)
            for shape_proto in _sub(tensor, 2):
                shape = tuple(_dim(d) for d in _sub(shape_proto, 1))
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
            ops.add(_text(value, 4))
        elif num == 5:
            init_names.add(_text(value, 8))
            fp16 = fp16 or _int(value, 2) in (ELEM_FLOAT16, ELEM_BFLOAT16)
        elif num == 11:
            values.append(_value_info(value))
    inputs = tuple(v for v in values if v.name not in init_names)
    return OnnxFacts(digest, inputs, frozenset(ops), fp16)


def parse_onnx(data: bytes, source: str = "<onnx>") -> OnnxFacts:
    """Facts of a serialised ModelProto; ModelFileError when it is not one."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        graphs = list(_sub(memoryview(data), 7))
        if not graphs:
            raise _Truncated("no graph in the model")
        facts = _graph_facts(graphs[-1], digest)
    except _Truncated as exc:
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
