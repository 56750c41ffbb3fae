"""The durable outbox: every event is in SQLite before `emit` returns.

Rows are taken out in id order (AUTOINCREMENT, so ids never go backwards even
after deletes) and deleted only when the broker has acknowledged them. The outbox
is bounded by message count and payload bytes; when a new message would exceed
either bound, the oldest rows are evicted in the same transaction and counted in a
persistent counter, so an eviction is never silent and survives restarts.

fsync policy: WAL journal with `synchronous=FULL` by default. In WAL mode FULL
fsyncs the WAL on every commit, so an event whose `emit` has returned survives a
power cut, which is how field appliances usually die; events are episode
boundaries (a few per minute, not per frame), so one fsync each is cheap.
`NORMAL` (configurable) survives a process crash or SIGKILL but may lose the last
commits on power loss. See docs/protocol.md.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class OutboxError(Exception):
    """The outbox database cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One MQTT message waiting for its acknowledgement."""

    topic: str
    payload: bytes
    qos: int
    kind: str
    """'event' or 'snapshot' (for counting and logs)."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    id: int
    message: OutboxMessage


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    depth: int
    bytes: int
    evicted: int
    oversize_dropped: int
    last_id: int
    """Highest id ever stored (0 when empty and new)."""


class Outbox:
    """A bounded, durable FIFO of MQTT messages. Thread-safe."""

    def __init__(
        self, path: Path, max_messages: int, max_bytes: int, synchronous: str = "FULL"
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous}")
        self._path = path
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._closed = False
        self._db = self._open(path, synchronous)
        self._depth, self._bytes, self._last_id = self._scan()
        self._evicted = self._counter("evicted")
        self._oversize = self._counter("oversize_dropped")

    @staticmethod
    def _connect(path: Path, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.executescript(_SCHEMA)
        db.execute("SELECT count(*) FROM outbox").fetchone()
        return db

    def _open(self, path: Path, synchronous: str) -> sqlite3.Connection:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return self._connect(path, synchronous)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise OutboxError(f"outbox {path} is in use: {exc}") from exc
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            log.error("outbox unreadable, moved aside path=%s aside=%s error=%s", path, aside, exc)
            try:
                path.replace(aside)
                for suffix in ("-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
                return self._connect(path, synchronous)
            except (OSError, sqlite3.Error) as exc2:
                raise OutboxError(f"cannot recreate outbox {path}: {exc2}") from exc2
        except OSError as exc:
            raise OutboxError(f"cannot open outbox {path}: {exc}") from exc

    def _scan(self) -> tuple[int, int, int]:
        depth, size = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM outbox"
        ).fetchone()
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name='outbox'").fetchone()
        return int(depth), int(size), int(row[0]) if row else 0

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, name: str, by: int) -> None:
        self._db.execute(
            "INSERT INTO counters(name, value) VALUES(?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def put(self, messages: Sequence[OutboxMessage]) -> int:
        """Store `messages` atomically (durable on return); return how many were evicted."""
        fitting = [m for m in messages if len(m.payload) <= self._max_bytes]
        oversize = len(messages) - len(fitting)
        now = time.time()
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for m in fitting:
                    cur = self._db.execute(
                        "INSERT INTO outbox(topic, payload, qos, kind, size, created) "
                        "VALUES(?, ?, ?, ?, ?, ?)",
                        (m.topic, m.payload, m.qos, m.kind, len(m.payload), now),
                    )
                    self._last_id = int(cur.lastrowid or self._last_id)
                self._depth += len(fitting)
                self._bytes += sum(len(m.payload) for m in fitting)
                evicted = self._evict_locked()
                if oversize:
                    self._bump("oversize_dropped", oversize)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback_locked()
                raise OutboxError(f"cannot write outbox {self._path}: {exc}") from exc
            self._oversize += oversize
            self._evicted += evicted
        if oversize:
            log.warning(
                "outbox dropped oversize messages count=%d max_bytes=%d", oversize, self._max_bytes
            )
        return evicted

    def _check_open(self) -> None:
        if self._closed:
            raise OutboxError(f"outbox {self._path} is closed")

    def _rollback_locked(self) -> None:
        try:
            self._db.execute("ROLLBACK")
            self._depth, self._bytes, self._last_id = self._scan()
        except sqlite3.Error:
            log.debug("rollback failed", exc_info=True)

    def _evict_locked(self) -> int:
        excess_n = self._depth - self._max_messages
        excess_b = self._bytes - self._max_bytes
        if excess_n <= 0 and excess_b <= 0:
            return 0
        ids: list[int] = []
        freed = 0
        for row_id, size in self._db.execute("SELECT id, size FROM outbox ORDER BY id"):
            if len(ids) >= excess_n and freed >= excess_b:
                break
            ids.append(int(row_id))
            freed += int(size)
        self._db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in ids])
        self._bump("evicted", len(ids))
        self._depth -= len(ids)
        self._bytes -= freed
        return len(ids)

    def after(self, last_id: int, limit: int) -> list[StoredMessage]:
        """Up to `limit` messages with id > `last_id`, oldest first."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, kind FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, limit),
            ).fetchall()
        return [
            StoredMessage(int(r[0]), OutboxMessage(str(r[1]), bytes(r[2]), int(r[3]), str(r[4])))
            for r in rows
        ]

    def delete(self, msg_id: int) -> bool:
        """Remove an acknowledged message; False if it was already gone (evicted)."""
        with self._lock:
            self._check_open()
            try:
                row = self._db.execute("SELECT size FROM outbox WHERE id=?", (msg_id,)).fetchone()
                if row is None:
                    return False
                self._db.execute("DELETE FROM outbox WHERE id=?", (msg_id,))
            except sqlite3.Error as exc:
                raise OutboxError(
                    f"cannot remove acknowledged row, outbox {self._path}: {exc}"
                ) from exc
            self._depth -= 1
            self._bytes -= int(row[0])
            return True

    def counts(self) -> OutboxCounts:
        with self._lock:
            return OutboxCounts(
                self._depth, self._bytes, self._evicted, self._oversize, self._last_id
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._db.close()
