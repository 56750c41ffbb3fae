"""Resource guards: temperatures, memory, disk and GPU load, and the load decision they drive.

Readers go straight to the kernel's files (`/sys/class/thermal`, `/proc/meminfo`,
`/proc/self/status`, `/proc/loadavg`, `/proc/self/fd`) rather than through psutil, so the agent
stays lean on a Jetson. On Jetsons the GPU load comes from `tegrastats`, parsed from its text
lines. `ResourceGuard` turns readings into a `LoadAction` (NORMAL, REDUCE, CRITICAL) with
hysteresis, and a target-fps scale for the scheduler. Thresholds: docs/drift.md.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config.health import ResourceConfig
from agent.metrics import RateLimitedLog

log = logging.getLogger(__name__)

_PLAUSIBLE_C = (-40.0, 150.0)
"""Readings outside this range are sensor-off markers (tegrastats prints -256C) or garbage."""


class ResourceError(Exception):
    """A resource reading that cannot be used."""


class LoadAction(str, enum.Enum):
    NORMAL = "normal"
    REDUCE = "reduce"
    CRITICAL = "critical"


class ResourceCode(str, enum.Enum):
    THERMAL_HIGH = "thermal_high"
    THERMAL_CRITICAL = "thermal_critical"
    MEMORY_LOW = "memory_low"
    MEMORY_CRITICAL = "memory_critical"
    DISK_LOW = "disk_low"
    DISK_CRITICAL = "disk_critical"


@dataclass(frozen=True)
class MemInfo:
    total_bytes: int
    available_bytes: int

    @property
    def available_fraction(self) -> float:
        return self.available_bytes / self.total_bytes if self.total_bytes else 0.0


@dataclass(frozen=True)
class ProcessStats:
    rss_bytes: int
    threads: int
    open_fds: int


@dataclass(frozen=True)
class DiskStats:
    total_bytes: int
    free_bytes: int

    @property
    def free_fraction(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def read_thermal_zones(root: Path = Path("/sys/class/thermal")) -> dict[str, float]:
    """Zone `type` -> degrees C for every readable `thermal_zone*` (unreadable ones skipped).

    A repeated type name (several `acpitz`, say) is keyed `type/thermal_zoneN` from the second on.
    """
    temps: dict[str, float] = {}
    try:
        zones = sorted(root.glob("thermal_zone*"), key=lambda p: _zone_number(p.name))
    except OSError:
        return temps
    for zone in zones:
        try:
            name = (zone / "type").read_text(encoding="ascii").strip() or zone.name
            milli = int((zone / "temp").read_text(encoding="ascii").strip())
        except (OSError, ValueError, UnicodeDecodeError):
            continue  # a zone whose sensor is off or absent reads EINVAL/ENODATA
        temps[name if name not in temps else f"{name}/{zone.name}"] = milli / 1000.0
    return temps


def _zone_number(name: str) -> int:
    digits = name.removeprefix("thermal_zone")
    return int(digits) if digits.isdigit() else 1 << 30


def hottest_zone(
    temps: Mapping[str, float], ignore: Iterable[str] = ()
) -> tuple[str, float] | None:
    """The hottest plausible zone not in `ignore` (case-insensitive), or None."""
    skip = {i.lower() for i in ignore}
    lo, hi = _PLAUSIBLE_C
    usable = {
        k: v for k, v in temps.items() if k.split("/")[0].lower() not in skip and lo <= v <= hi
    }
    if not usable:
        return None
    name = max(usable, key=lambda k: usable[k])
    return name, usable[name]


def read_meminfo(path: Path = Path("/proc/meminfo")) -> MemInfo:
    """MemTotal and MemAvailable from /proc/meminfo (kB there, bytes here)."""
    fields: dict[str, int] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if key in ("MemTotal", "MemAvailable") and parts:
            fields[key] = int(parts[0]) * 1024
    if "MemTotal" not in fields or "MemAvailable" not in fields:
        raise ResourceError(f"{path}: MemTotal/MemAvailable missing")
    return MemInfo(fields["MemTotal"], fields["MemAvailable"])


def read_process(proc: Path = Path("/proc/self")) -> ProcessStats:
    """RSS and thread count from `status`, open file descriptors from `fd/`."""
    rss = threads = 0
    for line in (proc / "status").read_text(encoding="ascii").splitlines():
        key, _, rest = line.partition(":")
        if key == "VmRSS":
            rss = int(rest.split()[0]) * 1024
        elif key == "Threads":
            threads = int(rest.split()[0])
    return ProcessStats(rss_bytes=rss, threads=threads, open_fds=len(os.listdir(proc / "fd")))


def read_loadavg(path: Path = Path("/proc/loadavg")) -> tuple[float, float, float]:
    """1, 5 and 15 minute load averages."""
    one, five, fifteen = path.read_text(encoding="ascii").split()[:3]
    return float(one), float(five), float(fifteen)


def read_disk(path: Path) -> DiskStats:
    """Total and free bytes (for an unprivileged writer) of the file system holding `path`."""
    usage = shutil.disk_usage(path)
    return DiskStats(total_bytes=usage.total, free_bytes=usage.free)


@dataclass(frozen=True)
class TegrastatsSample:
    """One tegrastats line. Fields a given Jetson does not print are None or empty."""

    ram_used_mb: int | None = None
    ram_total_mb: int | None = None
    cpu_load_pct: tuple[float | None, ...] = ()
    """Per core; None for a core that is off."""
    gpu_load_pct: float | None = None
    gpu_freq_mhz: tuple[int, ...] = ()
    temps_c: Mapping[str, float] = field(default_factory=dict)
    power_mw: Mapping[str, int] = field(default_factory=dict)
    """Instantaneous power per rail."""


_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_GR3D = re.compile(r"\bGR3D_FREQ (\d+(?:\.\d+)?)%(?:@\[?([\d,]+)\]?)?")
_TEMP = re.compile(r"(?<![\w@])([A-Za-z][\w-]*)@(-?\d+(?:\.\d+)?)C\b")
_POWER = re.compile(r"\b((?:VDD|POM|VIN)_\w+) (\d+)(?:mW)?/(\d+)(?:mW)?")


def parse_tegrastats(line: str) -> TegrastatsSample:
    """Parse one line of `tegrastats` output (Nano, Xavier and Orin formats)."""
    ram = _RAM.search(line)
    cpu = _CPU.search(line)
    gr3d = _GR3D.search(line)
    lo, hi = _PLAUSIBLE_C
    temps = {m[1]: float(m[2]) for m in _TEMP.finditer(line) if lo <= float(m[2]) <= hi}
    return TegrastatsSample(
        ram_used_mb=int(ram[1]) if ram else None,
        ram_total_mb=int(ram[2]) if ram else None,
        cpu_load_pct=tuple(_core_load(c) for c in cpu[1].split(",")) if cpu else (),
        gpu_load_pct=float(gr3d[1]) if gr3d else None,
        gpu_freq_mhz=tuple(int(f) for f in gr3d[2].split(",") if f) if gr3d and gr3d[2] else (),
        temps_c=temps,
        power_mw={m[1]: int(m[2]) for m in _POWER.finditer(line)},
    )


def _core_load(text: str) -> float | None:
    pct, _, _freq = text.strip().partition("%")
    try:
        return float(pct)
    except ValueError:
        return None  # "off"


class TegrastatsReader:
    """Runs `tegrastats --interval N` and keeps its latest parsed line (Jetson only)."""

    def __init__(
        self,
        interval_ms: int = 1000,
        binary: str = "tegrastats",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_ms = interval_ms
        self.binary = binary
        self._clock = clock
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._latest: tuple[float, TegrastatsSample] | None = None
        self.lines = 0
        self.bad_lines = 0
        self.updated = threading.Event()
        """Set whenever a new sample arrives (cleared by whoever waits on it)."""

    @staticmethod
    def available(binary: str = "tegrastats") -> bool:
        return shutil.which(binary) is not None

    def start(self) -> None:
        path = shutil.which(self.binary)
        if path is None:
            raise ResourceError(f"{self.binary}: not found on PATH")
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, binary resolved by which
                [path, "--interval", str(self.interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            raise ResourceError(f"cannot start {path}: {exc}") from exc
        self._thread = threading.Thread(target=self._read, name="tegrastats", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        for line in proc.stdout:
            sample = parse_tegrastats(line)
            with self._lock:
                self.lines += 1
                if sample.ram_total_mb is None and sample.gpu_load_pct is None:
                    self.bad_lines += 1
                    continue
                self._latest = (self._clock(), sample)
            self.updated.set()

    def latest(self) -> TegrastatsSample | None:
        """The newest sample, or None if none arrived within three intervals (plus 1 s)."""
        with self._lock:
            latest = self._latest
        if latest is None or self._clock() - latest[0] > 3 * self.interval_ms / 1000 + 1:
            return None
        return latest[1]

    def gpu_load(self) -> float | None:
        sample = self.latest()
        return None if sample is None else sample.gpu_load_pct

    def close(self, timeout_s: float = 2.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()


def next_level(
    current: int, badness: float, reduce_at: float, critical_at: float, hyst: float
) -> int:
    """Level 0/1/2 for a reading where higher is worse: up at once, down only past hysteresis.

    A level is entered when `badness >= its threshold` and left when `badness < threshold -
    hyst`; for 'lower is worse' readings pass negated values and thresholds.
    """
    target = 2 if badness >= critical_at else 1 if badness >= reduce_at else 0
    if target >= current:
        return target
    limits = (float("-inf"), reduce_at, critical_at)
    level = current
    while level > target and badness < limits[level] - hyst:
        level -= 1
    return level


@dataclass(frozen=True)
class ResourceState:
    """One evaluation of the guard: the decision and the readings behind it."""

    action: LoadAction
    fps_scale: float
    """Factor for target fps: from thermal and memory only (fewer frames do not free disk)."""
    codes: tuple[ResourceCode, ...]
    temps_c: Mapping[str, float] = field(default_factory=dict)
    hottest: tuple[str, float] | None = None
    memory: MemInfo | None = None
    disk: DiskStats | None = None
    process: ProcessStats | None = None
    load_avg: tuple[float, float, float] | None = None
    gpu_load_pct: float | None = None
    read_errors: int = 0

    def to_health(self) -> dict[str, Any]:
        """JSON-ready summary for the health report."""
        mem, disk, proc = self.memory, self.disk, self.process
        return {
            "action": self.action.value,
            "fps_scale": self.fps_scale,
            "codes": [c.value for c in self.codes],
            "temps_c": {k: round(v, 1) for k, v in self.temps_c.items()},
            "hottest_c": None if self.hottest is None else round(self.hottest[1], 1),
            "mem_available_fraction": None if mem is None else round(mem.available_fraction, 4),
            "disk_free_bytes": None if disk is None else disk.free_bytes,
            "rss_bytes": None if proc is None else proc.rss_bytes,
            "threads": None if proc is None else proc.threads,
            "open_fds": None if proc is None else proc.open_fds,
            "load_avg": None if self.load_avg is None else list(self.load_avg),
            "gpu_load_pct": self.gpu_load_pct,
            "read_errors": self.read_errors,
        }


_CODES = {
    "thermal": (None, ResourceCode.THERMAL_HIGH, ResourceCode.THERMAL_CRITICAL),
    "memory": (None, ResourceCode.MEMORY_LOW, ResourceCode.MEMORY_CRITICAL),
    "disk": (None, ResourceCode.DISK_LOW, ResourceCode.DISK_CRITICAL),
}


class ResourceGuard:
    """Reads the resources and decides NORMAL / REDUCE / CRITICAL with hysteresis.

    Readers are injectable (tests, other platforms); a reader that raises OSError,
    ValueError or ResourceError counts a read error and leaves that resource's level as it was.
    """

    def __init__(
        self,
        cfg: ResourceConfig,
        *,
        disk_path: Path | None = None,
        thermal: Callable[[], Mapping[str, float]] = read_thermal_zones,
        memory: Callable[[], MemInfo] = read_meminfo,
        disk: Callable[[], DiskStats] | None = None,
        process: Callable[[], ProcessStats] = read_process,
        loadavg: Callable[[], tuple[float, float, float]] = read_loadavg,
        gpu_load: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._thermal = thermal
        self._memory = memory
        if disk is None and disk_path is not None:
            path = disk_path
            disk = lambda: read_disk(path)  # noqa: E731
        self._disk = disk
        self._process = process
        self._loadavg = loadavg
        self._gpu_load = gpu_load
        self._clock = clock
        self._levels = {"thermal": 0, "memory": 0, "disk": 0}
        self._ratelog = RateLimitedLog(60.0)
        self.read_errors = 0
        self.state = ResourceState(LoadAction.NORMAL, 1.0, ())

    def _read(self, name: str, reader: Callable[[], Any] | None) -> Any:
        if reader is None:
            return None
        try:
            return reader()
        except (OSError, ValueError, ResourceError) as exc:
            self.read_errors += 1
            suppressed = self._ratelog.allow(name, self._clock())
            if suppressed is not None:
                log.warning(
                    "resource read failed reader=%s error=%s suppressed=%d", name, exc, suppressed
                )
            return None

    def evaluate(self) -> ResourceState:
        """Read everything once and return (and keep) the new state."""
        cfg = self.cfg
        temps = self._read("thermal", self._thermal) or {}
        hot = hottest_zone(temps, cfg.thermal_ignore)
        mem: MemInfo | None = self._read("memory", self._memory)
        disk: DiskStats | None = self._read("disk", self._disk)
        lv = self._levels
        if hot is not None:
            hyst = cfg.thermal_hysteresis_c
            lv["thermal"] = next_level(
                lv["thermal"], hot[1], cfg.thermal_reduce_c, cfg.thermal_critical_c, hyst
            )
        if mem is not None:
            lv["memory"] = next_level(
                lv["memory"],
                -mem.available_fraction,
                -cfg.memory_reduce_fraction,
                -cfg.memory_critical_fraction,
                cfg.memory_hysteresis_fraction,
            )
        if disk is not None:
            lv["disk"] = next_level(
                lv["disk"],
                -float(disk.free_bytes),
                -float(cfg.disk_reduce_bytes),
                -float(cfg.disk_critical_bytes),
                float(cfg.disk_hysteresis_bytes),
            )
        state = ResourceState(
            action=(LoadAction.NORMAL, LoadAction.REDUCE, LoadAction.CRITICAL)[max(lv.values())],
            fps_scale=(1.0, cfg.reduce_fps_scale, cfg.critical_fps_scale)[
                max(lv["thermal"], lv["memory"])
            ],
            codes=tuple(c for k, n in lv.items() if (c := _CODES[k][n]) is not None),
            temps_c=dict(temps),
            hottest=hot,
            memory=mem,
            disk=disk,
            process=self._read("process", self._process),
            load_avg=self._read("loadavg", self._loadavg),
            gpu_load_pct=self._read("gpu", self._gpu_load),
            read_errors=self.read_errors,
        )
        self._log_change(state)
        self.state = state
        return state

    def _log_change(self, state: ResourceState) -> None:
        old = self.state
        if (old.action, old.codes) != (state.action, state.codes):
            hot = state.hottest
            log.warning(
                "resource action=%s codes=%s fps_scale=%.2f hottest=%s",
                state.action.value,
                ",".join(c.value for c in state.codes) or "-",
                state.fps_scale,
                "-" if hot is None else f"{hot[0]}:{hot[1]:.1f}C",
            )
