"""Fleet ingest benchmark: one controller against 100, 500 and 1,000 simulated devices.

For each fleet size, on this machine, with nothing mocked:

1. a fresh Mosquitto (own config, free port) and a fresh `edge-fleet serve` (SQLite,
   MQTT ingest, HTTP) in their own processes;
2. `edge-fleet simulate --devices N` (one MQTT connection and Will per device, health
   every 5 s, occasional events with snapshots) in a third process;
3. time until the registry shows all N online, then after a warm-up, over a window:
   health reports sent (simulator) vs ingested (registry), ingest lag (controller's
   store time minus the report's own timestamp, per new report seen) over the whole
   window and its p95 in each half (a growing backlog shows as a growing lag), CPU and
   RSS of controller, simulator and broker (from /proc), and the time to serve
   `GET /api/devices` and the dashboard overview at that size;
4. then, on a fresh stack per engine tick, a staged rollout to `--rollout-devices`
   devices (waves 1, 10 %, 50 %, 100 %, short probation, fast simulated OTA) timed
   against what its waves and probation windows imply (bench/fleet_rollout.py).

All processes share this machine's cores, so controller CPU is measured while the
simulator and broker compete with it.

    .venv/bin/python bench/fleet.py --json bench/out/fleet.json    # ~6 min
    .venv/bin/python bench/fleet.py --quick                        # ~2.5 min
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select

from bench.common import cores, load_average, now_utc, progress, rnd, table
from bench.fleet_rollout import (
    Plan,
    commit_lag_by_wave,
    publish_config,
    report_rollouts,
    run_rollout,
)
from fleet.auth import create_token
from fleet.db import Database, open_database
from fleet.models import Device, Event
from tests.mosquitto import MOSQUITTO, free_port, wait_until

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- processes
def _spawn(cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        out = kw.pop("stdout", fh)
        return subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=fh, **kw)  # noqa: S603


def _stop(proc: subprocess.Popen[bytes] | None, sig_timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(sig_timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Stack:
    """Broker + controller for one fleet size, in a work folder."""

    work: Path
    broker_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    broker: subprocess.Popen[bytes] | None = None
    controller: subprocess.Popen[bytes] | None = None
    db: Database | None = None
    token: str = ""
    tick_s: float | None = None
    """Rollout engine tick; None runs plain `edge-fleet serve` (its default tick)."""

    def start(self) -> Stack:
        conf = self.work / "mosquitto.conf"
        conf.write_text(
            f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 100000\nlog_dest none\n"
        )
        self.broker = _spawn([MOSQUITTO, "-c", str(conf)], self.work / "mosquitto.log")
        cfg = self.work / "fleet.yaml"
        cfg.write_text(
            f"database_url: sqlite:///{self.work / 'fleet.sqlite3'}\n"
            f"data_dir: {self.work / 'data'}\n"
            f"mqtt: {{host: 127.0.0.1, port: {self.broker_port}, client_id: bench-fleet}}\n"
            f"http: {{host: 127.0.0.1, port: {self.http_port}, "
            f"public_url: 'http://127.0.0.1:{self.http_port}'}}\n"
        )
        self.db = open_database(f"sqlite:///{self.work / 'fleet.sqlite3'}")
        self.token = create_token(self.db, "bench")
        cmd = [sys.executable, "-m", "fleet.cli", "serve", "-c", str(cfg)]
        if self.tick_s is not None:
            cmd = [sys.executable, "-m", "bench.fleet_rollout", "serve", str(cfg),
                   "--tick", str(self.tick_s)]  # fmt: skip
        self.controller = _spawn(cmd, self.work / "controller.log")
        wait_until(self._healthy, 30, "controller /healthz with MQTT connected")
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp:  # noqa: S310
                return bool(json.loads(resp.read()).get("mqtt_connected"))
        except OSError:
            return False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get_ms(self, path: str, headers: dict[str, str]) -> float:
        """Median of 3 timed GETs."""
        times = []
        for _ in range(3):
            req = urllib.request.Request(f"{self.url}{path}", headers=headers)  # noqa: S310
            t0 = time.perf_counter()
            with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310
                resp.read()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    def stop(self) -> None:
        _stop(self.controller)
        _stop(self.broker)
        if self.db is not None:
            self.db.dispose()


class SimProcess:
    """`edge-fleet simulate` with its JSON stats lines read on a thread."""

    def __init__(
        self, args: argparse.Namespace, stack: Stack, n: int, extra: tuple[str, ...] = ()
    ) -> None:
        cmd = [sys.executable, "-m", "fleet.cli", "simulate", "--devices", str(n),
               "--broker", f"127.0.0.1:{stack.broker_port}", "--id-prefix", f"b{n}",
               "--health-interval", str(args.health_interval), "--event-rate",
               str(args.event_rate), "--stats-interval", "0.5", "--connect-rate", "500",
               "--seed", "1", *extra]  # fmt: skip
        self.proc = _spawn(cmd, stack.work / "simulator.log", stdout=subprocess.PIPE)
        self.latest: dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.latest = json.loads(line)

    def sent(self, kind: str) -> int:
        return int(self.latest.get("sent", {}).get(kind, 0))

    def stop(self) -> None:
        _stop(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# --------------------------------------------------------------------------- measuring
def _registry(db: Database) -> dict[str, tuple[int, float, float | None, bool]]:
    with db.session() as s:
        q = select(Device.id, Device.health_seq, Device.last_seen, Device.last_health_at,
                   Device.online)  # fmt: skip
        return {r[0]: (-1 if r[1] is None else r[1], r[2], r[3], r[4]) for r in s.execute(q)}


def _events(db: Database) -> int:
    with db.session() as s:
        return len(s.scalars(select(Event.id)).all())


def _stored_health(reg: dict[str, tuple[int, float, float | None, bool]]) -> int:
    return sum(seq + 1 for seq, _ls, _lh, _on in reg.values())


@dataclass
class Window:
    lags: list[tuple[float, float]] = field(default_factory=list)
    """(seconds into the window, lag) for every new health report seen stored."""


def _sample(stack: Stack, sim: SimProcess, seconds: float) -> tuple[Window, dict[str, Any]]:
    assert stack.db is not None
    waiter = threading.Event()
    pids = {"controller": stack.controller, "simulator": sim.proc, "broker": stack.broker}
    cpu0 = {k: cpu_s(p.pid) for k, p in pids.items() if p is not None}
    reg = _registry(stack.db)
    stored0, sent0, events0 = _stored_health(reg), sim.sent("health"), _events(stack.db)
    t0 = time.monotonic()
    win = Window()
    while time.monotonic() - t0 < seconds:
        waiter.wait(1.0)
        new = _registry(stack.db)
        for dev, (seq, last_seen, health_at, _on) in new.items():
            if health_at is not None and seq != reg.get(dev, (-2,))[0]:
                win.lags.append((time.monotonic() - t0, max(0.0, last_seen - health_at)))
        reg = new
    wall = time.monotonic() - t0
    stored, sent = _stored_health(reg) - stored0, sim.sent("health") - sent0
    figures = {
        "window_s": round(wall, 1),
        "health_sent_per_s": rnd(sent / wall, 1),
        "health_ingested_per_s": rnd(stored / wall, 1),
        "events_ingested_per_s": rnd((_events(stack.db) - events0) / wall, 2),
        "cpu_percent": {k: rnd(100 * (cpu_s(p.pid) - cpu0[k]) / wall, 1)
                        for k, p in pids.items() if p is not None},
        "rss_mb": {k: rnd(rss_mb(p.pid), 1) for k, p in pids.items() if p is not None},
    }  # fmt: skip
    return win, figures


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_level(args: argparse.Namespace, n: int, work: Path) -> dict[str, Any]:
    stack = Stack(work).start()
    sim: SimProcess | None = None
    try:
        assert stack.db is not None
        db = stack.db
        t0 = time.monotonic()
        sim = SimProcess(args, stack, n)
        wait_until(lambda: sum(v[3] for v in _registry(db).values()) == n, 120, f"{n} online")
        online_s = time.monotonic() - t0
        progress(f"{n} devices online in {online_s:.1f}s; warm-up {args.warmup:.0f}s")
        threading.Event().wait(args.warmup)
        win, figures = _sample(stack, sim, args.window)
        auth = {"Authorization": f"Bearer {stack.token}"}
        cookie = {"Cookie": f"edge_fleet_token={stack.token}"}
        lag_ms = [x * 1000 for _t, x in win.lags]
        first = [x * 1000 for t, x in win.lags if t < args.window / 2]
        second = [x * 1000 for t, x in win.lags if t >= args.window / 2]
        return {
            "devices": n, "online_s": rnd(online_s, 1), **figures,
            "lag_ms": {"p50": rnd(_pct(lag_ms, 0.5)), "p95": rnd(_pct(lag_ms, 0.95)),
                       "max": rnd(max(lag_ms) if lag_ms else None), "samples": len(lag_ms)},
            "lag_p95_halves_ms": [rnd(_pct(first, 0.95)), rnd(_pct(second, 0.95))],
            "api_devices_ms": rnd(stack.get_ms("/api/devices", auth), 1),
            "dashboard_ms": rnd(stack.get_ms("/ui/", cookie), 1),
        }  # fmt: skip
    finally:
        if sim is not None:
            sim.stop()
        stack.stop()


def run_rollout_level(args: argparse.Namespace, n: int, tick: float, work: Path) -> dict[str, Any]:
    """A fresh stack whose engine ticks every `tick` s; one rollout to all n devices."""
    stack = Stack(work, tick_s=tick).start()
    sim: SimProcess | None = None
    plan = Plan(args.rollout_probation, args.ota_step, args.device_probation, tick)
    try:
        assert stack.db is not None and stack.controller is not None
        db, pid = stack.db, stack.controller.pid
        publish_config(db, work, stack.url)
        extra = ("--ota-step", str(plan.ota_step_s), "--probation", str(plan.device_probation_s),
                 "--config-version", "1")  # fmt: skip
        sim = SimProcess(args, stack, n, extra)
        wait_until(lambda: sum(v[3] and v[2] is not None for v in _registry(db).values()) == n,
                   120, f"{n} online with health")  # fmt: skip
        ids = sorted(_registry(db))
        progress(f"rollout to {n} devices, tick {tick:g}s, probation {plan.probation_s:g}s/wave")
        result = run_rollout(stack.url, stack.token, ids, plan, cpu_s=lambda: cpu_s(pid),
                             rss_mb=lambda: rss_mb(pid))  # fmt: skip
        result["commit_lag"] = commit_lag_by_wave(db, result["id"])
        return result
    finally:
        if sim is not None:
            sim.stop()
        stack.stop()


# --------------------------------------------------------------------------- report
def report(levels: list[dict[str, Any]]) -> str:
    rows = [(
        r["devices"], r["online_s"], r["health_sent_per_s"], r["health_ingested_per_s"],
        r["events_ingested_per_s"], f"{r['lag_ms']['p50']} / {r['lag_ms']['p95']} / "
        f"{r['lag_ms']['max']}", "{} -> {}".format(*r["lag_p95_halves_ms"]),
        r["cpu_percent"]["controller"],
        r["rss_mb"]["controller"], r["cpu_percent"]["simulator"], r["cpu_percent"]["broker"],
        r["api_devices_ms"], r["dashboard_ms"],
    ) for r in levels]  # fmt: skip
    headers = ("devices", "online s", "health sent/s", "ingested/s", "events/s",
               "lag ms p50/p95/max", "p95 1st->2nd half", "ctrl CPU %", "ctrl RSS MB", "sim CPU %",
               "broker CPU %", "GET /api/devices ms", "GET /ui/ ms")  # fmt: skip
    title = f"Fleet ingest vs devices (health every {levels[0]['health_interval_s']:g} s)"
    return table(title, headers, rows)


def try_plot(levels: list[dict[str, Any]], path: Path) -> str:
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot written (the table and JSON have it all)"
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    xs = [r["devices"] for r in levels]
    a.plot(xs, [r["health_sent_per_s"] for r in levels], marker="o", label="sent")
    a.plot(xs, [r["health_ingested_per_s"] for r in levels], marker="o", label="ingested")
    a.set_xlabel("devices")
    a.set_ylabel("health reports/s")
    a.legend()
    b.plot(xs, [r["cpu_percent"]["controller"] for r in levels], marker="o")
    b.set_xlabel("devices")
    b.set_ylabel("controller CPU %")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return f"plot written to {path}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="100,500,1000", help="comma-separated fleet sizes")
    ap.add_argument("--health-interval", type=float, default=5.0, help="seconds")
    ap.add_argument("--event-rate", type=float, default=0.002, help="events/device/s")
    ap.add_argument("--window", type=float, default=60.0, help="measurement window, s")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds after all online")
    ap.add_argument("--quick", action="store_true", help="20 s windows, 5 s warm-up")
    ap.add_argument("--json", type=Path, help="write every figure to this JSON file")
    ap.add_argument("--plot", type=Path, help="PNG plot path (default: next to --json)")
    ap.add_argument("--rollout-devices", type=int, default=1000, help="0: no rollout run")
    ap.add_argument("--rollout-ticks", default="2,0.5", help="engine ticks to try, s")
    ap.add_argument("--rollout-probation", type=float, default=5.0, help="per wave, s")
    ap.add_argument("--ota-step", type=float, default=0.1, help="simulated OTA state, s")
    ap.add_argument("--device-probation", type=float, default=0.5, help="device's own, s")
    args = ap.parse_args(argv)
    if args.quick:
        args.window, args.warmup, args.rollout_ticks = 20.0, 5.0, "0.5"
    return args


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = [int(x) for x in args.devices.split(",") if x.strip()]
    levels = []
    with _workdir() as work:
        for n in sizes:
            progress(f"fleet of {n}: starting broker, controller and simulator")
            folder = work / f"n{n}"
            folder.mkdir()
            result = run_level(args, n, folder)
            result["health_interval_s"] = args.health_interval
            levels.append(result)
        rollouts = []
        for tick in [float(x) for x in args.rollout_ticks.split(",") if x.strip()]:
            if args.rollout_devices <= 0:
                break
            folder = work / f"rollout-{tick:g}"
            folder.mkdir()
            rollouts.append(run_rollout_level(args, args.rollout_devices, tick, folder))
    if levels:
        print(report(levels))
    if rollouts:
        print(report_rollouts(rollouts))
    out = {"when": now_utc(), "cores": cores(), "load_average": load_average(),
           "args": {k: str(v) for k, v in vars(args).items()}, "levels": levels,
           "rollouts": rollouts}  # fmt: skip
    plot_path = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if levels:
        print(try_plot(levels, plot_path) if plot_path else "no --json/--plot: no plot written")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
