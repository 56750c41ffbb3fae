"""Artifact downloads over real HTTP: Range resume, size cap, sha256, disk space, errors."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.ota.download import Artifact, Downloader
from agent.ota.errors import OtaError, ReasonCode, RetriableError
from tests.ota_helpers import RangeServer

DATA = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server() -> Iterator[RangeServer]:
    srv = RangeServer()
    yield srv
    srv.stop()


def test_interrupted_download_resumes_with_range(server: RangeServer, tmp_path: Path) -> None:
    # given a server that drops the connection after 1 MiB on the first request
    url = server.put("/a.bin", DATA, cut_after=1024 * 1024)
    dl = Downloader(tmp_path / "dl", timeout_s=5)
    art = Artifact(url, len(DATA), SHA)
    # when the first attempt fails part-way
    with pytest.raises(RetriableError):
        dl.download(art)
    assert dl.part_path(art).stat().st_size == 1024 * 1024
    # and a second attempt is made
    path = dl.download(art)
    # then it asked only for the rest, and the file is complete and verified
    assert path.read_bytes() == DATA
    assert server.requests[-1][1] == f"bytes={1024 * 1024}-"
    assert sum(sent for _, _, sent in server.requests) == len(DATA)
    assert not dl.part_path(art).exists()


def test_sha_mismatch_deletes_the_bytes_and_is_final(server: RangeServer, tmp_path: Path) -> None:
    tampered = DATA[:-1] + bytes([DATA[-1] ^ 0xFF])
    url = server.put("/a.bin", tampered)
    dl = Downloader(tmp_path / "dl", timeout_s=5)
    art = Artifact(url, len(DATA), SHA)
    with pytest.raises(OtaError) as err:
        dl.download(art)
    assert err.value.reason is ReasonCode.SHA_MISMATCH and not err.value.retriable
    assert list((tmp_path / "dl").iterdir()) == []


def test_server_sending_more_than_the_signed_size_is_stopped(
    server: RangeServer, tmp_path: Path
) -> None:
    url = server.put("/a.bin", DATA + b"more")
    dl = Downloader(tmp_path / "dl", timeout_s=5)
    with pytest.raises(OtaError) as err:
        dl.download(Artifact(url, len(DATA), SHA))
    assert err.value.reason is ReasonCode.TOO_LARGE
    assert dl.part_path(Artifact(url, len(DATA), SHA)).stat().st_size <= len(DATA)


def test_no_space_is_refused_before_the_first_byte(server: RangeServer, tmp_path: Path) -> None:
    url = server.put("/a.bin", DATA)
    dl = Downloader(tmp_path / "dl", timeout_s=5, min_free_bytes=1 << 62)
    with pytest.raises(OtaError) as err:
        dl.download(Artifact(url, len(DATA), SHA))
    assert err.value.reason is ReasonCode.NO_SPACE
    assert server.requests == []


def test_missing_artifact_is_final_and_server_errors_are_retriable(
    server: RangeServer, tmp_path: Path
) -> None:
    dl = Downloader(tmp_path / "dl", timeout_s=5)
    with pytest.raises(OtaError) as err:
        dl.download(Artifact(f"{server.url}/missing", 10, SHA))
    assert err.value.reason is ReasonCode.DOWNLOAD_FAILED and not err.value.retriable
    closed = RangeServer()
    closed.stop()  # nothing listens on that port any more
    with pytest.raises(RetriableError):
        dl.download(Artifact(f"{closed.url}/a.bin", 10, SHA))


def test_a_verified_file_is_not_downloaded_again(server: RangeServer, tmp_path: Path) -> None:
    url = server.put("/a.bin", DATA)
    dl = Downloader(tmp_path / "dl", timeout_s=5)
    art = Artifact(url, len(DATA), SHA)
    dl.download(art)
    dl.download(art)
    assert len(server.requests) == 1
