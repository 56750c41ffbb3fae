"""TensorRT engine cache: keys, index, invalidation of stale and corrupt engines (no GPU needed)."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.config.tensorrt import TensorRTBackendConfig
from agent.inference.model import load_model_folder
from agent.inference.tensorrt.availability import Availability
from agent.inference.tensorrt.engine_cache import (
    INDEX_NAME,
    EngineCache,
    EngineKey,
    LookupStatus,
    atomic_write,
)
from agent.inference.tensorrt.engines import EngineNotReady, ensure_engine, plan_for
from tests.model_helpers import make_model_dir

KEY = EngineKey(
    onnx_sha256="a" * 64,
    trt_version="10.3.0",
    compute_capability="8.7",
    precision="fp16",
    max_batch=1,
    workspace_mb=1024,
    platform="# R36 (release), REVISION: 4.0",
)
ENGINE = b"\x00serialized-engine\xff" * 100


def test_key_digest_is_stable_and_changes_with_every_field() -> None:
    # given the same key twice and one variant per field
    variants: dict[str, Any] = {
        "onnx_sha256": "b" * 64,
        "trt_version": "8.6.2",
        "compute_capability": "7.2",
        "precision": "fp32",
        "max_batch": 4,
        "workspace_mb": 512,
        "platform": "# R35 (release), REVISION: 5.0",
    }
    # then the digest is deterministic and every field moves it
    assert KEY.digest() == dataclasses.replace(KEY).digest()
    digests = {dataclasses.replace(KEY, **{k: v}).digest() for k, v in variants.items()}
    assert len(digests) == len(variants)
    assert KEY.digest() not in digests


def test_store_then_lookup_hits_with_the_same_bytes(tmp_path: Path) -> None:
    # given a cache with one stored engine
    cache = EngineCache(tmp_path / "engines")
    record = cache.store(KEY, ENGINE, build_s=12.5)
    # when it is looked up with the same key
    found, data = cache.load(KEY)
    # then it is a hit with the stored bytes, and the index records the whole key
    assert found.status is LookupStatus.HIT
    assert data == ENGINE
    assert found.path == cache.engine_path(KEY)
    index = json.loads((tmp_path / "engines" / INDEX_NAME).read_text())
    entry = index["engines"][KEY.digest()]
    assert entry["key"]["trt_version"] == "10.3.0"
    assert entry["key"]["compute_capability"] == "8.7"
    assert entry["size"] == len(ENGINE) == record.size
    assert entry["build_s"] == 12.5
    assert not [p for p in (tmp_path / "engines").iterdir() if p.name.endswith(".tmp")]


def test_empty_cache_is_a_miss(tmp_path: Path) -> None:
    found = EngineCache(tmp_path / "none-yet").lookup(KEY)
    assert found.status is LookupStatus.MISS
    assert found.path is None


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("trt_version", "10.3.0", "trt_version 8.6.2 -> 10.3.0"),
        ("compute_capability", "8.7", "compute_capability 7.2 -> 8.7"),
        ("platform", "# R36 (release), REVISION: 4.0", "platform # R35"),
    ],
)
def test_engine_from_another_environment_is_stale_and_pruned(
    tmp_path: Path, field: str, value: Any, expected: str
) -> None:
    # given an engine built before a JetPack upgrade (other TensorRT / GPU / L4T)
    old = dataclasses.replace(
        KEY, trt_version="8.6.2", compute_capability="7.2", platform="# R35 (release)"
    )
    cache = EngineCache(tmp_path)
    cache.store(old, ENGINE, 1.0)
    current = dataclasses.replace(old, **{field: value})
    # when the current environment looks it up
    found = cache.lookup(current)
    # then it is reported stale, naming what changed, and never returned as a hit
    assert found.status is LookupStatus.STALE
    assert expected in found.reason
    assert found.path is None
    # and pruning deletes the engine that can no longer load here
    removed = cache.prune(current)
    assert [r.key for r in removed] == [old]
    assert not cache.engine_path(old).exists()
    assert cache.lookup(current).status is LookupStatus.MISS


def test_other_settings_are_a_miss_not_stale(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    cache.store(KEY, ENGINE, 1.0)
    assert cache.lookup(dataclasses.replace(KEY, precision="fp32")).status is LookupStatus.MISS
    assert cache.lookup(dataclasses.replace(KEY, onnx_sha256="c" * 64)).status is LookupStatus.MISS


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_damaged_engine_file_is_corrupt_and_invalidated(tmp_path: Path, damage: str) -> None:
    # given a stored engine whose file is then damaged
    cache = EngineCache(tmp_path)
    cache.store(KEY, ENGINE, 1.0)
    path = cache.engine_path(KEY)
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[10] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(ENGINE[:-7])
    else:
        path.unlink()
    # when it is loaded
    found, data_out = cache.load(KEY)
    # then it is corrupt (never handed out) and invalidation forgets it
    assert found.status is LookupStatus.CORRUPT
    assert data_out is None
    assert path.name in found.reason
    cache.invalidate(KEY, found.reason)
    assert cache.lookup(KEY).status is LookupStatus.MISS
    assert not path.exists()


def test_unreadable_index_reads_as_empty_and_is_rewritten(tmp_path: Path) -> None:
    # given a torn/garbage index
    (tmp_path / INDEX_NAME).write_text("{not json", encoding="utf-8")
    cache = EngineCache(tmp_path)
    # then lookups miss instead of crashing, and the next store writes a valid index
    assert cache.lookup(KEY).status is LookupStatus.MISS
    cache.store(KEY, ENGINE, 2.0)
    assert json.loads((tmp_path / INDEX_NAME).read_text())["schema_version"] == 1
    assert cache.lookup(KEY).status is LookupStatus.HIT


def test_concurrent_stores_all_reach_the_index(tmp_path: Path) -> None:
    # given eight writers storing different engines at once
    cache = EngineCache(tmp_path)
    keys = [dataclasses.replace(KEY, max_batch=b) for b in range(1, 9)]
    start = threading.Barrier(len(keys))

    def store(key: EngineKey) -> None:
        start.wait(timeout=5)
        EngineCache(tmp_path).store(key, ENGINE + bytes([key.max_batch]), 1.0)

    threads = [threading.Thread(target=store, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    # then none of the index updates was lost
    assert set(cache.records()) == {k.digest() for k in keys}
    assert all(cache.lookup(k).status is LookupStatus.HIT for k in keys)


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_store_refuses_an_empty_engine(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="empty engine"):
        EngineCache(tmp_path).store(KEY, b"", 1.0)


AVAIL = Availability(
    ok=True, reason="", trt_version="10.3.0", compute_capability="8.7", device_count=1
)


def test_ensure_engine_without_build_reports_missing_engine(tmp_path: Path, assets: Path) -> None:
    # given the real model and an empty cache, and building not allowed (serving path)
    model = load_model_folder(make_model_dir(tmp_path, assets))
    cfg = TensorRTBackendConfig(type="tensorrt", cache_dir=tmp_path / "engines")
    # then it refuses with a message that says what to do, instead of blocking start-up
    with pytest.raises(EngineNotReady, match="edge-agent models build-engine"):
        ensure_engine(cfg, model, AVAIL, allow_build=False)


def test_ensure_engine_reuses_the_engine_stored_under_its_key(tmp_path: Path, assets: Path) -> None:
    # given an engine stored under the key computed for the real model and settings
    model = load_model_folder(make_model_dir(tmp_path, assets))
    cfg = TensorRTBackendConfig(type="tensorrt", cache_dir=tmp_path / "engines", max_batch=4)
    key, plan, _onnx = plan_for(cfg, model, AVAIL)
    EngineCache(tmp_path / "engines").store(key, ENGINE, 3.0)
    # when the engine is ensured again
    ready = ensure_engine(cfg, model, AVAIL, allow_build=False)
    # then the cached bytes come back (no build), and the key is what the model implies
    assert not ready.built
    assert ready.engine == ENGINE
    assert key.onnx_sha256 == model.manifest.sha256
    assert key.precision == "fp16"
    assert key.max_batch == 1  # yolox_nano has a static batch of 1, whatever max_batch says
    assert plan.input.per_frame


def test_ensure_engine_prunes_stale_engines_after_an_upgrade(tmp_path: Path, assets: Path) -> None:
    # given an engine cached by TensorRT 8.6 and a device now on TensorRT 10.3
    model = load_model_folder(make_model_dir(tmp_path, assets))
    cfg = TensorRTBackendConfig(type="tensorrt", cache_dir=tmp_path / "engines")
    old_avail = dataclasses.replace(AVAIL, trt_version="8.6.2")
    old_key, _plan, _ = plan_for(cfg, model, old_avail)
    cache = EngineCache(tmp_path / "engines")
    cache.store(old_key, ENGINE, 3.0)
    # when the engine is ensured on the new version without building
    with pytest.raises(EngineNotReady, match=r"stale.*trt_version 8\.6\.2 -> 10\.3\.0"):
        ensure_engine(cfg, model, AVAIL, allow_build=False)
    # then the old engine was not loaded but pruned
    assert cache.records() == {}
    assert not cache.engine_path(old_key).exists()
