"""Build agent configs for end-to-end tests and run the real `edge-agent` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.model_helpers import make_model_dir

REPO = Path(__file__).resolve().parents[1]

# Around the lamp post, where a group stands for ~16 s at the start of vtest.
LAMP_POST_ZONE = [[0.42, 0.36], [0.62, 0.36], [0.62, 0.52], [0.42, 0.52]]


def agent_config(
    tmp_path: Path,
    assets: Path,
    *,
    source: dict[str, Any] | None = None,
    rules: list[dict[str, Any]] | None = None,
    camera: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    name: str = "agent.yaml",
) -> Path:
    """Write a config for one camera on vtest (unpaced by default) into tmp_path."""
    model_dir = tmp_path / "model"
    if not model_dir.exists():
        make_model_dir(tmp_path, assets, name="model")
    cam: dict[str, Any] = {
        "id": "street",
        "source": source or {"type": "file", "path": str(assets / "vtest.avi")},
        "rules": rules
        if rules is not None
        else [
            {"id": "lamp-post", "type": "zone", "polygon": LAMP_POST_ZONE, "min_dwell_s": 2.0},
            {"id": "crossing", "type": "line", "points": [[0.52, 0.3], [0.52, 0.8]]},
        ],
    }
    cam.update(camera or {})
    cfg: dict[str, Any] = {
        "schema_version": 1,
        "device": {"id": "test-dev", "state_dir": str(tmp_path / "state")},
        "model": {"path": str(model_dir)},
        "backend": {"type": "onnxruntime", "workers": 2, "intra_op_threads": 1},
        "cameras": [cam],
        "outputs": {
            "console": {"enabled": True},
            "jsonl": {"path": str(tmp_path / "events.jsonl")},
            "snapshots": {"dir": str(tmp_path / "snapshots")},
        },
    }
    cfg.update(extra or {})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def agent_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent", *args]


def agent_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra)
    return env


def run_agent(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_argv(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=agent_env(**env),
        cwd=REPO,
        check=False,
    )
