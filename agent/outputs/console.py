"""Human-readable event lines on a text stream (stdout by default)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from agent.types import EventPhase, EventRecord


def format_event_line(record: EventRecord) -> str:
    ev = record.event
    ts = time.strftime("%H:%M:%S", time.localtime(ev.wall_time))
    subject = f"{ev.label} #{ev.track_id}" if ev.track_id is not None else ev.label
    extra = " ".join(f"{k}={v}" for k, v in sorted(ev.attributes.items()))
    parts = [
        ts,
        f"{ev.phase.value.upper():5}",
        f"{ev.camera_id}/{ev.rule_id}",
        f"({ev.rule_type})",
        subject,
        f"score={ev.score:.2f}",
        f"t={ev.stream_time:.1f}s",
    ]
    if ev.phase is EventPhase.END:
        parts.append(f"duration={ev.stream_time - ev.started_at:.1f}s")
    if extra:
        parts.append(extra)
    parts.append(f"id={ev.event_id}")
    if record.snapshot_path:
        parts.append(f"snapshot={record.snapshot_path}")
    return " ".join(parts)


class ConsoleSink:
    """Prints one line per event and flushes, so piping to other tools works live."""

    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stdout

    def emit(self, record: EventRecord) -> None:
        self._stream.write(format_event_line(record) + "\n")
        self._stream.flush()

    def close(self) -> None:
        self._stream.flush()
