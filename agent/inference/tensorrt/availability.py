"""Is the native TensorRT path usable here? tensorrt + pycuda importable and a CUDA device.

`probe()` imports the two Python modules and asks the CUDA driver for a device; it
creates no CUDA context and allocates nothing, so it is safe on any thread and
cheap enough to call at start-up. The result carries a one-line reason when the
path is unusable; `require()` turns that into `TensorRTUnavailable` ("TensorRT
unavailable: <reason>"), a `BackendError`, so the degradation ladder falls through
to ONNX Runtime and keeps serving.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.inference.errors import BackendError

Importer = Callable[[str], ModuleType]

_TRT_HINT = (
    "on JetPack install python3-libnvinfer and run the agent from a venv made with "
    "--system-site-packages (docs/jetson.md)"
)
_PYCUDA_HINT = "build pycuda against the device's CUDA (pip install pycuda; docs/jetson.md)"
L4T_RELEASE_FILE = Path("/etc/nv_tegra_release")


class TensorRTUnavailable(BackendError):
    """TensorRT, pycuda or a CUDA device is missing; the message says which."""


@dataclass(frozen=True, slots=True)
class Availability:
    """What `probe` found. `ok` only when every part is present."""

    ok: bool
    reason: str
    """Empty when ok; otherwise one line naming what is missing and how to fix it."""
    trt_version: str | None = None
    device_name: str | None = None
    compute_capability: str | None = None
    """'8.7' style (major.minor); part of the engine cache key."""
    device_count: int = 0
    platform: str = ""
    """JetPack/L4T release line where present (engines do not survive a JetPack upgrade)."""

    def message(self) -> str:
        return "TensorRT available" if self.ok else f"TensorRT unavailable: {self.reason}"


def _import(importer: Importer, name: str) -> tuple[ModuleType | None, str]:
    try:
        return importer(name), ""
    except ImportError as exc:
        return None, f"{exc}"
    except Exception as exc:  # a broken install raises OSError/RuntimeError from its .so
        return None, f"{type(exc).__name__}: {exc}"


def l4t_release(path: Path = L4T_RELEASE_FILE) -> str:
    """The first line of /etc/nv_tegra_release ('' when not a Jetson or unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.readline().strip()[:120]
    except OSError:
        return ""


def _device_facts(cuda: Any, index: int) -> tuple[int, str, str]:
    """(device count, name, 'major.minor') through the CUDA driver API; raises on failure."""
    cuda.init()
    count = int(cuda.Device.count())
    if count <= index:
        return count, "", ""
    dev = cuda.Device(index)
    major, minor = dev.compute_capability()
    return count, str(dev.name()), f"{int(major)}.{int(minor)}"


def probe(
    device_index: int = 0,
    importer: Importer = importlib.import_module,
    platform: Callable[[], str] = l4t_release,
) -> Availability:
    """Find tensorrt, pycuda and CUDA device `device_index`; never raises."""
    trt, err = _import(importer, "tensorrt")
    if trt is None:
        return Availability(False, f"python module 'tensorrt' not importable ({err}); {_TRT_HINT}")
    version = str(getattr(trt, "__version__", "") or "")
    if not version:
        return Availability(False, "module 'tensorrt' has no __version__ (broken install?)")
    cuda, err = _import(importer, "pycuda.driver")
    if cuda is None:
        return Availability(
            False,
            f"python module 'pycuda' not importable ({err}); {_PYCUDA_HINT}",
            trt_version=version,
        )
    try:
        count, name, cc = _device_facts(cuda, device_index)
    except Exception as exc:  # pycuda raises cuda.Error (RuntimeError subclass) and friends
        reason = f"CUDA driver initialisation failed: {exc} (driver installed? /dev/nvidia*?)"
        return Availability(False, reason, trt_version=version)
    if count <= device_index:
        reason = f"no CUDA device {device_index} (the driver reports {count} device(s))"
        return Availability(False, reason, trt_version=version, device_count=count)
    return Availability(
        True,
        "",
        trt_version=version,
        device_name=name,
        compute_capability=cc,
        device_count=count,
        platform=platform(),
    )


def require(device_index: int = 0, importer: Importer = importlib.import_module) -> Availability:
    """`probe`, raising TensorRTUnavailable with the reason when the path is unusable."""
    found = probe(device_index, importer)
    if not found.ok:
        raise TensorRTUnavailable(found.message())
    return found


def trt_major(version: str) -> int:
    """8 for '8.6.2.3', 10 for '10.3.0', 11 for '11.4.0.106'; ValueError on garbage."""
    head = version.strip().split(".", 1)[0]
    if not head.isdigit():
        raise ValueError(f"not a TensorRT version: {version!r}")
    return int(head)


__all__ = [
    "Availability",
    "Importer",
    "TensorRTUnavailable",
    "l4t_release",
    "probe",
    "require",
    "trt_major",
]
