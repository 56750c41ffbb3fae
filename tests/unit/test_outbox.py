"""The SQLite outbox: order, durability across reopen, bounded with counted eviction."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.publish.outbox import Outbox, OutboxError, OutboxMessage


def msg(i: int, size: int = 10) -> OutboxMessage:
    return OutboxMessage(f"t/{i}", bytes([i % 256]) * size, 1, "event")


def test_messages_come_out_in_order_and_survive_reopen(tmp_path: Path) -> None:
    # given an outbox with five messages, two of them acknowledged
    box = Outbox(tmp_path / "o.db", 100, 10_000)
    box.put([msg(i) for i in range(5)])
    rows = box.after(0, 10)
    assert [r.message.topic for r in rows] == [f"t/{i}" for i in range(5)]
    assert box.delete(rows[0].id) and box.delete(rows[2].id)
    box.close()
    # when it is reopened (a restart)
    box = Outbox(tmp_path / "o.db", 100, 10_000)
    # then the rest are there, in order, with their bytes, and new ids keep growing
    rest = box.after(0, 10)
    assert [r.message.topic for r in rest] == ["t/1", "t/3", "t/4"]
    assert rest[0].message.payload == msg(1).payload
    box.put([msg(9)])
    assert box.after(rest[-1].id, 10)[0].id > rest[-1].id
    assert box.counts().depth == 4 and box.counts().bytes == 40
    box.close()


def test_count_bound_evicts_oldest_first_and_counts_persistently(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 3, 10_000)
    # when 5 messages go into room for 3
    evicted = sum(box.put([msg(i)]) for i in range(5))
    # then the 2 oldest are gone and counted
    assert evicted == 2
    assert [r.message.topic for r in box.after(0, 10)] == ["t/2", "t/3", "t/4"]
    assert box.counts().evicted == 2
    box.close()
    assert Outbox(tmp_path / "o.db", 3, 10_000).counts().evicted == 2


def test_byte_bound_evicts_oldest_and_oversize_is_dropped_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 100, 1024)
    box.put([msg(0, 400), msg(1, 400)])
    # when a 400-byte message would exceed 1024 bytes
    assert box.put([msg(2, 400)]) == 1
    assert [r.message.topic for r in box.after(0, 10)] == ["t/1", "t/2"]
    # and a message larger than the whole outbox is refused, counted, the rest kept
    assert box.put([msg(3, 2000)]) == 0
    counts = box.counts()
    assert (counts.depth, counts.bytes, counts.evicted, counts.oversize_dropped) == (2, 800, 1, 1)
    box.close()


def test_delete_of_an_evicted_row_is_harmless(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 1, 10_000)
    box.put([msg(0)])
    first = box.after(0, 1)[0]
    box.put([msg(1)])  # evicts the in-flight first row
    assert box.delete(first.id) is False
    assert box.counts().depth == 1
    box.close()


def test_corrupt_database_is_moved_aside_and_replaced(tmp_path: Path) -> None:
    # given garbage where the outbox file should be
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not a sqlite database" * 100)
    # when the outbox opens
    box = Outbox(path, 10, 10_000)
    # then it starts empty and the bad file is kept for inspection
    assert box.counts().depth == 0
    assert list(tmp_path.glob("o.db.corrupt-*"))
    box.close()


def test_bad_synchronous_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        Outbox(tmp_path / "o.db", 10, 10_000, synchronous="OFF")


def test_a_closed_outbox_refuses_with_its_own_error(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10, 10_000)
    box.close()
    with pytest.raises(OutboxError, match="closed"):
        box.put([msg(0)])
    assert box.counts().depth == 0
