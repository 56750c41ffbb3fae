"""Sample assets (the demo model and video): placed from a local mirror or fetched upstream.

Every file is verified against its known sha256 before it is put in place; a file
is written to a temporary name and renamed, so an interrupted fetch never leaves a
half file that looks complete.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class Asset:
    name: str
    sha256: str
    url: str
    """Upstream source (see ../shared/assets/README.md for provenance and licences)."""
    dest: str
    """Where it goes, relative to the project root."""


ASSETS: tuple[Asset, ...] = (
    Asset(
        "yolox_nano.onnx",
        "695e750a5d5754bb5a8d5325643b59282191a7e7a564e435a415fd3c578eab14",
        "https://raw.githubusercontent.com/Kazuhito00/YOLOX-ONNX-TFLite-Sample/main/model/yolox_nano.onnx",
        "models/yolox_nano/yolox_nano.onnx",
    ),
    Asset(
        "vtest.avi",
        "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
        "https://raw.githubusercontent.com/opencv/opencv/4.x/samples/data/vtest.avi",
        "var/assets/vtest.avi",
    ),
)


class AssetError(Exception):
    """An asset could not be placed: missing from the mirror, download failed, bad hash."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_sha256sums(mirror: Path) -> dict[str, str]:
    """Parse a `SHA256SUMS` file (`<hex>  <name>` per line) when the mirror has one."""
    sums: dict[str, str] = {}
    path = mirror / "SHA256SUMS"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


Progress = Callable[[str, int, int | None], None]


def _copy_stream(
    src: BinaryIO, dst: BinaryIO, name: str, total: int | None, progress: Progress
) -> str:
    digest = hashlib.sha256()
    done = 0
    for chunk in iter(lambda: src.read(CHUNK), b""):
        dst.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        progress(name, done, total)
    return digest.hexdigest()


def _place(
    asset: Asset, dest: Path, opener: Callable[[], tuple[BinaryIO, int | None]], progress: Progress
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        src, total = opener()
        with src, open(tmp, "wb") as out:
            got = _copy_stream(src, out, asset.name, total, progress)
        if got != asset.sha256:
            raise AssetError(f"{asset.name}: sha256 mismatch (expected {asset.sha256}, got {got})")
        tmp.replace(dest)
    except OSError as exc:
        raise AssetError(f"{asset.name}: cannot fetch: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _stderr_progress(name: str, done: int, total: int | None) -> None:
    if total:
        sys.stderr.write(f"\r  {name}: {done / total:6.1%} of {total / 1e6:.1f} MB")
        if done >= total:
            sys.stderr.write("\n")
    sys.stderr.flush()


def fetch_assets(
    root: Path,
    mirror: Path | None = None,
    *,
    assets: tuple[Asset, ...] = ASSETS,
    progress: Progress = _stderr_progress,
    timeout_s: float = 60.0,
) -> list[Path]:
    """Ensure every asset is present under `root`; return their paths.

    Already-present files with the right hash are kept. With `mirror`, files come from
    that folder (its `SHA256SUMS`, when present, must agree with the known hashes);
    otherwise from the upstream URL.
    """
    placed = []
    sums = read_sha256sums(mirror) if mirror is not None else {}
    for asset in assets:
        dest = root / asset.dest
        if dest.exists() and sha256_file(dest) == asset.sha256:
            log.info("asset present name=%s path=%s", asset.name, dest)
            placed.append(dest)
            continue
        if mirror is not None:
            if asset.name in sums and sums[asset.name] != asset.sha256:
                raise AssetError(f"{asset.name}: mirror's SHA256SUMS disagrees with the known hash")
            src_path = mirror / asset.name
            if not src_path.exists():
                raise AssetError(f"{asset.name}: not in mirror {mirror}")

            def open_local(p: Path = src_path) -> tuple[BinaryIO, int | None]:
                return open(p, "rb"), p.stat().st_size

            log.info("asset copy name=%s from=%s", asset.name, src_path)
            _place(asset, dest, open_local, progress)
        else:

            def open_url(url: str = asset.url) -> tuple[BinaryIO, int | None]:
                if not url.startswith(("https://", "http://")):
                    raise AssetError(f"refusing non-HTTP URL {url}")
                resp = urllib.request.urlopen(url, timeout=timeout_s)  # noqa: S310 - scheme checked
                length = resp.headers.get("Content-Length")
                return resp, int(length) if length and length.isdigit() else None

            log.info("asset download name=%s url=%s", asset.name, asset.url)
            _place(asset, dest, open_url, progress)
        placed.append(dest)
    return placed


def default_mirror(root: Path) -> Path | None:
    """The workplace's shared asset folder beside the project, when it exists."""
    candidate = root.parent / "shared" / "assets"
    return candidate if (candidate / "SHA256SUMS").exists() else None


__all__ = ["ASSETS", "Asset", "AssetError", "default_mirror", "fetch_assets", "sha256_file"]
