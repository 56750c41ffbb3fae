"""Ingest stage: sources (file, RTSP, USB) -> decode -> one-slot mailbox per camera.

`CameraWorker` (one thread per camera) opens a source through PyAV, decodes, and
puts `FramePacket`s into the `FrameHub`, reconnecting with backoff when the source
fails. See docs/ingest.md.
"""

from agent.ingest.backoff import Backoff
from agent.ingest.camera import CameraState, CameraTiming, CameraWorker
from agent.ingest.mailbox import FrameHub, Policy, Taken
from agent.ingest.redact import redact_text, redact_url
from agent.ingest.source import (
    SourceAuthError,
    SourceEndedError,
    SourceError,
    SourceOpenError,
    SourceReadError,
    SourceStalledError,
)

__all__ = [
    "Backoff",
    "CameraState",
    "CameraTiming",
    "CameraWorker",
    "FrameHub",
    "Policy",
    "SourceAuthError",
    "SourceEndedError",
    "SourceError",
    "SourceOpenError",
    "SourceReadError",
    "SourceStalledError",
    "Taken",
    "redact_text",
    "redact_url",
]
