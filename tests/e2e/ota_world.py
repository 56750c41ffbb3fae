"""The OTA end-to-end world: a real Mosquitto, the real fleet controller under uvicorn, a
collector on the device's `reported` topic, and the real agent, in-process (`Agent`) or
as its own `python -m agent run` process.

Fixtures (import them into a test module to use them): `fleet`, `world`; `broker`
comes from tests/conftest.py.
`World` wraps what an operator and an attacker can do (publish artifacts with the
fleet's key, set desired through the API or straight on the broker, serve forged
artifacts) and what a test waits for (an update state in `reported`, the controller's
view of the device), always synchronised on messages with a timeout.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import IO, Any, ClassVar

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from agent.app import Agent
from agent.config import load_config
from agent.inference.model import load_model_folder
from agent.ota.staging import Pointers, active_model_path
from agent.protocol import DesiredState
from fleet.artifacts import PublishedArtifact, publish_artifact
from fleet.auth import create_token
from fleet.db import Database, open_database
from fleet.signing import load_private_key
from tests.agent_helpers import REPO, agent_argv, agent_config, agent_env
from tests.fleet.helpers import FleetServer, fleet_config, http_port
from tests.mosquitto import Collector, Mosquitto, wait_until
from tests.ota_helpers import Keys, RangeServer

DEVICE = "test-dev"
REPORTED = f"edge/{DEVICE}/reported"
HEALTH = f"edge/{DEVICE}/health"
DESIRED = f"edge/{DEVICE}/desired"
FACTORY_VERSION = "0.1.1"
"""The version of the provisioned model folder (the shipped model.json)."""
TERMINAL = ("committed", "failed", "rolled_back")
Report = dict[str, Any]


@pytest.fixture
def fleet(tmp_path: Path, broker: Mosquitto) -> Iterator[tuple[FleetServer, Database]]:
    cfg = fleet_config(tmp_path / "fleet", broker.port, http_port())
    db = open_database(cfg.database_url)
    srv = FleetServer(cfg, db).start()
    yield srv, db
    srv.stop()
    db.dispose()


@dataclass
class World:
    """Broker, controller, a `reported` (and health) collector and a Range server."""

    tmp: Path
    assets: Path
    broker: Mosquitto
    server: FleetServer
    db: Database
    collector: Collector
    files: RangeServer = field(default_factory=RangeServer)

    # ------------------------------------------------------------------ operator side
    @property
    def keys(self) -> Keys:
        """The fleet's own signing key pair (what the device pins)."""
        assert self.server.cfg.signing is not None
        private = self.server.cfg.signing.private_key
        return Keys(private, private.with_suffix(".pub"))

    @cached_property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {create_token(self.db, 'ops')}"}

    def publish(self, kind: str, path: Path, **kw: Any) -> PublishedArtifact:
        """Publish and sign an artifact the way `edge-fleet artifact publish` does."""
        return publish_artifact(
            self.db, self.server.cfg.blobs_dir, load_private_key(self.keys.private),
            kind=kind, path=path, public_url=self.server.url, ttl_s=3600, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    def set_desired(self, **picks: dict[str, str]) -> None:
        """PUT /api/devices/<id>/desired (the device must have registered)."""
        r = httpx.put(
            f"{self.server.url}/api/devices/{DEVICE}/desired", json=picks, headers=self.auth
        )
        assert r.status_code == 200, r.text

    def publish_desired(self, **refs: dict[str, Any]) -> None:
        """Publish a retained desired state straight on the broker (no controller)."""
        payload = DesiredState.model_validate({"schema": 1, **refs}).to_json()
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="ops")
        client.connect("127.0.0.1", self.broker.port, keepalive=10)
        client.loop_start()
        try:
            client.publish(DESIRED, payload, qos=1, retain=True).wait_for_publish(5)
        finally:
            client.disconnect()
            client.loop_stop()

    # ------------------------------------------------------------------ observations
    def mark(self) -> int:
        """A position in the collected messages: later waits can look only after it."""
        return len(self.collector.messages)

    def reports(self, since: int = 0) -> list[Report]:
        return [json.loads(m.payload) for m in self.collector.messages[since:]
                if m.topic == REPORTED]  # fmt: skip

    def wait_report(
        self, pred: Callable[[Report], bool], what: str, timeout: float = 60, since: int = 0
    ) -> Report:
        """The first `reported` payload after `since` that satisfies `pred`."""
        found: list[Report] = []

        def match(_msgs: object) -> bool:
            found[:] = [r for r in self.reports(since) if pred(r)][:1]
            return bool(found)

        self.collector.wait_for(match, timeout, what)
        return found[0]

    def wait_update(
        self, version: str, states: tuple[str, ...] = TERMINAL, *, kind: str = "model",
        timeout: float = 60, since: int = 0,
    ) -> Report:  # fmt: skip
        """The first report whose `kind` update for `version` is in one of `states`."""
        return self.wait_report(
            lambda r: update_of(r, kind).get("version") == version
            and update_of(r, kind).get("state") in states,
            f"{kind} {version} in {states}", timeout, since,
        )  # fmt: skip

    def update_states(self, kind: str = "model", since: int = 0) -> list[str]:
        out: list[str] = []
        for r in self.reports(since):
            state = update_of(r, kind).get("state")
            if state and (not out or out[-1] != state):
                out.append(state)
        return out

    def health(self, since: int = 0) -> list[Report]:
        return [json.loads(m.payload) for m in self.collector.messages[since:]
                if m.topic == HEALTH]  # fmt: skip

    def device(self) -> Report:
        r = httpx.get(f"{self.server.url}/api/devices/{DEVICE}", headers=self.auth)
        assert r.status_code in (200, 404), r.text
        return r.json() if r.status_code == 200 else {}

    def wait_registered(self, timeout: float = 30) -> None:
        wait_until(lambda: bool(self.device()), timeout, "the device to register")

    def wait_controller(self, kind: str, version: str, state: str, timeout: float = 15) -> Report:
        """The controller's record of the device once it stored that update state."""
        seen: list[Report] = []

        def stored() -> bool:
            seen[:] = [self.device()]
            upd = (seen[0].get("reported") or {}).get("updates", {}).get(kind) or {}
            return (upd.get("version"), upd.get("state")) == (version, state)

        wait_until(stored, timeout, f"the controller to store {kind} {version} {state}")
        return seen[0]


def update_of(report: Report, kind: str = "model") -> Report:
    return dict((report.get("updates") or {}).get(kind) or {})


@pytest.fixture
def world(
    tmp_path: Path, assets: Path, broker: Mosquitto, fleet: tuple[FleetServer, Database]
) -> Iterator[World]:
    server, db = fleet
    collector = Collector(broker.port, [REPORTED, HEALTH]).start()
    w = World(tmp_path, assets, broker, server, db, collector)
    yield w
    for proc in AgentProcess.live:  # never leave an agent running after its test
        proc.kill()
    AgentProcess.live.clear()
    collector.stop()
    w.files.stop()


# --------------------------------------------------------------------------- the agent
PACED = {"type": "file", "pace": True, "loop": True}
FAST_PROBATION = {"window_s": 2.0, "poll_s": 0.2, "min_fps_ratio": 0.0}


def write_agent_config(
    w: World, *, ota: dict[str, Any] | None = None, rules: list[dict[str, Any]] | None = None
) -> Path:
    """An agent config on paced, looping vtest, with MQTT and OTA pinned to the fleet key."""
    ota_cfg: dict[str, Any] = {
        "enabled": True, "public_key": str(w.keys.public), "min_free_bytes": 0,
        "latency_budget_ms": 5000, "latency_runs": 2, "retry_initial_s": 0.2,
        "retry_max_s": 1.0, "download_timeout_s": 10, "probation": dict(FAST_PROBATION),
    }  # fmt: skip
    for key, value in (ota or {}).items():
        if key == "probation":
            ota_cfg["probation"].update(value)
        else:
            ota_cfg[key] = value
    extra = {
        "mqtt": {"host": "127.0.0.1", "port": w.broker.port, "health_interval_s": 1.0},
        "ota": ota_cfg,
    }
    source = {**PACED, "path": str(w.assets / "vtest.avi")}
    return agent_config(w.tmp, w.assets, source=source, rules=rules, extra=extra)


def config_with_rules(config: Path, rules: list[dict[str, Any]], out: Path) -> Path:
    """`config` with the first camera's rules replaced (a config artifact to publish)."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    data["cameras"][0]["rules"] = rules
    out.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return out


@contextlib.contextmanager
def running_agent(config: Path) -> Iterator[Agent]:
    """The real agent in this process on `config`; closed (bounded) on exit."""
    agent = Agent(load_config(config), config_path=config)
    agent.start()
    try:
        yield agent
    finally:
        agent.close()


def frames_flow(agent: Agent, frames: int = 10, timeout: float = 20) -> None:
    """Wait until the (only) camera lane processed `frames` more frames."""
    lane = next(iter(agent.lanes.values()))
    target = lane.frames_processed + frames
    wait_until(lambda: lane.frames_processed >= target, timeout, f"{frames} more frames")


class AgentProcess:
    """`python -m agent run -c CONFIG` as a child process, output to a log file."""

    live: ClassVar[list[AgentProcess]] = []
    """Every process started, so that a fixture can make sure none outlives its test."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self._out: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            agent_argv("run", "-c", str(config)), cwd=REPO, env=agent_env(),
            stdout=self._out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        AgentProcess.live.append(self)

    def kill(self) -> None:
        """SIGKILL: the process dies wherever it is (power loss, OOM kill)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.returncode is not None:
                self._out.close()

    def stop(self, timeout: float = 20) -> int | None:
        """SIGTERM (systemd's stop) and the exit status; None (and SIGKILL) if it hung."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def assert_stops_cleanly(self) -> None:
        """SIGTERM ends it with status 0 (a hang fails the test)."""
        rc = self.stop()
        assert rc == 0, f"exit status {rc} (None: hung on SIGTERM)\n{self.tail()}"

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def serving_folder(state_dir: Path, factory: Path) -> Path:
    """The model folder the device would load now; fail unless it is complete and sound."""
    folder = active_model_path(state_dir, factory)
    assert not folder.name.startswith((".tmp-", ".trash-")), folder
    model = load_model_folder(folder, verify_sha256=True, probe=True)
    assert (folder / "model.json").is_file() and model.onnx_path.is_file()
    return folder


def pointer_versions(state_dir: Path) -> tuple[str | None, str | None]:
    """The model versions `active` and `previous` name (None: no pointer)."""
    pointers = Pointers(state_dir / "models")
    active, previous = (
        None if p is None else load_model_folder(p, probe=False).manifest.version
        for p in (pointers.active(), pointers.previous())
    )
    return active, previous


def leftovers(state_dir: Path) -> list[str]:
    """Temp or trash paths a crash left under the model store."""
    root = state_dir / "models"
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.startswith((".tmp-", ".trash-")))  # fmt: skip


__all__ = [
    "DESIRED", "DEVICE", "FACTORY_VERSION", "HEALTH", "REPORTED", "TERMINAL",
    "AgentProcess", "World",
    "config_with_rules", "fleet", "frames_flow", "leftovers", "pointer_versions",
    "running_agent", "serving_folder", "update_of", "world", "write_agent_config",
]  # fmt: skip
