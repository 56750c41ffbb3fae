"""Shared fixtures: where the real test assets live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("EDGE_ASSETS", REPO.parent / "shared" / "assets")).resolve()
MODEL_DIR = REPO / "models" / "yolox_nano"


@pytest.fixture(scope="session")
def assets() -> Path:
    """The shared real inputs (model, video, images); see ../shared/assets/README.md."""
    if not (ASSETS / "vtest.avi").exists():
        pytest.fail(f"shared assets missing at {ASSETS}: set EDGE_ASSETS or run 'make assets'")
    return ASSETS
