"""Batching across cameras for an accelerator: profile selection and batch assembly.

Pure code, no CUDA:

- `select_profile` reads the network input's shape (from the ONNX) and decides how
  the engine is built and driven. A static batch dimension (YOLOX-Nano's `[1, 3,
  416, 416]`) means the engine runs per frame; a dynamic one (`['batch', 3, 416,
  416]` or -1) gets one TensorRT optimisation profile min=1 / opt / max=max_batch,
  opt being the batch we expect most often (the number of cameras, capped).
- `gather_batch` is what the inference thread runs each turn: take the first
  ready frame (blocking up to a timeout), then keep taking the latest frames of
  other ready cameras until the batch is full, every expected camera is in, or a
  small wait budget (a few ms) is spent. The source is any `take(timeout)`
  callable, e.g. `FrameHub.take`, which already visits cameras round-robin.
- `split_outputs` cuts batched outputs back into per-frame outputs (views).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from agent.inference.errors import ModelShapeError

Dim = int | str | None
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class BatchProfile:
    """One TensorRT optimisation profile for the batch dimension."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")


@dataclass(frozen=True, slots=True)
class InputPlan:
    """How the network input is fed: its name, per-frame shape and batch range."""

    name: str
    chw: tuple[int, int, int]
    static_batch: bool
    profile: BatchProfile
    """For a static batch b: (b, b, b)."""

    @property
    def max_batch(self) -> int:
        return self.profile.max

    @property
    def per_frame(self) -> bool:
        """True when every inference is one frame (static batch 1)."""
        return self.static_batch and self.profile.max == 1

    def shape(self, batch: int) -> tuple[int, int, int, int]:
        return (batch, *self.chw)

    def profile_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) full shapes, as `IOptimizationProfile.set_shape` takes them."""
        p = self.profile
        return self.shape(p.min), self.shape(p.opt), self.shape(p.max)


def _static(dim: Dim) -> int | None:
    """An int > 0 is static; a name, None, 0 or -1 is dynamic (None returned)."""
    return dim if isinstance(dim, int) and dim > 0 else None


def select_profile(
    name: str,
    shape: Sequence[Dim],
    max_batch: int,
    expected_batch: int | None = None,
    input_hw: tuple[int, int] | None = None,
) -> InputPlan:
    """The input plan for an NCHW input of `shape` (as the ONNX declares it).

    `input_hw` (the manifest's height, width) fills dynamic spatial dims; a dynamic
    channel dim, or a dynamic spatial dim without `input_hw`, is a ModelShapeError.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if len(shape) != 4:
        raise ModelShapeError(f"input '{name}' has shape {list(shape)}: expected NCHW (4 dims)")
    channels = _static(shape[1])
    if channels is None:
        raise ModelShapeError(f"input '{name}' has a dynamic channel dimension {shape[1]!r}")
    hw: list[int] = []
    for offset, dim in enumerate(shape[2:]):
        fixed = _static(dim)
        if fixed is None:
            if input_hw is None:
                raise ModelShapeError(
                    f"input '{name}' dim {offset + 2} is dynamic ({dim!r}) and no input size "
                    "was given"
                )
            fixed = input_hw[offset]
        hw.append(fixed)
    chw = (channels, hw[0], hw[1])
    batch = _static(shape[0])
    if batch is not None:
        return InputPlan(name, chw, True, BatchProfile(batch, batch, batch))
    opt = max_batch if expected_batch is None else min(max(expected_batch, 1), max_batch)
    return InputPlan(name, chw, False, BatchProfile(1, opt, max_batch))


def gather_batch(
    take: Callable[[float], T | None],
    *,
    max_batch: int,
    wait_s: float,
    first_timeout_s: float,
    expected: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[T]:
    """Up to `max_batch` items: the first waited for up to `first_timeout_s`, the rest
    within `wait_s` of the first. Stops early once `expected` items (the cameras that
    are streaming) are in. `take(0)` must poll without blocking. [] on timeout.
    """
    first = take(first_timeout_s)
    if first is None:
        return []
    batch = [first]
    target = max_batch if expected is None else max(1, min(max_batch, expected))
    deadline = clock() + wait_s
    while len(batch) < target:
        item = take(max(0.0, deadline - clock()))
        if item is None:
            break
        batch.append(item)
    return batch


def split_outputs(
    outputs: Sequence[npt.NDArray[np.generic]], count: int
) -> list[list[npt.NDArray[np.generic]]]:
    """Per-frame outputs (each a [1, ...] view) from batched outputs of leading dim >= count."""
    short = [o.shape for o in outputs if o.ndim == 0 or o.shape[0] < count]
    if short:
        raise ValueError(f"outputs {short} have fewer than {count} rows")
    return [[o[i : i + 1] for o in outputs] for i in range(count)]


__all__ = [
    "BatchProfile",
    "InputPlan",
    "gather_batch",
    "select_profile",
    "split_outputs",
]
