"""`edge-fleet` commands against a config file in tmp_path (in-process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet.auth import check_token
from fleet.cli import format_table, main
from fleet.config import load_fleet_config
from fleet.db import open_database

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fleet_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["keys", "generate", "--private", str(tmp_path / "keys" / "fleet.key")]) == 0
    capsys.readouterr()
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "database_url: sqlite:///fleet.sqlite3\ndata_dir: data\nmqtt: null\n"
        "signing:\n  private_key: keys/fleet.key\n"
    )
    return path


def test_config_paths_are_relative_to_the_yaml(fleet_yaml: Path) -> None:
    cfg = load_fleet_config(fleet_yaml)
    assert cfg.database_url == f"sqlite:///{fleet_yaml.parent / 'fleet.sqlite3'}"
    assert cfg.signing is not None
    assert cfg.signing.private_key == fleet_yaml.parent / "keys" / "fleet.key"


def test_keys_generate_refuses_to_overwrite(
    fleet_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = fleet_yaml.parent / "keys" / "fleet.key"
    assert main(["keys", "generate", "--private", str(key)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_token_create_prints_a_token_stored_only_as_a_hash(
    fleet_yaml: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "create", "ops", "-c", str(fleet_yaml)]) == 0
    token = capsys.readouterr().out.strip()
    db = open_database(load_fleet_config(fleet_yaml).database_url)
    assert check_token(db, token) == "ops"
    assert token.encode() not in (fleet_yaml.parent / "fleet.sqlite3").read_bytes()


def test_artifact_publish_refuses_an_invalid_config_and_lists_a_valid_one(
    fleet_yaml: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema_version: 1\ndevice: {id: 'a/b'}\n")
    args = ["artifact", "publish", "--kind", "config", "--name", "demo", "-c", str(fleet_yaml)]
    assert main([*args, "--version", "1", str(bad)]) == 2
    assert "invalid config" in capsys.readouterr().err
    assert main([*args, "--version", "1", str(REPO / "configs" / "demo.yaml")]) == 0
    capsys.readouterr()
    assert main(["artifact", "list", "-c", str(fleet_yaml)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["KIND", "NAME", "VERSION", "SEQ"]
    assert lines[2].split()[:4] == ["config", "demo", "1", "1"]


def test_tables_align_columns() -> None:
    out = format_table(("A", "LONGER"), [("x", 1), ("yyyy", None)])
    assert out.splitlines() == ["A     LONGER", "----  ------", "x     1", "yyyy"]
