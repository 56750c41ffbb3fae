"""OTA test helpers: real Ed25519 keys and signed manifests, model tars made the way the
fleet packs them, a real HTTP server with Range support (throttling and a mid-way cut
on demand), a recording ModelSwapper and a scripted health probe."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.inference.model import ModelFolder, load_model_folder
from fleet.signing import Manifest, generate_keypair, load_private_key, sign_manifest
from tests.model_helpers import make_model_dir

NOW = int(time.time())


@dataclass
class Keys:
    private: Path
    public: Path

    def sign(self, manifest: Manifest) -> bytes:
        return json.dumps(sign_manifest(manifest, load_private_key(self.private))).encode()


def make_keys(folder: Path, name: str = "fleet") -> Keys:
    keys = Keys(folder / f"{name}.key", folder / f"{name}.pub")
    generate_keypair(keys.private, keys.public)
    return keys


def model_tar(folder: Path) -> bytes:
    """A model folder packed as the fleet packs it: `<name>/<file>`, sorted, zero mtimes."""
    name = json.loads((folder / "model.json").read_text())["name"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(folder.iterdir()):
            data = p.read_bytes()  # follows the symlink to the shared ONNX
            info = tarfile.TarInfo(f"{name}/{p.name}")
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_version(tmp_path: Path, assets: Path, version: str, **over: Any) -> Path:
    """A model folder `v<version>` whose model.json says `version` (same ONNX bytes)."""
    return make_model_dir(tmp_path / f"v{version}", assets, version=version, **over)


@dataclass
class Served:
    data: bytes
    bytes_per_s: float | None = None
    cut_after: int | None = None
    """Drop the connection after this many bytes of the body (first request only)."""


@dataclass
class RangeServer:
    """A real HTTP server on 127.0.0.1 that honours `Range: bytes=N-`."""

    files: dict[str, Served] = field(default_factory=dict)
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)
    """(path, Range header, bytes sent) per request."""

    def __post_init__(self) -> None:
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                return None

            def do_GET(self) -> None:
                owner.handle(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def put(self, path: str, data: bytes, **kw: Any) -> str:
        self.files[path] = Served(data, **kw)
        return f"{self.url}{path}"

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        served = self.files.get(h.path)
        rng = h.headers.get("Range")
        if served is None:
            h.send_error(404)
            self.requests.append((h.path, rng, 0))
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match:
            start = int(match.group(1))
            if start >= len(served.data):
                h.send_response(416)
                h.send_header("Content-Range", f"bytes */{len(served.data)}")
                h.send_header("Content-Length", "0")
                h.end_headers()
                self.requests.append((h.path, rng, 0))
                return
            h.send_response(206)
            h.send_header(
                "Content-Range", f"bytes {start}-{len(served.data) - 1}/{len(served.data)}"
            )
        else:
            h.send_response(200)
        body = served.data[start:]
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        self.requests.append((h.path, rng, self._send(h, served, body)))

    @staticmethod
    def _send(h: http.server.BaseHTTPRequestHandler, served: Served, body: bytes) -> int:
        limit = len(body)
        if served.cut_after is not None:
            limit = min(limit, served.cut_after)
            served.cut_after = None
        sent, step = 0, 64 * 1024
        t0 = time.monotonic()
        try:
            while sent < limit:
                n = min(step, limit - sent)
                h.wfile.write(body[sent : sent + n])
                sent += n
                if served.bytes_per_s:
                    ahead = sent / served.bytes_per_s - (time.monotonic() - t0)
                    if ahead > 0:
                        time.sleep(ahead)  # throttling the server side, not a test sync
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if sent < len(body):
            h.close_connection = True
            h.connection.shutdown(2)
        return sent

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def manifest_for(
    data: bytes, url: str, *, kind: str = "model", name: str = "yolox_nano",
    version: str, sequence: int, ttl_s: int = 3600, issued_at: int = NOW, **over: Any,
) -> Manifest:  # fmt: skip
    fields: dict[str, Any] = {
        "kind": kind, "name": name, "version": version,
        "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "url": url,
        "sequence": sequence, "issued_at": issued_at, "expires_at": issued_at + ttl_s,
    }  # fmt: skip
    fields.update(over)
    return Manifest(**fields)


def publish(
    server: RangeServer, keys: Keys, data: bytes, *, version: str, sequence: int, **kw: Any
) -> str:
    """Serve `data` and its signed manifest; return the manifest URL."""
    kind = kw.get("kind", "model")
    ext = "tar" if kind == "model" else "yaml"
    url = server.put(f"/a/{version}-{sequence}.{ext}", data)
    m = manifest_for(data, url, version=version, sequence=sequence, **kw)
    return server.put(f"/m/{version}-{sequence}.json", keys.sign(m))


class RecordingSwapper:
    """A ModelSwapper that loads nothing itself: it records what it was asked to serve."""

    def __init__(self, folder: Path, fail_versions: tuple[str, ...] = ()) -> None:
        self.current = load_model_folder(folder, probe=False)
        self.swaps: list[str] = []
        self.fail_versions = fail_versions

    def swap_model(self, folder: ModelFolder) -> None:
        if folder.manifest.version in self.fail_versions:
            raise RuntimeError(f"cannot serve {folder.manifest.version}")
        self.swaps.append(folder.manifest.version)
        self.current = folder

    def current_model(self) -> ModelFolder:
        return self.current


class ScriptedProbe:
    """Health counters that grow with time; `errors_after_swap` makes a new model fail."""

    def __init__(self, swapper: RecordingSwapper, bad_versions: tuple[str, ...] = ()) -> None:
        self.t0 = time.monotonic()
        self.swapper = swapper
        self.bad_versions = bad_versions
        self.errors = 0

    def __call__(self) -> dict[str, Any]:
        frames = int((time.monotonic() - self.t0) * 100)
        if self.swapper.current.manifest.version in self.bad_versions:
            self.errors += 1
        return {"frames": frames, "detections": frames * 2, "inference_errors": self.errors,
                "fps": 100.0}  # fmt: skip


class Reports:
    """The reporter: keeps every payload and lets a test wait for one."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, payload: dict[str, Any]) -> None:
        with self._cond:
            self.items.append(payload)
            self._cond.notify_all()

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in reversed(self.items):
                    if pred(item):
                        found: dict[str, Any] = item
                        return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such report; last: {self.items[-1:]}")
                self._cond.wait(left)

    def states(self, kind: str = "model") -> list[str]:
        out: list[str] = []
        for item in self.items:
            upd = item["updates"].get(kind)
            if upd and (not out or out[-1] != upd["state"]):
                out.append(upd["state"])
        return out


def ended(version: str, kind: str = "model") -> Callable[[dict[str, Any]], bool]:
    def pred(item: dict[str, Any]) -> bool:
        upd = item["updates"].get(kind)
        if not upd or upd["version"] != version:
            return False
        if upd["state"] == "rolled_back":  # and switched back
            return bool(item["versions"].get(kind, "").split("@")[-1] != version)
        return upd["state"] in ("committed", "failed")

    return pred
