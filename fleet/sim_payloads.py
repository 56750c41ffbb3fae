"""Payloads of simulated devices, built with agent.protocol's models (no I/O).

Health mirrors the agent's sections (cameras, inference, system) and adds the
quality signals a rollout gate compares between canaries and the control group:
per camera `detections_per_frame`, a `confidence` summary and drift `scores`.
A device running one of the simulator's "bad" versions reports them collapsed.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
from dataclasses import dataclass
from typing import Any

from agent.protocol import (
    EventPayload,
    HealthPayload,
    OutboxStats,
    PublisherStats,
    ReportedState,
    SnapshotRef,
    Topics,
)


def snapshot_jpegs(count: int = 4, seed: int = 0) -> list[bytes]:
    """A few small JPEGs with a drawn box, made once and shared by every device."""
    from PIL import Image, ImageDraw  # noqa: PLC0415 - Pillow only when simulating

    rng = random.Random(seed)  # noqa: S311 - pictures, not secrets
    out = []
    for i in range(count):
        img = Image.new("RGB", (160, 120), (40 + 40 * i, 70, 110 - 20 * i))
        draw = ImageDraw.Draw(img)
        x, y = rng.randint(10, 80), rng.randint(10, 50)
        draw.rectangle((x, y, x + 50, y + 60), outline=(255, 200, 0), width=3)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=70)
        out.append(buf.getvalue())
    return out


@dataclass(frozen=True)
class HealthInputs:
    """What one health report depends on besides randomness."""

    device_id: str
    seq: int
    session: int
    started_at: float
    connected: bool
    connects: int
    published: int
    cameras: int
    degraded: bool
    bad_model: bool
    model: str


def health_payload(h: HealthInputs, r: random.Random) -> bytes:
    now = time.time()
    publisher = PublisherStats(
        connected=h.connected, state="connected" if h.connected else "backoff",
        session=h.session, published=h.published, broker_rejected=0, connects=h.connects,
        incoming_rejected={}, outbox=OutboxStats(depth=0, bytes=0, evicted=0, oversize_dropped=0),
    )  # fmt: skip
    inference = {
        "backend": "onnxruntime-cpu" if h.degraded else "tensorrt",
        "degraded": h.degraded,
        "model": h.model,
    }
    system = {
        "cpu_percent": round(r.uniform(20, 60), 1),
        "hottest_c": round(r.uniform(45, 62), 1),
        "mem_available_fraction": round(r.uniform(0.3, 0.6), 3),
    }
    cameras = {
        f"cam{i + 1}": _camera(r, h.degraded and i == 0, h.bad_model) for i in range(h.cameras)
    }
    return HealthPayload(
        device_id=h.device_id, seq=h.seq, session=h.session, started_at=h.started_at,
        timestamp=now, uptime_s=max(0.0, now - h.started_at), publisher=publisher,
        cameras=cameras, inference=inference, system=system,
    ).to_json()  # fmt: skip


def _camera(r: random.Random, down: bool, bad: bool) -> dict[str, Any]:
    dpf = (0.08 if bad else 1.8) * r.uniform(0.85, 1.15)
    conf = (0.34 if bad else 0.71) + r.uniform(-0.03, 0.03)
    drift = {
        "detection_rate": round(0.9 if bad else r.uniform(0.0, 0.05), 4),
        "confidence": round(0.5 if bad else r.uniform(0.0, 0.05), 4),
    }
    return {
        "state": "reconnecting" if down else "streaming",
        "fps_processed": 0.0 if down else round(r.uniform(9.5, 10.0), 2),
        "drops": r.randint(0, 3),
        "reconnects": 4 if down else 0,
        "latency_ms": {
            "p50": round(r.uniform(18, 24), 1),
            "p95": round(r.uniform(30, 40), 1),
            "p99": round(r.uniform(45, 60), 1),
        },
        "detections_per_frame": round(dpf, 3),
        "confidence": {
            "mean": round(conf, 3),
            "p10": round(conf - 0.2, 3),
            "p50": round(conf + 0.01, 3),
            "p90": round(min(0.99, conf + 0.2), 3),
        },
        "drift": {
            "baseline_progress": 1.0,
            "active": ["detection_rate"] if bad else [],
            "scores": drift,
        },
    }


def snapshot_ref(topics: Topics, event_id: str, jpeg: bytes) -> SnapshotRef:
    return SnapshotRef(
        topic=topics.snapshot(event_id), content_type="image/jpeg", size=len(jpeg),
        sha256=hashlib.sha256(jpeg).hexdigest(),
    )  # fmt: skip


def event_payload(
    r: random.Random, *, device_id: str, event_id: str, camera: str, phase: str, n: int,
    started_at: float, snapshot: SnapshotRef | None,
) -> bytes:  # fmt: skip
    now = time.time()
    x, y = r.uniform(0, 600), r.uniform(0, 400)
    return EventPayload.model_validate({
        "event_id": event_id, "phase": phase, "device_id": device_id, "camera_id": camera,
        "rule_id": "zone1", "rule_type": "zone", "label": "person", "class_id": 0,
        "track_id": n, "episode": 0, "score": round(r.uniform(0.5, 0.95), 3),
        "box": [x, y, x + 80, y + 160], "started_at": now - started_at,
        "stream_time": now - started_at, "wall_time": now,
        "frame_seq": int((now - started_at) * 10), "attributes": {"zone": "entrance"},
        "snapshot": snapshot,
    }).to_json()  # fmt: skip


def reported_payload(
    device_id: str, running: dict[str, str], update: dict[str, Any] | None, error: str | None
) -> bytes:
    """`reported`: what runs (`model.version`, `config.version`) and `update.state`."""
    return ReportedState.model_validate({
        "device_id": device_id, "timestamp": time.time(),
        "model": {"version": running["model"]}, "config": {"version": running["config"]},
        "update": update, "last_error": error,
    }).to_json()  # fmt: skip
