"""Shared fixtures: where the real test assets live, and a real Mosquitto per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import Mosquitto

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("EDGE_ASSETS", REPO.parent / "shared" / "assets")).resolve()
MODEL_DIR = REPO / "models" / "yolox_nano"


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared real inputs (model, video, images); see ../shared/assets/README.md."""
    if not (ASSETS / "vtest.avi").exists():
        pytest.fail(f"shared assets missing at {ASSETS}: set EDGE_ASSETS or run 'make assets'")
    return ASSETS


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A real Mosquitto on a free port with its own config, stopped after the test."""
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()
