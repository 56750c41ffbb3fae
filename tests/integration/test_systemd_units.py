"""systemd/: the units verify, the agent's sandbox scores "OK", and the agent started
from the unit's own ExecStart line speaks sd_notify over a real NOTIFY_SOCKET.

`systemd-analyze verify` insists that ExecStart binaries exist at their absolute paths
(/opt/edge-agent/...), and its --root= does not apply to that check (systemd 252). So
each unit is verified twice: as shipped, inside a private mount namespace where /opt is
a root staged by install.sh with the project's real venv linked in (skipped where
namespaces are not allowed), and everywhere as a copy whose /opt/edge-agent paths point
at the project's venv and scripts (every other line identical).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
SCRIPTS = REPO / "firmware_scripts"
VENV_BIN = Path(sys.executable).parent
UNITS = sorted(p.name for p in SYSTEMD.glob("*.service"))
AGENT_UNIT = SYSTEMD / "edge-agent.service"
EXPOSURE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+) (\w+)")

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze not installed (apt-get install systemd)",
)


def directives(unit: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order; repeated keys kept."""
    out: list[tuple[str, str, str]] = []
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(unit: Path, key: str) -> list[str]:
    return [v for _, k, v in directives(unit) if k == key]


def binaries(unit: Path) -> list[str]:
    return [shlex.split(v)[0] for _, k, v in directives(unit) if k.startswith("Exec")]


def rewrite_to_project(text: str) -> str:
    """The unit with /opt/edge-agent's venv and scripts replaced by the project's."""
    return text.replace("/opt/edge-agent/venv/bin/", f"{VENV_BIN}/").replace(
        "/opt/edge-agent/sbin/", f"{SCRIPTS}/"
    )


def analyze(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def skip_without_binaries(unit: Path) -> None:
    for binary in binaries(unit):
        path = Path(rewrite_to_project(binary))
        if not path.exists():
            pytest.skip(f"{path} not installed yet ({unit.name} references {binary})")


# --- systemd-analyze verify -----------------------------------------------------------


@needs_systemd_analyze
@pytest.mark.parametrize("name", UNITS)
def test_unit_verifies_with_project_binaries(tmp_path: Path, name: str) -> None:
    # given a copy of the unit whose /opt/edge-agent paths point at the project's files
    skip_without_binaries(SYSTEMD / name)
    copy = tmp_path / name
    copy.write_text(rewrite_to_project((SYSTEMD / name).read_text()))
    # when systemd checks it
    result = analyze("verify", copy)
    # then it has no complaint about it
    complaints = [line for line in result.stderr.splitlines() if name in line]
    assert result.returncode == 0, result.stderr
    assert complaints == []


@needs_systemd_analyze
def test_units_verify_as_shipped_with_opt_from_an_installed_root(tmp_path: Path) -> None:
    # given a private mount namespace (root only; a container may forbid it)
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")
    # and a root where install.sh put the units and scripts, with the real venv linked in
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")
    subprocess.run(
        [SCRIPTS / "install.sh", "--root", root, "--allow-non-jetson"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    venv_bin = root / "opt/edge-agent/venv/bin"
    venv_bin.mkdir(parents=True)
    units = [root / "etc/systemd/system" / u for u in UNITS if u != "edge-fleet.service"]
    for tool in ("edge-agent", "edge-fleet"):
        if (VENV_BIN / tool).exists():
            (venv_bin / tool).symlink_to(VENV_BIN / tool)
    if (VENV_BIN / "edge-fleet").exists():
        units.append(SYSTEMD / "edge-fleet.service")
    # when the shipped unit files are verified with that root's /opt mounted at /opt
    script = f"mount --bind {shlex.quote(str(root / 'opt'))} /opt && " + shlex.join(
        ["systemd-analyze", "verify", *map(str, units)]
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # then systemd accepts every one of them, binaries included
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "edge-" in line] == []


# --- systemd-analyze security ---------------------------------------------------------


def exposure(unit: Path) -> tuple[float, str]:
    result = analyze("security", "--offline=true", unit)
    match = EXPOSURE.search(result.stdout)
    assert match, f"no exposure level in:\n{result.stdout}\n{result.stderr}"
    return float(match.group(2)), match.group(3)


@needs_systemd_analyze
@pytest.mark.parametrize("name", ["edge-agent.service", "edge-fleet.service"])
def test_service_sandbox_exposure_is_ok_or_better(name: str) -> None:
    # when systemd scores the service's sandbox
    level, label = exposure(SYSTEMD / name)
    # then it is below 5.0 ("OK"; below 2.0 would be "SAFE")
    assert level < 5.0
    assert label in {"OK", "SAFE"}


@needs_systemd_analyze
def test_deploy_doc_states_the_measured_exposure() -> None:
    level, label = exposure(AGENT_UNIT)
    doc = (REPO / "docs" / "deploy.md").read_text()
    assert f"edge-agent.service: {level:.1f} {label}" in doc


# --- what the unit promises and what install.sh provides ------------------------------


def test_agent_unit_supervision_and_credentials_match_what_install_provides(
    tmp_path: Path,
) -> None:
    # given a device root installed with a provisioned identity
    fleet = tmp_path / "fleet.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ED25519", "-out", fleet], check=True)
    subprocess.run(
        ["openssl", "pkey", "-in", fleet, "-pubout", "-out", tmp_path / "fleet.pub"], check=True
    )
    ident = tmp_path / "ident"
    subprocess.run(
        [SCRIPTS / "provision-device.sh", "--out", ident, "--fleet-key", tmp_path / "fleet.pub"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")
    subprocess.run(
        [SCRIPTS / "install.sh", "--root", root, "--allow-non-jetson", "--identity", ident,
         "--config", REPO / "configs" / "rtsp-example.yaml"],
        capture_output=True,
        check=True,
        timeout=60,
    )  # fmt: skip
    # then the unit is supervised as the design asks
    assert values(AGENT_UNIT, "Type") == ["notify"]
    assert values(AGENT_UNIT, "NotifyAccess") == ["main"]
    assert values(AGENT_UNIT, "Restart") == ["always"]
    assert values(AGENT_UNIT, "WatchdogSec") == ["30s"]
    assert values(AGENT_UNIT, "StartLimitBurst") == ["10"]
    # and every credential it loads is a root-only file install.sh put there
    creds = [v.split(":", 1) for v in values(AGENT_UNIT, "LoadCredential")]
    assert sorted(name for name, _ in creds) == ["device-key", "mqtt-password"]
    for _, source in creds:
        staged = root / source.lstrip("/")
        assert staged.is_file(), source
        assert staged.stat().st_mode & 0o777 == 0o600
    # and its user is the one sysusers created, its config the one install.sh wrote
    (user,) = values(AGENT_UNIT, "User")
    assert f"\n{user}:x:" in "\n" + (root / "etc/passwd").read_text()
    exec_start = shlex.split(values(AGENT_UNIT, "ExecStart")[0])
    assert (root / exec_start[exec_start.index("-c") + 1].lstrip("/")).is_file()
    assert exec_start[0] == "/opt/edge-agent/venv/bin/edge-agent"


# --- sd_notify from the unit's ExecStart line -----------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound unix datagram socket, as systemd's NOTIFY_SOCKET (path under 108 bytes)."""
    short = None
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:
        short = tempfile.TemporaryDirectory(prefix="sdn")
        path = Path(short.name) / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield sock, str(path)
    finally:
        sock.close()
        if short is not None:
            short.cleanup()


def demo_config(tmp_path: Path, assets: Path) -> Path:
    """configs/demo.yaml on the looping, paced sample video, all paths in tmp_path."""
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(REPO / "models" / "yolox_nano" / "model.json", model / "model.json")
    (model / "yolox_nano.onnx").symlink_to(assets / "yolox_nano.onnx")
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["device"]["state_dir"] = str(tmp_path / "state")
    cfg["model"]["path"] = str(model)
    cfg["cameras"][0]["source"] = {
        "type": "file",
        "path": str(assets / "vtest.avi"),
        "loop": True,
        "pace": True,
    }
    cfg["outputs"] = {"console": {"enabled": False}, "jsonl": {"path": str(tmp_path / "ev.jsonl")}}
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def receive_until(
    sock: socket.socket, got: list[str], done: Callable[[list[str]], bool], deadline: float
) -> bool:
    """Collect datagrams into got until done(got) is true or the deadline passes."""
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            return False
        got.extend(data.decode().splitlines())
    return True


def test_agent_from_exec_start_sends_ready_then_regular_watchdog(
    tmp_path: Path, assets: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    # given the unit's ExecStart command line, with the device paths rewritten to the
    # project's venv and a config on the looping sample video
    sock, address = notify_socket
    config = demo_config(tmp_path, assets)
    argv = shlex.split(values(AGENT_UNIT, "ExecStart")[0])
    argv = [rewrite_to_project(a) for a in argv]
    argv = [str(config) if a == "/etc/edge-agent/agent.yaml" else a for a in argv]
    assert argv[0] == str(VENV_BIN / "edge-agent")
    # and the environment systemd gives a Type=notify service with a watchdog (systemd
    # sets WATCHDOG_USEC from WatchdogSec=30s; 2 s here so the test sees pings quickly)
    env = {**os.environ, "NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"}
    env.pop("WATCHDOG_PID", None)
    log = (tmp_path / "agent.log").open("w")
    # when the agent starts
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        got: list[str] = []
        # then READY=1 arrives within 30 s (after the first successful inference)
        ready = receive_until(sock, got, lambda g: "READY=1" in g, time.monotonic() + 30)
        assert ready, f"no READY=1; got {got}; log:\n{(tmp_path / 'agent.log').read_text()}"
        after_ready = len(got)

        def two_pings(g: list[str]) -> bool:
            return g[after_ready:].count("WATCHDOG=1") >= 2

        # and then WATCHDOG=1 at least twice, well within the watchdog period each
        pinged = receive_until(sock, got, two_pings, time.monotonic() + 10)
        assert pinged, f"fewer than 2 WATCHDOG=1 after READY; got {got}"
        assert proc.poll() is None
        # when systemd stops it (SIGTERM), it exits cleanly
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, (tmp_path / "agent.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
