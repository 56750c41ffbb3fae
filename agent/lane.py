"""A camera's lane after inference: frame order restored, then tracking, rules, events.

Inference workers finish frames out of order; each lane holds results until the
next dispatch ticket of its camera is in, then runs the camera's tracker and rule
engine on frames strictly in order. Whichever worker completes the gap does the
(cheap) tracking work, so no extra thread or queue is needed.

A worker never waits for another worker's lane work: handing in a result takes a short
inbox lock only. If another worker is already draining the lane, the result is left in
the inbox for it and the caller goes back to inference at once (waiting there left a
core idle for the length of a tracking step, measured: docs/benchmarks.md, Pipeline).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from av.video.reformatter import VideoReformatter

from agent.health.drift import DriftMonitor, sample_image
from agent.metrics import LatencyWindow, RateLimitedLog, RateWindow
from agent.outputs.snapshot import SnapshotStore, render_snapshot
from agent.types import Detections, Event, EventPhase, EventRecord, FramePacket, Track

log = logging.getLogger(__name__)


class TrackerLike(Protocol):
    def update(self, dets: Detections, timestamp: float) -> list[Track]: ...


class RulesLike(Protocol):
    def update(
        self,
        tracks: list[Track],
        *,
        width: int,
        height: int,
        stream_time: float,
        wall_time: float,
        frame_seq: int,
    ) -> list[Event]: ...

    def close(self, *, stream_time: float, wall_time: float, frame_seq: int) -> list[Event]: ...


@dataclass(frozen=True)
class SnapshotPolicy:
    store: SnapshotStore | None
    """Where JPEGs go on disk; None keeps them in memory for the sinks only."""
    max_width: int = 1280
    quality: int = 85


class CameraLane:
    """Ordered post-inference processing of one camera."""

    def __init__(
        self,
        camera_id: str,
        tracker: TrackerLike,
        rules: RulesLike,
        emit: Callable[[EventRecord], None],
        *,
        snapshots: SnapshotPolicy | None,
        max_frames: int | None = None,
        frame_gap_s: float = 0.1,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.camera_id = camera_id
        self._tracker = tracker
        self._rules = rules
        self._emit = emit
        self._snapshots = snapshots
        self._max_frames = max_frames
        self._frame_gap_s = frame_gap_s
        self.drift = drift
        self._reformatter = VideoReformatter()  # used under the lane lock only
        self._rate = RateWindow()
        self._limiter = RateLimitedLog()
        self._lock = threading.Lock()
        """Guards the tracker, the rules and every counter below: held while processing."""
        self._inbox = threading.Lock()
        """Guards `_pending`, `_next_ticket` and `_draining`: held for a few statements."""
        self._pending: dict[int, tuple[FramePacket, Detections | None]] = {}
        self._next_ticket = 0
        self._draining = False
        self._time_offset = 0.0
        self._last_time: float | None = None
        self._last_packet: FramePacket | None = None
        self._closed = False
        self.frames_processed = 0
        self.last_frame_at: float | None = None
        """time.monotonic() when the latest frame came through tracking and rules."""
        self.frames_failed = 0
        self.frames_ignored = 0
        self.events = 0
        self.detections = 0
        self.confidence_sum = 0.0
        self.frame_latency = LatencyWindow()
        self.event_latency = LatencyWindow()

    def fps(self) -> float:
        """Frames processed per second over the last few seconds."""
        return self._rate.rate()

    @property
    def tickets_done(self) -> int:
        """Dispatch tickets fully processed (in order, so: the next ticket awaited)."""
        with self._inbox:
            return self._next_ticket

    @property
    def reached_max_frames(self) -> bool:
        return self._max_frames is not None and self.frames_processed >= self._max_frames

    def submit(self, ticket: int, packet: FramePacket, dets: Detections | None) -> None:
        """Hand in a frame's detections (None: inference failed) under its dispatch ticket.

        Returns at once when another worker is draining this lane (it will process this
        result in its turn); otherwise processes every result that is next in order.
        """
        with self._inbox:
            self._pending[ticket] = (packet, dets)
            if self._draining:
                return
            self._draining = True
        drained = False
        while True:
            with self._inbox:
                if drained:
                    self._next_ticket += 1
                item = self._pending.pop(self._next_ticket, None)
                if item is None:
                    self._draining = False
                    return
            drained = True
            with self._lock:
                try:
                    self._handle(*item)
                except Exception as exc:  # a stage fault costs this frame, not the worker
                    self.frames_failed += 1
                    suppressed = self._limiter.allow(type(exc).__name__, time.monotonic())
                    if suppressed is not None:
                        log.exception(
                            "lane processing failed camera=%s seq=%d suppressed=%d",
                            self.camera_id,
                            item[0].seq,
                            suppressed,
                        )

    def _handle(self, pkt: FramePacket, result: Detections | None) -> None:
        if self._closed or self.reached_max_frames:
            self.frames_ignored += 1
        elif result is None:
            self.frames_failed += 1
        else:
            self._process(pkt, result)

    def close(self) -> None:
        """End every open episode (end of stream or shutdown); later frames are ignored."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pkt = self._last_packet
            if pkt is None or self._last_time is None:
                return
            events = self._rules.close(
                stream_time=self._last_time, wall_time=time.time(), frame_seq=pkt.seq
            )
            for event in events:
                self._emit_event(event, pkt, measure=False)

    def replace_rules(self, rules: RulesLike) -> None:
        """Swap the rule engine (new model labels): open episodes of the old one end first."""
        with self._lock:
            pkt = self._last_packet
            if pkt is not None and self._last_time is not None:
                for event in self._rules.close(
                    stream_time=self._last_time, wall_time=time.time(), frame_seq=pkt.seq
                ):
                    self._emit_event(event, pkt, measure=False)
            self._rules = rules

    def _timeline(self, stream_time: float) -> float:
        """Stream time made monotonic across reconnects and file loops."""
        t = stream_time + self._time_offset
        if self._last_time is not None and t <= self._last_time:
            self._time_offset += self._last_time - t + self._frame_gap_s
            t = stream_time + self._time_offset
        self._last_time = t
        return t

    def _process(self, pkt: FramePacket, dets: Detections) -> None:
        t = self._timeline(pkt.stream_time)
        tracks = self._tracker.update(dets, t)
        events = self._rules.update(
            tracks,
            width=pkt.width,
            height=pkt.height,
            stream_time=t,
            wall_time=pkt.wall_time,
            frame_seq=pkt.seq,
        )
        self._last_packet = pkt
        self.frames_processed += 1
        self.detections += len(dets)
        self.confidence_sum += float(dets.scores.sum())
        for event in events:
            self._emit_event(event, pkt)
        if self.drift is not None and self.drift.due(t):
            self.drift.observe_image(sample_image(pkt.image, reformatter=self._reformatter), t)
            self.drift.observe_output(len(dets), dets.scores, t)
        now = time.monotonic()
        self.last_frame_at = now
        self._rate.add(now)
        self.frame_latency.add(now - pkt.monotonic)

    def _emit_event(self, event: Event, pkt: FramePacket, *, measure: bool = True) -> None:
        jpeg, path = None, None
        if event.phase is EventPhase.START and self._snapshots is not None:
            caption = f"{event.label} {event.score:.2f} {event.rule_id}"
            jpeg = render_snapshot(
                pkt.image,
                event.box,
                caption,
                max_width=self._snapshots.max_width,
                quality=self._snapshots.quality,
                reformatter=self._reformatter,
            )
            if self._snapshots.store is not None:
                path = str(self._snapshots.store.save(self.camera_id, event.event_id, jpeg))
        self._emit(EventRecord(event, snapshot_jpeg=jpeg, snapshot_path=path))
        self.events += 1
        if measure:
            self.event_latency.add(time.monotonic() - pkt.monotonic)
