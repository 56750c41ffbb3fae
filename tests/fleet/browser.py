"""Headless Chromium for the dashboard tests: Debian's chromium driven by Playwright."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


def sync_api_or_skip() -> Any:
    """playwright.sync_api; skips the calling test module when chromium or playwright is absent."""
    if not CHROMIUM.exists():
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True
        )
    return pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )


@contextlib.contextmanager
def chromium(sync_api: Any) -> Iterator[Any]:
    """A launched headless browser, closed on exit."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def logged_in_page(browser: Any, url: str, token: str) -> tuple[Any, Any]:
    """(context, page): a fresh 1280x900 context logged in through the dashboard's form."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{url}/ui/")
    page.fill("input[name=token]", token)
    page.click("form.login button[type=submit]")
    page.wait_for_url(f"{url}/ui/")
    return context, page


def screenshot(page: Any, path: Path) -> None:
    """A full-page PNG at `path`, checked to be a real, non-trivial image."""
    page.screenshot(path=str(path), full_page=True)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000
