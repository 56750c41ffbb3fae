"""ONNX Runtime backend: one InferenceSession per Detector (per worker thread).

Sessions are configured for the "many single-threaded sessions" layout the agent
uses on a CPU: `intra_op_threads` (default 1), one inter-op thread and sequential
execution. Requested execution providers that this onnxruntime build lacks are
dropped with a warning; if none is left the CPU provider is used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from agent.config.inference import OnnxRuntimeBackendConfig
from agent.inference.errors import BackendError
from agent.inference.model import ModelFolder, ModelIO, check_io, session_io
from agent.inference.onnx_shapes import with_dynamic_spatial_input

log = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"


def select_providers(requested: Sequence[str], available: Sequence[str]) -> list[str]:
    """Requested providers this build has, in order; CPU alone when none is left."""
    chosen = [p for p in requested if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        log.warning(
            "onnxruntime providers unavailable providers=%s available=%s",
            ",".join(missing),
            ",".join(available),
        )
    if not chosen:
        log.warning("onnxruntime falling back to provider=%s", CPU_PROVIDER)
        chosen = [CPU_PROVIDER]
    return chosen


class OnnxRuntimeBackend:
    """`Backend` on an onnxruntime InferenceSession. Not thread-safe by contract."""

    def __init__(
        self,
        onnx_path: str | Path,
        providers: Sequence[str] = (CPU_PROVIDER,),
        intra_op_threads: int = 1,
        *,
        dynamic_spatial: bool = False,
    ) -> None:
        """`dynamic_spatial`: load the graph with its input H and W made symbolic
        (`agent.inference.onnx_shapes`), for rectangular inference."""
        self._path = Path(onnx_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        chosen = select_providers(providers, ort.get_available_providers())
        try:
            source: str | bytes = str(self._path)
            if dynamic_spatial:
                source = with_dynamic_spatial_input(self._path.read_bytes())
                # loaded from bytes: external weight files are looked up next to the model
                folder = "session.model_external_initializers_file_folder_path"
                opts.add_session_config_entry(folder, str(self._path.parent))
            self._session: ort.InferenceSession | None = ort.InferenceSession(
                source, sess_options=opts, providers=chosen
            )
        except Exception as exc:  # ORT raises Fail / InvalidProtobuf / RuntimeError ...
            msg = f"onnxruntime cannot create a session for {self._path}: {exc}"
            raise BackendError(msg) from exc
        session = self._session
        self._input_name: str = session.get_inputs()[0].name
        spatial = session.get_inputs()[0].shape[2:]
        self._dynamic_spatial = not any(isinstance(d, int) for d in spatial)
        self.providers: list[str] = list(session.get_providers())
        self._name = f"onnxruntime:{self.providers[0]}"
        self.io: ModelIO = session_io(session)
        log.info(
            "onnxruntime session model=%s providers=%s intra_op_threads=%d",
            self._path.name,
            ",".join(self.providers),
            intra_op_threads,
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def input_name(self) -> str:
        return self._input_name

    @property
    def dynamic_spatial(self) -> bool:
        return self._dynamic_spatial

    def infer(self, tensor: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        if self._session is None:
            raise BackendError(f"{self._name}: session is closed")
        try:
            outputs = self._session.run(None, {self._input_name: tensor})
        except Exception as exc:
            raise BackendError(f"{self._name}: inference failed: {exc}") from exc
        return [np.asarray(o) for o in outputs]

    def close(self) -> None:
        self._session = None


def create_backend(cfg: OnnxRuntimeBackendConfig, model: ModelFolder) -> OnnxRuntimeBackend:
    """A backend for `model` as configured, its tensors checked against the manifest."""
    backend = OnnxRuntimeBackend(
        model.onnx_path,
        cfg.providers,
        cfg.intra_op_threads,
        dynamic_spatial=model.manifest.input.rect,
    )
    try:
        manifest = model.manifest
        check_io(backend.io, manifest, f"model {manifest.name}@{manifest.version}")
    except BaseException:
        backend.close()
        raise
    return backend


__all__ = ["CPU_PROVIDER", "OnnxRuntimeBackend", "create_backend", "select_providers"]
