"""The JSONL event log: whole lines, size-based rotation, bounded disk use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.config.root import ConfigError, load_config
from agent.dispatch import build_sinks
from agent.outputs.jsonl import JsonlSink
from tests.agent_helpers import agent_config
from tests.mosquitto import synthetic_record


def _ids(path: Path) -> list[str]:
    return [json.loads(line)["event_id"] for line in path.read_text().splitlines()]


def test_rotates_between_lines_and_keeps_the_newest_backups(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    line_bytes = len(json.dumps(synthetic_record(0).event.to_dict())) + 30
    sink = JsonlSink(path, max_bytes=10 * line_bytes, backups=2)
    for i in range(100):
        sink.emit(synthetic_record(i))
    sink.close()

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert sink.rotations >= 8
    kept = _ids(path.with_name("events.jsonl.2")) + _ids(path.with_name("events.jsonl.1"))
    kept += _ids(path)
    # Newest events, in order, none split or repeated; older files were deleted.
    assert kept == [synthetic_record(i).event.event_id for i in range(100 - len(kept), 100)]
    assert 20 <= len(kept) < 40
    for p in tmp_path.iterdir():
        assert p.stat().st_size < 10 * line_bytes + line_bytes


def test_zero_backups_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path, max_bytes=1 << 16, backups=0)
    big = 0
    while sink.rotations == 0:
        sink.emit(synthetic_record(big))
        big += 1
    sink.emit(synthetic_record(big))
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"]
    assert _ids(path) == [synthetic_record(big).event.event_id]


def test_appends_to_an_existing_log_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for i in range(2):
        sink = JsonlSink(path)
        sink.emit(synthetic_record(i))
        sink.close()
    assert _ids(path) == [synthetic_record(i).event.event_id for i in range(2)]


def test_config_limits_reach_the_sink_and_are_validated(tmp_path: Path, assets: Path) -> None:
    outputs = {"jsonl": {"path": str(tmp_path / "e.jsonl"), "max_bytes": 1 << 20, "backups": 5}}
    cfg = load_config(agent_config(tmp_path, assets, extra={"outputs": outputs}))
    (sink,) = [s for s in build_sinks(cfg) if isinstance(s, JsonlSink)]
    assert (sink._max_bytes, sink._backups) == (1 << 20, 5)
    sink.close()
    outputs["jsonl"]["max_bytes"] = 10
    with pytest.raises(ConfigError, match="max_bytes"):
        load_config(agent_config(tmp_path, assets, extra={"outputs": outputs}, name="bad.yaml"))
