"""Prometheus metrics endpoint (optional; off by default).

Nothing here runs in the frame path: a custom collector reads the agent's health
dict (`Agent.health()`) and the MQTT publisher's stats when Prometheus scrapes, and
turns them into metric families, so the numbers are exactly those of the `health`
MQTT report. `prometheus-client` is imported only by this module and only on
`start()`: an agent without the `metrics` extra runs unless the endpoint is enabled,
and then fails at start-up with `MetricsUnavailableError` saying what to install.

Metric names, types and labels are listed in docs/protocol.md ("Prometheus").
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from agent.config.metrics import MetricsConfig
from agent.ingest.camera import CameraState
from agent.metrics import RateLimitedLog

if TYPE_CHECKING:
    from types import ModuleType
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

PREFIX = "edge_agent_"
StatsProvider = Callable[[], Mapping[str, Any]]
_QUANTILES = {"p50": "0.5", "p95": "0.95", "p99": "0.99"}
_CAMERA_COUNTERS = {
    "frames_decoded": ("camera_frames_decoded", "Frames decoded from the source."),
    "frames_processed": ("camera_frames_processed", "Frames through detection and rules."),
    "drops": ("camera_frames_dropped", "Stale frames dropped at the mailbox (overload)."),
    "skipped": ("camera_frames_skipped", "Frames skipped by the per-camera target fps."),
    "reconnects": ("camera_reconnects", "Source reconnects."),
}
_PUBLISHER_COUNTERS = {
    "connects": ("mqtt_connects", "Successful broker connects since start."),
    "connect_failures": ("mqtt_connect_failures", "Failed connect attempts since start."),
    "published": ("mqtt_published", "Outbox messages acknowledged by the broker."),
    "broker_rejected": ("mqtt_broker_rejected", "Messages the broker refused (dropped)."),
}


class MetricsError(Exception):
    """The metrics endpoint cannot run."""


class MetricsUnavailableError(MetricsError):
    """metrics.enabled is true but prometheus-client is not installed."""


def _load_client() -> ModuleType:
    try:
        return importlib.import_module("prometheus_client")
    except ImportError as exc:
        raise MetricsUnavailableError(
            "metrics.enabled is true but the prometheus-client package is not installed: "
            "pip install 'edge-vision[metrics]' (or set metrics.enabled: false)"
        ) from exc


def _num(value: Any) -> float | None:
    """A health value as a sample (bools as 0/1); None for anything else (skipped)."""
    if not isinstance(value, (int, float)):
        return None
    return float(value)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class _Families:
    """Metric families built during one scrape, created on their first sample."""

    def __init__(self, core: ModuleType) -> None:
        self._core = core
        self._families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}

    def _add(self, kind: str, name: str, doc: str, value: Any, labels: dict[str, str]) -> None:
        number = _num(value)
        if number is None:
            return
        family = self._families.get(name)
        if family is None:
            cls = (
                self._core.GaugeMetricFamily if kind == "gauge" else self._core.CounterMetricFamily
            )
            family = cls(PREFIX + name, doc, labels=list(labels))
            self._families[name] = family
        family.add_metric(list(labels.values()), number)

    def gauge(self, name: str, doc: str, value: Any, **labels: str) -> None:
        self._add("gauge", name, doc, value, labels)

    def counter(self, name: str, doc: str, value: Any, **labels: str) -> None:
        self._add("counter", name, doc, value, labels)

    def quantiles(self, name: str, doc: str, latency_ms: Any, **labels: str) -> None:
        for key, q in _QUANTILES.items():
            ms = _num(_dict(latency_ms).get(key))
            if ms is not None:
                self.gauge(name, doc, ms / 1000.0, **labels, quantile=q)

    def all(self) -> list[Metric]:
        return list(self._families.values())


def _camera_metrics(f: _Families, cid: str, cam: Mapping[str, Any]) -> None:
    state = str(cam.get("state"))
    known_states = [s.value for s in CameraState]
    for known in known_states if state in known_states else [*known_states, state]:
        f.gauge(
            "camera_state",
            "1 for the camera's current state.",
            known == state,
            camera=cid,
            state=known,
        )
    f.gauge("camera_fps", "Processed frames per second.", cam.get("fps_processed"), camera=cid)
    for key, (name, doc) in _CAMERA_COUNTERS.items():
        f.counter(name, doc, cam.get(key), camera=cid)
    f.quantiles(
        "camera_frame_latency_seconds",
        "Decode-to-rules latency quantiles over a recent window.",
        cam.get("latency_ms"),
        camera=cid,
    )
    drift = _dict(cam.get("drift"))
    active = set(drift.get("active") or [])
    for code, score in _dict(drift.get("scores")).items():
        f.gauge(
            "camera_drift_score",
            "Drift score (PSI; frozen: fraction).",
            score,
            camera=cid,
            code=str(code),
        )
        f.gauge(
            "camera_drift_active",
            "1 while the drift condition is raised.",
            code in active,
            camera=cid,
            code=str(code),
        )


def _inference_metrics(f: _Families, inf: Mapping[str, Any]) -> None:
    f.gauge(
        "inference_degraded",
        "1 while any worker runs below its top rung.",
        bool(inf.get("degraded")),
    )
    if inf.get("backend") is not None:
        f.gauge("inference_backend_info", "Backend of worker 0.", 1, backend=str(inf["backend"]))
    f.quantiles(
        "inference_latency_seconds",
        "Inference latency quantiles (worker 0).",
        inf.get("latency_ms"),
    )
    f.counter("inference_failures", "Failed inference calls.", inf.get("failures"))
    f.gauge("inference_workers", "Inference worker threads.", inf.get("workers"))
    wedged = inf.get("wedged")
    f.gauge(
        "wedged_stages",
        "Stages past their heartbeat timeout.",
        len(wedged) if isinstance(wedged, list) else None,
    )
    for worker, ladder in _dict(inf.get("ladders")).items():
        lad = _dict(ladder)
        f.gauge(
            "inference_worker_degraded",
            "1 while this worker is degraded.",
            bool(lad.get("degraded")),
            worker=str(worker),
        )


def _system_metrics(f: _Families, system: Mapping[str, Any], overload: Mapping[str, Any]) -> None:
    for zone, temp in _dict(system.get("temps_c")).items():
        f.gauge("temperature_celsius", "Thermal zone temperature.", temp, zone=str(zone))
    f.gauge(
        "memory_available_ratio", "MemAvailable / MemTotal.", system.get("mem_available_fraction")
    )
    f.gauge(
        "disk_free_bytes",
        "Free bytes on the state folder's file system.",
        system.get("disk_free_bytes"),
    )
    f.gauge("gpu_load_percent", "GPU load (Jetson).", system.get("gpu_load_pct"))
    f.gauge(
        "resource_fps_scale",
        "Load scale the resource guard applies (1 = none).",
        system.get("fps_scale"),
    )
    if overload:
        f.gauge(
            "overloaded",
            "1 while per-camera fps is being lowered for overload.",
            bool(overload.get("overloaded")),
        )
    for cid, cam in _dict(overload.get("cameras")).items():
        f.gauge(
            "camera_target_fps",
            "Fair target fps under overload.",
            _dict(cam).get("target_fps"),
            camera=str(cid),
        )


def _publisher_metrics(f: _Families, pub: Mapping[str, Any]) -> None:
    f.gauge("mqtt_connected", "1 while connected to the broker.", bool(pub.get("connected")))
    for key, (name, doc) in _PUBLISHER_COUNTERS.items():
        f.counter(name, doc, pub.get(key))
    for reason, count in _dict(pub.get("incoming_rejected")).items():
        f.counter(
            "mqtt_incoming_rejected", "Rejected incoming payloads.", count, reason=str(reason)
        )
    outbox = _dict(pub.get("outbox"))
    f.gauge("outbox_depth", "Messages waiting in the durable outbox.", outbox.get("depth"))
    f.gauge("outbox_bytes", "Payload bytes waiting in the outbox.", outbox.get("bytes"))
    f.counter(
        "outbox_evicted", "Messages evicted oldest-first (full outbox).", outbox.get("evicted")
    )
    f.counter(
        "outbox_oversize_dropped",
        "Messages larger than the whole outbox.",
        outbox.get("oversize_dropped"),
    )


def health_families(
    core: ModuleType,
    health: Mapping[str, Any],
    publisher: Mapping[str, Any] | None = None,
    info: Mapping[str, str] | None = None,
) -> list[Metric]:
    """Metric families from one health dict (and publisher stats); no I/O."""
    f = _Families(core)
    if info:
        f.gauge("info", "Versions of this agent (value 1).", 1, **dict(info))
    for cid, cam in _dict(health.get("cameras")).items():
        _camera_metrics(f, str(cid), _dict(cam))
    inference = _dict(health.get("inference"))
    if inference:  # absent when the health dict could not be read: no invented zeros
        _inference_metrics(f, inference)
    _system_metrics(f, _dict(health.get("system")), _dict(health.get("overload")))
    if publisher is not None:
        _publisher_metrics(f, publisher)
    return f.all()


class HealthCollector:
    """A prometheus_client collector that reads the health dict at scrape time."""

    def __init__(
        self,
        core: ModuleType,
        collect: StatsProvider,
        publisher_stats: StatsProvider | None,
        info: Mapping[str, str] | None,
    ) -> None:
        self._core = core
        self._collect = collect
        self._publisher_stats = publisher_stats
        self._info = dict(info or {})
        self._errors = 0
        self._ratelog = RateLimitedLog(60.0)

    def _read(self, source: StatsProvider | None, what: str) -> Mapping[str, Any] | None:
        if source is None:
            return None
        try:
            return source()
        except Exception as exc:  # a scrape must answer even when a stage is broken
            self._errors += 1
            suppressed = self._ratelog.allow(what, time.monotonic())
            if suppressed is not None:
                log.warning(
                    "metrics source failed source=%s error=%s suppressed=%d",
                    what,
                    str(exc)[:200],
                    suppressed,
                )
            return None

    def collect(self) -> Iterator[Metric]:
        health = self._read(self._collect, "health")
        publisher = self._read(self._publisher_stats, "publisher")
        try:
            yield from health_families(self._core, health or {}, publisher, self._info)
        except Exception as exc:
            self._errors += 1
            log.warning("metrics build failed error=%s", str(exc)[:200])
        up = self._core.GaugeMetricFamily(PREFIX + "health_up", "1 if the health dict was read.")
        up.add_metric([], 1.0 if health is not None else 0.0)
        yield up
        errors = self._core.CounterMetricFamily(
            PREFIX + "metrics_source_errors", "Failed reads of health or publisher stats."
        )
        errors.add_metric([], float(self._errors))
        yield errors


class MetricsServer:
    """`/metrics` over HTTP on `cfg.host:cfg.port`, in a daemon thread of its own."""

    def __init__(
        self,
        cfg: MetricsConfig,
        collect: StatsProvider,
        publisher_stats: StatsProvider | None = None,
        info: Mapping[str, str] | None = None,
    ) -> None:
        self.cfg = cfg
        self._collect = collect
        self._publisher_stats = publisher_stats
        self._info = info
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        if self._httpd is None:
            raise MetricsError("metrics server not started")
        return int(self._httpd.server_port)

    def start(self) -> None:
        """Bind and serve; MetricsUnavailableError without the package, MetricsError if
        the address cannot be bound."""
        if self._httpd is not None:
            raise MetricsError("metrics server already started")
        client = _load_client()
        core = importlib.import_module("prometheus_client.core")
        registry = client.CollectorRegistry(auto_describe=False)
        registry.register(HealthCollector(core, self._collect, self._publisher_stats, self._info))
        client.ProcessCollector(registry=registry)
        try:
            httpd, thread = client.start_http_server(
                self.cfg.port, addr=self.cfg.host, registry=registry
            )
        except OSError as exc:
            raise MetricsError(
                f"cannot serve metrics on {self.cfg.host}:{self.cfg.port}: {exc}"
            ) from exc
        thread.name = "metrics-http"
        self._httpd, self._thread = httpd, thread
        log.info("metrics endpoint listening host=%s port=%d", self.cfg.host, self.port)

    def stop(self, timeout_s: float = 2.0) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
        log.info("metrics endpoint stopped")
