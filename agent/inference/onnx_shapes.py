"""Make an ONNX model's spatial input size dynamic, in memory, without the `onnx` package.

Rectangular inference (`input.rect` in model.json) feeds a fully convolutional detector
an input padded only to a multiple of its largest stride (416x320 for a 4:3 camera
instead of 416x416: a quarter less compute). Exported detectors usually declare a fixed
input size although the graph itself does not depend on it; this module rewrites the
declarations so ONNX Runtime accepts any H and W:

- every graph input that is not an initializer and has rank 4 (NCHW) gets symbolic
  `height` / `width` for dims 2 and 3 (dims with a fixed value only);
- graph outputs get symbolic dims after the batch dim (their sizes follow the input);
- `graph.value_info` (shape annotations of intermediate tensors, optional in ONNX) is
  dropped, since the fixed sizes recorded there no longer hold.

Nothing else in the file changes (weights, nodes, metadata are copied byte for byte).
Whether the graph really is size-agnostic (no Reshape to a fixed spatial size) is proved
by running it at a non-square size: `Detector.warm_up` does that.

Only the protobuf wire format is needed: ModelProto.graph (7) -> GraphProto.input (11),
output (12), value_info (13), initializer (5) -> ValueInfoProto.type (2) ->
TypeProto.tensor_type (1) -> shape (2) -> dim (1) -> dim_value (1) | dim_param (2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 5, 11, 12, 13
_TENSOR_NAME = 8
_VALUE_INFO_NAME, _VALUE_INFO_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_TYPE_SHAPE = 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2


class OnnxFormatError(ValueError):
    """The bytes are not an ONNX model this module can rewrite."""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise OnnxFormatError("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxFormatError("varint longer than 64 bits")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(field number, wire type, the whole encoded field, its payload) of one message."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _read_varint(data, pos)
            payload = b""
        elif wire == _I64:
            pos += 8
            payload = b""
        elif wire == _I32:
            pos += 4
            payload = b""
        elif wire == _LEN:
            length, pos = _read_varint(data, pos)
            payload = data[pos : pos + length]
            pos += length
        else:
            raise OnnxFormatError(f"unsupported protobuf wire type {wire} (field {number})")
        if pos > len(data):
            raise OnnxFormatError(f"field {number} runs past the end of its message")
        yield number, wire, data[start:pos], payload


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | _LEN) + _varint(len(payload)) + payload


def _rewrite(data: bytes, edits: dict[int, Callable[[bytes], bytes | None]]) -> bytes:
    """Re-encode a message, passing each length-delimited field named in `edits` through
    its function (None drops the field); everything else is copied as it is."""
    out = bytearray()
    for number, wire, whole, payload in _fields(data):
        edit = edits.get(number) if wire == _LEN else None
        if edit is None:
            out += whole
            continue
        new = edit(payload)
        if new is not None:
            out += _len_field(number, new)
    return bytes(out)


def _string_field(data: bytes, number: int) -> str | None:
    for n, wire, _whole, payload in _fields(data):
        if n == number and wire == _LEN:
            return payload.decode("utf-8", errors="replace")
    return None


def _shape_dims(value_info: bytes) -> list[bytes]:
    """The encoded Dimension messages of a tensor ValueInfoProto (empty if it has none)."""
    for n, _w, _whole, type_proto in _fields(value_info):
        if n != _VALUE_INFO_TYPE:
            continue
        for n2, _w2, _whole2, tensor in _fields(type_proto):
            if n2 != _TYPE_TENSOR:
                continue
            for n3, _w3, _whole3, shape in _fields(tensor):
                if n3 == _TENSOR_TYPE_SHAPE:
                    return [p for n4, _w4, _wh, p in _fields(shape) if n4 == _SHAPE_DIM]
    return []


def _with_dims(value_info: bytes, rename: Callable[[int, bytes], bytes]) -> bytes:
    """The ValueInfoProto with each Dimension passed through rename(index, dim)."""

    def shape(payload: bytes) -> bytes:
        out = bytearray()
        index = 0
        for n, wire, whole, dim in _fields(payload):
            if n == _SHAPE_DIM and wire == _LEN:
                out += _len_field(n, rename(index, dim))
                index += 1
            else:
                out += whole
        return bytes(out)

    def tensor(payload: bytes) -> bytes:
        return _rewrite(payload, {_TENSOR_TYPE_SHAPE: shape})

    def type_proto(payload: bytes) -> bytes:
        return _rewrite(payload, {_TYPE_TENSOR: tensor})

    return _rewrite(value_info, {_VALUE_INFO_TYPE: type_proto})


def _fixed(dim: bytes) -> bool:
    return any(n == _DIM_VALUE for n, *_ in _fields(dim))


def _symbolic(name: str) -> bytes:
    return _len_field(_DIM_PARAM, name.encode())


def with_dynamic_spatial_input(model: bytes) -> bytes:
    """`model` (a serialised ModelProto) with its image input's H and W made symbolic.

    Raises OnnxFormatError when the bytes do not parse or no rank-4 input is found.
    """
    graphs = [p for n, w, _whole, p in _fields(model) if n == _MODEL_GRAPH and w == _LEN]
    if len(graphs) != 1:
        raise OnnxFormatError("not an ONNX model (no graph)")
    initializers = {
        _string_field(p, _TENSOR_NAME)
        for n, w, _whole, p in _fields(graphs[0])
        if n == _GRAPH_INITIALIZER and w == _LEN
    }
    patched: list[str] = []

    def graph_input(payload: bytes) -> bytes:
        name = _string_field(payload, _VALUE_INFO_NAME)
        if name in initializers or len(_shape_dims(payload)) != 4:
            return payload
        patched.append(name or "?")
        names = {2: "height", 3: "width"}
        return _with_dims(
            payload,
            lambda i, dim: _symbolic(names[i]) if i in names and _fixed(dim) else dim,
        )

    def graph_output(payload: bytes) -> bytes:
        name = _string_field(payload, _VALUE_INFO_NAME) or "out"
        return _with_dims(
            payload, lambda i, dim: _symbolic(f"{name}_d{i}") if i > 0 and _fixed(dim) else dim
        )

    def graph(payload: bytes) -> bytes:
        return _rewrite(
            payload,
            {
                _GRAPH_INPUT: graph_input,
                _GRAPH_OUTPUT: graph_output,
                _GRAPH_VALUE_INFO: lambda _p: None,
            },
        )

    result = _rewrite(model, {_MODEL_GRAPH: graph})
    if not patched:
        raise OnnxFormatError("the graph has no rank-4 (NCHW) image input to make dynamic")
    return result


__all__ = ["OnnxFormatError", "with_dynamic_spatial_input"]
