"""Versioned folders and atomic pointers: unpacking, refusal of unsafe archives, retention."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from agent.ota.errors import OtaError, ReasonCode
from agent.ota.staging import ConfigStore, ModelStore, Pointers, active_model_path


def _tar(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink is not None:
            link = tarfile.TarInfo(symlink)
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    return path


def test_archive_is_unpacked_into_its_version_folder_and_no_temp_is_left(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    archive = _tar(tmp_path / "a.tar", {"m/model.json": b"{}", "m/sub/w.bin": b"123"})
    dest = store.stage_archive(archive, "m", "1.0", max_bytes=1000)
    assert dest == tmp_path / "models" / "m" / "1.0"
    assert (dest / "sub" / "w.bin").read_bytes() == b"123"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["1.0"]


@pytest.mark.parametrize(
    ("members", "symlink", "reason"),
    [
        ({"m/../../evil": b"x"}, None, ReasonCode.BAD_ARCHIVE),
        ({"/abs/evil": b"x"}, None, ReasonCode.BAD_ARCHIVE),
        ({"other/model.json": b"x"}, None, ReasonCode.BAD_ARCHIVE),
        ({"m/model.json": b"x"}, "m/link", ReasonCode.BAD_ARCHIVE),
        ({"m/big": b"x" * 2000}, None, ReasonCode.TOO_LARGE),
    ],
)
def test_unsafe_archives_are_refused_and_nothing_is_staged(
    tmp_path: Path, members: dict[str, bytes], symlink: str | None, reason: ReasonCode
) -> None:
    store = ModelStore(tmp_path / "models")
    archive = _tar(tmp_path / "a.tar", members, symlink)
    with pytest.raises(OtaError) as err:
        store.stage_archive(archive, "m", "1.0", max_bytes=1000)
    assert err.value.reason is reason
    assert not (tmp_path / "models" / "m").exists() or not any(
        (tmp_path / "models" / "m").iterdir()
    )
    assert not (tmp_path / "evil").exists()


def test_not_a_tar_is_a_bad_archive(tmp_path: Path) -> None:
    bad = tmp_path / "a.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(OtaError) as err:
        ModelStore(tmp_path / "models").stage_archive(bad, "m", "1.0", 10_000)
    assert err.value.reason is ReasonCode.BAD_ARCHIVE


def test_pointers_switch_atomically_and_remember_the_previous(tmp_path: Path) -> None:
    p = Pointers(tmp_path)
    factory = tmp_path / "factory"
    v2 = tmp_path / "m" / "2"
    for d in (factory, v2):
        d.mkdir(parents=True)
    # when v2 is activated over the factory folder
    p.activate(v2, previous=factory)
    # then active names v2 (relative link inside the store), previous the factory folder
    assert p.active() == v2 and p.previous() == factory.resolve()
    assert os.readlink(tmp_path / "active") == "m/2"
    # and no temp link is left behind
    assert sorted(x.name for x in tmp_path.iterdir()) == ["active", "factory", "m", "previous"]


def test_active_model_path_falls_back_to_previous_then_configured(tmp_path: Path) -> None:
    configured = tmp_path / "configured"
    state = tmp_path / "state"
    assert active_model_path(state, configured) == configured
    v1, v2 = state / "models" / "m" / "1", state / "models" / "m" / "2"
    for d in (v1, v2):
        d.mkdir(parents=True)
        (d / "model.json").write_text("{}")
    Pointers(state / "models").activate(v2, previous=v1)
    assert active_model_path(state, configured) == v2
    (v2 / "model.json").unlink()  # a broken active version
    assert active_model_path(state, configured) == v1


def test_retention_never_prunes_active_or_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    dirs = []
    for i in range(6):
        d = store.version_dir("m", str(i))
        d.mkdir(parents=True)
        os.utime(d, (1000 + i, 1000 + i))
        dirs.append(d)
    # active is the oldest, previous the second oldest: both must survive
    store.pointers.activate(dirs[0], previous=dirs[1])
    store.prune(keep=3)
    left = sorted(p.name for p in (tmp_path / "models" / "m").iterdir())
    assert left == ["0", "1", "5"]


def test_config_store_writes_versions_and_cleans_temp(tmp_path: Path) -> None:
    store = ConfigStore(tmp_path / "configs")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / ".tmp-left-1").write_text("x")
    store.clean()
    path = store.stage_text("2", "schema_version: 1\n")
    assert path.read_text() == "schema_version: 1\n"
    assert sorted(p.name for p in (tmp_path / "configs").iterdir()) == ["2.yaml"]
