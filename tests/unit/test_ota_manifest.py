"""The device's manifest policy: pinned key, persisted sequence, expiry only on a known clock."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from agent.ota.manifest import (
    ManifestCode,
    ManifestError,
    ManifestPolicy,
    SequenceStore,
    clock_synchronized,
    load_public_key,
)
from tests.ota_helpers import NOW, Keys, make_keys, manifest_for


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


def _policy(keys: Keys, state: Path, *, synced: bool, now: float = NOW) -> ManifestPolicy:
    return ManifestPolicy(
        load_public_key(keys.public), SequenceStore(state / "seq.json"),
        clock=lambda: now, clock_synced=lambda: synced,
    )  # fmt: skip


def _envelope(keys: Keys, sequence: int, **kw: Any) -> bytes:
    return keys.sign(manifest_for(b"x", "http://f/a", version="1.0", sequence=sequence, **kw))


def test_accepted_sequence_is_persisted_and_replays_are_refused_after_restart(
    keys: Keys, tmp_path: Path
) -> None:
    # given a manifest accepted by one policy instance
    m = _policy(keys, tmp_path, synced=True).verify(_envelope(keys, 7), "model")
    _policy(keys, tmp_path, synced=True).accept(m)
    # when a fresh instance (a restarted agent) sees the same or an older sequence
    fresh = _policy(keys, tmp_path, synced=True)
    # then both are replays, and a newer one passes
    for seq in (7, 6):
        with pytest.raises(ManifestError) as err:
            fresh.verify(_envelope(keys, seq), "model")
        assert err.value.code is ManifestCode.REPLAYED
    assert fresh.verify(_envelope(keys, 8), "model").sequence == 8


def test_sequences_are_tracked_per_kind(keys: Keys, tmp_path: Path) -> None:
    policy = _policy(keys, tmp_path, synced=True)
    policy.accept(policy.verify(_envelope(keys, 9), "model"))
    assert policy.verify(_envelope(keys, 3, kind="config"), "config").sequence == 3


def test_expired_manifest_is_refused_on_a_synchronised_clock(keys: Keys, tmp_path: Path) -> None:
    old = _envelope(keys, 1, issued_at=NOW - 7200, ttl_s=3600)
    with pytest.raises(ManifestError) as err:
        _policy(keys, tmp_path, synced=True).verify(old, "model")
    assert err.value.code is ManifestCode.EXPIRED


def test_expiry_is_not_enforced_while_the_clock_is_unknown(keys: Keys, tmp_path: Path) -> None:
    # given a device that booted in 1970 and an expired but correctly signed manifest
    old = _envelope(keys, 1, issued_at=NOW - 7200, ttl_s=3600)
    policy = _policy(keys, tmp_path, synced=False, now=0.0)
    # then it is accepted on signature and sequence alone
    assert policy.verify(old, "model").sequence == 1


def test_manifest_of_another_kind_is_refused(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as err:
        _policy(keys, tmp_path, synced=True).verify(_envelope(keys, 1, kind="config"), "model")
    assert err.value.code is ManifestCode.MALFORMED


def test_wrong_key_is_refused(keys: Keys, tmp_path: Path) -> None:
    other = make_keys(tmp_path / "other", "rogue")
    with pytest.raises(ManifestError) as err:
        _policy(keys, tmp_path, synced=False).verify(_envelope(other, 1), "model")
    assert err.value.code is ManifestCode.BAD_SIGNATURE


def test_corrupt_sequence_file_is_an_error_not_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "seq.json"
    path.write_text("{garbage")
    with pytest.raises(Exception, match="accepted sequences"):
        SequenceStore(path)


def test_clock_synchronised_by_timesyncd_flag(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    # a missing flag without timedatectl answering 'yes' is not synchronised on a fresh path;
    # a clock in 1970 is never synchronised, whatever the flag says
    flag.touch()
    assert clock_synchronized(flag, now=lambda: float(NOW)) is True
    assert clock_synchronized(flag, now=lambda: 0.0) is False
    os.unlink(flag)
