"""Handing freed native heap back to the kernel (glibc malloc_trim)."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import time
from pathlib import Path

import pytest

from agent.app import Agent
from agent.config.health import ResourceConfig
from agent.config.root import load_config
from agent.health.heap_trim import HeapTrimmer
from agent.health.resources import read_process
from tests.agent_helpers import agent_config

GLIBC = platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's; this libc has none")
def test_trim_gives_back_freed_heap_that_malloc_keeps() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    trimmer = HeapTrimmer()
    assert trimmer.available
    trimmer.trim()  # start from a trimmed heap
    # 64 MiB of small chunks (below the mmap threshold, so they live in the arena), each
    # touched so it is resident; then free all but the last, which pins the arena's top:
    # glibc's own top trimming cannot return the freed pages beneath it.
    chunks = [libc.malloc(4000) for _ in range(16_384)]
    assert all(chunks)
    for c in chunks:
        ctypes.memset(c, 1, 4000)
    before_free = read_process().rss_bytes
    for c in chunks[:-1]:
        libc.free(c)
    retained = read_process().rss_bytes
    assert before_free - retained < 16 << 20, "glibc returned the freed chunks by itself"

    released = trimmer.trim()
    libc.free(chunks[-1])

    assert released > 48 << 20
    assert trimmer.runs == 2
    assert trimmer.released_bytes >= released


def test_without_malloc_trim_nothing_runs() -> None:
    trimmer = HeapTrimmer(malloc_trim=None)
    trimmer._fn = None  # as on musl: no malloc_trim symbol
    assert not trimmer.available
    assert trimmer.trim() == 0
    assert trimmer.runs == 0


def test_interval_is_validated() -> None:
    assert ResourceConfig().malloc_trim_interval_s == 60.0
    assert ResourceConfig(malloc_trim_interval_s=0).malloc_trim_interval_s == 0
    with pytest.raises(ValueError, match="malloc_trim_interval_s"):
        ResourceConfig(malloc_trim_interval_s=-1)


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's; this libc has none")
def test_the_agent_trims_periodically_and_reports_it(tmp_path: Path, assets: Path) -> None:
    source = {"type": "file", "path": str(assets / "vtest.avi"), "pace": True, "loop": True}
    extra = {"resources": {"poll_interval_s": 0.2, "malloc_trim_interval_s": 0.3}}
    cfg = load_config(agent_config(tmp_path, assets, source=source, extra=extra))
    agent = Agent(cfg)
    agent.start()
    try:
        deadline = time.monotonic() + 20
        while agent.periodic.heap.runs < 2 and time.monotonic() < deadline:
            agent.stop_event.wait(0.2)
        health = agent.health()
    finally:
        agent.close()
    assert agent.periodic.heap.runs >= 2
    assert health["system"]["heap_trimmed_mib"] >= 0.0
    assert "heap-trim" in [job.name for job in agent.periodic.jobs()]


def test_interval_zero_schedules_no_trim(tmp_path: Path, assets: Path) -> None:
    extra = {"resources": {"malloc_trim_interval_s": 0}}
    cfg = load_config(agent_config(tmp_path, assets, extra=extra))
    agent = Agent(cfg)
    try:
        assert "heap-trim" not in [job.name for job in agent.periodic.jobs()]
        assert "resources" in [job.name for job in agent.periodic.jobs()]
    finally:
        agent.close()
