"""The Prometheus endpoint: a real MetricsServer scraped over real HTTP."""

from __future__ import annotations

import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config.metrics import MetricsConfig
from agent.health.prometheus import MetricsError, MetricsServer, MetricsUnavailableError
from tests.mosquitto import free_port


def fake_health() -> dict[str, Any]:
    """The shape Agent.health() returns (values chosen to be recognisable)."""
    return {
        "cameras": {
            "cam1": {
                "state": "streaming",
                "frames_decoded": 130,
                "frames_processed": 120,
                "drops": 7,
                "skipped": 3,
                "reconnects": 2,
                "fps_processed": 9.5,
                "latency_ms": {"p50": 12.3, "p95": 40.0, "p99": 80.0},
                "drift": {
                    "baseline_progress": 1.0,
                    "scores": {"brightness": 0.42, "frozen": 0.0},
                    "active": ["brightness"],
                },
            },
            "cam2": {
                "state": "reconnecting",
                "frames_decoded": 0,
                "fps_processed": 0.0,
                "latency_ms": {"p50": None, "p95": None, "p99": None},
                "drift": None,
            },
        },
        "inference": {
            "backend": "onnxruntime",
            "degraded": True,
            "ladders": {"infer-0": {"degraded": True}, "infer-1": {"degraded": False}},
            "latency_ms": {"p50": 6.0, "p95": 9.0, "p99": 11.0},
            "workers": 2,
            "failures": 4,
            "wedged": [],
        },
        "system": {
            "fps_scale": 0.5,
            "temps_c": {"cpu-thermal": 71.5, "gpu-thermal": 68.0},
            "mem_available_fraction": 0.25,
            "disk_free_bytes": 123456789,
            "gpu_load_pct": None,
        },
        "overload": {"overloaded": True, "cameras": {"cam1": {"target_fps": 6.0}}},
    }


def fake_publisher() -> dict[str, Any]:
    return {
        "connected": True,
        "connects": 3,
        "connect_failures": 5,
        "published": 99,
        "broker_rejected": 1,
        "incoming_rejected": {"not_json": 2},
        "outbox": {"depth": 17, "bytes": 2048, "evicted": 6, "oversize_dropped": 0},
    }


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it with prometheus_client's own parser."""
    parser = pytest.importorskip("prometheus_client.parser")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        text = resp.read().decode("utf-8")
    out = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    pytest.importorskip("prometheus_client")
    srv = MetricsServer(
        MetricsConfig(enabled=True, port=free_port()),
        collect=fake_health,
        publisher_stats=fake_publisher,
        info={"device": "dev-a", "agent": "0.1.0", "model": "yolox_nano@1"},
    )
    srv.start()
    yield srv
    srv.stop()


def test_disabled_by_default_and_bound_to_loopback() -> None:
    cfg = MetricsConfig()
    assert cfg.enabled is False
    assert cfg.host == "127.0.0.1"


def test_scrape_exposes_camera_metrics_with_labels(server: MetricsServer) -> None:
    # when Prometheus scrapes
    samples = scrape(server.port)
    # then per-camera metrics carry camera=..., counters end in _total
    assert value(samples, "edge_agent_camera_state", camera="cam1", state="streaming") == 1
    assert value(samples, "edge_agent_camera_state", camera="cam1", state="failed") == 0
    assert value(samples, "edge_agent_camera_state", camera="cam2", state="reconnecting") == 1
    assert value(samples, "edge_agent_camera_fps", camera="cam1") == 9.5
    assert value(samples, "edge_agent_camera_frames_processed_total", camera="cam1") == 120
    assert value(samples, "edge_agent_camera_frames_dropped_total", camera="cam1") == 7
    assert value(samples, "edge_agent_camera_reconnects_total", camera="cam1") == 2
    p50 = value(samples, "edge_agent_camera_frame_latency_seconds", camera="cam1", quantile="0.5")
    assert p50 == pytest.approx(0.0123)
    assert value(samples, "edge_agent_camera_drift_score", camera="cam1", code="brightness") == 0.42
    assert value(samples, "edge_agent_camera_drift_active", camera="cam1", code="brightness") == 1
    assert value(samples, "edge_agent_camera_target_fps", camera="cam1") == 6.0
    # and empty quantiles of a camera without samples are left out, not exported as 0
    assert not any(
        k[0] == "edge_agent_camera_frame_latency_seconds" and ("camera", "cam2") in k[1]
        for k in samples
    )


def test_scrape_exposes_inference_system_and_publisher_metrics(server: MetricsServer) -> None:
    samples = scrape(server.port)
    assert value(samples, "edge_agent_inference_degraded") == 1
    assert value(samples, "edge_agent_inference_worker_degraded", worker="infer-1") == 0
    assert value(samples, "edge_agent_inference_backend_info", backend="onnxruntime") == 1
    assert value(samples, "edge_agent_inference_failures_total") == 4
    assert value(samples, "edge_agent_temperature_celsius", zone="cpu-thermal") == 71.5
    assert value(samples, "edge_agent_resource_fps_scale") == 0.5
    assert value(samples, "edge_agent_overloaded") == 1
    assert value(samples, "edge_agent_outbox_depth") == 17
    assert value(samples, "edge_agent_outbox_evicted_total") == 6
    assert value(samples, "edge_agent_mqtt_connected") == 1
    assert value(samples, "edge_agent_mqtt_incoming_rejected_total", reason="not_json") == 2
    assert (
        value(samples, "edge_agent_info", device="dev-a", agent="0.1.0", model="yolox_nano@1") == 1
    )
    assert value(samples, "edge_agent_health_up") == 1
    # a null value (no GPU load reading) is omitted rather than invented
    assert not any(k[0] == "edge_agent_gpu_load_percent" for k in samples)
    # the process collector rides along
    assert any(k[0] == "process_resident_memory_bytes" for k in samples)


def test_health_is_read_at_scrape_time_only() -> None:
    # given a collect function that counts its calls
    pytest.importorskip("prometheus_client")
    calls: list[int] = []

    def collect() -> dict[str, Any]:
        calls.append(1)
        return {"cameras": {"cam1": {"state": "streaming", "frames_processed": len(calls)}}}

    srv = MetricsServer(MetricsConfig(enabled=True, port=free_port()), collect=collect)
    srv.start()
    try:
        # when nothing scrapes, nothing is collected
        assert calls == []
        first = scrape(srv.port)
        second = scrape(srv.port)
    finally:
        srv.stop()
    # then each scrape read the health dict exactly once, and saw the current value
    assert len(calls) == 2
    assert value(first, "edge_agent_camera_frames_processed_total", camera="cam1") == 1
    assert value(second, "edge_agent_camera_frames_processed_total", camera="cam1") == 2


def test_failing_health_source_still_answers_the_scrape() -> None:
    pytest.importorskip("prometheus_client")

    def broken() -> dict[str, Any]:
        raise RuntimeError("stage exploded")

    srv = MetricsServer(
        MetricsConfig(enabled=True, port=free_port()),
        collect=broken,
        publisher_stats=fake_publisher,
    )
    srv.start()
    try:
        samples = scrape(srv.port)
    finally:
        srv.stop()
    assert value(samples, "edge_agent_health_up") == 0
    assert value(samples, "edge_agent_metrics_source_errors_total") == 1
    assert value(samples, "edge_agent_outbox_depth") == 17
    assert not any(k[0] == "edge_agent_inference_degraded" for k in samples)


def test_stop_releases_the_port(server: MetricsServer) -> None:
    port = server.port
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
    server.stop()  # idempotent


def test_port_in_use_is_a_metrics_error() -> None:
    pytest.importorskip("prometheus_client")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        srv = MetricsServer(MetricsConfig(enabled=True, port=port), collect=fake_health)
        with pytest.raises(MetricsError, match=f"127.0.0.1:{port}"):
            srv.start()


def test_missing_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # given prometheus_client cannot be imported (None in sys.modules blocks the import)
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    srv = MetricsServer(MetricsConfig(enabled=True, port=free_port()), collect=fake_health)
    # when the enabled endpoint starts, then the error says what to install
    with pytest.raises(MetricsUnavailableError, match=r"pip install 'edge-vision\[metrics\]'"):
        srv.start()
