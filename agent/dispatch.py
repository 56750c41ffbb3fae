"""Fan-out of events to every configured sink, in order, isolating sink failures."""

from __future__ import annotations

import logging
import threading
import time

from agent.config import AgentConfig
from agent.metrics import RateLimitedLog
from agent.outputs.base import EventSink
from agent.outputs.console import ConsoleSink
from agent.outputs.jsonl import JsonlSink
from agent.types import EventRecord

log = logging.getLogger(__name__)


def build_sinks(cfg: AgentConfig) -> list[EventSink]:
    """The local outputs named in the config (MQTT is added by the caller when configured)."""
    sinks: list[EventSink] = []
    if cfg.outputs.console.enabled:
        sinks.append(ConsoleSink())
    if cfg.outputs.jsonl is not None:
        jl = cfg.outputs.jsonl
        sinks.append(JsonlSink(jl.path, jl.fsync, max_bytes=jl.max_bytes, backups=jl.backups))
    return sinks


class EventDispatcher:
    """Hands each event to every sink in turn; one sink failing never starves the others."""

    def __init__(self, sinks: list[EventSink]) -> None:
        self._sinks = sinks
        self._lock = threading.Lock()
        self._limiter = RateLimitedLog()
        self.emitted = 0
        self.failures = 0

    def emit(self, record: EventRecord) -> None:
        with self._lock:
            self.emitted += 1
            for sink in self._sinks:
                try:
                    sink.emit(record)
                except Exception:
                    self.failures += 1
                    suppressed = self._limiter.allow(sink.name, time.monotonic())
                    if suppressed is not None:
                        log.exception(
                            "sink failed sink=%s event=%s suppressed=%d",
                            sink.name,
                            record.event.event_id,
                            suppressed,
                        )

    def close(self) -> None:
        with self._lock:
            for sink in self._sinks:
                try:
                    sink.close()
                except Exception:
                    log.exception("sink close failed sink=%s", sink.name)
