"""Periodic health reports on a fixed grid with a sequence number.

`seq` is the index of the grid slot (interval since start), not a count of sent
reports: slots that pass while the device is offline are skipped, so a consumer
sees the gap. The agent's sections come from `health_provider()`; if it raises or
returns something the schema refuses, the report still goes out with the
publisher's own section and a `provider_error` code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from agent.protocol import HealthPayload

log = logging.getLogger(__name__)


class HealthBuilder:
    def __init__(
        self, device_id: str, interval_s: float, provider: Callable[[], dict[str, Any]]
    ) -> None:
        self._device_id = device_id
        self._interval = interval_s
        self._provider = provider
        self._start_mono = time.monotonic()
        self._start_wall = time.time()
        self.last_seq: int | None = None

    def due(
        self, now: float, session: int, publisher_stats: Callable[[], dict[str, Any]]
    ) -> bytes | None:
        """The encoded report if a new grid slot has begun since the last one, else None."""
        seq = int((now - self._start_mono) // self._interval)
        if self.last_seq is not None and seq <= self.last_seq:
            return None
        self.last_seq = seq
        base: dict[str, Any] = {
            "device_id": self._device_id,
            "seq": seq,
            "session": session,
            "started_at": round(self._start_wall, 3),
            "timestamp": round(time.time(), 3),
            "uptime_s": round(now - self._start_mono, 3),
            "publisher": publisher_stats(),
        }
        try:
            sections = self._provider()
            data = {**sections, **base}
            return HealthPayload.model_validate(data).to_json()
        except Exception as exc:  # a broken provider must not stop health reporting
            log.warning("health provider failed error=%s", str(exc)[:300])
            base["provider_error"] = type(exc).__name__
            return HealthPayload.model_validate(base).to_json()
