"""Tracking stage: per-camera ByteTrack-style multi-object tracking (pure numpy)."""

from __future__ import annotations

from agent.tracking.bytetrack import ByteTracker

__all__ = ["ByteTracker"]
