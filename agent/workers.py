"""Inference workers: each owns one Detector (its own session) and serves every camera.

On a CPU several single-threaded sessions in parallel outrun one multi-threaded
session (ONNX Runtime releases the GIL while it computes). Results go back to the
camera's lane under the frame's dispatch ticket, which restores frame order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from agent.inference.detector import Detector
from agent.ingest.mailbox import FrameHub
from agent.lane import CameraLane
from agent.metrics import LatencyWindow, RateLimitedLog

log = logging.getLogger(__name__)


class InferenceWorker(threading.Thread):
    def __init__(
        self,
        index: int,
        *,
        hub: FrameHub,
        detector: Detector,
        lanes: Mapping[str, CameraLane],
        stop: threading.Event,
        take_timeout_s: float = 0.1,
    ) -> None:
        super().__init__(name=f"infer-{index}", daemon=True)
        self._hub = hub
        self.detector = detector
        """Replaced between frames by Agent.swap_model; read once per frame."""
        self._lanes = lanes
        self._stop_event = stop
        self._take_timeout_s = take_timeout_s
        self._limiter = RateLimitedLog()
        self.inference_latency = LatencyWindow()
        self.failures = 0
        self.last_beat = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.last_beat = time.monotonic()
            taken = self._hub.take(timeout=self._take_timeout_s)
            if taken is None:
                continue
            packet = taken.packet
            t0 = time.monotonic()
            try:
                dets = self.detector.detect_frame(packet.image)
            except Exception as exc:  # a backend fault must not kill the worker
                dets = None
                self.failures += 1
                suppressed = self._limiter.allow(type(exc).__name__, t0)
                if suppressed is not None:
                    log.error(
                        "inference failed camera=%s seq=%d error=%s suppressed=%d",
                        packet.camera_id,
                        packet.seq,
                        exc,
                        suppressed,
                    )
            else:
                self.inference_latency.add(time.monotonic() - t0)
            self._lanes[packet.camera_id].submit(taken.ticket, packet, dets)
