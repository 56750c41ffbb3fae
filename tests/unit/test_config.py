"""Config loading: good files load, bad ones fail naming the key path, reason and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config import ConfigError, json_schema, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
schema_version: 1
device:
  id: dev-1
  state_dir: state
model:
  path: models/m
cameras:
  - id: cam1
    source: {type: file, path: video.avi}
    rules:
      - id: z1
        type: zone
        polygon: [[0, 0], [1, 0], [1, 1]]
"""


def test_example_configs_are_valid() -> None:
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.cameras, path


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    cfg_path = tmp_path / "sub" / "agent.yaml"
    cfg_path.parent.mkdir()
    cfg_path.write_text(GOOD)
    cfg = load_config(cfg_path)
    src = cfg.cameras[0].source
    assert src.type == "file"
    assert src.path == cfg_path.parent.resolve() / "video.avi"
    assert cfg.model.path == cfg_path.parent.resolve() / "models/m"
    assert cfg.device.state_dir == cfg_path.parent.resolve() / "state"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "id: cam1",
            "id: cam1\n    fps_typo: 3",
            ":9: cameras.0.fps_typo: Extra inputs are not permitted",
        ),
        ("id: dev-1", "id: 'dev/1'", "device.id: String should match pattern"),
        ("polygon: [[0, 0], [1, 0], [1, 1]]", "polygon: [[0, 0], [1, 0]]", "at least 3 points"),
        (
            "polygon: [[0, 0], [1, 0], [1, 1]]",
            "polygon: [[0, 0], [1, 0], [1, 7]]",
            "rules.0.polygon.2.1",
        ),
        ("type: file, path: video.avi", "type: ftp, path: video.avi", "cameras.0.source"),
        ("schema_version: 1", "schema_version: 2", "schema_version: Input should be 1"),
    ],
)
def test_bad_values_name_the_key_and_reason(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    with pytest.raises(ConfigError) as err:
        parse_config(GOOD.replace(old, new), "agent.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("agent.yaml:")


def test_wrong_type_is_reported_with_its_line() -> None:
    text = GOOD + "    max_fps: fast\n"
    with pytest.raises(ConfigError) as err:
        parse_config(text, "a.yaml")
    assert "a.yaml:14: cameras.0.max_fps: Input should be a valid number" in str(err.value)


def test_duplicate_camera_ids_are_rejected() -> None:
    cams = GOOD.split("cameras:\n")[1]
    with pytest.raises(ConfigError, match="duplicate camera ids: cam1"):
        parse_config(GOOD + cams.replace("  - id", "  - id", 1).split("    rules")[0])


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "key: [unclosed\n", "\x00\x01"])
def test_not_a_mapping_or_not_yaml(text: str) -> None:
    with pytest.raises(ConfigError, match=r"cfg\.yaml"):
        parse_config(text, "cfg.yaml")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")


def test_json_schema_is_exported_and_forbids_unknown_keys() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert "cameras" in schema["required"]
    json.dumps(schema)


def test_committed_config_schema_is_current() -> None:
    # docs/schemas/config.schema.json is what editors use; regenerate with
    # `edge-agent schema -o docs/schemas/config.schema.json`
    committed = json.loads((REPO / "docs" / "schemas" / "config.schema.json").read_text())
    assert committed == json.loads(json.dumps(json_schema(), sort_keys=True))
