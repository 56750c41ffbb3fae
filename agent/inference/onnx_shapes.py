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

Only the protobuf wire format is needed (`agent.inference.onnx_wire`):
ModelProto.graph (7) -> GraphProto.input (11), output (12), value_info (13), initializer (5)
-> ValueInfoProto.type (2) -> TypeProto.tensor_type (1) -> shape (2) -> dim (1) ->
dim_value (1) | dim_param (2).
"""

from __future__ import annotations

from collections.abc import Callable

from agent.inference.onnx_wire import LEN, WireError, fields, len_field, spans, sub, text_field

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


def _rewrite(data: bytes, edits: dict[int, Callable[[bytes], bytes | None]]) -> bytes:
    """Re-encode a message, passing each length-delimited field named in `edits` through
    its function (None drops the field); everything else is copied as it is."""
    buf = memoryview(data)
    out = bytearray()
    for number, wire, value, start, end in spans(buf):
        edit = edits.get(number) if wire == LEN else None
        if edit is None or not isinstance(value, memoryview):
            out += buf[start:end]
            continue
        new = edit(bytes(value))
        if new is not None:
            out += len_field(number, new)
    return bytes(out)


def _shape_dims(value_info: bytes) -> list[bytes]:
    """The encoded Dimension messages of a tensor ValueInfoProto (empty if it has none)."""
    for type_proto in sub(memoryview(value_info), _VALUE_INFO_TYPE):
        for tensor in sub(type_proto, _TYPE_TENSOR):
            for shape in sub(tensor, _TENSOR_TYPE_SHAPE):
                return [bytes(dim) for dim in sub(shape, _SHAPE_DIM)]
    return []


def _with_dims(value_info: bytes, rename: Callable[[int, bytes], bytes]) -> bytes:
    """The ValueInfoProto with each Dimension passed through rename(index, dim)."""

    def shape(payload: bytes) -> bytes:
        buf = memoryview(payload)
        out = bytearray()
        index = 0
        for number, wire, value, start, end in spans(buf):
            if number == _SHAPE_DIM and wire == LEN and isinstance(value, memoryview):
                out += len_field(number, rename(index, bytes(value)))
                index += 1
            else:
                out += buf[start:end]
        return bytes(out)

    def tensor(payload: bytes) -> bytes:
        return _rewrite(payload, {_TENSOR_TYPE_SHAPE: shape})

    def type_proto(payload: bytes) -> bytes:
        return _rewrite(payload, {_TYPE_TENSOR: tensor})

    return _rewrite(value_info, {_VALUE_INFO_TYPE: type_proto})


def _fixed(dim: bytes) -> bool:
    return any(number == _DIM_VALUE for number, _wire, _value in fields(memoryview(dim)))


def _symbolic(name: str) -> bytes:
    return len_field(_DIM_PARAM, name.encode())


def with_dynamic_spatial_input(model: bytes) -> bytes:
    """`model` (a serialised ModelProto) with its image input's H and W made symbolic.

    Raises OnnxFormatError when the bytes do not parse or no rank-4 input is found.
    """
    try:
        return _with_dynamic_spatial_input(model)
    except WireError as exc:
        raise OnnxFormatError(f"not a readable ONNX model ({exc})") from exc


def _with_dynamic_spatial_input(model: bytes) -> bytes:
    graphs = list(sub(memoryview(model), _MODEL_GRAPH))
    if len(graphs) != 1:
        raise OnnxFormatError("not an ONNX model (no graph)")
    initializers = {text_field(init, _TENSOR_NAME) for init in sub(graphs[0], _GRAPH_INITIALIZER)}
    patched: list[str] = []

    def graph_input(payload: bytes) -> bytes:
        name = text_field(memoryview(payload), _VALUE_INFO_NAME)
        if name in initializers or len(_shape_dims(payload)) != 4:
            return payload
        patched.append(name or "?")
        names = {2: "height", 3: "width"}
        return _with_dims(
            payload,
            lambda i, dim: _symbolic(names[i]) if i in names and _fixed(dim) else dim,
        )

    def graph_output(payload: bytes) -> bytes:
        name = text_field(memoryview(payload), _VALUE_INFO_NAME) or "out"
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
