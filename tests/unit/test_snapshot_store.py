"""The snapshot folder stays within its file and byte budget, oldest deleted first."""

from __future__ import annotations

import os
from pathlib import Path

from agent.outputs.snapshot import SnapshotStore


def test_oldest_snapshots_are_evicted_beyond_the_file_budget(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, max_files=3, max_bytes=1 << 30)
    paths = [store.save("cam", f"e{i}", b"\xff\xd8" + bytes(100)) for i in range(5)]
    assert [p.exists() for p in paths] == [False, False, True, True, True]
    assert store.stats() == {"files": 3, "bytes": 3 * 102, "evicted": 2}


def test_byte_budget_and_files_present_at_start(tmp_path: Path) -> None:
    old = tmp_path / "cam" / "old.jpg"
    old.parent.mkdir()
    old.write_bytes(bytes(600))
    os.utime(old, (1, 1))
    store = SnapshotStore(tmp_path, max_files=100, max_bytes=1000)
    assert store.stats()["files"] == 1
    new = store.save("cam", "new", bytes(600))
    assert not old.exists()  # the pre-existing, older file went first
    assert new.exists()
    assert store.stats() == {"files": 1, "bytes": 600, "evicted": 1}
