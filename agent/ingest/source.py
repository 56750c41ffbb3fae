"""Video sources through PyAV: files, RTSP cameras and V4L2 (USB) devices.

`SourceSpec.from_config` turns a source config into what `open_source` needs;
`open_source` returns an `OpenSource` whose `frames()` yields decoded frames with
their stream time. Every failure is a `SourceError` with a redacted message, chained
to the FFmpeg error it came from.

Decoder threading: slice threading or none, never frame threading (see
docs/ingest.md): FFmpeg's frame-threaded decoder has crashed whole processes on
corrupt input, reported against PyAV, and a camera feed is untrusted input.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import av
import av.error

from agent.ingest.redact import redact_text, redact_url

if TYPE_CHECKING:
    from agent.config.sources import SourceConfig

log = logging.getLogger(__name__)

_FALLBACK_RATE = 25.0
_LIVE_ANALYZE_US = 1_000_000
"""How much of a live stream FFmpeg may buffer to probe it at open (1 s, not its 5 s)."""


class StopWaiter(Protocol):
    """A stop signal one can wait on (`threading.Event` is one)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class SourceError(Exception):
    """A source failed. `retriable`: a reconnect may help."""

    retriable = True


class SourceOpenError(SourceError):
    """Could not open (unreachable, refused, not a video, no decodable stream)."""


class SourceAuthError(SourceOpenError):
    """The camera refused our credentials (401/403): retrying will not help."""

    retriable = False


class SourceReadError(SourceError):
    """Reading failed after a successful open (connection reset, I/O error)."""


class SourceEndedError(SourceError):
    """A live source reached end of stream (the camera went away)."""


class SourceStalledError(SourceError):
    """Connected, but no frame arrived within the stall timeout."""


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """Everything needed to open one source; `name` is safe to log."""

    target: str
    name: str
    live: bool
    loop: bool = False
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    open_timeout_s: float | None = None
    read_timeout_s: float | None = None
    decoder_threads: int = 1

    @staticmethod
    def from_config(
        cfg: SourceConfig, stall_timeout_s: float, decoder_threads: int = 1
    ) -> SourceSpec:
        if cfg.type == "file":
            return SourceSpec(
                target=str(cfg.path),
                name=str(cfg.path),
                live=False,
                loop=cfg.loop,
                decoder_threads=decoder_threads,
            )
        if cfg.type == "rtsp":
            micros = str(int(cfg.open_timeout_s * 1_000_000))
            options = {
                "rtsp_transport": cfg.transport,
                "timeout": micros,  # socket I/O timeout of FFmpeg's RTSP demuxer
                "analyzeduration": str(_LIVE_ANALYZE_US),
            }
            return SourceSpec(
                target=cfg.url,
                name=redact_url(cfg.url),
                live=True,
                options=options,
                open_timeout_s=cfg.open_timeout_s,
                read_timeout_s=stall_timeout_s,
                decoder_threads=decoder_threads,
            )
        options = {}
        if cfg.width is not None and cfg.height is not None:
            options["video_size"] = f"{cfg.width}x{cfg.height}"
        if cfg.fps is not None:
            options["framerate"] = f"{cfg.fps:g}"
        if cfg.input_format is not None:
            options["input_format"] = cfg.input_format
        return SourceSpec(
            target=cfg.device,
            name=cfg.device,
            live=True,
            format="v4l2",
            options=options,
            open_timeout_s=stall_timeout_s,
            read_timeout_s=stall_timeout_s,
            decoder_threads=decoder_threads,
        )


@dataclass(frozen=True, slots=True)
class DecodedFrame:
    frame: av.VideoFrame
    stream_time: float
    """Seconds; strictly increasing over a connection, and across loops of a file."""


def _av_timeout(spec: SourceSpec) -> tuple[float, float] | None:
    if spec.open_timeout_s is None and spec.read_timeout_s is None:
        return None
    # PyAV treats a timeout as "install FFmpeg's interrupt callback"; None means forever.
    return (spec.open_timeout_s or 3600.0, spec.read_timeout_s or 3600.0)


def open_source(spec: SourceSpec, clock: Callable[[], float] = time.monotonic) -> OpenSource:
    """Open and probe the source; raise SourceOpenError (retriable) with a redacted reason."""
    try:
        container = av.open(
            spec.target,
            mode="r",
            format=spec.format,
            options=dict(spec.options),
            timeout=_av_timeout(spec),
        )
    except (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError) as exc:
        raise SourceAuthError(f"{spec.name} refused access: {redact_text(str(exc))}") from exc
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise SourceOpenError(f"cannot open {spec.name}: {redact_text(str(exc))}") from exc
    try:
        return OpenSource(spec, container, clock)
    except BaseException:
        container.close()
        raise


class OpenSource:
    """An open container and its first video stream; iterate `frames()` on one thread."""

    def __init__(
        self, spec: SourceSpec, container: Any, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.spec = spec
        self._container = container
        self._clock = clock
        self._last_frame_clock = self._last_packet_clock = clock()
        if not container.streams.video:
            raise SourceOpenError(f"no video stream in {spec.name}")
        self._stream = container.streams.video[0]
        codec = self._stream.codec_context
        if codec is None:  # decoding without a codec context crashes PyAV (issue #2344)
            raise SourceOpenError(f"no decodable video stream in {spec.name}")
        codec.thread_type = "SLICE" if spec.decoder_threads > 1 else "NONE"
        codec.thread_count = spec.decoder_threads
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.rate = float(rate) if rate else _FALLBACK_RATE
        self.width = int(codec.width)
        self.height = int(codec.height)
        self.decode_errors = 0
        self._offset = 0.0
        self._last: float | None = None
        self._count = 0

    def frames(self) -> Generator[DecodedFrame, None, None]:
        """Decoded frames in order; raises SourceError subclasses, never FFmpeg's errors.

        A file ends by returning (after looping, if asked); a live source that ends
        raises SourceEndedError. Undecodable packets are skipped and counted.
        """
        while True:
            loop_start = self._count
            yield from self._one_pass()
            if self.spec.live:
                raise SourceEndedError(f"end of stream from {self.spec.name}")
            if not self.spec.loop or self._count == loop_start:
                return  # a looping file that yields nothing would spin forever
            self._rewind()

    def _one_pass(self) -> Iterator[DecodedFrame]:
        try:
            for packet in self._container.demux(self._stream):
                self._check_stall()
                frames = self._decode(packet)
                if frames:
                    self._last_frame_clock = self._clock()
                for frame in frames:
                    yield DecodedFrame(frame, self._stream_time(frame))
                self._last_packet_clock = self._clock()  # time the next read, not our consumer
        except av.error.ExitError as exc:  # the read timeout's interrupt
            raise SourceStalledError(
                f"no data from {self.spec.name} for {self.spec.read_timeout_s} s"
            ) from exc
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceReadError(
                f"read failed on {self.spec.name}: {redact_text(str(exc))}"
            ) from exc

    def _check_stall(self) -> None:
        """Raise when the last packet took the whole read timeout, or frames stopped coming.

        A read that hits the timeout may still hand over what it had (FFmpeg's RTSP
        demuxer returns a partial frame when interrupted), so a packet arriving after
        a gap of read_timeout_s counts as a stall, not as life.
        """
        limit = self.spec.read_timeout_s
        if limit is None:
            return
        now = self._clock()
        if now - self._last_packet_clock >= limit:
            raise SourceStalledError(f"no data from {self.spec.name} for {limit} s")
        if now - self._last_frame_clock > limit:
            raise SourceStalledError(f"packets but no frame from {self.spec.name} for {limit} s")

    def _decode(self, packet: Any) -> list[av.VideoFrame]:
        try:
            return list(packet.decode())
        except (av.error.InvalidDataError, av.error.UndefinedError, ValueError):
            self.decode_errors += 1
            return []

    def _stream_time(self, frame: av.VideoFrame) -> float:
        step = 1.0 / self.rate
        if frame.pts is not None and frame.time_base is not None:
            t = float(frame.pts * frame.time_base) + self._offset
        else:
            t = self._count * step if self._last is None else self._last + step
        if self._last is not None and t <= self._last:
            t = self._last + step
        self._last = t
        self._count += 1
        return t

    def _rewind(self) -> None:
        step = 1.0 / self.rate
        self._offset = (self._last if self._last is not None else 0.0) + step
        try:
            self._container.seek(0, any_frame=False, backward=True, stream=self._stream)
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceReadError(
                f"cannot rewind {self.spec.name}: {redact_text(str(exc))}"
            ) from exc
        first_pts = self._stream.start_time or 0
        self._offset -= float(first_pts * self._stream.time_base) if self._stream.time_base else 0

    def close(self) -> None:
        try:
            self._container.close()
        except (av.error.FFmpegError, OSError) as exc:
            log.debug("close failed source=%s error=%s", self.spec.name, redact_text(str(exc)))


class Pacer:
    """Holds frames back to the stream's own rate (files played as a live camera)."""

    def __init__(self, clock: Callable[[], float], max_lag_s: float = 1.0) -> None:
        self._clock = clock
        self._max_lag_s = max_lag_s
        self._anchor: tuple[float, float] | None = None

    def wait(self, stream_time: float, stop: StopWaiter) -> bool:
        """Wait until `stream_time` is due; False when `stop` was set meanwhile."""
        now = self._clock()
        if self._anchor is None:
            self._anchor = (now, stream_time)
            return not stop.is_set()
        wall0, t0 = self._anchor
        delay = wall0 + (stream_time - t0) - now
        if delay < -self._max_lag_s:  # far behind (a stall): catch up, don't burst
            self._anchor = (now, stream_time)
            return not stop.is_set()
        if delay <= 0:
            return not stop.is_set()
        return not stop.wait(delay)

    def reset(self) -> None:
        self._anchor = None
