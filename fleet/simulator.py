"""`edge-fleet simulate`: N lightweight devices speaking the real device protocol.

Each simulated device has its own MQTT 5 connection with its own retained Last Will
(so killing the simulator takes every device offline through the broker, exactly
as a power cut would), a session counter carried by both birth and Will, periodic
health (QoS 0), occasional events with JPEG snapshots (QoS 1), and a retained
`reported` state. On a retained `desired` it walks the OTA state machine of
docs/protocol.md in `reported` (pending, downloading, verifying, staging,
validating, activating, probation, committed), failing, rolling back or sticking
at configurable rates. Versions listed as `bad_versions` report collapsed
detection statistics in health, for the rollout quality gate.

Topics and payloads come from `agent.protocol` only. Devices are spread over a few
`ClientHub` threads (fleet/sim_hub.py); nothing here blocks except the TCP connect.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from fleet.sim_device import SimConfig, SimDevice
from fleet.sim_hub import ClientHub
from fleet.sim_payloads import snapshot_jpegs

__all__ = ["SimConfig", "SimDevice", "Simulator", "add_simulate_command", "cmd_simulate"]

log = logging.getLogger(__name__)


class Simulator:
    """N devices over `cfg.threads` hubs: `start()`, `stats()`, `stop()` (clean) or kill."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.hubs = [ClientHub(f"sim-hub-{i}") for i in range(max(1, cfg.threads))]
        jpegs = snapshot_jpegs(seed=cfg.seed or 0)
        base = cfg.seed if cfg.seed is not None else random.randrange(1 << 30)  # noqa: S311
        self.devices = [
            SimDevice(dev_id, cfg, self.hubs[i % len(self.hubs)], jpegs, base * 1_000_003 + i)
            for i, dev_id in enumerate(cfg.device_ids())
        ]
        self.started = time.monotonic()

    def start(self) -> None:
        """Connect the devices at `connect_rate` per second (ramp), then run."""
        rate = self.cfg.connect_rate if self.cfg.connect_rate > 0 else math.inf
        for i, dev in enumerate(self.devices):
            dev.hub.call_later(i / rate, dev.connect)
        for hub in self.hubs:
            hub.start()
        log.info("simulator started devices=%d threads=%d", len(self.devices), len(self.hubs))

    def connected(self) -> int:
        return sum(d.connected for d in self.devices)

    def stats(self) -> dict[str, Any]:
        sent: Counter[str] = Counter()
        for d in self.devices:
            sent.update(d.sent)
        return {
            "t": round(time.monotonic() - self.started, 2), "devices": len(self.devices),
            "connected": self.connected(), "connects": sum(d.connects for d in self.devices),
            "sent": dict(sent), "updating": sum(d.update is not None for d in self.devices),
            "hub_errors": sum(h.errors for h in self.hubs),
        }  # fmt: skip

    def stop(self, timeout: float = 5.0) -> None:
        """Clean stop: retained `offline` (shutdown) from every device, then DISCONNECT."""
        waiter = threading.Event()
        self._on_each_hub(SimDevice.shutdown)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not all(d.offline_done() for d in self.devices):
            waiter.wait(0.05)
        self._on_each_hub(SimDevice.disconnect)
        while time.monotonic() < deadline + 2 and any(h.open_sockets() for h in self.hubs):
            waiter.wait(0.05)
        for hub in self.hubs:
            hub.stop()
        log.info("simulator stopped devices=%d", len(self.devices))

    def _on_each_hub(self, method: Callable[[SimDevice], None]) -> None:
        for hub in self.hubs:
            devs = [d for d in self.devices if d.hub is hub]
            hub.call_soon_threadsafe(partial(_call_all, devs, method))


def _call_all(devices: list[SimDevice], method: Callable[[SimDevice], None]) -> None:
    for dev in devices:
        method(dev)


# --------------------------------------------------------------------------- CLI


def _broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _rate(value: str) -> float:
    x = float(value)
    if not 0.0 <= x <= 1.0:
        raise argparse.ArgumentTypeError(f"a probability in [0, 1], got {value}")
    return x


def add_simulate_command(sub: Any) -> argparse.ArgumentParser:
    """Register `edge-fleet simulate` on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser("simulate", help="run N simulated devices")
    p.set_defaults(fn=cmd_simulate)
    a = p.add_argument
    a("--devices", type=int, default=10, help="number of devices")
    a("--broker", type=_broker, default=("127.0.0.1", 1883), help="HOST:PORT")
    a("--prefix", default="edge", help="topic prefix")
    a("--id-prefix", default="sim", help="device ids are <id-prefix>-0000, ...")
    a("--health-interval", type=float, default=5.0, help="seconds between health reports")
    a("--event-rate", type=float, default=0.01, help="event episodes per device per second")
    a("--cameras", type=int, default=2, help="cameras per device")
    a("--model-version", default="1.0.0", help="model version running at start")
    a("--config-version", default="1", help="config version running at start")
    a("--ota-step", type=float, default=1.0, help="seconds per OTA state before probation")
    a("--probation", type=float, default=5.0, help="probation seconds before committed")
    a("--fail-rate", type=_rate, default=0.0, help="updates failing before probation")
    a("--probation-fail-rate", type=_rate, default=0.0, help="updates rolled back in probation")
    a("--stuck-rate", type=_rate, default=0.0, help="updates that stop in downloading")
    a("--degraded-fraction", type=_rate, default=0.0, help="devices reporting degraded")
    a("--bad-version", action="append", default=[], help="model version with collapsed quality")
    a("--threads", type=int, default=0, help="hub threads (0: one per 500 devices)")
    a("--connect-rate", type=float, default=200.0, help="new connections per second")
    a("--duration", type=float, default=0.0, help="seconds to run (0: until SIGINT/SIGTERM)")
    a("--stats-interval", type=float, default=10.0, help="JSON stats line period (0: off)")
    a("--seed", type=int, default=None, help="random seed")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    host, port = args.broker
    threads = args.threads or max(1, math.ceil(args.devices / 500))
    return SimConfig(
        devices=args.devices, host=host, port=port, prefix=args.prefix, id_prefix=args.id_prefix,
        health_interval_s=args.health_interval, event_rate=args.event_rate, cameras=args.cameras,
        model_version=args.model_version, config_version=args.config_version,
        ota_step_s=args.ota_step, probation_s=args.probation, fail_rate=args.fail_rate,
        probation_fail_rate=args.probation_fail_rate, stuck_rate=args.stuck_rate,
        degraded_fraction=args.degraded_fraction, bad_versions=frozenset(args.bad_version),
        threads=threads, connect_rate=args.connect_rate, seed=args.seed,
    )  # fmt: skip


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run until --duration or SIGINT/SIGTERM, then stop cleanly (offline: shutdown)."""
    cfg = config_from_args(args)
    sim = Simulator(cfg)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_a: done.set())
    sim.start()
    deadline = time.monotonic() + args.duration if args.duration > 0 else math.inf
    period = args.stats_interval if args.stats_interval > 0 else math.inf
    ready = False
    next_stats = time.monotonic() + period
    while not done.wait(0.2):
        now = time.monotonic()
        if not ready and sim.connected() == cfg.devices:
            ready = True
            _emit({"event": "ready", **sim.stats()})
        if now >= next_stats:
            next_stats = now + period
            _emit({"event": "stats", **sim.stats()})
        if now >= deadline:
            break
    sim.stop()
    _emit({"event": "stopped", **sim.stats()})
    return 0
