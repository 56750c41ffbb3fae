"""A real RTSP camera for tests: GStreamer's gst-rtsp-server serving an H.264 mp4.

Two halves in one file:

- run as a script under Debian's ``/usr/bin/python3`` (where ``gi`` and
  GstRtspServer live, not in the venv), it serves ``rtsp://127.0.0.1:PORT/MOUNT``
  and prints ``READY <port>`` once listening;
- imported by the tests (venv Python), `RtspServer` starts that script as a child
  process on a given port, waits for READY, and kills it (SIGKILL = a dead camera);
  `make_h264_mp4` encodes vtest into an H.264 mp4 with PyAV's bundled libx264.

Nothing here imports ``gi`` or ``av`` at module import time.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

SYSTEM_PYTHON = "/usr/bin/python3"
_READY = "READY"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unavailable_reason() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None when it can."""
    if not Path(SYSTEM_PYTHON).exists():
        return f"{SYSTEM_PYTHON} not found (the RTSP server needs Debian's python3-gi)"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0');"
        "from gi.repository import Gst, GstRtspServer; Gst.init(None);"
        "missing = [e for e in ('filesrc', 'qtdemux', 'h264parse', 'rtph264pay')"
        " if Gst.ElementFactory.find(e) is None];"
        "print(','.join(missing))"
    )
    try:
        out = subprocess.run(
            [SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON}: {exc}"
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["no output"]
        return f"GstRtspServer not importable: {lines[-1]}"
    if out.stdout.strip():
        return f"GStreamer elements missing: {out.stdout.strip()}"
    return None


def make_h264_mp4(src: Path, dst: Path, max_frames: int | None = None, gop: int = 20) -> int:
    """Re-encode `src` into an H.264 (yuv420p) mp4 at its own frame rate; returns frames."""
    import av  # venv side only

    count = 0
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        in_stream = inp.streams.video[0]
        rate = in_stream.average_rate or 10
        stream = out.add_stream("libx264", rate=rate)
        stream.width = in_stream.codec_context.width
        stream.height = in_stream.codec_context.height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "g": str(gop)}
        for frame in inp.decode(in_stream):
            if max_frames is not None and count >= max_frames:
                break
            yuv = frame.reformat(format="yuv420p")
            yuv.pts = count
            yuv.time_base = Fraction(1, 1) / rate
            out.mux(stream.encode(yuv))
            count += 1
        out.mux(stream.encode(None))
    return count


class RtspServer:
    """The RTSP server as a child process; `start()`, `kill()`, `start()` again (same port)."""

    def __init__(self, media: Path, port: int | None = None, mount: str = "/cam") -> None:
        self.media = media
        self.port = port if port is not None else free_port()
        self.mount = mount
        self._proc: subprocess.Popen[str] | None = None

    def url(self, credentials: str | None = None) -> str:
        auth = f"{credentials}@" if credentials else ""
        return f"rtsp://{auth}127.0.0.1:{self.port}{self.mount}"

    def start(self, timeout_s: float = 15.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("RTSP server already running")
        cmd = [SYSTEM_PYTHON, __file__, "--port", str(self.port), "--mount", self.mount]
        cmd += ["--media", str(self.media)]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env["PATH"] = "/usr/bin:/bin"
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
        )
        self._wait_ready(timeout_s)

    def _wait_ready(self, timeout_s: float) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"RTSP server exited with {self._proc.returncode}")
            ready, _, _ = select.select([self._proc.stdout], [], [], 0.2)
            if ready and self._proc.stdout.readline().startswith(_READY):
                return
        self.kill()
        raise RuntimeError(f"RTSP server not ready within {timeout_s} s")

    def kill(self) -> None:
        """SIGKILL: the camera dies without a goodbye."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=10)
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP: the connection stays open but nothing more is sent (a frozen camera)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _serve(port: int, mount: str, media: str) -> None:  # runs under /usr/bin/python3
    import gi  # type: ignore[import-not-found]

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer  # type: ignore[import-not-found]

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( filesrc location="{media}" ! qtdemux ! h264parse '
        "! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory(mount, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on port {port}")
    print(f"{_READY} {port}", flush=True)
    loop = GLib.MainLoop()
    with contextlib.suppress(KeyboardInterrupt):
        loop.run()


def _main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/cam")
    parser.add_argument("--media", required=True)
    args = parser.parse_args(argv)
    _serve(args.port, args.mount, args.media)


if __name__ == "__main__":
    _main(sys.argv[1:])
