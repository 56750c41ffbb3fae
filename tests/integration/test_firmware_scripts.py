"""firmware_scripts/: flashing, provisioning, staging and installing, run for real.

The scripts run against a fake Linux_for_Tegra tree in tmp_path. The only fakes are
NVIDIA's flashing scripts and the L4T power tools (nvpmodel, jetson_clocks), which
cannot run without a Jetson: they are two-line shell scripts that record their
arguments. openssl, systemd-sysusers, mosquitto_passwd, pip and the scripts
themselves are the real ones; users are created only inside the temporary roots.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "firmware_scripts"
SYSTEMD = REPO / "systemd"
EXECUTABLES = sorted(p.name for p in SCRIPTS.glob("*.sh") if p.name != "lib.sh")
VENV_BIN = Path(sys.executable).parent
BOARDS = ("jetson-orin-nano-devkit", "jetson-agx-orin-devkit")
IS_ROOT = os.geteuid() == 0


def run(
    script: str, *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPTS / script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def ok(script: str, *args: str | Path, env: dict[str, str] | None = None) -> str:
    result = run(script, *args, env=env)
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def manifest(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every path under root: (mode, uid, gid, link target or content sha256)."""
    out: dict[str, tuple[int, int, int, str]] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            what = "-> " + os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = ""
        out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return out


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def passwd_ids(root: Path, name: str) -> tuple[int, int]:
    for line in (root / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2]), int(fields[3])
    raise AssertionError(f"{name} not in {root}/etc/passwd")


def openssl(*args: str | Path) -> str:
    return subprocess.run(
        ["openssl", *map(str, args)], capture_output=True, text=True, check=True, timeout=30
    ).stdout


# --- fixtures -------------------------------------------------------------------------


def write_fake_tool(path: Path, record: Path, body: str = "") -> None:
    """A stand-in for an NVIDIA tool: appends its cwd and argv (one per line) to record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "#!/bin/sh\n"
        f'{{ echo "cwd=$PWD"; echo "cmd=$0"; for a in "$@"; do echo "arg=$a"; done; '
        f"echo end; }} >> '{record}'\n{body}"
    )
    path.chmod(0o755)


def make_rootfs(root: Path) -> Path:
    """A minimal JetPack-like root: user database and the L4T release file."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\nvideo:x:44:\n")
    (root / "etc" / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    return root


@pytest.fixture
def bsp(tmp_path: Path) -> Path:
    """A fake Linux_for_Tegra folder: board configs, partition XMLs, recording scripts."""
    l4t = tmp_path / "Linux_for_Tegra"
    record = l4t / "nvidia-invocations.log"
    write_fake_tool(l4t / "flash.sh", record)
    write_fake_tool(l4t / "tools" / "kernel_flash" / "l4t_initrd_flash.sh", record)
    for board in BOARDS:
        (l4t / f"{board}.conf").write_text(f"# fake board config {board}\n")
    (l4t / "tools" / "kernel_flash" / "flash_l4t_t234_nvme.xml").write_text("<partitions/>\n")
    qspi = l4t / "bootloader" / "generic" / "cfg" / "flash_t234_qspi.xml"
    qspi.parent.mkdir(parents=True)
    qspi.write_text("<partitions/>\n")
    make_rootfs(l4t / "rootfs")
    return l4t


def invocations(l4t: Path) -> list[list[str]]:
    record = l4t / "nvidia-invocations.log"
    if not record.exists():
        return []
    calls: list[list[str]] = []
    current: list[str] = []
    for line in record.read_text().splitlines():
        if line == "end":
            calls.append(current)
            current = []
        else:
            current.append(line)
    return calls


@pytest.fixture(scope="module")
def fleet_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fleet's Ed25519 signing key pair and a small CA, made with openssl."""
    d = tmp_path_factory.mktemp("fleet")
    openssl("genpkey", "-algorithm", "ED25519", "-out", d / "signing.key")
    openssl("pkey", "-in", d / "signing.key", "-pubout", "-out", d / "signing.pub")
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", d / "ca.key", "-out", d / "ca.crt", "-subj", "/CN=edge-fleet-ca", "-days", "30",
    )  # fmt: skip
    return d


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory, fleet_ca: Path) -> Path:
    out = tmp_path_factory.mktemp("ident") / "cam-gate-07"
    ok(
        "provision-device.sh", "--out", out, "--fleet-key", fleet_ca / "signing.pub",
        "--device-id", "gate-07", "--ca-cert", fleet_ca / "ca.crt", "--ca-key", fleet_ca / "ca.key",
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's own wheel, as `pip wheel --no-deps` builds it."""
    out = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stderr}"
    (whl,) = out.glob("edge_vision-*.whl")
    return whl


@pytest.fixture
def agent_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "agent.yaml"
    shutil.copy(REPO / "configs" / "rtsp-example.yaml", cfg)
    return cfg


def with_validator() -> dict[str, str]:
    """PATH with the project's venv first, so install.sh validates configs with edge-agent."""
    return {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}


# --- every script ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in SCRIPTS.glob("*.sh")))
def test_script_is_shellcheck_clean(name: str) -> None:
    # given shellcheck (CI installs it from Debian)
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    # when it checks the script, following `source lib.sh`
    result = subprocess.run(
        ["shellcheck", "-x", "--severity=style", name],
        cwd=SCRIPTS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # then it has nothing to say
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("name", EXECUTABLES)
def test_script_has_help_and_strict_mode(name: str) -> None:
    # given a script; when asked for help
    result = run(name, "--help")
    # then it explains itself and runs with set -euo pipefail
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: ")
    assert "Exit status" in result.stdout
    assert "\nset -euo pipefail\n" in (SCRIPTS / name).read_text()
    assert os.access(SCRIPTS / name, os.X_OK)


@pytest.mark.parametrize("name", EXECUTABLES)
def test_unknown_option_is_a_clear_usage_error(name: str) -> None:
    # when a script gets an option it does not know
    result = run(name, "--frobnicate")
    # then it exits 2 and names the option, pointing at --help
    assert result.returncode == 2
    assert "unknown option: --frobnicate" in result.stderr
    assert "--help" in result.stderr


# --- flash.sh ---------------------------------------------------------------------------


def test_flash_dry_run_prints_the_nvidia_nvme_command_and_runs_nothing(bsp: Path) -> None:
    # given a prepared BSP; when flashing an Orin Nano's NVMe as a dry run
    out = ok("flash.sh", "--bsp", bsp, "--board", "jetson-orin-nano-devkit",
             "--storage", "nvme0n1p1", "--dry-run")  # fmt: skip
    # then the initrd flash command NVIDIA documents is printed, with the folder it runs in
    assert f"would run in {bsp}:" in out
    assert (
        "./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1 "
        "-c tools/kernel_flash/flash_l4t_t234_nvme.xml "
        "-p '-c bootloader/generic/cfg/flash_t234_qspi.xml' --showlogs --network usb0 "
        "jetson-orin-nano-devkit internal"
    ) in out
    # and nothing of NVIDIA's was run
    assert invocations(bsp) == []


def test_flash_dry_run_uses_flash_sh_for_emmc(bsp: Path) -> None:
    out = ok("flash.sh", "--bsp", bsp, "--board", "jetson-agx-orin-devkit",
             "--storage", "mmcblk0p1", "--dry-run")  # fmt: skip
    assert "./flash.sh jetson-agx-orin-devkit mmcblk0p1" in out
    assert invocations(bsp) == []


@pytest.mark.skipif(not IS_ROOT, reason="flash.sh refuses to flash without root, as NVIDIA's do")
def test_flash_runs_nvidia_script_in_the_bsp_with_the_exact_arguments(bsp: Path) -> None:
    # given a BSP whose NVIDIA scripts record how they are called
    # when flashing for real (no recovery-mode USB check: there is no Jetson here)
    ok("flash.sh", "--bsp", bsp, "--board", "jetson-orin-nano-devkit", "--storage",
       "nvme0n1p1", "--no-usb-check", "--", "--erase-all")  # fmt: skip
    # then the initrd flash ran once, from the BSP folder, with every argument intact
    (call,) = invocations(bsp)
    assert call[0] == f"cwd={bsp}"
    assert call[1] == "cmd=./tools/kernel_flash/l4t_initrd_flash.sh"
    assert [a.removeprefix("arg=") for a in call[2:]] == [
        "--external-device", "nvme0n1p1",
        "-c", "tools/kernel_flash/flash_l4t_t234_nvme.xml",
        "-p", "-c bootloader/generic/cfg/flash_t234_qspi.xml",
        "--showlogs", "--network", "usb0", "--erase-all",
        "jetson-orin-nano-devkit", "internal",
    ]  # fmt: skip


@pytest.mark.skipif(not IS_ROOT, reason="flash.sh refuses to flash without root, as NVIDIA's do")
def test_flash_reports_a_failing_nvidia_script(bsp: Path) -> None:
    write_fake_tool(bsp / "flash.sh", bsp / "nvidia-invocations.log", "exit 7\n")
    result = run("flash.sh", "--bsp", bsp, "--board", "jetson-agx-orin-devkit",
                 "--storage", "internal", "--no-usb-check")  # fmt: skip
    assert result.returncode == 1
    assert "NVIDIA's ./flash.sh failed (exit 7)" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--board", "jetson-nano-devkit", "--storage", "internal"], 3,
         "board 'jetson-nano-devkit' unknown to this BSP (no jetson-nano-devkit.conf); "
         "boards here: jetson-agx-orin-devkit jetson-orin-nano-devkit"),
        (["--board", "jetson-agx-orin-devkit", "--storage", "sdb"], 2,
         "--storage 'sdb' is not one of nvme0n1p1, mmcblk0p1, internal"),
        (["--board", "jetson-agx-orin-devkit", "--storage", "nvme0n1p1", "--method", "legacy"],
         2, "NVMe needs the initrd flash"),
        (["--storage", "internal"], 2, "--board NAME is required"),
        (["--board", "jetson-agx-orin-devkit", "--storage"], 2, "--storage needs a value"),
    ],
)  # fmt: skip
def test_flash_bad_arguments_exit_non_zero_with_a_clear_message(
    bsp: Path, args: list[str], code: int, message: str
) -> None:
    result = run("flash.sh", "--dry-run", "--bsp", bsp, *args)
    assert result.returncode == code
    assert message in result.stderr
    assert invocations(bsp) == []


def test_flash_names_a_missing_or_unprepared_bsp(tmp_path: Path, bsp: Path) -> None:
    # given no BSP folder at all
    missing = run("flash.sh", "--bsp", tmp_path / "nope", "--board", BOARDS[0],
                  "--storage", "internal", "--dry-run")  # fmt: skip
    assert missing.returncode == 3
    assert "does not exist" in missing.stderr
    # given a BSP whose rootfs never went through apply_binaries.sh
    (bsp / "rootfs" / "etc" / "nv_tegra_release").unlink()
    raw = run("flash.sh", "--bsp", bsp, "--board", BOARDS[0], "--storage", "internal", "--dry-run")
    assert raw.returncode == 3
    assert "apply_binaries.sh" in raw.stderr


# --- provision-device.sh ----------------------------------------------------------------


def test_provision_makes_keys_csr_certificate_and_credentials(
    identity: Path, fleet_ca: Path
) -> None:
    # then the private material is owner-only and the folder is closed
    assert mode(identity) == 0o700
    assert mode(identity / "device.key") == 0o600
    assert mode(identity / "mqtt-password") == 0o600
    assert mode(identity / "device.crt") == 0o644
    # the id is the certificate CN and the MQTT user name (the broker ACL's %u)
    assert (identity / "device-id").read_text() == "gate-07\n"
    assert (identity / "mqtt-username").read_text() == "gate-07\n"
    assert "CN=gate-07" in openssl("req", "-in", identity / "device.csr", "-noout", "-subject",
                                   "-nameopt", "RFC2253")  # fmt: skip
    openssl("req", "-in", identity / "device.csr", "-noout", "-verify")
    # the CSR and the certificate carry the device's own key, and the CA signed it
    pub = (identity / "device.pub").read_text().strip()
    assert openssl("x509", "-in", identity / "device.crt", "-noout", "-pubkey").strip() == pub
    assert "OK" in openssl("verify", "-CAfile", fleet_ca / "ca.crt", identity / "device.crt")
    assert "ASN1 OID: prime256v1" in openssl("pkey", "-in", identity / "device.key", "-noout",
                                             "-text")  # fmt: skip
    # the pinned fleet key is the fleet's key
    pinned = openssl("pkey", "-pubin", "-in", identity / "fleet-signing.pub")
    assert pinned == openssl("pkey", "-pubin", "-in", fleet_ca / "signing.pub")
    # the password is long and random, and the broker gets a hashed entry for it
    assert len((identity / "mqtt-password").read_text().strip()) >= 40
    if shutil.which("mosquitto_passwd"):
        entry = (identity / "mosquitto-passwd").read_text()
        assert entry.startswith("gate-07:$7$")
        assert (identity / "mqtt-password").read_text().strip() not in entry


def test_provision_twice_changes_nothing(identity: Path, fleet_ca: Path) -> None:
    # given a provisioned device; when provisioning runs again with the same arguments
    before = manifest(identity)
    ok("provision-device.sh", "--out", identity, "--fleet-key", fleet_ca / "signing.pub",
       "--device-id", "gate-07", "--ca-cert", fleet_ca / "ca.crt", "--ca-key",
       fleet_ca / "ca.key")  # fmt: skip
    # then no key, id, password or certificate changed
    assert manifest(identity) == before


def test_provision_refuses_to_rename_a_device_or_pin_a_bad_key(
    identity: Path, fleet_ca: Path
) -> None:
    before = manifest(identity)
    renamed = run("provision-device.sh", "--out", identity, "--fleet-key",
                  fleet_ca / "signing.pub", "--device-id", "gate-08")  # fmt: skip
    assert renamed.returncode == 1
    assert "already belongs to device 'gate-07', not 'gate-08'" in renamed.stderr
    not_a_key = run("provision-device.sh", "--out", identity, "--fleet-key", fleet_ca / "ca.crt")
    assert not_a_key.returncode == 1
    assert "is not a PEM public key" in not_a_key.stderr
    ec_key = run("provision-device.sh", "--out", identity, "--fleet-key",
                 identity / "device.pub")  # fmt: skip
    assert ec_key.returncode == 1
    assert "is not an Ed25519 public key" in ec_key.stderr
    bad_id = run("provision-device.sh", "--out", identity, "--fleet-key",
                 fleet_ca / "signing.pub", "--device-id", "edge/+/#")  # fmt: skip
    assert bad_id.returncode == 2
    assert manifest(identity) == before


def test_provision_ed25519_without_a_ca_leaves_a_csr_to_sign(
    tmp_path: Path, fleet_ca: Path
) -> None:
    out = tmp_path / "dev"
    log = ok("provision-device.sh", "--out", out, "--fleet-key", fleet_ca / "signing.pub",
             "--key-type", "ed25519")  # fmt: skip
    device_id = (out / "device-id").read_text().strip()
    assert device_id.startswith("jetson-")
    assert "ED25519" in openssl("pkey", "-in", out / "device.key", "-noout", "-text")
    assert not (out / "device.crt").exists()
    assert "have the fleet CA sign" in log
    assert mode(out / "device.key") == 0o600


# --- build-overlay.sh and install.sh ----------------------------------------------------


def staging_args(identity: Path, config: Path, wheel: Path) -> list[str | Path]:
    return ["--config", config, "--identity", identity, "--wheel", wheel]


def assert_staged(root: Path, identity: Path, config: Path, wheel: Path) -> None:
    """The files, modes and owners a staged root must have."""
    units = root / "etc" / "systemd" / "system"
    for unit in ("edge-agent.service", "edge-agent-firstboot.service", "edge-tune.service"):
        assert (units / unit).read_bytes() == (SYSTEMD / unit).read_bytes()
        assert mode(units / unit) == 0o644
        assert (
            os.readlink(units / "multi-user.target.wants" / unit) == f"/etc/systemd/system/{unit}"
        )
    assert (root / "usr/lib/sysusers.d/edge-agent.conf").exists()
    assert (root / "usr/lib/tmpfiles.d/edge-agent.conf").exists()
    assert (root / "opt/edge-agent/wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    for script in ("install.sh", "uninstall.sh", "tune.sh"):
        assert mode(root / "opt/edge-agent/sbin" / script) == 0o755
    etc = root / "etc" / "edge-agent"
    assert (etc / "agent.yaml").read_bytes() == config.read_bytes()
    assert (etc / "identity" / "device-id").read_text() == "gate-07\n"
    assert (etc / "identity" / "fleet-signing.pub").read_bytes() == (
        identity / "fleet-signing.pub"
    ).read_bytes()
    assert mode(etc / "credentials") == 0o700
    for secret in ("device.key", "mqtt-password"):
        assert (etc / "credentials" / secret).read_bytes() == (identity / secret).read_bytes()
        assert mode(etc / "credentials" / secret) == 0o600
    assert not (etc / "identity" / "device.key").exists()
    # the service user exists in the root's own user database, in the video group
    uid, gid = passwd_ids(root, "edge-agent")
    assert 0 < uid < 1000
    assert "edge-agent" in next(
        line for line in (root / "etc/group").read_text().splitlines() if line.startswith("video:")
    )
    state = root / "var/lib/edge-agent"
    assert mode(state) == 0o750
    if IS_ROOT:  # owners are set only by root; otherwise systemd-tmpfiles does it at boot
        assert (state.stat().st_uid, state.stat().st_gid) == (uid, gid)
        assert ((etc / "credentials" / "device.key").stat().st_uid) == 0


def test_build_overlay_stages_the_agent_into_the_bsp_rootfs(
    bsp: Path, identity: Path, agent_config: Path, wheel: Path
) -> None:
    host_passwd = Path("/etc/passwd").read_bytes()
    # when the overlay is built into the fake BSP (config validated by the real agent)
    ok("build-overlay.sh", "--bsp", bsp, "--board", "jetson-orin-nano-devkit",
       *staging_args(identity, agent_config, wheel), env=with_validator())  # fmt: skip
    # then its rootfs holds the agent, units, config, identity and trust anchors
    assert_staged(bsp / "rootfs", identity, agent_config, wheel)
    # and the build host's own user database is untouched
    assert Path("/etc/passwd").read_bytes() == host_passwd
    # and a second run changes nothing at all
    before = manifest(bsp)
    ok("build-overlay.sh", "--bsp", bsp, *staging_args(identity, agent_config, wheel),
       env=with_validator())  # fmt: skip
    assert manifest(bsp) == before


def test_build_overlay_dry_run_changes_nothing(
    bsp: Path, identity: Path, agent_config: Path, wheel: Path
) -> None:
    before = manifest(bsp)
    out = ok("build-overlay.sh", "--bsp", bsp, "--dry-run",
             *staging_args(identity, agent_config, wheel))  # fmt: skip
    assert "would: install" in out
    assert "systemd-sysusers --root=" in out
    assert manifest(bsp) == before


def test_build_overlay_refuses_an_unprepared_bsp_or_missing_inputs(
    bsp: Path, identity: Path, agent_config: Path, wheel: Path
) -> None:
    no_identity = run("build-overlay.sh", "--bsp", bsp, "--config", agent_config,
                      "--wheel", wheel)  # fmt: skip
    assert no_identity.returncode == 2
    assert "--identity DIR is required" in no_identity.stderr
    wrong_board = run("build-overlay.sh", "--bsp", bsp, "--board", "jetson-tx2",
                      *staging_args(identity, agent_config, wheel))  # fmt: skip
    assert wrong_board.returncode == 3
    assert "no " in wrong_board.stderr and "jetson-tx2.conf" in wrong_board.stderr
    (bsp / "rootfs" / "etc" / "nv_tegra_release").unlink()
    raw = run("build-overlay.sh", "--bsp", bsp, *staging_args(identity, agent_config, wheel))
    assert raw.returncode == 3
    assert "apply_binaries.sh" in raw.stderr
    assert not (bsp / "rootfs" / "opt").exists()


def test_install_into_a_root_then_uninstall(
    tmp_path: Path, identity: Path, agent_config: Path, wheel: Path
) -> None:
    root = make_rootfs(tmp_path / "root")
    # when installed into a flashed device's root folder, twice
    ok("install.sh", "--root", root, *staging_args(identity, agent_config, wheel))
    assert_staged(root, identity, agent_config, wheel)
    before = manifest(root)
    ok("install.sh", "--root", root, *staging_args(identity, agent_config, wheel))
    # then the second run changed nothing
    assert manifest(root) == before
    # when uninstalled: the agent goes, identity, config and state stay
    ok("uninstall.sh", "--root", root)
    assert not (root / "opt/edge-agent").exists()
    assert not (root / "etc/systemd/system/edge-agent.service").exists()
    assert not (root / "etc/systemd/system/multi-user.target.wants/edge-agent.service").exists()
    assert (root / "etc/edge-agent/credentials/device.key").exists()
    assert (root / "var/lib/edge-agent").is_dir()
    # and uninstalling again is not an error; --purge removes the rest
    ok("uninstall.sh", "--root", root)
    ok("uninstall.sh", "--root", root, "--purge")
    assert not (root / "etc/edge-agent").exists()
    assert not (root / "var/lib/edge-agent").exists()


def test_install_refuses_a_non_jetson_root_and_a_bad_config(
    tmp_path: Path, identity: Path, wheel: Path
) -> None:
    root = make_rootfs(tmp_path / "root")
    (root / "etc/nv_tegra_release").unlink()
    cfg = tmp_path / "agent.yaml"
    shutil.copy(REPO / "configs" / "rtsp-example.yaml", cfg)
    not_jetson = run("install.sh", "--root", root, *staging_args(identity, cfg, wheel))
    assert not_jetson.returncode == 3
    assert "is not a JetPack (L4T) system" in not_jetson.stderr
    # given a config with a typo in a key
    cfg.write_text(cfg.read_text().replace("state_dir:", "state_dri:"))
    bad = run("install.sh", "--root", root, "--allow-non-jetson",
              *staging_args(identity, cfg, wheel), env=with_validator())  # fmt: skip
    # then the agent's own validator names it, and nothing was installed
    assert bad.returncode == 1
    assert "device.state_dri" in bad.stderr
    assert not (root / "etc/edge-agent/agent.yaml").exists()


# --- tune.sh ----------------------------------------------------------------------------


def test_tune_dry_run_prints_the_l4t_commands() -> None:
    out = ok("tune.sh", "--mode", "0", "--clocks", "on", "--state-dir", "/var/lib/x", "--dry-run",
             env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert "would: nvpmodel -m 0" in out
    assert "would: jetson_clocks --store /var/lib/x/jetson_clocks.defaults" in out
    assert "would: jetson_clocks\n" in out


def test_tune_without_l4t_tools_is_a_clear_error() -> None:
    result = run("tune.sh", "--mode", "0", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 3
    assert "'nvpmodel' not found on PATH: not a Jetson" in result.stderr


def test_tune_applies_the_config_once(tmp_path: Path) -> None:
    # given stand-ins for nvpmodel and jetson_clocks (L4T tools; no Jetson here) that
    # remember the mode, and a tune.conf asking for mode 2 with clocks locked
    tools = tmp_path / "bin"
    record = tmp_path / "calls.log"
    nvp_state = tmp_path / "mode"
    nvp_state.write_text("0\n")
    write_fake_tool(
        tools / "nvpmodel",
        record,
        f'if [ "$1" = -q ]; then echo "NV Power Mode: X"; cat {nvp_state}; '
        f'else echo "$2" > {nvp_state}; fi\n',
    )
    write_fake_tool(tools / "jetson_clocks", record, 'if [ "$1" = --store ]; then : > "$2"; fi\n')
    conf = tmp_path / "tune.conf"
    conf.write_text("# power\nNVPMODEL_MODE=2\nJETSON_CLOCKS=on\n")
    env = {"PATH": f"{tools}{os.pathsep}/usr/bin:/bin"}
    args = ("--config", conf, "--state-dir", tmp_path)
    # when tune.sh runs twice
    ok("tune.sh", *args, env=env)
    first = record.read_text()
    ok("tune.sh", *args, env=env)
    second = record.read_text()[len(first) :]
    # then the mode was set once, clock defaults saved once, clocks locked each boot
    assert nvp_state.read_text() == "2\n"
    assert first.count("arg=-m") == 1
    assert "arg=-m" not in second
    assert first.count("arg=--store") == 1
    assert "arg=--store" not in second
    bad = tmp_path / "bad.conf"
    bad.write_text("NVPMODEL_MODE=$(reboot)\n")
    result = run("tune.sh", "--config", bad, env=env)
    assert result.returncode == 2
    assert "mode must be a number" in result.stderr


def test_install_copies_a_ready_venv_once_and_rollback_needs_the_device(
    tmp_path: Path, identity: Path, agent_config: Path
) -> None:
    # given a ready virtualenv (built on a Jetson in real life; a tiny stand-in folder here)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (venv / "bin" / "edge-agent").write_text("#!/bin/sh\n")
    root = make_rootfs(tmp_path / "root")
    args = ("--root", root, "--venv", venv, "--config", agent_config, "--identity", identity)
    # when installed twice
    ok("install.sh", *args)
    before = manifest(root)
    ok("install.sh", *args)
    # then the venv is in place, and the second run neither rebuilt nor kept a "previous"
    assert (root / "opt/edge-agent/venv/bin/edge-agent").read_text() == "#!/bin/sh\n"
    assert manifest(root) == before
    assert not (root / "opt/edge-agent/venv.previous").exists()
    # and a rollback is refused outside the device itself
    result = run("install.sh", "--root", root, "--rollback")
    assert result.returncode == 2
    assert "--rollback works on the device itself" in result.stderr
