"""Resource readers (sysfs/procfs), the tegrastats parser and reader, and the load decision."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config.health import ResourceConfig
from agent.health.resources import (
    DiskStats,
    LoadAction,
    MemInfo,
    ResourceCode,
    ResourceError,
    ResourceGuard,
    TegrastatsReader,
    hottest_zone,
    next_level,
    parse_tegrastats,
    read_disk,
    read_loadavg,
    read_meminfo,
    read_process,
    read_thermal_zones,
)

GIB = 1 << 30

# Lines in the formats tegrastats prints on each Jetson generation (values representative).
NANO = (
    "RAM 1869/3964MB (lfb 114x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [5%@102,3%@102,1%@102,0%@102] EMC_FREQ 0%@1600 GR3D_FREQ 12%@76 APE 25 PLL@31C "
    "CPU@33.5C PMIC@100C GPU@33C AO@39.5C thermal@33.25C POM_5V_IN 1943/1943 "
    "POM_5V_GPU 0/0 POM_5V_CPU 199/199"
)
XAVIER_NX = (
    "RAM 2448/7765MB (lfb 897x4MB) SWAP 0/3882MB (cached 0MB) "
    "CPU [4%@1190,3%@1190,off,off,off,off] EMC_FREQ 0% GR3D_FREQ 0% AO@40.5C GPU@39.5C "
    "iwlwifi@40C PMIC@100C AUX@38.5C CPU@40.5C thermal@39.8C VDD_IN 3958/3958 "
    "VDD_CPU_GPU_CV 477/477 VDD_SOC 1233/1233"
)
ORIN_JP5 = (
    "RAM 2284/7620MB (lfb 1126x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [1%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 45%@[305] "
    "VIC_FREQ 729 APE 174 CV0@-256C CPU@47.5C SOC2@44.531C SOC0@45.531C CV1@-256C GPU@-256C "
    "tj@47.5C SOC1@44.406C CV2@-256C VDD_IN 4783mW/4783mW VDD_CPU_GPU_CV 499mW/499mW "
    "VDD_SOC 1436mW/1436mW"
)
ORIN_JP6 = (
    "11-27-2023 14:05:03 RAM 2946/30696MB (lfb 6176x4MB) SWAP 0/15348MB (cached 0MB) "
    "CPU [0%@729,2%@729,off,off] GR3D_FREQ 97%@[918,918] cpu@47.5C soc2@44.531C "
    "soc0@45.5C gpu@-256C tj@47.5C soc1@44.406C VDD_GPU_SOC 1589mW/1589mW "
    "VDD_CPU_CV 397mW/397mW VIN_SYS_5V0 2910mW/2910mW"
)


def _zone(root: Path, n: int, kind: str, temp: str | None) -> None:
    d = root / f"thermal_zone{n}"
    d.mkdir(parents=True)
    (d / "type").write_text(kind + "\n")
    if temp is None:
        (d / "temp").mkdir()  # reading it fails like a sensor that is off (EINVAL)
    else:
        (d / "temp").write_text(temp + "\n")


# --- thermal ------------------------------------------------------------------------------


def test_thermal_zones_from_a_jetson_like_sysfs(tmp_path: Path) -> None:
    # given zones as a Xavier/Orin exposes them, one unreadable, one garbage, one duplicate
    _zone(tmp_path, 0, "CPU-therm", "45500")
    _zone(tmp_path, 1, "GPU-therm", "43000")
    _zone(tmp_path, 2, "PMIC-Die", "100000")
    _zone(tmp_path, 3, "CV0-therm", None)
    _zone(tmp_path, 4, "SOC0-therm", "not-a-number")
    _zone(tmp_path, 10, "tj-therm", "47250")
    _zone(tmp_path, 11, "tj-therm", "46000")
    (tmp_path / "cooling_device0").mkdir()
    # when
    temps = read_thermal_zones(tmp_path)
    # then
    assert temps == {
        "CPU-therm": 45.5,
        "GPU-therm": 43.0,
        "PMIC-Die": 100.0,
        "tj-therm": 47.25,
        "tj-therm/thermal_zone11": 46.0,
    }
    assert hottest_zone(temps, ignore=["pmic-die"]) == ("tj-therm", 47.25)


def test_thermal_zones_of_this_machine_and_of_a_missing_tree(tmp_path: Path) -> None:
    temps = read_thermal_zones()  # the real /sys/class/thermal, which may be empty here
    assert all(isinstance(v, float) for v in temps.values())
    assert read_thermal_zones(tmp_path / "absent") == {}


def test_hottest_zone_skips_sensor_off_readings() -> None:
    assert hottest_zone({"GPU-therm": -256.0, "CPU-therm": 50.0}) == ("CPU-therm", 50.0)
    assert hottest_zone({"GPU-therm": -256.0}) is None
    assert hottest_zone({}) is None


# --- memory, process, load, disk ----------------------------------------------------------


def test_meminfo_of_a_fake_file_and_of_this_machine(tmp_path: Path) -> None:
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:  7802832 kB\nMemFree:  1000 kB\nMemAvailable:  780283 kB\n")
    mem = read_meminfo(fake)
    assert mem == MemInfo(7802832 * 1024, 780283 * 1024)
    assert mem.available_fraction == pytest.approx(0.1, abs=1e-6)
    real = read_meminfo()
    assert 0 < real.available_bytes <= real.total_bytes
    fake.write_text("MemTotal:  7802832 kB\n")
    with pytest.raises(ResourceError, match="MemAvailable"):
        read_meminfo(fake)


def test_process_stats_count_this_process_fds_and_threads(tmp_path: Path) -> None:
    before = read_process()
    assert before.rss_bytes > 10 * (1 << 20) and before.threads >= 1
    with (tmp_path / "f").open("w"):
        after = read_process()
    assert after.open_fds == before.open_fds + 1


def test_loadavg_and_disk(tmp_path: Path) -> None:
    fake = tmp_path / "loadavg"
    fake.write_text("0.94 0.46 0.18 1/90 31435\n")
    assert read_loadavg(fake) == (0.94, 0.46, 0.18)
    assert all(v >= 0 for v in read_loadavg())
    disk = read_disk(tmp_path)
    assert 0 < disk.free_bytes <= disk.total_bytes
    assert 0 < disk.free_fraction <= 1


# --- tegrastats ---------------------------------------------------------------------------


def test_parse_tegrastats_nano() -> None:
    s = parse_tegrastats(NANO)
    assert (s.ram_used_mb, s.ram_total_mb) == (1869, 3964)
    assert s.cpu_load_pct == (5.0, 3.0, 1.0, 0.0)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (12.0, (76,))
    assert s.temps_c["CPU"] == 33.5 and s.temps_c["thermal"] == 33.25
    assert s.power_mw["POM_5V_IN"] == 1943


def test_parse_tegrastats_xavier_nx_with_cores_off() -> None:
    s = parse_tegrastats(XAVIER_NX)
    assert s.cpu_load_pct == (4.0, 3.0, None, None, None, None)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0.0, ())
    assert s.temps_c["iwlwifi"] == 40.0 and s.temps_c["PMIC"] == 100.0


def test_parse_tegrastats_orin_drops_sensor_off_temperatures() -> None:
    s = parse_tegrastats(ORIN_JP5)
    assert (s.ram_used_mb, s.ram_total_mb) == (2284, 7620)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (45.0, (305,))
    assert s.temps_c == {
        "CPU": 47.5,
        "SOC2": 44.531,
        "SOC0": 45.531,
        "tj": 47.5,
        "SOC1": 44.406,
    }
    assert s.power_mw["VDD_IN"] == 4783


def test_parse_tegrastats_orin_jetpack6_lowercase_names_and_two_gpcs() -> None:
    s = parse_tegrastats(ORIN_JP6)
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (97.0, (918, 918))
    assert s.temps_c["cpu"] == 47.5 and "gpu" not in s.temps_c
    assert s.ram_total_mb == 30696 and s.power_mw["VIN_SYS_5V0"] == 2910


def test_parse_tegrastats_of_garbage_is_empty() -> None:
    s = parse_tegrastats("tegrastats: error opening device\n")
    assert s.ram_total_mb is None and s.gpu_load_pct is None and not s.temps_c


def _fake_tegrastats(bindir: Path, lines: list[str]) -> None:
    """A stand-in `tegrastats` that prints the given lines every --interval ms, forever."""
    script = bindir / "tegrastats"
    body = "\n".join(f"  echo '{line}'" for line in lines)
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = "--interval" ] || exit 2\n'
        'delay=$(awk "BEGIN{print $2/1000}")\n'
        f'while true; do\n{body}\n  sleep "$delay"\ndone\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_tegrastats_reader_runs_the_binary_and_keeps_the_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a tegrastats on PATH printing Orin lines, one of them garbage
    _fake_tegrastats(tmp_path, ["garbage", ORIN_JP5])
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert TegrastatsReader.available()
    reader = TegrastatsReader(interval_ms=100)
    # when it runs
    reader.start()
    try:
        assert reader.updated.wait(10), "no sample from tegrastats"
        # then the GPU load is read and the garbage line is counted
        assert reader.gpu_load() == 45.0
        sample = reader.latest()
        assert sample is not None and sample.temps_c["tj"] == 47.5
        assert reader.bad_lines >= 1
    finally:
        proc = reader._proc
        reader.close()
    assert proc is not None and proc.returncode is not None


def test_tegrastats_reader_forgets_stale_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_tegrastats(tmp_path, [ORIN_JP6])
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    now = [100.0]
    reader = TegrastatsReader(interval_ms=1000, clock=lambda: now[0])
    reader.start()
    try:
        assert reader.updated.wait(10)
        assert reader.gpu_load() == 97.0
        now[0] += 10.0  # tegrastats silent for 10 intervals
        assert reader.latest() is None
    finally:
        reader.close()


def test_tegrastats_reader_without_the_binary(tmp_path: Path) -> None:
    reader = TegrastatsReader(binary=str(tmp_path / "no-such-tegrastats"))
    with pytest.raises(ResourceError, match="not found"):
        reader.start()
    assert reader.latest() is None


@pytest.mark.skipif(shutil.which("tegrastats") is None, reason="tegrastats exists only on Jetson")
def test_real_tegrastats_reports_gpu_load() -> None:
    reader = TegrastatsReader(interval_ms=200)
    reader.start()
    try:
        assert reader.updated.wait(5)
        load = reader.gpu_load()
        assert load is not None and 0 <= load <= 100
    finally:
        reader.close()


# --- the decision -------------------------------------------------------------------------


def test_next_level_goes_up_at_once_and_down_past_hysteresis() -> None:
    seq = [70, 81, 93, 89, 86, 76, 74]
    levels, level = [], 0
    for temp in seq:
        level = next_level(level, temp, 80, 92, 5)
        levels.append(level)
    assert levels == [0, 1, 2, 2, 1, 1, 0]


class _Readers:
    """Scripted sensor values for the guard."""

    def __init__(self) -> None:
        self.temps: dict[str, float] = {"CPU-therm": 50.0, "PMIC-Die": 100.0}
        self.avail = 0.5
        self.free = 50 * GIB
        self.fail_thermal = False

    def thermal(self) -> dict[str, float]:
        if self.fail_thermal:
            raise OSError("EIO")
        return self.temps

    def memory(self) -> MemInfo:
        return MemInfo(8 * GIB, int(8 * GIB * self.avail))

    def disk(self) -> DiskStats:
        return DiskStats(100 * GIB, self.free)


def _guard(r: _Readers) -> ResourceGuard:
    return ResourceGuard(ResourceConfig(), thermal=r.thermal, memory=r.memory, disk=r.disk)


def test_guard_reduces_then_goes_critical_on_heat_and_recovers_with_hysteresis() -> None:
    r = _Readers()
    guard = _guard(r)
    seen = []
    for temp in (50, 81, 93, 89, 86, 76, 74):
        r.temps["CPU-therm"] = temp
        st = guard.evaluate()
        seen.append((st.action, st.fps_scale))
    assert seen == [
        (LoadAction.NORMAL, 1.0),
        (LoadAction.REDUCE, 0.5),
        (LoadAction.CRITICAL, 0.2),
        (LoadAction.CRITICAL, 0.2),
        (LoadAction.REDUCE, 0.5),
        (LoadAction.REDUCE, 0.5),
        (LoadAction.NORMAL, 1.0),
    ]
    assert guard.state.hottest == ("CPU-therm", 74)  # PMIC-Die's fixed 100 C is ignored


def test_guard_reacts_to_memory_pressure_with_hysteresis() -> None:
    r = _Readers()
    guard = _guard(r)
    steps = []
    for avail in (0.5, 0.08, 0.04, 0.07, 0.12, 0.14):
        r.avail = avail
        st = guard.evaluate()
        steps.append((st.action, st.codes))
    assert steps == [
        (LoadAction.NORMAL, ()),
        (LoadAction.REDUCE, (ResourceCode.MEMORY_LOW,)),
        (LoadAction.CRITICAL, (ResourceCode.MEMORY_CRITICAL,)),
        (LoadAction.CRITICAL, (ResourceCode.MEMORY_CRITICAL,)),  # 0.07 < 0.05 + 0.03
        (LoadAction.REDUCE, (ResourceCode.MEMORY_LOW,)),  # 0.12 < 0.10 + 0.03
        (LoadAction.NORMAL, ()),
    ]


def test_low_disk_asks_for_rotation_without_slowing_inference() -> None:
    r = _Readers()
    guard = _guard(r)
    r.free = 500 * (1 << 20)
    st = guard.evaluate()
    assert (st.action, st.codes, st.fps_scale) == (
        LoadAction.REDUCE,
        (ResourceCode.DISK_LOW,),
        1.0,
    )
    r.free = 100 * (1 << 20)
    assert guard.evaluate().codes == (ResourceCode.DISK_CRITICAL,)


def test_guard_keeps_the_last_level_when_a_reader_fails() -> None:
    r = _Readers()
    guard = _guard(r)
    r.temps["CPU-therm"] = 85.0
    assert guard.evaluate().action is LoadAction.REDUCE
    r.fail_thermal = True
    st = guard.evaluate()
    assert st.action is LoadAction.REDUCE and st.read_errors == 1 and st.hottest is None


def test_guard_with_the_real_readers_of_this_machine(tmp_path: Path) -> None:
    guard = ResourceGuard(ResourceConfig(), disk_path=tmp_path, gpu_load=lambda: None)
    st = guard.evaluate()
    report = st.to_health()
    json.dumps(report)
    assert report["rss_bytes"] > 0 and report["open_fds"] > 0 and report["threads"] >= 1
    assert report["disk_free_bytes"] > 0 and 0 < report["mem_available_fraction"] <= 1
    assert st.action in set(LoadAction)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"thermal_reduce_c": 90, "thermal_critical_c": 85}, "thermal_critical_c"),
        ({"memory_reduce_fraction": 0.05, "memory_critical_fraction": 0.1}, "memory_critical"),
        ({"disk_reduce_bytes": 10, "disk_critical_bytes": 20}, "disk_critical_bytes"),
        ({"reduce_fps_scale": 0.2, "critical_fps_scale": 0.5}, "critical_fps_scale"),
    ],
)
def test_resource_config_rejects_unordered_thresholds(
    override: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        ResourceConfig.model_validate(override)
