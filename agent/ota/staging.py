"""Versioned artifact folders and the atomic `active` / `previous` pointers.

    <state_dir>/models/<name>/<version>/   one folder per staged model version
    <state_dir>/models/active  -> <name>/<version>   (symlink; absolute for an
    <state_dir>/models/previous -> ...                adopted factory folder)
    <state_dir>/configs/<version>.yaml, configs/active, configs/previous

A version is unpacked into a hidden temp folder beside its final place, every file
and folder fsynced, then renamed into place, so a version folder either exists
complete or not at all. A pointer is switched by creating a new symlink under a temp
name and renaming it over the old one (rename(2) is atomic), so after a crash it
names either the old or the new version, never nothing and never a mix. Retention
prunes the oldest versions but never what `active` or `previous` names.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tarfile
import time
from pathlib import Path, PurePosixPath

from agent.ota.errors import OtaError, ReasonCode
from agent.state import fsync_dir

log = logging.getLogger(__name__)

_TMP = ".tmp-"
_TRASH = ".trash-"


class Pointers:
    """The `active` and `previous` symlinks of one store."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _read(self, name: str) -> Path | None:
        link = self.root / name
        try:
            target = os.readlink(link)
        except OSError:
            return None
        path = Path(target) if os.path.isabs(target) else self.root / target
        return path if path.exists() else None

    def active(self) -> Path | None:
        """What `active` names, or None (missing pointer or missing target)."""
        return self._read("active")

    def previous(self) -> Path | None:
        return self._read("previous")

    def _link(self, name: str, target: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            rel = target.relative_to(self.root)
            value = str(rel)
        except ValueError:
            value = str(target.resolve())
        tmp = self.root / f"{_TMP}{name}-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(value, tmp)
        os.replace(tmp, self.root / name)
        fsync_dir(self.root)

    def activate(self, target: Path, previous: Path | None) -> None:
        """Point `previous` at `previous` (what ran before), then `active` at `target`.

        In this order a crash between the two leaves `active` on the old version.
        """
        if previous is not None and previous.resolve() != target.resolve():
            self._link("previous", previous)
        self._link("active", target)

    def point_active(self, target: Path) -> None:
        """Point `active` at `target` and leave `previous` alone (rollback, recovery)."""
        self._link("active", target)

    def protected(self) -> set[Path]:
        return {p.resolve() for p in (self.active(), self.previous()) if p is not None}


def _safe_member(member: tarfile.TarInfo, top: str) -> PurePosixPath | None:
    """The member's path below `top/`, or None for the top folder itself; raise if unsafe."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != top:
        raise OtaError(ReasonCode.BAD_ARCHIVE, f"archive member {member.name!r} is outside {top}/")
    if not (member.isfile() or member.isdir()):
        raise OtaError(ReasonCode.BAD_ARCHIVE, f"archive member {member.name!r} is not a file")
    rel = PurePosixPath(*path.parts[1:])
    return rel if rel.parts else None


def _fsync_tree(folder: Path) -> None:
    for dirpath, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def _remove(path: Path) -> None:
    """Rename aside first (atomic), then delete: never a half-deleted version folder."""
    trash = path.with_name(f"{_TRASH}{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    fsync_dir(path.parent)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


class ModelStore:
    """Model versions under `root` (= <state_dir>/models)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pointers = Pointers(root)

    def version_dir(self, name: str, version: str) -> Path:
        return self.root / name / version

    def clean(self) -> None:
        """Remove temp and trash left by a crash (never a complete version folder)."""
        if not self.root.is_dir():
            return
        for parent in [self.root, *[p for p in self.root.iterdir() if p.is_dir()]]:
            for p in parent.iterdir():
                if p.name.startswith((_TMP, _TRASH)):
                    log.info("removing leftover path=%s", p)
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)

    def stage_archive(self, archive: Path, name: str, version: str, max_bytes: int) -> Path:
        """Unpack a model tar (`<name>/...`) into `<name>/<version>/` atomically."""
        dest = self.version_dir(name, version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{_TMP}{version}-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            self._extract(archive, tmp, name, max_bytes)
            _fsync_tree(tmp)
            if dest.exists():
                if dest.resolve() in self.pointers.protected():
                    raise OtaError(
                        ReasonCode.STAGING_FAILED, f"{dest} is in use (active or previous)"
                    )
                _remove(dest)
            now = time.time()
            os.utime(tmp, (now, now))
            os.replace(tmp, dest)
            fsync_dir(dest.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("staged model name=%s version=%s path=%s", name, version, dest)
        return dest

    @staticmethod
    def _extract(archive: Path, into: Path, top: str, max_bytes: int) -> None:
        total = 0
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    rel = _safe_member(member, top)
                    if rel is None or member.isdir():
                        if rel is not None:
                            (into / rel).mkdir(parents=True, exist_ok=True)
                        continue
                    total += member.size
                    if total > max_bytes:
                        raise OtaError(
                            ReasonCode.TOO_LARGE, f"archive unpacks to over {max_bytes} bytes"
                        )
                    src = tar.extractfile(member)
                    if src is None:
                        raise OtaError(ReasonCode.BAD_ARCHIVE, f"cannot read {member.name!r}")
                    out = into / rel
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with src, open(out, "wb") as fh:
                        shutil.copyfileobj(src, fh, 1 << 20)
        except (tarfile.TarError, EOFError) as exc:
            raise OtaError(ReasonCode.BAD_ARCHIVE, f"{archive}: not a readable tar: {exc}") from exc

    def prune(self, keep: int) -> list[Path]:
        """Delete the oldest version folders beyond `keep`; never active or previous."""
        protected = self.pointers.protected()
        versions = [
            v
            for n in self.root.iterdir()
            if n.is_dir() and not n.is_symlink() and not n.name.startswith((_TMP, _TRASH))
            for v in n.iterdir()
            if v.is_dir() and not v.name.startswith((_TMP, _TRASH))
        ] if self.root.is_dir() else []  # fmt: skip
        versions.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        removed = []
        kept = 0
        for v in versions:
            if v.resolve() in protected:
                continue
            kept += 1
            if kept + len(protected) > keep:
                _remove(v)
                removed.append(v)
        if removed:
            log.info("pruned model versions count=%d paths=%s", len(removed), removed)
        return removed


class ConfigStore:
    """Config versions under `root` (= <state_dir>/configs): `<version>.yaml` files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pointers = Pointers(root)

    def stage_text(self, version: str, text: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        dest = self.root / f"{version}.yaml"
        tmp = self.root / f"{_TMP}{version}-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        fsync_dir(self.root)
        return dest

    def clean(self) -> None:
        if self.root.is_dir():
            for p in self.root.iterdir():
                if p.name.startswith((_TMP, _TRASH)):
                    p.unlink(missing_ok=True)


def active_model_path(state_dir: Path, configured: Path) -> Path:
    """The model folder to load at start: OTA's `active`, else `previous`, else the config's."""
    pointers = Pointers(state_dir / "models")
    for candidate in (pointers.active(), pointers.previous()):
        if candidate is not None and (candidate / "model.json").is_file():
            return candidate
    return configured


def active_config_path(state_dir: Path) -> Path | None:
    """The config file OTA activated, or None (use the provisioned one)."""
    return Pointers(state_dir / "configs").active()


__all__ = [
    "ConfigStore",
    "ModelStore",
    "Pointers",
    "active_config_path",
    "active_model_path",
]
