"""The web dashboard in a real headless Chromium (Playwright), against a real controller.

A real Mosquitto, the controller under uvicorn with its MQTT ingest, simulated
devices (fleet.simulator) and one raw device that dies through its Will feed the
registry; the browser logs in with an API token and reads the pages. Each page test
writes a PNG screenshot under pytest's tmp dir and checks it is a non-empty PNG.
Skips with the reason when Debian's chromium or the playwright package is missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from agent.protocol import EventPayload, Topics
from fleet.artifacts import publish_artifact
from fleet.auth import create_token
from fleet.db import Database, open_database
from fleet.models import Device, Event
from fleet.signing import load_private_key
from fleet.simulator import SimConfig, Simulator
from tests.fleet.browser import chromium, logged_in_page, screenshot, sync_api_or_skip
from tests.fleet.helpers import FleetServer, RawDevice, fleet_config, http_port
from tests.mosquitto import Mosquitto, wait_until

REPO = Path(__file__).resolve().parents[2]
SIM_DEVICES = 6
HOSTILE_LABEL = "<b>bold</b><script>window.pwned=1</script>"

sync_api = sync_api_or_skip()


def _count(db: Database, model: Any, *where: Any) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


class Fleet:
    """Everything the pages show: broker, controller, simulated and raw devices, a token."""

    def __init__(self, root: Path) -> None:
        self.broker = Mosquitto(root / "broker").start()
        cfg = fleet_config(root, self.broker.port, http_port())
        self.db = open_database(cfg.database_url)
        self.server = FleetServer(cfg, self.db).start()
        self.token = create_token(self.db, "ops")
        self.sim = Simulator(SimConfig(
            devices=SIM_DEVICES, port=self.broker.port, id_prefix="dash", health_interval_s=0.3,
            event_rate=0.5, degraded_fraction=0.5, seed=11,
        ))  # fmt: skip
        self.sim.start()
        self.gone = RawDevice(self.broker.port, "dash-gone", 1, "dash-gone").connect_and_birth()
        self._hostile_event()
        self.gone.die()
        self._wait_for_data()

    def _hostile_event(self) -> None:
        """An event whose label is HTML: the pages must show it as text."""
        payload = EventPayload.model_validate(_event_dict("dash-gone")).to_json()
        self.gone.publish(Topics("edge", "dash-gone").events, payload)

    def _wait_for_data(self) -> None:
        db = self.db
        wait_until(lambda: _count(db, Device, Device.online.is_(True)) == SIM_DEVICES, 15, "online")
        wait_until(lambda: _count(db, Device, Device.health_seq.is_not(None)) == SIM_DEVICES, 10,
                   "health")  # fmt: skip
        wait_until(lambda: _count(db, Device, Device.offline_reason == "will") == 1, 10, "will")
        wait_until(lambda: _count(db, Event, Event.snapshot_path.is_not(None)) >= 4, 15, "snaps")

    def close(self) -> None:
        self.sim.stop(timeout=2)
        self.server.stop()
        self.db.dispose()
        self.broker.stop()


def _event_dict(device_id: str) -> dict[str, Any]:
    now = time.time()
    return {
        "schema": 1, "event_id": f"{device_id}.cam1.r1.000001", "phase": "start",
        "device_id": device_id, "camera_id": "cam1", "rule_id": "r1", "rule_type": "zone",
        "label": HOSTILE_LABEL, "class_id": 0, "track_id": 1, "episode": 0, "score": 0.9,
        "box": [1.0, 2.0, 3.0, 4.0], "started_at": 0.0, "stream_time": 0.0, "wall_time": now,
        "frame_seq": 1, "attributes": {},
    }  # fmt: skip


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("dashboard"))
    yield f
    f.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(sync_api) as b:
        yield b


@pytest.fixture
def page(browser: Any, fleet: Fleet) -> Iterator[Any]:
    """A fresh browser context, logged in through the form."""
    context, p = logged_in_page(browser, fleet.server.url, fleet.token)
    yield p
    context.close()


def test_pages_need_a_login_and_refuse_a_wrong_token(browser: Any, fleet: Fleet) -> None:
    # given a browser without the cookie
    context = browser.new_context()
    p = context.new_page()
    # when it opens a device page
    p.goto(f"{fleet.server.url}/ui/devices/dash-0000")
    # then it lands on the login form, which refuses a wrong token
    assert "/ui/login" in p.url
    p.fill("input[name=token]", "eft_not-a-real-token")
    p.click("form.login button[type=submit]")
    assert "Unknown or revoked token" in p.inner_text("main")
    # and with the right token it comes back to the page it asked for
    p.fill("input[name=token]", fleet.token)
    p.click("form.login button[type=submit]")
    p.wait_for_url(f"{fleet.server.url}/ui/devices/dash-0000")
    cookie = next(c for c in context.cookies() if c["name"] == "edge_fleet_token")
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    context.close()
    # and without a cookie, plain HTTP gets a redirect and snapshots a 401
    with httpx.Client(base_url=fleet.server.url) as client:
        assert client.get("/ui/").status_code == 303
        assert client.get("/ui/snapshots/x").status_code == 401
    with httpx.Client(base_url=fleet.server.url, cookies={"edge_fleet_token": "eft_no"}) as client:
        assert client.get("/ui/").status_code == 303


def test_overview_shows_every_device_online_or_offline_with_last_health(
    page: Any, fleet: Fleet, tmp_path: Path
) -> None:
    # when the overview is open
    rows = page.locator("table.devices tbody tr")
    # then every device is listed with its condition
    assert rows.count() == SIM_DEVICES + 1
    text = {r.locator("td").nth(0).inner_text(): r.inner_text() for r in rows.all()}
    assert "offline" in text["dash-gone"]
    for dev in fleet.sim.devices:
        assert ("degraded" if dev.degraded else "ok") in text[dev.id]
        assert "cams" in text[dev.id]  # last health summary
    cards = page.inner_text("div.cards")
    assert f"{sum(not d.degraded for d in fleet.sim.devices)}\nok" in cards
    assert "1\noffline" in cards
    assert "1.0.0" in page.inner_text("main")  # the model versions table
    screenshot(page, tmp_path / "overview.png")


def test_device_page_shows_health_charts_cameras_and_recent_events(
    page: Any, fleet: Fleet, tmp_path: Path
) -> None:
    # given a simulated device with events
    with fleet.db.session() as s:
        device_id = s.scalar(
            select(Event.device_id).where(Event.snapshot_path.is_not(None)).limit(1)
        )
    assert device_id is not None
    # when its row is clicked on the overview
    page.click(f"table.devices a:text-is('{device_id}')")
    page.wait_for_url(f"**/ui/devices/{device_id}")
    # then it shows its health: cameras, charts, versions and recent events with thumbnails
    main = page.inner_text("main")
    assert device_id in page.inner_text("h1")
    assert "cam1" in main
    assert "cam2" in main
    assert "version: model" in main
    assert page.locator("svg.chart").count() >= 2
    assert page.locator("img.thumb").count() >= 1
    screenshot(page, tmp_path / "device.png")


def test_events_page_shows_snapshot_thumbnails_and_escapes_payload_text(
    page: Any, fleet: Fleet, tmp_path: Path
) -> None:
    # when the events page is open
    page.click("header nav a:text-is('Events')")
    page.wait_for_url("**/ui/events")
    # then snapshots load as images (decoded by the browser, not broken)
    thumbs = page.locator("img.thumb")
    assert thumbs.count() >= 4
    thumbs.first.scroll_into_view_if_needed()
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.thumb')].slice(0, 3)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    screenshot(page, tmp_path / "events.png")
    # when the filter narrows the list to the device that sent a label made of HTML
    page.fill("form.filters input[name=device]", "dash-gone")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/ui/events?device=dash-gone*")
    # then that label is shown as text, not run or rendered
    assert HOSTILE_LABEL in page.inner_text("table.events")
    assert page.locator("table.events td b").count() == 0
    assert page.evaluate("() => window.pwned === undefined")
    assert page.locator("table.events tbody tr").count() == 1


def test_rollouts_page_lists_a_rollout_with_its_waves(
    page: Any, fleet: Fleet, tmp_path: Path
) -> None:
    pytest.importorskip("fleet.rollout_api", reason="rollouts are not part of this build")
    # given a config artifact and a rollout to two simulated devices, started over the API
    signing = fleet.server.cfg.signing
    assert signing is not None
    publish_artifact(
        fleet.db, fleet.server.cfg.blobs_dir, load_private_key(signing.private_key),
        kind="config", path=REPO / "configs" / "demo.yaml",
        public_url=fleet.server.cfg.http.public_url, ttl_s=3600, name="demo", version="dash-2",
    )  # fmt: skip
    spec = {"name": "dash-config", "target": {"device_ids": ["dash-0000", "dash-0001"]},
            "config": {"name": "demo", "version": "dash-2"}, "waves": ["1", "100%"],
            "probation_s": 30}  # fmt: skip
    headers = {"Authorization": f"Bearer {fleet.token}"}
    resp = httpx.post(f"{fleet.server.url}/api/rollouts", json=spec, headers=headers)
    assert resp.status_code == 201, resp.text
    # when the rollouts page is open
    page.goto(f"{fleet.server.url}/ui/")
    page.click("header nav a:text-is('Rollouts')")
    page.wait_for_url("**/ui/rollouts")
    # then it lists the rollout, and its page shows waves and devices
    assert "dash-config" in page.inner_text("table.rollouts")
    screenshot(page, tmp_path / "rollouts.png")
    page.click(f"table.rollouts a:text-is('{resp.json()['id']}')")
    main = page.inner_text("main")
    assert "rollout waves" in main
    assert "dash-0000" in main
    assert page.locator("svg.bar").count() == 1  # device-state progress
    screenshot(page, tmp_path / "rollout.png")


def test_pages_carry_a_strict_content_security_policy(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.server.url) as client:
        resp = client.get("/ui/login")
    csp = resp.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert resp.headers["x-content-type-options"] == "nosniff"
