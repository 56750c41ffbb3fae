"""The inference backend interface: one small Protocol at the accelerator's edge.

A backend owns one runtime session for one model and runs a prepared input
tensor. Implementations: `onnxrt.OnnxRuntimeBackend` (CPU, CUDA/TensorRT EPs);
a native TensorRT backend plugs in behind the same interface. Tests may pass
their own implementation where the real runtime cannot run.

A backend is used by one thread at a time (the Detector that owns it).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt


class Backend(Protocol):
    @property
    def name(self) -> str:
        """Short name for health and logs, e.g. 'onnxruntime:CPUExecutionProvider'."""
        ...

    @property
    def input_name(self) -> str:
        """Name of the network's single input tensor."""
        ...

    @property
    def dynamic_spatial(self) -> bool:
        """True when `infer` takes any input height and width (rectangular inference)."""
        ...

    def infer(self, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        """Run one [1, 3, H, W] float32 tensor; return the outputs in the model's order.

        Raises BackendError on a runtime failure.
        """
        ...

    def close(self) -> None:
        """Release the session; idempotent."""
        ...


__all__ = ["Backend"]
