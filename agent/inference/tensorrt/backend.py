"""The native TensorRT backend: a deserialised engine run with the tensor-address API.

`TensorRTBackend` implements `agent.inference.backend.Backend`:

- the device's *primary* CUDA context (the one the CUDA runtime, hence TensorRT,
  uses) is retained and pushed once, on the thread that constructs the backend;
- one input and N outputs get a pinned (page-locked) host buffer and a device
  buffer each, sized for the engine's largest batch, bound once with
  `IExecutionContext.set_tensor_address`;
- `infer` copies host->device, runs `execute_async_v3` and copies device->host on
  one CUDA stream, then synchronises that stream only;
- `input_buffer(n)` hands out the pinned input buffer itself so preprocessing can
  write the tensor there directly (no extra host copy: `infer` sees it is already
  in place).

Threading: ALL calls (construction, infer, input_buffer) must come from one thread,
the accelerator's inference thread; `infer` from another thread raises BackendError.
`close` may run on another thread after that one has stopped (it pushes the context
there to free the buffers). Works with TensorRT 8.6, 10.x and 11 (same runtime API).
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.inference.errors import BackendError
from agent.inference.model import ModelIO, TensorSpec
from agent.inference.tensorrt.availability import TensorRTUnavailable

log = logging.getLogger(__name__)


class EngineLoadError(BackendError):
    """TensorRT refused the serialised engine (another TensorRT version or GPU, or corrupt)."""


@dataclass(slots=True)
class _Tensor:
    name: str
    is_input: bool
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    """As the engine declares it: -1 where dynamic."""
    max_shape: tuple[int, ...]
    host: npt.NDArray[Any]
    """Flat pinned buffer of volume(max_shape) elements."""
    device: Any
    """pycuda DeviceAllocation."""
    current: tuple[int, ...] = ()


def _volume(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def io_spec(tensors: list[_Tensor]) -> ModelIO:
    """The engine's signature in the ONNX Runtime style (-1 dims as None: 'any size')."""

    def spec(t: _Tensor) -> TensorSpec:
        return TensorSpec(t.name, tuple(None if d < 0 else d for d in t.shape), str(t.dtype))

    return ModelIO(
        inputs=tuple(spec(t) for t in tensors if t.is_input),
        outputs=tuple(spec(t) for t in tensors if not t.is_input),
    )


class TensorRTBackend:
    """`Backend` on a serialised TensorRT engine. One thread only (see the module doc)."""

    def __init__(self, engine: bytes, *, device_index: int = 0, label: str = "tensorrt") -> None:
        try:
            self._trt = importlib.import_module("tensorrt")
            self._cuda = importlib.import_module("pycuda.driver")
        except ImportError as exc:
            raise TensorRTUnavailable(f"TensorRT unavailable: {exc}") from exc
        self._owner = threading.get_ident()
        self._name = label
        self._tensors: list[_Tensor] = []
        self._closed = False
        try:
            self._cuda.init()
            self._ctx = self._cuda.Device(device_index).retain_primary_context()
            self._ctx.push()
        except Exception as exc:  # pycuda.driver.Error
            self._closed = True
            raise BackendError(f"{label}: CUDA device {device_index} unusable: {exc}") from exc
        try:
            self._logger = self._trt.Logger(self._trt.Logger.WARNING)
            self._runtime = self._trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(engine)
            if self._engine is None:
                raise EngineLoadError(
                    f"TensorRT {self._trt.__version__} cannot deserialise the engine "
                    "(built by another TensorRT version or GPU, or corrupt)"
                )
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise BackendError("TensorRT cannot create an execution context (GPU memory?)")
            self._stream = self._cuda.Stream()
            self._allocate()
        except BackendError:
            self.close()
            raise
        except Exception as exc:  # pycuda/TensorRT raise their own types
            self.close()
            raise BackendError(f"{label}: engine set-up failed: {exc}") from exc
        self.io: ModelIO = io_spec(self._tensors)
        log.info(
            "tensorrt engine loaded trt=%s inputs=%s outputs=%d max_batch=%d",
            self._trt.__version__,
            self._input.shape,
            len(self._tensors) - 1,
            self.max_batch,
        )

    # -- set-up -------------------------------------------------------------------------

    def _max_batch(self, name: str, shape: tuple[int, ...]) -> int:
        if shape[0] >= 0:
            return shape[0]
        profile = self._engine.get_tensor_profile_shape(name, 0)
        return int(profile[2][0])

    def _allocate(self) -> None:
        trt, engine, ctx = self._trt, self._engine, self._context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise BackendError(f"the engine has {len(inputs)} inputs; this backend feeds one")
        in_shape = tuple(int(d) for d in engine.get_tensor_shape(inputs[0]))
        if any(d < 0 for d in in_shape[1:]):
            raise BackendError(f"input {inputs[0]} {in_shape}: only the batch dim may be dynamic")
        self.max_batch = self._max_batch(inputs[0], in_shape)
        self.dynamic_batch = in_shape[0] < 0
        if self.dynamic_batch:
            ctx.set_input_shape(inputs[0], (self.max_batch, *in_shape[1:]))
        for name in [inputs[0]] + [n for n in names if n not in inputs]:
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            max_shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in max_shape):
                raise BackendError(f"tensor {name} has a data-dependent shape {max_shape}")
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            host = self._cuda.pagelocked_empty(_volume(max_shape), dtype)
            device = self._cuda.mem_alloc(max(host.nbytes, 1))
            ctx.set_tensor_address(name, int(device))
            self._tensors.append(
                _Tensor(name, name == inputs[0], dtype, shape, max_shape, host, device, max_shape)
            )
        self._input = self._tensors[0]
        self._batch = self.max_batch

    # -- Backend ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def input_name(self) -> str:
        return self._input.name

    @property
    def dynamic_spatial(self) -> bool:
        """False: engines are built for the manifest's input size (see engines.py)."""
        return False

    def _check_thread(self) -> None:
        if self._closed:
            raise BackendError(f"{self._name}: backend is closed")
        if threading.get_ident() != self._owner:
            raise BackendError(
                f"{self._name}: called from thread {threading.current_thread().name}; all CUDA "
                "work must stay on the thread that created the backend"
            )

    def _set_batch(self, batch: int) -> None:
        if not 1 <= batch <= self.max_batch:
            raise BackendError(f"{self._name}: batch {batch} outside 1..{self.max_batch}")
        if batch == self._batch:
            return
        if not self.dynamic_batch:
            raise BackendError(f"{self._name}: static batch {self.max_batch}, got {batch}")
        if not self._context.set_input_shape(self._input.name, (batch, *self._input.shape[1:])):
            raise BackendError(f"{self._name}: TensorRT rejected batch {batch}")
        for t in self._tensors:
            t.current = tuple(int(d) for d in self._context.get_tensor_shape(t.name))
        self._batch = batch

    def input_buffer(self, batch: int = 1) -> npt.NDArray[Any]:
        """The pinned input tensor for `batch` frames: write into it, then `infer` it."""
        self._check_thread()
        self._set_batch(batch)
        t = self._input
        return t.host[: _volume(t.current)].reshape(t.current)

    def infer(self, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        """Run [N, C, H, W] (N <= max_batch; 1 for a static batch-1 engine)."""
        self._check_thread()
        if tensor.ndim != 4 or tuple(tensor.shape[1:]) != self._input.shape[1:]:
            raise BackendError(
                f"{self._name}: input shape {tensor.shape} != [N, {list(self._input.shape[1:])}]"
            )
        self._set_batch(int(tensor.shape[0]))
        staged = self._input.host[: _volume(self._input.current)].reshape(self._input.current)
        if not np.shares_memory(tensor, staged):
            np.copyto(staged, tensor, casting="same_kind")
        try:
            return self._run(staged)
        except BackendError:
            raise
        except Exception as exc:  # pycuda.driver.Error and friends
            raise BackendError(f"{self._name}: inference failed: {exc}") from exc

    def _run(self, staged: npt.NDArray[Any]) -> list[npt.NDArray[np.generic]]:
        cuda, stream = self._cuda, self._stream
        cuda.memcpy_htod_async(self._input.device, staged, stream)
        if not self._context.execute_async_v3(stream.handle):
            raise BackendError(f"{self._name}: execute_async_v3 failed")
        views = []
        for t in self._tensors[1:]:
            view = t.host[: _volume(t.current)]
            cuda.memcpy_dtoh_async(view, t.device, stream)
            views.append(view.reshape(t.current))
        stream.synchronize()
        return [v.astype(np.float32) if v.dtype.kind == "f" else v.copy() for v in views]

    # -- teardown -----------------------------------------------------------------------

    def _release(self) -> None:
        for t in self._tensors:
            try:
                t.device.free()
            except Exception as exc:
                log.warning("tensorrt device buffer free failed tensor=%s error=%s", t.name, exc)
        self._tensors = []
        for attr in ("_context", "_engine", "_runtime", "_stream"):
            if hasattr(self, attr):
                delattr(self, attr)

    def close(self) -> None:
        """Free buffers and the engine, pop and release the primary context; idempotent."""
        if self._closed:
            return
        self._closed = True
        foreign = threading.get_ident() != self._owner
        if foreign:
            self._ctx.push()
        try:
            self._release()
        finally:
            self._cuda.Context.pop()
            self._ctx.detach()


__all__ = ["EngineLoadError", "TensorRTBackend", "io_spec"]
