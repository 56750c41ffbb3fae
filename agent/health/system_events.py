"""Events about the system itself: a camera going offline, drift, a degraded backend.

They use the same Event type, ids and outputs as rule events, so a dead camera is an
alert like any other: raised once when the condition starts (START) and closed once
when it ends (END), never repeated while it lasts. Rule ids are fixed:
`camera-offline`, `drift-<code>`, `backend-degraded`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.rules.events import event_id
from agent.types import Event, EventPhase, EventRecord


class SystemEvents:
    """Tracks open system conditions per (camera, rule) and emits START/END once each."""

    def __init__(self, device_id: str, boot_id: int, emit: Callable[[EventRecord], None]) -> None:
        self._device_id = device_id
        self._boot_id = boot_id
        self._emit = emit
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], tuple[int, float, str]] = {}
        self._episodes: dict[tuple[str, str], int] = {}

    def is_open(self, camera_id: str, rule_id: str) -> bool:
        with self._lock:
            return (camera_id, rule_id) in self._open

    def raise_(
        self, camera_id: str, rule_id: str, rule_type: str, attributes: Mapping[str, Any]
    ) -> bool:
        """START the condition unless it is already open; True if an event was emitted."""
        key = (camera_id, rule_id)
        now = time.time()
        with self._lock:
            if key in self._open:
                return False
            episode = self._episodes.get(key, 0) + 1
            self._episodes[key] = episode
            self._open[key] = (episode, now, rule_type)
            event = self._event(
                EventPhase.START,
                key=key,
                rule_type=rule_type,
                episode=episode,
                started=now,
                now=now,
                attributes=attributes,
            )
        self._emit(EventRecord(event))
        return True

    def clear(
        self, camera_id: str, rule_id: str, rule_type: str, attributes: Mapping[str, Any]
    ) -> bool:
        """END the condition if it is open; True if an event was emitted."""
        key = (camera_id, rule_id)
        now = time.time()
        with self._lock:
            opened = self._open.pop(key, None)
            if opened is None:
                return False
            episode, started, _ = opened
            attrs = {**attributes, "duration_s": round(now - started, 3)}
            event = self._event(
                EventPhase.END,
                key=key,
                rule_type=rule_type,
                episode=episode,
                started=started,
                now=now,
                attributes=attrs,
            )
        self._emit(EventRecord(event))
        return True

    def close_all(self, reason: str) -> int:
        """END every open condition (shutdown), so each START has its END; returns how many."""
        with self._lock:
            open_now = sorted((key, value[2]) for key, value in self._open.items())
        for (camera_id, rule_id), rule_type in open_now:
            self.clear(camera_id, rule_id, rule_type, {"reason": reason})
        return len(open_now)

    def _event(
        self,
        phase: EventPhase,
        *,
        key: tuple[str, str],
        rule_type: str,
        episode: int,
        started: float,
        now: float,
        attributes: Mapping[str, Any],
    ) -> Event:
        camera_id, rule_id = key
        return Event(
            event_id=event_id(
                device_id=self._device_id,
                boot_id=self._boot_id,
                camera_id=camera_id,
                rule_id=rule_id,
                subject="system",
                episode=episode,
            ),
            phase=phase,
            device_id=self._device_id,
            camera_id=camera_id,
            rule_id=rule_id,
            rule_type=rule_type,
            label=rule_type,
            class_id=-1,
            track_id=None,
            episode=episode,
            score=1.0,
            box=None,
            started_at=started,
            stream_time=now,
            wall_time=now,
            frame_seq=-1,
            attributes=dict(attributes),
        )
