"""Batching for the TensorRT path: ONNX input facts, profile selection, batch assembly."""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path

import av
import numpy as np
import pytest

from agent.inference.errors import ModelFileError, ModelShapeError
from agent.inference.tensorrt.batching import (
    BatchProfile,
    gather_batch,
    select_profile,
    split_outputs,
)
from agent.inference.tensorrt.onnx_facts import parse_onnx, read_onnx_facts
from agent.ingest.mailbox import FrameHub, Taken
from agent.types import FramePacket

# -- a minimal protobuf writer, to make ONNX graphs the shared model does not cover ------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _len(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _int(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _dim(d: int | str) -> bytes:
    return _int(1, d) if isinstance(d, int) else _len(2, d.encode())


def _value_info(name: str, elem: int, shape: list[int | str]) -> bytes:
    dims = b"".join(_len(1, _dim(d)) for d in shape)
    tensor_type = _int(1, elem) + _len(2, dims)
    return _len(1, name.encode()) + _len(2, _len(1, tensor_type))


def make_onnx(shape: list[int | str], ops: list[str], init_type: int = 1, elem: int = 1) -> bytes:
    """ModelProto bytes: one input `images`, one initializer `w`, nodes of `ops`."""
    nodes = b"".join(_len(1, _len(4, op.encode())) for op in ops)
    init = _len(5, _int(1, 3) + _int(2, init_type) + _len(8, b"w") + _len(9, b"\x00" * 12))
    inputs = _len(11, _value_info("images", elem, shape)) + _len(11, _value_info("w", 1, [3]))
    graph = nodes + _len(2, b"g") + init + inputs
    return _int(1, 8) + _len(7, graph)


# -- ONNX facts -------------------------------------------------------------------------


def test_facts_of_the_shared_model(assets: Path) -> None:
    facts, data = read_onnx_facts(assets / "yolox_nano.onnx")
    assert len(data) > 1_000_000
    assert [(i.name, i.dtype, i.shape) for i in facts.inputs] == [
        ("images", "float32", (1, 3, 416, 416))
    ]
    assert "Conv" in facts.op_types
    assert not facts.has_qdq
    assert not facts.has_fp16_weights


def test_facts_of_a_dynamic_batch_qdq_fp16_graph() -> None:
    # given a graph with a named batch dim, Q/DQ nodes and an FP16 initializer
    data = make_onnx(["batch", 3, 320, 320], ["QuantizeLinear", "DequantizeLinear", "Conv"], 10)
    facts = parse_onnx(data)
    # then the initializer is not mistaken for an input, and the facts are read
    assert [(i.name, i.shape) for i in facts.inputs] == [("images", ("batch", 3, 320, 320))]
    assert facts.has_qdq
    assert facts.has_fp16_weights


@pytest.mark.parametrize("cut", [5, 40, -3])
def test_truncated_onnx_is_a_clear_model_error(cut: int) -> None:
    data = make_onnx([1, 3, 64, 64], ["Conv"])
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        parse_onnx(data[:cut], "broken.onnx")


def test_non_onnx_bytes_are_refused() -> None:
    with pytest.raises(ModelFileError, match=r"x\.onnx"):
        parse_onnx(b"\x00\x01garbage" * 3, "x.onnx")


# -- profile selection ------------------------------------------------------------------


def test_static_batch_model_runs_per_frame(assets: Path) -> None:
    facts, _ = read_onnx_facts(assets / "yolox_nano.onnx")
    inp = facts.inputs[0]
    plan = select_profile(inp.name, inp.shape, max_batch=8)
    assert plan.static_batch
    assert plan.per_frame
    assert plan.profile == BatchProfile(1, 1, 1)
    assert plan.shape(1) == (1, 3, 416, 416)


@pytest.mark.parametrize("batch_dim", ["batch", None, -1, 0])
def test_dynamic_batch_gets_one_profile_up_to_max_batch(batch_dim: int | str | None) -> None:
    plan = select_profile("images", [batch_dim, 3, 416, 416], max_batch=8, expected_batch=3)
    assert not plan.static_batch
    assert plan.profile == BatchProfile(min=1, opt=3, max=8)
    assert plan.profile_shapes() == ((1, 3, 416, 416), (3, 3, 416, 416), (8, 3, 416, 416))


@pytest.mark.parametrize(("expected", "opt"), [(None, 4), (0, 1), (2, 2), (99, 4)])
def test_opt_batch_is_the_expected_camera_count_capped(expected: int | None, opt: int) -> None:
    plan = select_profile("x", ["n", 3, 64, 64], max_batch=4, expected_batch=expected)
    assert plan.profile.opt == opt


def test_dynamic_dims_from_onnx_flow_into_the_profile() -> None:
    facts = parse_onnx(make_onnx(["batch", 3, "h", "w"], ["Conv"]))
    inp = facts.inputs[0]
    plan = select_profile(inp.name, inp.shape, max_batch=2, input_hw=(312, 416))
    assert plan.profile_shapes()[2] == (2, 3, 312, 416)
    with pytest.raises(ModelShapeError, match="dim 2 is dynamic"):
        select_profile(inp.name, inp.shape, max_batch=2)


@pytest.mark.parametrize(
    ("shape", "message"),
    [([1, "c", 64, 64], "dynamic channel"), ([1, 3, 64], "expected NCHW")],
)
def test_unusable_input_shapes_are_refused(shape: list[int | str], message: str) -> None:
    with pytest.raises(ModelShapeError, match=message):
        select_profile("images", shape, max_batch=4)


def test_profile_order_is_enforced() -> None:
    with pytest.raises(ValueError, match="min <= opt <= max"):
        BatchProfile(2, 1, 4)


# -- batch assembly ---------------------------------------------------------------------


class FakeQueue:
    """Items ready now, plus items that arrive when the (fake) clock passes their time."""

    def __init__(self, ready: list[str], later: list[tuple[float, str]] | None = None) -> None:
        self.now = 0.0
        self.ready = deque(ready)
        self.later = sorted(later or [])
        self.timeouts: list[float] = []

    def clock(self) -> float:
        return self.now

    def take(self, timeout: float) -> str | None:
        self.timeouts.append(timeout)
        if self.ready:
            return self.ready.popleft()
        if self.later and self.later[0][0] <= self.now + timeout:
            at, item = self.later.pop(0)
            self.now = max(self.now, at)
            return item
        self.now += timeout
        return None


def test_nothing_ready_gives_an_empty_batch_after_the_first_timeout() -> None:
    q = FakeQueue([])
    assert gather_batch(q.take, max_batch=4, wait_s=0.005, first_timeout_s=0.1, clock=q.clock) == []
    assert q.timeouts == [0.1]


def test_batch_fills_to_max_batch_from_ready_cameras() -> None:
    q = FakeQueue(["a", "b", "c", "d", "e"])
    batch = gather_batch(q.take, max_batch=4, wait_s=0.005, first_timeout_s=0.1, clock=q.clock)
    assert batch == ["a", "b", "c", "d"]
    assert list(q.ready) == ["e"]


def test_batch_stops_once_every_expected_camera_is_in() -> None:
    q = FakeQueue(["a", "b"], later=[(0.001, "c")])
    batch = gather_batch(
        q.take, max_batch=8, wait_s=0.010, first_timeout_s=0.1, expected=2, clock=q.clock
    )
    assert batch == ["a", "b"]
    assert q.later  # it did not wait for a third frame


def test_late_frames_join_within_the_wait_budget_only() -> None:
    # given one frame now, one 3 ms later and one 20 ms later, with a 5 ms budget
    q = FakeQueue(["a"], later=[(0.003, "b"), (0.020, "c")])
    # when a batch is gathered
    batch = gather_batch(q.take, max_batch=4, wait_s=0.005, first_timeout_s=0.1, clock=q.clock)
    # then the 3 ms frame joins, the 20 ms frame does not, and no wait exceeded the budget
    assert batch == ["a", "b"]
    assert all(t <= 0.005 for t in q.timeouts[1:])
    assert q.now == pytest.approx(0.005)


def test_zero_wait_budget_takes_only_what_is_ready() -> None:
    q = FakeQueue(["a", "b"], later=[(0.001, "c")])
    batch = gather_batch(q.take, max_batch=4, wait_s=0.0, first_timeout_s=0.1, clock=q.clock)
    assert batch == ["a", "b"]
    assert q.timeouts[1:] == [0.0, 0.0]


def _packet(camera: str, seq: int, image: av.VideoFrame) -> FramePacket:
    return FramePacket(camera, seq, seq / 10, 0.0, 0.0, image, image.width, image.height)


def test_gather_from_the_real_frame_hub_takes_one_latest_frame_per_camera() -> None:
    # given three live cameras, each having put two frames (the first replaced)
    hub = FrameHub()
    image = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="bgr24")
    never = threading.Event()
    for cam in ("cam-a", "cam-b", "cam-c"):
        hub.register(cam, "latest")
        for seq in (0, 1):
            assert hub.put(_packet(cam, seq, image), never)
    # when the inference thread gathers a batch
    batch: list[Taken] = gather_batch(
        hub.take, max_batch=4, wait_s=0.005, first_timeout_s=1.0, expected=3
    )
    # then each camera contributes its latest frame once, and stale ones count as dropped
    assert sorted((t.packet.camera_id, t.packet.seq) for t in batch) == [
        ("cam-a", 1),
        ("cam-b", 1),
        ("cam-c", 1),
    ]
    assert all(s["dropped"] == 1 and s["pending"] == 0 for s in hub.stats().values())
    hub.close()


def test_split_outputs_gives_per_frame_views() -> None:
    out = np.arange(3 * 5 * 2, dtype=np.float32).reshape(3, 5, 2)
    count = np.array([[1], [2], [3]], np.int32)
    frames = split_outputs([out, count], 2)
    assert len(frames) == 2
    assert frames[1][0].shape == (1, 5, 2)
    assert np.shares_memory(frames[1][0], out)
    assert frames[1][1].tolist() == [[2]]
    with pytest.raises(ValueError, match="fewer than 4 rows"):
        split_outputs([out], 4)
