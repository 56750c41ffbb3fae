"""The small interface every event output implements."""

from __future__ import annotations

from typing import Protocol

from agent.types import EventRecord


class EventSink(Protocol):
    """Receives every event once, in order per camera, from the pipeline.

    `emit` is called from inference worker threads (serialised per sink by the
    caller's lock) and must not block for long: a sink that talks to the network
    queues durably and returns.
    """

    name: str

    def emit(self, record: EventRecord) -> None: ...

    def close(self) -> None: ...
