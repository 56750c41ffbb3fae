"""Rollout timing for bench/fleet.py: one staged rollout to N simulated devices.

`bench/fleet.py` starts the broker, the controller and `edge-fleet simulate` (devices
walking the OTA states `--ota-step` s apart, then their own `--probation`); this module
publishes a config artifact, starts a rollout over HTTP (waves 1, 10 %, 50 %, 100 %,
a short probation per wave, the quality gate on), polls it until it ends and compares
its duration with what its plan implies:

    implied = waves x (probation per wave + a device's nominal update time)
    device update time = 6 OTA states x ota_step + the device's own probation

Everything beyond that is the controller's: engine ticks (a wave's end is noticed on
the next tick), publishing the desired states, ingesting the `reported` walk.

`python -m bench.fleet_rollout serve fleet.yaml --tick S` runs the real controller app
(`fleet.app.create_app` under uvicorn, as `edge-fleet serve` does) with the engine's
tick set, which fleet.yaml does not expose.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.common import rnd, table
from fleet.artifacts import publish_artifact
from fleet.db import Database
from fleet.models import Reported
from fleet.rollout_models import RolloutDevice
from fleet.signing import generate_keypair, load_private_key

REPO = Path(__file__).resolve().parents[1]
WAVES = ("1", "10%", "50%", "100%")
OTA_STEPS = 6  # pending .. activating, each ota_step apart (fleet/sim_device.py)


@dataclass(frozen=True)
class Plan:
    """What the rollout asks for and how fast the simulated devices update."""

    probation_s: float
    ota_step_s: float
    device_probation_s: float
    tick_s: float
    waves: tuple[str, ...] = WAVES

    @property
    def device_update_s(self) -> float:
        return OTA_STEPS * self.ota_step_s + self.device_probation_s

    def implied_s(self, waves: int) -> float:
        return waves * (self.probation_s + self.device_update_s)


def _request(url: str, token: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")  # noqa: S310
    req.add_header("Authorization", f"Bearer {token}")
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - our own controller
        return json.loads(resp.read())


def publish_config(db: Database, work: Path, public_url: str) -> None:
    """Sign and store config demo@2 in the controller's database and blob store."""
    key = work / "keys" / "bench.key"
    generate_keypair(key, key.with_suffix(".pub"))
    src = work / "demo-2.yaml"
    src.write_text((REPO / "configs" / "demo.yaml").read_text() + "\n# bench rollout\n")
    publish_artifact(
        db, work / "data" / "blobs", load_private_key(key), kind="config", path=src,
        public_url=public_url, ttl_s=3600, name="demo", version="2",
    )  # fmt: skip


def run_rollout(
    url: str, token: str, ids: Sequence[str], plan: Plan, *,
    cpu_s: Callable[[], float], rss_mb: Callable[[], float],
) -> dict[str, Any]:  # fmt: skip
    """Start the rollout, poll until it ends; its timing, breakdown and controller cost."""
    spec = {"name": "bench", "target": {"device_ids": list(ids)},
            "config": {"name": "demo", "version": "2"}, "waves": list(plan.waves),
            "probation_s": plan.probation_s}  # fmt: skip
    waiter = threading.Event()
    cpu0, wall0 = cpu_s(), time.monotonic()
    rid = _request(f"{url}/api/rollouts", token, spec)["id"]
    detail: dict[str, Any] = {}
    rss_max, deadline = 0.0, time.monotonic() + 3 * plan.implied_s(len(plan.waves)) + 120
    while time.monotonic() < deadline:
        detail = _request(f"{url}/api/rollouts/{rid}", token)
        rss_max = max(rss_max, rss_mb())
        if detail["state"] not in ("running", "paused"):
            break
        waiter.wait(0.25)
    wall = time.monotonic() - wall0
    cpu = cpu_s() - cpu0
    return {"id": rid, **_figures(detail, plan, wall, cpu, rss_max)}


def commit_lag_by_wave(db: Database, rollout_id: int) -> list[dict[str, Any]]:
    """Per wave, how long committed reports waited to be stored: the controller's receive
    time minus the device's own timestamp (both clocks are this machine's)."""
    q = select(RolloutDevice.wave, Reported.received_at, Reported.timestamp).join(
        Reported, Reported.device_id == RolloutDevice.device_id
    )
    lags: dict[int, list[float]] = {}
    with db.session() as s:
        for wave, received, sent in s.execute(q.where(RolloutDevice.rollout_id == rollout_id)):
            if wave is not None:
                lags.setdefault(int(wave), []).append(max(0.0, received - sent))
    out = []
    for wave in sorted(lags):
        xs = sorted(lags[wave])
        out.append({"wave": wave, "p50_s": rnd(xs[len(xs) // 2], 2), "max_s": rnd(xs[-1], 2)})
    return out


def _figures(
    detail: dict[str, Any], plan: Plan, wall: float, cpu: float, rss_max: float
) -> dict[str, Any]:
    waves = detail["waves"]
    total = (detail["finished_at"] or time.time()) - detail["created_at"]
    implied = plan.implied_s(len(waves))
    per_wave = []
    for w in waves:
        if w["started_at"] is None or w["probation_until"] is None:
            continue
        probation_start = w["probation_until"] - w["probation_s"]
        per_wave.append({
            "size": w["size"], "state": w["state"],
            "update_s": rnd(probation_start - w["started_at"], 2),  # launch -> all committed
            "probation_s": w["probation_s"],
            "end_lag_s": rnd((w["finished_at"] or 0.0) - w["probation_until"], 2),
        })  # fmt: skip
    first_launch = waves[0]["started_at"]
    return {
        "devices": detail["total_devices"], "state": detail["state"], "reason": detail["reason"],
        "updated": detail["updated"], "failed": detail["failed"], "tick_s": plan.tick_s,
        "waves": [w["size"] for w in waves], "probation_s": plan.probation_s,
        "ota_step_s": plan.ota_step_s, "device_probation_s": plan.device_probation_s,
        "total_s": rnd(total, 2), "implied_s": rnd(implied, 2),
        "overhead_percent": rnd(100 * (total - implied) / implied, 1),
        "first_launch_s": rnd(first_launch - detail["created_at"], 2) if first_launch else None,
        "per_wave": per_wave, "poll_wall_s": rnd(wall, 1),
        "controller_cpu_percent": rnd(100 * cpu / wall, 1), "controller_rss_max_mb": rnd(rss_max),
    }  # fmt: skip


def report_rollouts(results: list[dict[str, Any]]) -> str:
    rows = [(
        r["devices"], r["tick_s"], "/".join(str(x) for x in r["waves"]), r["probation_s"],
        r["implied_s"], r["total_s"], f"{r['overhead_percent']:+}", r["first_launch_s"],
        " / ".join(str(w["update_s"]) for w in r["per_wave"]),
        " / ".join(str(w["end_lag_s"]) for w in r["per_wave"]),
        " / ".join(f"{w['p50_s']}-{w['max_s']}" for w in r.get("commit_lag", [])),
        f"{r['updated']}/{r['devices']}", r["controller_cpu_percent"], r["controller_rss_max_mb"],
    ) for r in results]  # fmt: skip
    headers = ("devices", "tick s", "waves", "probation s", "implied s", "took s", "overhead %",
               "1st launch s", "update s per wave", "end lag s per wave",
               "commit ingest lag s p50-max per wave", "committed",
               "ctrl CPU %", "ctrl RSS MB")  # fmt: skip
    return table("Rollout to simulated devices (all waves)", headers, rows)


# --------------------------------------------------------------------------- controller
def serve(argv: Sequence[str] | None = None) -> int:
    """The controller app with a chosen rollout-engine tick (what `edge-fleet serve` runs)."""
    import uvicorn

    from fleet.app import create_app
    from fleet.config import load_fleet_config

    ap = argparse.ArgumentParser(prog="bench.fleet_rollout serve")
    ap.add_argument("config", type=Path)
    ap.add_argument("--tick", type=float, required=True, help="rollout engine tick, s")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    cfg = load_fleet_config(args.config)
    app = create_app(cfg)
    app.state.rollout_tick_s = args.tick
    uvicorn.run(app, host=cfg.http.host, port=cfg.http.port, log_config=None)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"]:
        sys.exit("usage: python -m bench.fleet_rollout serve fleet.yaml --tick S")
    sys.exit(serve(sys.argv[2:]))
