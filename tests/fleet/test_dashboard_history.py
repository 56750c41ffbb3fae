"""The device page's health history charts in a real headless Chromium (Playwright).

A real Mosquitto, the controller under uvicorn storing a history row per device every
0.5 s, simulated devices reporting every 0.3 s, and one raw device that never sends
health. The browser logs in with an API token, opens device pages and reads the SVG
line charts; each page writes a PNG screenshot under pytest's tmp dir. Skips with
the reason when Debian's chromium or the playwright package is missing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from fleet.auth import create_token
from fleet.config import HealthHistoryConfig
from fleet.dashboard_history import PLOT_H, TOP
from fleet.db import Database, open_database
from fleet.models import Device, HealthSample
from fleet.simulator import SimConfig, Simulator
from tests.fleet.browser import chromium, logged_in_page, screenshot, sync_api_or_skip
from tests.fleet.helpers import FleetServer, RawDevice, fleet_config, http_port
from tests.mosquitto import Mosquitto, wait_until

MIN_ROWS = 6

sync_api = sync_api_or_skip()


def _history_rows(db: Database, device_id: str) -> int:
    with db.session() as s:
        q = select(func.count()).select_from(HealthSample)
        return int(s.scalar(q.where(HealthSample.device_id == device_id)) or 0)


class Fleet:
    def __init__(self, root: Path) -> None:
        self.broker = Mosquitto(root / "broker").start()
        cfg = fleet_config(root, self.broker.port, http_port())
        cfg = cfg.model_copy(update={"health_history": HealthHistoryConfig(interval_s=0.5)})
        self.db = open_database(cfg.database_url)
        self.server = FleetServer(cfg, self.db).start()
        self.token = create_token(self.db, "ops")
        self.sim = Simulator(SimConfig(
            devices=2, port=self.broker.port, id_prefix="hist", health_interval_s=0.3,
            event_rate=0.0, degraded_fraction=0.5, seed=3,
        ))  # fmt: skip
        self.sim.start()
        self.quiet = RawDevice(self.broker.port, "hist-quiet", 1, "hist-quiet").connect_and_birth()
        self.healthy = next(d.id for d in self.sim.devices if not d.degraded)
        wait_until(lambda: _history_rows(self.db, self.healthy) >= MIN_ROWS, 20, "history rows")
        with self.db.session() as s:
            wait_until(lambda: s.get(Device, "hist-quiet") is not None, 5, "quiet device")

    def close(self) -> None:
        self.sim.stop(timeout=2)
        self.quiet.client.disconnect()
        self.server.stop()
        self.db.dispose()
        self.broker.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("dashboard-history"))
    yield f
    f.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium(sync_api) as b:
        yield b


@pytest.fixture
def page(browser: Any, fleet: Fleet) -> Iterator[tuple[Any, list[str]]]:
    """A fresh context logged in through the form, and the console messages it logs."""
    context, p = logged_in_page(browser, fleet.server.url, fleet.token)
    console: list[str] = []
    p.on("console", lambda msg: console.append(msg.text))
    yield p, console
    context.close()


def _chart(p: Any, caption: str) -> Any:
    """The history chart whose caption starts with `caption`."""
    figures = p.locator("figure", has=p.locator("svg.history-chart"))
    return figures.filter(has=p.locator(f"figcaption:text-matches('^{caption} ')"))


def test_device_page_charts_the_stored_history_per_camera(
    page: tuple[Any, list[str]], fleet: Fleet, tmp_path: Path
) -> None:
    p, console = page
    device_id = fleet.healthy
    stored = _history_rows(fleet.db, device_id)
    # when the device's row is clicked on the overview
    p.click(f"table.devices a:text-is('{device_id}')")
    p.wait_for_url(f"**/ui/devices/{device_id}")
    # then the history section draws line charts with every stored point so far
    section = p.locator("section", has=p.locator("h2:text-is('Health over time')"))
    assert section.count() == 1
    assert section.locator("svg.history-chart").count() >= 6  # 5 camera charts + temperature
    facts = section.locator("dl.kv").inner_text()
    samples = re.search(r"samples\s+(\d+)", facts)
    assert samples is not None
    assert int(samples.group(1)) >= stored
    fps = _chart(p, "frames/s processed")
    assert fps.count() == 1
    for cam in ("cam1", "cam2"):
        series = fps.locator(f"g.series[data-series='{cam}']")
        assert int(series.get_attribute("data-points")) >= stored
        # the simulator's 9.5-10 fps sit at the top of a 0-10 axis
        ys = [float(v) for v in series.locator("circle.pt").evaluate_all(
            "els => els.map(e => e.getAttribute('cy'))")]  # fmt: skip
        assert len(ys) >= stored
        assert all(TOP <= y <= TOP + 0.06 * PLOT_H for y in ys)
    # and the charts carry axis labels, the time range and per-point tooltips
    caption = fps.locator("figcaption").inner_text()
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d to .* UTC", caption)
    assert "time (UTC)" in fps.locator("svg").inner_html()
    assert fps.locator("text", has_text="10").count() >= 1  # the y axis top
    assert "cam1" in fps.locator("circle.pt title").first.text_content()
    for title in ("frame latency p99", "detections per frame", "mean confidence",
                  "max drift score", "hottest temperature"):  # fmt: skip
        chart = _chart(p, title)
        assert chart.locator("g.series").count() >= 1, title
    # and the latest-report section is still there, above the history
    assert p.locator("h2:text-is('Health')").count() == 1
    assert p.locator("svg.chart:not(.history-chart)").count() >= 2
    # and nothing was refused by the Content-Security-Policy
    assert not [m for m in console if "Content Security Policy" in m]
    screenshot(p, tmp_path / "device-history.png")


def test_a_device_without_history_shows_an_empty_state(
    page: tuple[Any, list[str]], fleet: Fleet, tmp_path: Path
) -> None:
    p, _console = page
    p.goto(f"{fleet.server.url}/ui/devices/hist-quiet")
    section = p.locator("section", has=p.locator("h2:text-is('Health over time')"))
    assert "No health history stored" in section.inner_text()
    assert p.locator("svg.history-chart").count() == 0
    screenshot(p, tmp_path / "device-no-history.png")
