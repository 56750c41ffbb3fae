"""The on-disk cache of built TensorRT engines, keyed by everything that makes an engine valid.

A serialised engine only runs on the TensorRT version and GPU (compute capability)
that built it, and it bakes in the precision, the batch profile and the workspace.
`EngineKey` holds all of those plus the ONNX sha256 and the JetPack/L4T release;
its digest names the engine file. `index.json` records, per digest, the key, the
engine's own sha256 and size and when and how fast it was built.

An engine is never loaded blindly: `lookup` reports

    HIT      the index has this exact key and the file's size and sha256 match
    MISS     nothing was ever built for this model and settings
    STALE    engines exist for this model and settings, but for another TensorRT,
             GPU or JetPack (an upgrade happened): rebuild, and `prune` the old ones
    CORRUPT  the index has the key but the file is missing, truncated or altered

and a loader that still fails to deserialise a HIT calls `invalidate`. Every write
(engine file, index) goes to a temp file in the same folder, is fsynced and renamed
into place, so a power cut leaves the old state or the new, never a torn file; a
`flock` serialises index updates between the agent and `edge-agent models build-engine`.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from agent.inference.errors import BackendError
from agent.state import atomic_write

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
INDEX_SCHEMA = 1
_LOCK_NAME = ".lock"
_ENV_FIELDS = ("trt_version", "compute_capability", "platform")


class EngineCacheError(BackendError):
    """The cache folder cannot be read or written."""


@dataclass(frozen=True, slots=True)
class EngineKey:
    """Everything that makes a built engine valid for this model on this device."""

    onnx_sha256: str
    trt_version: str
    compute_capability: str
    precision: str
    """Effective precision of the build plan: 'fp32', 'fp16', 'int8-qdq', 'strong'."""
    max_batch: int
    workspace_mb: int
    platform: str = ""
    """JetPack/L4T release line ('' off Jetson)."""

    def digest(self) -> str:
        """24 hex digits of sha256 over the canonical JSON of every field."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]

    def same_build(self, other: EngineKey) -> bool:
        """Same model and settings (possibly another TensorRT/GPU/JetPack)."""
        return all(
            getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
            if f.name not in _ENV_FIELDS
        )

    def env_differences(self, other: EngineKey) -> list[str]:
        """'trt_version 8.6.2 -> 10.3.0' style lines for each environment field that differs."""
        return [
            f"{name} {getattr(other, name) or '-'} -> {getattr(self, name) or '-'}"
            for name in _ENV_FIELDS
            if getattr(self, name) != getattr(other, name)
        ]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineKey:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class LookupStatus(str, enum.Enum):
    HIT = "hit"
    MISS = "miss"
    STALE = "stale"
    CORRUPT = "corrupt"


@dataclass(frozen=True, slots=True)
class EngineRecord:
    key: EngineKey
    file: str
    sha256: str
    size: int
    created_at: float
    build_s: float

    def to_json(self) -> dict[str, Any]:
        return {
            "key": asdict(self.key),
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "created_at": self.created_at,
            "build_s": self.build_s,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineRecord:
        return cls(
            key=EngineKey.from_dict(dict(data["key"])),
            file=str(data["file"]),
            sha256=str(data["sha256"]),
            size=int(data["size"]),
            created_at=float(data["created_at"]),
            build_s=float(data["build_s"]),
        )


@dataclass(frozen=True, slots=True)
class Lookup:
    status: LookupStatus
    reason: str
    path: Path | None = None
    """The engine file (HIT only)."""
    record: EngineRecord | None = None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class EngineCache:
    """Engines and their index in one folder. Safe across processes (flock on index updates)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_NAME

    def engine_path(self, key: EngineKey) -> Path:
        return self.root / f"{key.digest()}.engine"

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EngineCacheError(f"engine cache {self.root}: cannot create: {exc}") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure_root()
        with open(self.root / _LOCK_NAME, "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def records(self) -> dict[str, EngineRecord]:
        """The index (digest -> record); an unreadable index reads as empty, with a warning."""
        try:
            text = self.index_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise EngineCacheError(f"engine cache index {self.index_path}: {exc}") from exc
        try:
            data = json.loads(text)
            if data.get("schema_version") != INDEX_SCHEMA:
                raise ValueError(f"schema_version {data.get('schema_version')!r}")
            return {d: EngineRecord.from_json(r) for d, r in dict(data["engines"]).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("engine cache index unreadable path=%s error=%s", self.index_path, exc)
            return {}

    def _write_index(self, records: dict[str, EngineRecord]) -> None:
        doc = {
            "schema_version": INDEX_SCHEMA,
            "engines": {d: r.to_json() for d, r in sorted(records.items())},
        }
        text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
        atomic_write(self.index_path, text.encode("utf-8"))

    def lookup(self, key: EngineKey) -> Lookup:
        """HIT / MISS / STALE / CORRUPT for `key` (a HIT has read and hashed the file)."""
        return self.load(key)[0]

    def load(self, key: EngineKey) -> tuple[Lookup, bytes | None]:
        """`lookup` plus the engine bytes on a HIT (read once, checked against the index)."""
        records = self.records()
        record = records.get(key.digest())
        if record is None:
            others = [r.key for r in records.values() if r.key.same_build(key)]
            if others:
                why = "; ".join(", ".join(key.env_differences(o)) for o in others)
                reason = f"cached engine(s) built for another environment: {why}"
                return Lookup(LookupStatus.STALE, reason), None
            return Lookup(LookupStatus.MISS, "no engine built for this model and settings"), None
        path = self.root / record.file
        problem, data = self._read_checked(path, record)
        if data is None:
            return Lookup(LookupStatus.CORRUPT, problem, record=record), None
        return Lookup(LookupStatus.HIT, "engine matches its index entry", path, record), data

    @staticmethod
    def _read_checked(path: Path, record: EngineRecord) -> tuple[str, bytes | None]:
        try:
            data = path.read_bytes()
        except OSError as exc:
            return f"engine file {path.name} unreadable: {exc.strerror}", None
        if len(data) != record.size:
            return f"engine file {path.name} is {len(data)} bytes, index says {record.size}", None
        if sha256_bytes(data) != record.sha256:
            return f"engine file {path.name} sha256 differs from the index", None
        return "", data

    def store(self, key: EngineKey, engine: bytes, build_s: float) -> EngineRecord:
        """Write the engine atomically, then record it in the index; returns the record."""
        if not engine:
            raise EngineCacheError("refusing to cache an empty engine")
        path = self.engine_path(key)
        record = EngineRecord(
            key, path.name, sha256_bytes(engine), len(engine), time.time(), build_s
        )
        try:
            with self._locked():
                atomic_write(path, engine)
                records = self.records()
                records[key.digest()] = record
                self._write_index(records)
        except OSError as exc:
            raise EngineCacheError(f"engine cache {self.root}: cannot store: {exc}") from exc
        log.info("engine cached file=%s size=%d build_s=%.1f", path, len(engine), build_s)
        return record

    def invalidate(self, key: EngineKey, reason: str) -> None:
        """Forget `key` and delete its file (e.g. TensorRT refused to deserialise it)."""
        log.warning("engine invalidated digest=%s reason=%s", key.digest(), reason)
        try:
            with self._locked():
                records = self.records()
                record = records.pop(key.digest(), None)
                self._write_index(records)
                name = record.file if record is not None else self.engine_path(key).name
                with contextlib.suppress(FileNotFoundError):
                    (self.root / name).unlink()
        except OSError as exc:
            raise EngineCacheError(f"engine cache {self.root}: cannot invalidate: {exc}") from exc

    def prune(self, current: EngineKey) -> list[EngineRecord]:
        """Delete engines that can never load here (other TensorRT/GPU/JetPack); returns them."""
        env = {name: getattr(current, name) for name in _ENV_FIELDS}
        removed: list[EngineRecord] = []
        try:
            with self._locked():
                records = self.records()
                for digest, record in list(records.items()):
                    if any(getattr(record.key, n) != v for n, v in env.items()):
                        removed.append(records.pop(digest))
                        with contextlib.suppress(FileNotFoundError):
                            (self.root / record.file).unlink()
                if removed:
                    self._write_index(records)
        except OSError as exc:
            raise EngineCacheError(f"engine cache {self.root}: cannot prune: {exc}") from exc
        return removed


__all__ = [
    "INDEX_NAME",
    "EngineCache",
    "EngineCacheError",
    "EngineKey",
    "EngineRecord",
    "Lookup",
    "LookupStatus",
    "atomic_write",
    "sha256_bytes",
]
