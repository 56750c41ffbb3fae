"""Artifact downloads over HTTP(S) with resume, a size cap, a disk check and sha256.

`Downloader.download` writes `<sha256>.part` next to the final `<sha256>.bin` and
resumes an existing part with `Range: bytes=<have>-` (a server that answers 200
instead of 206 starts it over). It never writes more than the signed size, checks
the free space before the first byte, hashes the whole file after the last one
(the bytes on disk, not a checksum file) and only then renames it into place; a
mismatch deletes the part so the next attempt cannot build on bad bytes.

Only the standard library (`urllib`). Network failures and 5xx/408/429 answers are
`RetriableError`; anything else is an `OtaError` that is final for the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent.ota.errors import OtaError, ReasonCode, RetriableError
from agent.state import fsync_dir

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_RETRIABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

ProgressFn = Callable[[int, int], None]
"""(bytes on disk, total bytes), called at most every `progress_interval_s`."""


@dataclass(frozen=True)
class Artifact:
    """What the signed manifest promises about the bytes at `url`."""

    url: str
    size: int
    sha256: str


def _opener(ca_file: Path | None) -> urllib.request.OpenerDirector:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    return urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx))


def _classify(exc: BaseException, url: str) -> OtaError:
    if isinstance(exc, urllib.error.HTTPError):
        cls = RetriableError if exc.code in _RETRIABLE_STATUS else OtaError
        return cls(ReasonCode.DOWNLOAD_FAILED, f"HTTP {exc.code} for {url}")
    return RetriableError(ReasonCode.DOWNLOAD_FAILED, f"{type(exc).__name__}: {exc} ({url})")


_NET_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException, ValueError)


def fetch_small(url: str, max_bytes: int, timeout_s: float, ca_file: Path | None = None) -> bytes:
    """GET a small document (a manifest envelope), refusing more than `max_bytes`."""
    try:
        with _opener(ca_file).open(url, timeout=timeout_s) as resp:
            data: bytes = resp.read(max_bytes + 1)
    except _NET_ERRORS as exc:
        raise _classify(exc, url) from exc
    if len(data) > max_bytes:
        raise OtaError(ReasonCode.MALFORMED, f"{url}: more than {max_bytes} bytes")
    return data


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Downloader:
    """Resumable, size-capped, hash-checked downloads into one folder."""

    def __init__(
        self,
        folder: Path,
        *,
        timeout_s: float = 30.0,
        ca_file: Path | None = None,
        min_free_bytes: int = 0,
        progress_interval_s: float = 5.0,
        chunk_bytes: int = _CHUNK,
    ) -> None:
        self.folder = folder
        self._timeout_s = timeout_s
        self._ca_file = ca_file
        self._min_free = min_free_bytes
        self._progress_s = progress_interval_s
        self._chunk = chunk_bytes
        self._resumed: dict[str, bool] = {}
        """sha256 -> whether the part was built by more than one request."""

    def final_path(self, artifact: Artifact) -> Path:
        return self.folder / f"{artifact.sha256}.bin"

    def part_path(self, artifact: Artifact) -> Path:
        return self.folder / f"{artifact.sha256}.part"

    def download(
        self,
        artifact: Artifact,
        *,
        extra_bytes: int = 0,
        stop: threading.Event | None = None,
        progress: ProgressFn | None = None,
    ) -> Path:
        """`fetch` then `verify`: the verified file for `artifact`."""
        self.fetch(artifact, extra_bytes=extra_bytes, stop=stop, progress=progress)
        return self.verify(artifact)

    def fetch(
        self,
        artifact: Artifact,
        *,
        extra_bytes: int = 0,
        stop: threading.Event | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        """Bring `<sha256>.part` to the signed size (resuming it), unless already verified.

        `extra_bytes` is space needed after the download (e.g. to unpack it).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        part = self.part_path(artifact)
        if self.final_path(artifact).exists():
            return
        have = part.stat().st_size if part.exists() else 0
        if have > artifact.size:
            part.unlink()
            have = 0
        self._check_space(artifact.size - have + extra_bytes)
        if have < artifact.size:
            self._fetch(artifact, part, have, stop=stop, progress=progress)

    def verify(self, artifact: Artifact) -> Path:
        """Hash the fetched bytes; rename them to `<sha256>.bin` if they match.

        A mismatch deletes the bytes: `RetriableError` if they came from a resumed part
        (it may end in garbage after a power cut), else `OtaError(sha_mismatch)`.
        """
        final, part = self.final_path(artifact), self.part_path(artifact)
        if final.exists():
            if sha256_of(final) == artifact.sha256:
                return final
            final.unlink()
            raise RetriableError(ReasonCode.SHA_MISMATCH, f"{final} changed on disk")
        if not part.exists():
            raise RetriableError(ReasonCode.DOWNLOAD_FAILED, f"{part} is missing")
        resumed = self._resumed.pop(artifact.sha256, True)
        return self._finish(artifact, part, final, resumed=resumed)

    def discard(self, artifact: Artifact) -> None:
        for p in (self.final_path(artifact), self.part_path(artifact)):
            p.unlink(missing_ok=True)

    def _check_space(self, needed: int) -> None:
        free = shutil.disk_usage(self.folder).free
        if free - needed < self._min_free:
            raise OtaError(
                ReasonCode.NO_SPACE,
                f"{self.folder}: {free} bytes free, the update needs {needed} "
                f"and {self._min_free} must stay free",
            )

    def _fetch(
        self,
        artifact: Artifact,
        part: Path,
        have: int,
        *,
        stop: threading.Event | None,
        progress: ProgressFn | None,
    ) -> None:
        req = urllib.request.Request(artifact.url)  # noqa: S310 - scheme checked in the manifest
        if have:
            req.add_header("Range", f"bytes={have}-")
            self._resumed[artifact.sha256] = True
        else:
            self._resumed.setdefault(artifact.sha256, False)
        log.info("download start url=%s size=%d resume_from=%d", artifact.url, artifact.size, have)
        try:
            with _opener(self._ca_file).open(req, timeout=self._timeout_s) as resp:
                start = self._start_offset(resp, have, artifact)
                with open(part, "r+b" if start else "wb") as fh:
                    fh.seek(start)
                    fh.truncate()
                    self._copy(resp, fh, start, artifact, stop=stop, progress=progress)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have == artifact.size:
                return  # nothing left to fetch
            if exc.code == 416:
                part.unlink(missing_ok=True)
            raise _classify(exc, artifact.url) from exc
        except OtaError:
            raise
        except _NET_ERRORS as exc:
            raise _classify(exc, artifact.url) from exc

    @staticmethod
    def _start_offset(resp: http.client.HTTPResponse, have: int, artifact: Artifact) -> int:
        if resp.status == 206:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != have:
                raise RetriableError(
                    ReasonCode.DOWNLOAD_FAILED,
                    f"bad Content-Range {resp.headers.get('Content-Range')!r} for offset {have}",
                )
            return have
        if have:
            log.info("server ignored Range; restarting url=%s", artifact.url)
        return 0

    def _copy(
        self,
        resp: http.client.HTTPResponse,
        fh: BinaryIO,
        done: int,
        artifact: Artifact,
        *,
        stop: threading.Event | None,
        progress: ProgressFn | None,
    ) -> None:
        last_report = time.monotonic()
        while True:
            if stop is not None and stop.is_set():
                raise RetriableError(ReasonCode.DOWNLOAD_FAILED, "stopped")
            chunk = resp.read(min(self._chunk, artifact.size - done + 1))
            if not chunk:
                break
            done += len(chunk)
            if done > artifact.size:
                raise OtaError(
                    ReasonCode.TOO_LARGE,
                    f"{artifact.url}: server sent more than the signed {artifact.size} bytes",
                )
            fh.write(chunk)
            now = time.monotonic()
            if now - last_report >= self._progress_s:
                last_report = now
                fh.flush()
                log.info(
                    "download progress url=%s bytes=%d total=%d percent=%.0f",
                    artifact.url, done, artifact.size, 100.0 * done / max(artifact.size, 1),
                )  # fmt: skip
                if progress is not None:
                    progress(done, artifact.size)
        fh.flush()
        os.fsync(fh.fileno())
        if done < artifact.size:
            raise RetriableError(
                ReasonCode.DOWNLOAD_FAILED,
                f"{artifact.url}: connection ended at {done} of {artifact.size} bytes",
            )

    def _finish(self, artifact: Artifact, part: Path, final: Path, *, resumed: bool) -> Path:
        actual = sha256_of(part)
        if actual != artifact.sha256:
            with contextlib.suppress(OSError):
                part.unlink()
            # A part kept across a power cut may end in garbage: one fresh try before
            # calling the artifact itself bad.
            cls = RetriableError if resumed else OtaError
            raise cls(
                ReasonCode.SHA_MISMATCH,
                f"{artifact.url}: sha256 {actual} differs from the signed {artifact.sha256}",
            )
        os.replace(part, final)
        fsync_dir(self.folder)
        log.info("download done url=%s bytes=%d sha256=%s", artifact.url, artifact.size, actual)
        return final


__all__ = ["Artifact", "Downloader", "fetch_small", "sha256_of"]
