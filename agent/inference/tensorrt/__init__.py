"""Native TensorRT backend for Jetson-class devices (TensorRT 8.6 / 10.x / 11, pycuda).

    availability.py  is TensorRT usable here? (tensorrt, pycuda, a CUDA device)
    onnx_facts.py    input shape, Q/DQ and FP16 facts read from the ONNX protobuf
    builder.py       build plan per TensorRT version, engine build with progress and budget
    engine_cache.py  engines on disk, keyed and indexed; stale/corrupt ones detected
    backend.py       TensorRTBackend: tensor-address API, execute_async_v3, one stream
    engines.py       create_tensorrt_backend / ensure_engine: key -> cache -> build -> load
    batching.py      optimisation profile selection and batch assembly across cameras
    cli_ops.py       `edge-agent models build-engine` / `models verify`

Nothing is imported here: importing the package loads neither TensorRT nor CUDA.
See docs/jetson.md.
"""
