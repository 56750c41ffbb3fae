"""Build throw-away model folders for tests from the shipped manifest and the shared ONNX."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MANIFEST = REPO / "models" / "yolox_nano" / "model.json"


def shipped_manifest() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SHIPPED_MANIFEST.read_text(encoding="utf-8"))
    return data


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / "model.json"
    path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path


def make_model_dir(
    tmp_path: Path, assets: Path, name: str = "yolox_nano", **overrides: Any
) -> Path:
    """A model folder in tmp_path: the shipped model.json (with `overrides` applied at the
    top level) and a symlink to the shared ONNX (never a copy)."""
    folder = tmp_path / name
    folder.mkdir(parents=True)
    manifest = shipped_manifest()
    manifest.update(overrides)
    write_manifest(folder, manifest)
    (folder / manifest["onnx"]).symlink_to(assets / "yolox_nano.onnx")
    return folder
