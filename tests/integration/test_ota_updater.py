"""The OTA updater end to end on one device: real HTTP, real Ed25519, real ONNX Runtime
validation, the persisted state machine; the pipeline is a recording ModelSwapper."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config.ota import OtaConfig
from agent.ota.manifest import load_public_key
from agent.ota.staging import Pointers
from agent.ota.state import UpdateState
from agent.ota.updater import OtaUpdater
from agent.protocol import DesiredState
from tests.model_helpers import shipped_manifest, write_manifest
from tests.ota_helpers import (
    NOW,
    Keys,
    RangeServer,
    RecordingSwapper,
    Reports,
    ScriptedProbe,
    ended,
    make_keys,
    make_version,
    model_tar,
    publish,
)


@dataclass
class Env:
    tmp: Path
    assets: Path
    server: RangeServer
    keys: Keys
    swapper: RecordingSwapper
    reports: Reports
    updater: OtaUpdater
    state: Path

    def model(self, version: str, sequence: int, keys: Keys | None = None, **kw: Any) -> str:
        folder = self.tmp / f"v{version}" / "yolox_nano"
        if not folder.exists():
            folder = make_version(self.tmp, self.assets, version)
        return publish(self.server, keys or self.keys, model_tar(folder),
                       version=version, sequence=sequence, **kw)  # fmt: skip

    def desire(self, version: str, url: str, sequence: int) -> None:
        ref = {"version": version, "manifest_url": url, "sequence": sequence}
        self.updater.on_desired(DesiredState.model_validate({"schema": 1, "model": ref}))

    def active(self) -> Path | None:
        return Pointers(self.state / "models").active()


def _cfg(keys: Keys, **over: Any) -> OtaConfig:
    data: dict[str, Any] = {
        "enabled": True, "public_key": str(keys.public), "latency_budget_ms": 5000,
        "latency_runs": 2, "retry_initial_s": 0.05, "retry_max_s": 0.2, "min_free_bytes": 0,
        "download_timeout_s": 5, "probation": {"window_s": 0.3, "poll_s": 0.05},
    }  # fmt: skip
    data.update(over)
    return OtaConfig.model_validate(data)


@pytest.fixture
def make_env(tmp_path: Path, assets: Path) -> Iterator[Callable[..., Env]]:
    made: list[Env] = []
    server = RangeServer()
    keys = make_keys(tmp_path / "keys")

    def build(bad_versions: tuple[str, ...] = (), fail_versions: tuple[str, ...] = (),
              synced: bool = True, **over: Any) -> Env:  # fmt: skip
        factory = make_version(tmp_path, assets, "0.1.1")
        swapper = RecordingSwapper(factory, fail_versions)
        reports = Reports()
        state = tmp_path / "state"
        updater = OtaUpdater(
            _cfg(keys, **over), state, load_public_key(keys.public), swapper, reports,
            ScriptedProbe(swapper, bad_versions), clock_synced=lambda: synced,
        )  # fmt: skip
        updater.start()
        env = Env(tmp_path, assets, server, keys, swapper, reports, updater, state)
        made.append(env)
        return env

    yield build
    for env in made:
        env.updater.stop()
    server.stop()


def test_model_v1_to_v2_walks_every_state_and_commits(make_env: Callable[..., Env]) -> None:
    env = make_env()
    # when the fleet desires v2
    env.desire("0.2.0", env.model("0.2.0", 5), 5)
    final = env.reports.wait(ended("0.2.0"))
    # then every state was reported in order and v2 serves from its own versioned folder
    assert final["update"]["state"] == "committed", final
    assert env.reports.states() == [
        "pending",
        "downloading",
        "verifying",
        "staging",
        "validating",
        "activating",
        "probation",
        "committed",
    ]
    assert final["versions"]["model"] == "yolox_nano@0.2.0"
    assert env.swapper.swaps == ["0.2.0"]
    assert env.active() == env.state / "models" / "yolox_nano" / "0.2.0"
    assert Pointers(env.state / "models").previous() == (env.tmp / "v0.1.1" / "yolox_nano")
    # and the download is cleaned up
    assert list((env.state / "ota" / "downloads").iterdir()) == []


@pytest.mark.parametrize("case", ["tampered", "wrong_key", "expired", "mismatch", "unsigned"])
def test_untrusted_updates_are_rejected_with_the_reason(
    make_env: Callable[..., Env], case: str
) -> None:
    env = make_env()
    if case == "wrong_key":
        url = env.model("0.2.0", 5, keys=make_keys(env.tmp / "rogue", "rogue"))
    elif case == "expired":
        url = env.model("0.2.0", 5, issued_at=NOW - 7200, ttl_s=3600)
    elif case == "mismatch":
        url = env.model("0.3.0", 5)  # signed for 0.3.0, desired as 0.2.0
    else:
        url = env.model("0.2.0", 5)
    if case == "tampered":
        path = next(p for p in env.server.files if p.startswith("/a/"))
        data = bytearray(env.server.files[path].data)
        data[-10] ^= 0xFF  # one flipped byte in the tar padding
        env.server.files[path].data = bytes(data)
    if case == "unsigned":
        path = url.removeprefix(env.server.url)
        env_json = json.loads(env.server.files[path].data)
        env_json["signature"] = None
        env.server.files[path].data = json.dumps(env_json).encode()
    env.desire("0.2.0", url, 5)
    final = env.reports.wait(ended("0.2.0"))
    expected = {"tampered": "sha_mismatch", "wrong_key": "bad_signature", "expired": "expired",
                "mismatch": "mismatch", "unsigned": "unsigned"}[case]  # fmt: skip
    assert (final["update"]["state"], final["update"]["reason"]) == ("failed", expected)
    assert env.swapper.swaps == [] and env.active() is None


def test_replayed_older_manifest_is_rejected(make_env: Callable[..., Env]) -> None:
    # given v2 committed with sequence 5
    env = make_env()
    old_url = env.model("0.1.9", 4)
    env.desire("0.2.0", env.model("0.2.0", 5), 5)
    env.reports.wait(ended("0.2.0"))
    # when an older, genuinely signed manifest (sequence 4) is desired
    env.desire("0.1.9", old_url, 4)
    final = env.reports.wait(ended("0.1.9"))
    # then it is refused as a replay and v2 keeps serving
    assert (final["update"]["state"], final["update"]["reason"]) == ("failed", "replayed")
    assert env.swapper.swaps == ["0.2.0"]


def test_expired_manifest_is_accepted_while_the_clock_is_not_synchronised(
    make_env: Callable[..., Env],
) -> None:
    env = make_env(synced=False)
    env.desire("0.2.0", env.model("0.2.0", 5, issued_at=NOW - 7200, ttl_s=3600), 5)
    assert env.reports.wait(ended("0.2.0"))["update"]["state"] == "committed"


def _corrupt_onnx(folder: Path) -> None:
    onnx = folder / "yolox_nano.onnx"
    data = onnx.read_bytes()[:50_000]
    onnx.unlink()
    onnx.write_bytes(data)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["sha256"] = hashlib.sha256(data).hexdigest()
    write_manifest(folder, manifest)


@pytest.mark.parametrize(
    ("case", "reason"),
    [("corrupt_onnx", "invalid_model"), ("wrong_shape", "invalid_model"),
     ("golden", "golden_failed"), ("too_slow", "too_slow")],
)  # fmt: skip
def test_a_model_that_fails_validation_is_refused_before_activation(
    make_env: Callable[..., Env], assets: Path, case: str, reason: str
) -> None:
    env = make_env(latency_budget_ms=0.001) if case == "too_slow" else make_env()
    folder = make_version(env.tmp, assets, "0.3.0")
    if case == "corrupt_onnx":
        _corrupt_onnx(folder)
    elif case == "wrong_shape":
        write_manifest(folder, {**shipped_manifest(), "version": "0.3.0",
                                "labels": shipped_manifest()["labels"][:79]})  # fmt: skip
    elif case == "golden":
        golden = {"image": None, "expected": [{"class_id": 0, "score": 0.9,
                                              "box": [0, 0, 100, 100]}]}  # fmt: skip
        write_manifest(folder, {**shipped_manifest(), "version": "0.3.0", "golden": golden})
    env.desire("0.3.0", env.model("0.3.0", 6), 6)
    final = env.reports.wait(ended("0.3.0"))
    assert (final["update"]["state"], final["update"]["reason"]) == ("failed", reason)
    assert "activating" not in env.reports.states()
    assert env.swapper.swaps == [] and env.active() is None


def test_probation_failure_rolls_back_and_is_not_retried_until_a_newer_sequence(
    make_env: Callable[..., Env],
) -> None:
    # given v4 that activates but makes inference fail
    env = make_env(bad_versions=("0.4.0",))
    url = env.model("0.4.0", 7)
    env.desire("0.4.0", url, 7)
    final = env.reports.wait(ended("0.4.0"))
    # then it is rolled back with the reason, and the factory model serves again
    assert (final["update"]["state"], final["update"]["reason"]) == (
        "rolled_back",
        "probation_errors",
    )
    assert env.swapper.swaps == ["0.4.0", "0.1.1"]
    assert env.active() == (env.tmp / "v0.1.1" / "yolox_nano").resolve()
    # when the same desired state arrives again (a retained message after reconnect)
    n = len(env.reports.items)
    env.desire("0.4.0", url, 7)
    env.desire("0.4.0", url, 7)
    # then nothing is retried: the updater reports nothing new and swaps nothing
    env.updater.stop()
    assert len(env.reports.items) == n and env.swapper.swaps == ["0.4.0", "0.1.1"]


def test_rolled_back_version_returns_with_a_newer_manifest(make_env: Callable[..., Env]) -> None:
    env = make_env(bad_versions=("0.4.0",))
    env.desire("0.4.0", env.model("0.4.0", 7), 7)
    env.reports.wait(ended("0.4.0"))
    env.swapper.swaps.clear()
    # when the fleet re-signs the same version with a newer sequence (and the cause is fixed)
    env.updater._probe = ScriptedProbe(env.swapper)
    env.desire("0.4.0", env.model("0.4.0", 8), 8)
    final = env.reports.wait(lambda r: r["update"] is not None and r["update"]["sequence"] == 8
                             and r["update"]["state"] == "committed")  # fmt: skip
    assert final["versions"]["model"] == "yolox_nano@0.4.0"
    assert env.swapper.swaps == ["0.4.0"]


def test_activation_failure_rolls_back_to_the_old_pointer(make_env: Callable[..., Env]) -> None:
    env = make_env(fail_versions=("0.2.0",))
    env.desire("0.2.0", env.model("0.2.0", 5), 5)
    final = env.reports.wait(ended("0.2.0"))
    assert (final["update"]["state"], final["update"]["reason"]) == (
        "rolled_back",
        "activation_failed",
    )
    assert env.active() == (env.tmp / "v0.1.1" / "yolox_nano").resolve()
    assert env.updater.record() is not None
    assert env.updater.record().state is UpdateState.ROLLED_BACK  # type: ignore[union-attr]


def test_a_download_cut_mid_way_is_retried_with_range_and_commits(
    make_env: Callable[..., Env],
) -> None:
    # given an artifact server that drops the first connection after 1 MiB
    env = make_env()
    url = env.model("0.2.0", 5)
    art = next(p for p in env.server.files if p.startswith("/a/"))
    env.server.files[art].cut_after = 1024 * 1024
    # when the update runs
    env.desire("0.2.0", url, 5)
    final = env.reports.wait(ended("0.2.0"))
    # then the retry was reported, resumed from the cut, and the update committed
    assert final["update"]["state"] == "committed"
    assert any((r["update"] or {}).get("detail", "") and "retry 1" in r["update"]["detail"]
               for r in env.reports.items)  # fmt: skip
    assert [rng for p, rng, _ in env.server.requests if p == art] == [None, "bytes=1048576-"]
