"""The in-memory rewrite that makes a model's input size dynamic, checked with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.inference.onnx_shapes import OnnxFormatError, with_dynamic_spatial_input
from agent.inference.onnx_wire import encode_varint, len_field, sub


def _session(model: bytes | str) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


def test_the_shipped_detector_takes_any_size_after_the_rewrite(assets: Path) -> None:
    original = (assets / "yolox_nano.onnx").read_bytes()
    patched = with_dynamic_spatial_input(original)
    fixed, dynamic = _session(str(assets / "yolox_nano.onnx")), _session(patched)
    assert fixed.get_inputs()[0].shape == [1, 3, 416, 416]
    assert dynamic.get_inputs()[0].shape == [1, 3, "height", "width"]
    assert dynamic.get_outputs()[0].shape[1] == "output_d1"
    # the same weights: bit-identical outputs at the declared size
    x = np.random.default_rng(1).uniform(0, 255, (1, 3, 416, 416)).astype(np.float32)
    np.testing.assert_array_equal(
        fixed.run(None, {"images": x})[0], dynamic.run(None, {"images": x})[0]
    )
    # and a 4:3 input gives the rows of a 52x40 + 26x20 + 13x10 grid
    rect = dynamic.run(None, {"images": np.zeros((1, 3, 320, 416), np.float32)})[0]
    assert rect.shape == (1, 52 * 40 + 26 * 20 + 13 * 10, 85)
    with pytest.raises(Exception, match="images"):  # the original still refuses it
        fixed.run(None, {"images": np.zeros((1, 3, 320, 416), np.float32)})


def test_garbage_and_truncated_bytes_are_refused(assets: Path) -> None:
    with pytest.raises(OnnxFormatError):
        with_dynamic_spatial_input(b"\x0f\xff\xff\xff" * 8)
    with pytest.raises(OnnxFormatError):
        with_dynamic_spatial_input((assets / "yolox_nano.onnx").read_bytes()[:100_000])
    with pytest.raises(OnnxFormatError, match="no graph"):
        with_dynamic_spatial_input(b"")


def _value_info(name: str, dims: list[int]) -> bytes:
    f = len_field
    shape = b"".join(f(1, b"\x08" + encode_varint(d)) for d in dims)
    tensor = b"\x08\x01" + f(2, shape)  # elem_type FLOAT, shape
    return f(1, name.encode()) + f(2, f(1, tensor))


def test_a_model_without_an_image_input_is_refused() -> None:
    graph = len_field(11, _value_info("x", [1, 4]))
    model = b"\x08\x07" + len_field(7, graph)  # ir_version 7, graph
    with pytest.raises(OnnxFormatError, match="rank-4"):
        with_dynamic_spatial_input(model)


def test_only_the_image_input_changes_not_initializers_listed_as_inputs() -> None:
    f = len_field
    weight = f(8, b"w")  # an initializer named "w" (name is field 8)
    graph = (
        f(5, weight)
        + f(11, _value_info("w", [8, 3, 3, 3]))
        + f(11, _value_info("x", [1, 3, 64, 48]))
    )
    out = with_dynamic_spatial_input(b"\x08\x07" + f(7, graph))
    assert b"height" in out and b"width" in out
    dims = [_dims(v) for graph_ in sub(memoryview(out), 7) for v in sub(graph_, 11)]
    assert all(d[:1] == b"\x08" for d in dims[0])  # w (an initializer): every dim still fixed
    assert dims[1][2] == b"\x12\x06height" and dims[1][3] == b"\x12\x05width"


def _dims(value_info: memoryview) -> list[bytes]:
    """ValueInfoProto.type (2) -> tensor_type (1) -> shape (2) -> dim (1), encoded."""
    (type_proto,) = sub(value_info, 2)
    (tensor,) = sub(type_proto, 1)
    (shape,) = sub(tensor, 2)
    return [bytes(d) for d in sub(shape, 1)]
