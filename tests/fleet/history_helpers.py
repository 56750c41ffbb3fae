"""Health payloads with chosen times and camera sections, for the health history tests."""

from __future__ import annotations

from typing import Any

from agent.protocol import HealthPayload


def camera(fps: float = 9.5, p99: float = 50.0, **extra: Any) -> dict[str, Any]:
    """A camera section like the simulator's (gauges), overridable per key."""
    return {
        "state": "streaming",
        "fps_processed": fps,
        "drops": 0,
        "latency_ms": {"p50": 20.0, "p95": 30.0, "p99": p99},
        "detections_per_frame": 1.8,
        "confidence": {"mean": 0.71},
        "drift": {"active": [], "scores": {"detection_rate": 0.02, "confidence": 0.04}},
        **extra,
    }


def health(
    device_id: str,
    seq: int,
    timestamp: float,
    cameras: dict[str, dict[str, Any]] | None = None,
    *,
    started_at: float = 1_000.0,
    outbox_depth: int = 0,
    degraded: bool = False,
    system: dict[str, Any] | None = None,
) -> HealthPayload:
    return HealthPayload.model_validate({
        "device_id": device_id, "seq": seq, "session": 1, "started_at": started_at,
        "timestamp": timestamp, "uptime_s": 5.0,
        "publisher": {
            "connected": True, "state": "connected", "session": 1, "published": seq,
            "broker_rejected": 0, "connects": 1, "incoming_rejected": {},
            "outbox": {"depth": outbox_depth, "bytes": 0, "evicted": 0, "oversize_dropped": 0},
        },
        "cameras": {"cam1": camera()} if cameras is None else cameras,
        "inference": {"backend": "tensorrt", "degraded": degraded},
        "system": {"cpu_percent": 30.0, "hottest_c": 51.5} if system is None else system,
    })  # fmt: skip
