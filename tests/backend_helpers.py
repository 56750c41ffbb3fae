"""A test backend over a real one, for faults that cannot be had here for real.

`WrappedBackend` implements the agent's `Backend` protocol by delegating every member to
a real ONNX Runtime backend; a test subclasses it and overrides `infer` (slow, failing,
hanging, perturbed accelerators) and, where it matters, `name`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from agent.inference.backend import Backend


class WrappedBackend:
    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def input_name(self) -> str:
        return self.inner.input_name

    @property
    def dynamic_spatial(self) -> bool:
        return self.inner.dynamic_spatial

    def infer(self, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        return self.inner.infer(tensor)

    def close(self) -> None:
        self.inner.close()
