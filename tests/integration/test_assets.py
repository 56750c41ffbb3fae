"""Asset placement: from a local mirror and over real HTTP, always hash-verified."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.assets import ASSETS, Asset, AssetError, fetch_assets, sha256_file


def _quiet(*_: object) -> None:
    return None


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = _quiet  # type: ignore[method-assign]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_shared_mirror_places_verified_assets(tmp_path: Path, assets: Path) -> None:
    # given the shared asset folder as a mirror
    # when the assets are fetched into an empty project root
    placed = fetch_assets(tmp_path, assets, progress=lambda *_: None)
    # then each is in place with the known hash
    assert [p.relative_to(tmp_path).as_posix() for p in placed] == [a.dest for a in ASSETS]
    for asset, path in zip(ASSETS, placed, strict=True):
        assert sha256_file(path) == asset.sha256


def test_present_assets_are_not_copied_again(tmp_path: Path, assets: Path) -> None:
    fetch_assets(tmp_path, assets, progress=lambda *_: None)
    before = [(tmp_path / a.dest).stat().st_mtime_ns for a in ASSETS]
    fetch_assets(tmp_path, assets, progress=lambda *_: None)
    assert [(tmp_path / a.dest).stat().st_mtime_ns for a in ASSETS] == before


def test_download_over_http_with_progress(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base, www = http_root
    data = b"model bytes " * 50_000
    (www / "m.onnx").write_bytes(data)
    asset = Asset("m.onnx", hashlib.sha256(data).hexdigest(), f"{base}/m.onnx", "out/m.onnx")
    seen: list[int] = []
    [path] = fetch_assets(
        tmp_path, None, assets=(asset,), progress=lambda _n, d, _t: seen.append(d)
    )
    assert path.read_bytes() == data
    assert seen[-1] == len(data)


def test_corrupted_download_is_rejected_and_leaves_nothing(
    tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    base, www = http_root
    (www / "m.onnx").write_bytes(b"tampered")
    asset = Asset("m.onnx", "0" * 64, f"{base}/m.onnx", "out/m.onnx")
    with pytest.raises(AssetError, match="sha256 mismatch"):
        fetch_assets(tmp_path, None, assets=(asset,), progress=lambda *_: None)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unreachable_upstream_is_a_clear_error(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base, _ = http_root
    asset = Asset("m.onnx", "0" * 64, f"{base}/missing.onnx", "out/m.onnx")
    with pytest.raises(AssetError, match=r"m\.onnx: cannot fetch"):
        fetch_assets(tmp_path, None, assets=(asset,), progress=lambda *_: None)


def test_missing_file_in_mirror(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="not in mirror"):
        fetch_assets(tmp_path / "root", tmp_path, progress=lambda *_: None)
