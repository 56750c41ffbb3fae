"""Snapshot JPEGs: the event's frame with its box and label drawn.

Rendered only when an event starts (never per frame), from the decoder's own frame:
swscale converts (and downscales when wider than `max_width`) straight to RGB.
"""

from __future__ import annotations

import collections
import io
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from agent.state import atomic_write
from agent.types import Box

if TYPE_CHECKING:
    import av
    from av.video.reformatter import VideoReformatter

log = logging.getLogger(__name__)

BOX_COLOUR = (255, 64, 32)


def render_snapshot(
    frame: av.VideoFrame,
    box: Box | None,
    caption: str,
    *,
    max_width: int = 1280,
    quality: int = 85,
    reformatter: VideoReformatter | None = None,
) -> bytes:
    """JPEG bytes of `frame` with `box` (source pixels) outlined and captioned."""
    scale = min(1.0, max_width / frame.width)
    width, height = round(frame.width * scale) // 2 * 2, round(frame.height * scale) // 2 * 2
    if reformatter is None:
        rgb: np.ndarray = frame.to_ndarray(width=width, height=height, format="rgb24")
    else:  # a long-lived single-threaded context: no new swscale thread pool per snapshot
        scaled = reformatter.reformat(frame, width=width, height=height, format="rgb24", threads=1)
        rgb = scaled.to_ndarray()
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    if box is not None:
        x1, y1, x2, y2 = (v * scale for v in box)
        draw.rectangle((x1, y1, x2, y2), outline=BOX_COLOUR, width=3)
        text_y = max(0.0, y1 - 14)
        draw.rectangle((x1, text_y, x1 + 7 * len(caption) + 6, text_y + 14), fill=BOX_COLOUR)
        draw.text((x1 + 3, text_y + 1), caption, fill=(255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


class SnapshotStore:
    """Writes snapshots as `<dir>/<camera>/<event_id>.jpg`, atomically, within a budget.

    The folder is bounded by file count and bytes: the oldest snapshots are deleted first
    (counted in `evicted`), so a busy camera cannot fill the device's disk. Files already
    there at start are taken into account, oldest by modification time.
    """

    def __init__(self, root: Path, max_files: int = 10_000, max_bytes: int = 1 << 30) -> None:
        self._root = root
        self._max_files = max_files
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._files: collections.deque[tuple[Path, int]] = collections.deque()
        self._bytes = 0
        self.evicted = 0
        existing = (
            sorted((p.stat().st_mtime, p) for p in root.glob("*/*.jpg") if p.is_file())
            if root.is_dir()
            else []
        )
        for _mtime, path in existing:
            self._remember(path, path.stat().st_size)

    def _remember(self, path: Path, size: int) -> None:
        self._files.append((path, size))
        self._bytes += size

    def save(self, camera_id: str, event_id: str, jpeg: bytes) -> Path:
        folder = self._root / camera_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{event_id}.jpg"
        atomic_write(path, jpeg)
        with self._lock:
            self._remember(path, len(jpeg))
            self._evict()
        return path

    def _evict(self) -> None:
        while self._files and (len(self._files) > self._max_files or self._bytes > self._max_bytes):
            old, size = self._files.popleft()
            self._bytes -= size
            old.unlink(missing_ok=True)
            self.evicted += 1
            if self.evicted == 1 or self.evicted % 1000 == 0:
                log.warning("snapshot budget reached: oldest deleted evicted=%d", self.evicted)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"files": len(self._files), "bytes": self._bytes, "evicted": self.evicted}
