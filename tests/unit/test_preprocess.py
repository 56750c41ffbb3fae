"""Letterbox maths and the swscale letterbox: geometry, round trips, pixels in the right place."""

from __future__ import annotations

import av
import numpy as np
import pytest

from agent.inference.preprocess import (
    alloc_input_image,
    compute_letterbox,
    letterbox_array,
    letterbox_boxes,
    letterbox_frame,
    to_nchw_float,
    unletterbox_boxes,
)


def test_landscape_source_fills_width_and_sits_top_left() -> None:
    # given a 768x576 camera and a 416x416 network
    lb = compute_letterbox(768, 576, 416, 416)
    # then the image is scaled by 416/768 to 416x312, placed at the origin
    assert lb.scale == pytest.approx(416 / 768)
    assert (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y) == (416, 312, 0, 0)


def test_portrait_source_centred_mode_pads_both_sides() -> None:
    lb = compute_letterbox(480, 640, 640, 640, mode="center")
    assert (lb.new_w, lb.new_h) == (480, 640)
    assert (lb.pad_x, lb.pad_y) == (80, 0)


def test_upscaling_small_source() -> None:
    lb = compute_letterbox(100, 50, 416, 416)
    assert (lb.new_w, lb.new_h) == (416, 208)
    assert lb.scale == pytest.approx(4.16)


@pytest.mark.parametrize("mode", ["top_left", "center"])
@pytest.mark.parametrize(("src_w", "src_h"), [(768, 576), (640, 424), (773, 512), (333, 1000)])
def test_unletterbox_inverts_letterbox(mode: str, src_w: int, src_h: int) -> None:
    # given boxes inside the source image
    lb = compute_letterbox(src_w, src_h, 416, 416, mode=mode)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 1, size=(50, 2, 2)) * [src_w, src_h]
    boxes = np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)
    # when mapped to the network input and back
    back = unletterbox_boxes(letterbox_boxes(boxes, lb), lb)
    # then they are unchanged (to float32 precision)
    np.testing.assert_allclose(back, boxes, atol=1e-3 * max(src_w, src_h) / 416 + 1e-3)


def test_unletterbox_clips_to_the_source_image() -> None:
    lb = compute_letterbox(768, 576, 416, 416)
    # a box running into the padding below the image and off the left edge
    out = unletterbox_boxes([[-10.0, 300.0, 100.0, 400.0]], lb)
    assert out[0, 0] == 0.0
    assert out[0, 3] == pytest.approx(576.0)
    assert out.dtype == np.float32


def _solid_frame(w: int, h: int, bgr: tuple[int, int, int]) -> av.VideoFrame:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bgr
    return av.VideoFrame.from_ndarray(img, format="bgr24")


def test_letterbox_frame_places_image_and_pads_with_pad_value() -> None:
    # given a solid-colour 768x576 frame
    frame = _solid_frame(768, 576, (10, 200, 30))
    lb = compute_letterbox(768, 576, 416, 416)
    out = alloc_input_image(lb, pad_value=0)
    # when letterboxed into a reused buffer
    got = letterbox_frame(frame, lb, out, pad_value=114)
    # then the image occupies the top 312 rows, the rest is the pad value
    assert got is out
    assert got.shape == (416, 416, 3)
    np.testing.assert_array_equal(got[:312].reshape(-1, 3).mean(axis=0).round(), [10, 200, 30])
    assert (got[312:] == 114).all()


def test_letterbox_frame_converts_colour_and_channel_order_in_swscale() -> None:
    # given a YUV frame (as decoders produce) of a pure blue image
    yuv = _solid_frame(64, 48, (255, 0, 0)).reformat(format="yuv420p")
    lb = compute_letterbox(64, 48, 32, 32)
    bgr = letterbox_frame(yuv, lb, channel_order="bgr")
    rgb = letterbox_frame(yuv, lb, channel_order="rgb")
    # then blue is channel 0 in BGR and channel 2 in RGB
    assert bgr[:24, :, 0].mean() > 240 and bgr[:24, :, 2].mean() < 15
    assert rgb[:24, :, 2].mean() > 240 and rgb[:24, :, 0].mean() < 15


def test_reused_buffer_is_repainted_when_geometry_changes() -> None:
    # given a buffer last used by a centred portrait image
    portrait = compute_letterbox(48, 64, 64, 64, mode="center")
    out = letterbox_frame(_solid_frame(48, 64, (0, 0, 0)), portrait)
    # when a landscape image is letterboxed top-left into it
    landscape = compute_letterbox(64, 32, 64, 64)
    letterbox_frame(_solid_frame(64, 32, (50, 50, 50)), landscape, out, pad_value=114)
    # then no pixel of the old image survives in the padding
    assert (out[32:] == 114).all()
    assert (out[:32] == 50).all()


def test_letterbox_array_matches_letterbox_frame() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    lb = compute_letterbox(160, 120, 96, 96)
    a = letterbox_array(img, lb)
    b = letterbox_frame(av.VideoFrame.from_ndarray(img, format="bgr24"), lb)
    np.testing.assert_array_equal(a, b)


def test_wrong_inputs_are_refused() -> None:
    lb = compute_letterbox(160, 120, 96, 96)
    with pytest.raises(ValueError, match="frame is 64x48"):
        letterbox_frame(_solid_frame(64, 48, (0, 0, 0)), lb)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        letterbox_array(np.zeros((120, 160), np.uint8), lb)
    with pytest.raises(ValueError, match="positive"):
        compute_letterbox(0, 10, 10, 10)


def test_to_nchw_float_transposes_and_scales() -> None:
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    t = to_nchw_float(img, 1.0)
    assert t.shape == (1, 3, 2, 3) and t.dtype == np.float32
    np.testing.assert_array_equal(t[0, 1], img[:, :, 1])
    out = np.empty((1, 3, 2, 3), np.float32)
    scaled = to_nchw_float(img, 1 / 255, out)
    assert scaled is out
    np.testing.assert_allclose(scaled[0, 2], img[:, :, 2] / 255, rtol=1e-6)


def test_reused_reformatter_gives_the_same_pixels_as_a_fresh_one() -> None:
    from av.video.reformatter import VideoReformatter

    rng = np.random.default_rng(3)
    reformatter = VideoReformatter()
    lb = compute_letterbox(768, 576, 416, 416)
    for _ in range(3):  # the same context serves frame after frame
        frame = av.VideoFrame.from_ndarray(
            rng.integers(0, 255, (576, 768, 3), dtype=np.uint8), format="bgr24"
        ).reformat(format="yuv420p")
        fresh = letterbox_frame(frame, lb)
        reused = letterbox_frame(frame, lb, reformatter=reformatter)
        np.testing.assert_array_equal(fresh, reused)


def test_rect_letterbox_pads_only_to_the_stride_multiple() -> None:
    lb = compute_letterbox(768, 576, 416, 416, multiple=32)
    assert (lb.new_w, lb.new_h, lb.dst_w, lb.dst_h) == (416, 312, 416, 320)
    assert (lb.pad_x, lb.pad_y) == (0, 0)
    portrait = compute_letterbox(480, 640, 416, 416, mode="center", multiple=32)
    assert (portrait.new_w, portrait.new_h) == (312, 416)
    assert (portrait.dst_w, portrait.dst_h, portrait.pad_x, portrait.pad_y) == (320, 416, 4, 0)
    square = compute_letterbox(100, 100, 416, 416, multiple=32)
    assert (square.dst_w, square.dst_h) == (416, 416)
    # boxes map back exactly as with a square input
    boxes = np.array([[10.0, 20.0, 700.0, 560.0]], np.float32)
    np.testing.assert_allclose(unletterbox_boxes(letterbox_boxes(boxes, lb), lb), boxes, atol=1e-3)


def test_rect_letterbox_rejects_a_multiple_the_input_does_not_divide() -> None:
    with pytest.raises(ValueError, match="not a multiple of 32"):
        compute_letterbox(768, 576, 400, 416, multiple=32)
