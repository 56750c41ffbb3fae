"""Letterboxing: fit a source image into the network input without distorting it.

The maths (`compute_letterbox`, `letterbox_boxes`, `unletterbox_boxes`) are pure
functions. The pixel work is done by swscale: `VideoFrame.reformat` resizes and
converts the colour (decoder YUV straight to BGR/RGB) in one native call that
releases the GIL; numpy then drops the result into a pre-allocated, padded buffer
and `to_nchw_float` lays it out as the network's float32 NCHW tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import av
import numpy as np
import numpy.typing as npt
from av.video.reformatter import Interpolation, VideoReformatter

ChannelOrder = Literal["bgr", "rgb"]
PadMode = Literal["top_left", "center"]

_PIX_FMT: dict[str, str] = {"bgr": "bgr24", "rgb": "rgb24"}
DEFAULT_INTERPOLATION = Interpolation.BILINEAR


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Where a src_w x src_h image lands in a dst_w x dst_h input.

    The image is resized to new_w x new_h (aspect kept, `scale` = min ratio, sizes
    rounded) and placed at (pad_x, pad_y); the rest is padding.
    """

    src_w: int
    src_h: int
    dst_w: int
    dst_h: int
    scale: float
    new_w: int
    new_h: int
    pad_x: int
    pad_y: int

    @property
    def scale_x(self) -> float:
        """Exact horizontal ratio after rounding new_w (what the resize really did)."""
        return self.new_w / self.src_w

    @property
    def scale_y(self) -> float:
        return self.new_h / self.src_h


def compute_letterbox(
    src_w: int,
    src_h: int,
    dst_w: int,
    dst_h: int,
    mode: PadMode = "top_left",
    *,
    multiple: int | None = None,
) -> Letterbox:
    """Letterbox geometry; `mode` places the image top-left (YOLOX) or centred (YOLOv8).

    `multiple` (rectangular inference): the input shrinks to the resized image rounded up
    to that multiple, e.g. 768x576 into 416x416 with 32 gives a 416x320 input, not 416x416.
    """
    if min(src_w, src_h, dst_w, dst_h) <= 0:
        raise ValueError(f"sizes must be positive: src {src_w}x{src_h}, dst {dst_w}x{dst_h}")
    if multiple is not None and (multiple <= 0 or dst_w % multiple or dst_h % multiple):
        raise ValueError(f"input {dst_w}x{dst_h} is not a multiple of {multiple}")
    scale = min(dst_w / src_w, dst_h / src_h)
    new_w = min(dst_w, max(1, round(src_w * scale)))
    new_h = min(dst_h, max(1, round(src_h * scale)))
    if multiple is not None:
        dst_w = -(-new_w // multiple) * multiple
        dst_h = -(-new_h // multiple) * multiple
    if mode == "center":
        pad_x, pad_y = (dst_w - new_w) // 2, (dst_h - new_h) // 2
    else:
        pad_x = pad_y = 0
    return Letterbox(src_w, src_h, dst_w, dst_h, scale, new_w, new_h, pad_x, pad_y)


def letterbox_boxes(boxes: npt.ArrayLike, lb: Letterbox) -> npt.NDArray[np.float32]:
    """Map (N, 4) xyxy boxes from source pixels to input pixels."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    mul = np.array([lb.scale_x, lb.scale_y, lb.scale_x, lb.scale_y], dtype=np.float64)
    off = np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], dtype=np.float64)
    out: npt.NDArray[np.float64] = b * mul + off
    return out.astype(np.float32)


def unletterbox_boxes(boxes: npt.ArrayLike, lb: Letterbox) -> npt.NDArray[np.float32]:
    """Map (N, 4) xyxy boxes from input pixels back to source pixels, clipped to the image."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    off = np.array([lb.pad_x, lb.pad_y, lb.pad_x, lb.pad_y], dtype=np.float64)
    div = np.array([lb.scale_x, lb.scale_y, lb.scale_x, lb.scale_y], dtype=np.float64)
    out: npt.NDArray[np.float64] = (b - off) / div
    np.clip(out[:, 0::2], 0.0, lb.src_w, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0.0, lb.src_h, out=out[:, 1::2])
    return out.astype(np.float32)


def alloc_input_image(lb: Letterbox, pad_value: int = 114) -> npt.NDArray[np.uint8]:
    """A dst_h x dst_w x 3 uint8 buffer for `letterbox_frame(..., out=)`."""
    return np.full((lb.dst_h, lb.dst_w, 3), pad_value, dtype=np.uint8)


def _fill_padding(out: npt.NDArray[np.uint8], lb: Letterbox, pad_value: int) -> None:
    """Paint only the strips around the image (the buffer may have held another geometry)."""
    x0, y0, x1, y1 = lb.pad_x, lb.pad_y, lb.pad_x + lb.new_w, lb.pad_y + lb.new_h
    out[:y0] = pad_value
    out[y1:] = pad_value
    out[y0:y1, :x0] = pad_value
    out[y0:y1, x1:] = pad_value


def letterbox_frame(
    frame: av.VideoFrame,
    lb: Letterbox,
    out: npt.NDArray[np.uint8] | None = None,
    *,
    channel_order: ChannelOrder = "bgr",
    pad_value: int = 114,
    interpolation: Interpolation = DEFAULT_INTERPOLATION,
    reformatter: VideoReformatter | None = None,
) -> npt.NDArray[np.uint8]:
    """Resize + convert `frame` in swscale and place it in a padded HxWx3 uint8 image.

    `out` (from `alloc_input_image`) is reused when given; the returned array is `out`.
    Pass a long-lived `reformatter` on the hot path: `frame.reformat` makes a new
    swscale context (and thread pool) for every frame, which measured 2-3x the CPU
    of one reused single-threaded context (docs/benchmarks.md).
    """
    if (frame.width, frame.height) != (lb.src_w, lb.src_h):
        raise ValueError(
            f"frame is {frame.width}x{frame.height}, letterbox is for {lb.src_w}x{lb.src_h}"
        )
    if out is None:
        out = alloc_input_image(lb, pad_value)
    elif out.shape != (lb.dst_h, lb.dst_w, 3) or out.dtype != np.uint8:
        raise ValueError(f"out buffer {out.shape} {out.dtype} != ({lb.dst_h}, {lb.dst_w}, 3) uint8")
    fmt = _PIX_FMT[channel_order]
    if reformatter is None:
        scaled = frame.reformat(
            width=lb.new_w, height=lb.new_h, format=fmt, interpolation=interpolation
        )
    else:
        scaled = reformatter.reformat(
            frame,
            width=lb.new_w,
            height=lb.new_h,
            format=fmt,
            interpolation=interpolation,
            threads=1,
        )
    resized = scaled.to_ndarray()
    out[lb.pad_y : lb.pad_y + lb.new_h, lb.pad_x : lb.pad_x + lb.new_w] = resized
    _fill_padding(out, lb, pad_value)
    return out


def letterbox_array(
    bgr: npt.NDArray[np.uint8],
    lb: Letterbox,
    out: npt.NDArray[np.uint8] | None = None,
    *,
    channel_order: ChannelOrder = "bgr",
    pad_value: int = 114,
    interpolation: Interpolation = DEFAULT_INTERPOLATION,
) -> npt.NDArray[np.uint8]:
    """`letterbox_frame` for a still BGR image (same swscale path, so same pixels)."""
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 BGR image, got {bgr.shape} {bgr.dtype}")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr), format="bgr24")
    return letterbox_frame(
        frame,
        lb,
        out,
        channel_order=channel_order,
        pad_value=pad_value,
        interpolation=interpolation,
    )


def to_nchw_float(
    img: npt.NDArray[np.uint8], scale: float, out: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """HxWx3 uint8 -> [1, 3, H, W] float32 times `scale` (into `out` when given)."""
    h, w, _ = img.shape
    if out is None:
        out = np.empty((1, 3, h, w), dtype=np.float32)
    chw = img.transpose(2, 0, 1)
    if scale == 1.0:
        np.copyto(out[0], chw, casting="unsafe")
    else:
        np.multiply(chw, np.float32(scale), out=out[0], casting="unsafe")
    return out


__all__ = [
    "DEFAULT_INTERPOLATION",
    "ChannelOrder",
    "Letterbox",
    "PadMode",
    "alloc_input_image",
    "compute_letterbox",
    "letterbox_array",
    "letterbox_boxes",
    "letterbox_frame",
    "to_nchw_float",
    "unletterbox_boxes",
]
