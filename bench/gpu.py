"""GPU benchmark: the native TensorRT backend vs ONNX Runtime on the same GPU, and vs trtexec.

    .venv/bin/python bench/gpu.py [--model models/yolox_nano] [--precision fp16]
                                  [--iterations 1000] [--json bench/out/gpu.json]

Measures, on real vtest.avi frames preprocessed exactly as the agent does:

- TensorRT backend (`agent.inference.tensorrt`): frames/s and per-call latency
  p50/p95/p99, host->device copy, execute_async_v3, device->host copy included;
- ONNX Runtime with CUDAExecutionProvider on the same GPU (when this onnxruntime
  build has it), and ONNX Runtime CPU for scale;
- where `trtexec` exists (PATH or /usr/src/tensorrt/bin), `trtexec --loadEngine` on
  the very engine file the backend runs, and our throughput as a fraction of its
  (target >= 0.9).

Without tensorrt/pycuda/a CUDA device it prints "no GPU: not measured (<reason>)"
and exits 0, writing {"measured": false, ...} to --json if given.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agent.config.tensorrt import TensorRTBackendConfig  # noqa: E402
from agent.inference.tensorrt.availability import probe  # noqa: E402

TRTEXEC_CANDIDATES = ("/usr/src/tensorrt/bin/trtexec", "/usr/local/tensorrt/bin/trtexec")
Infer = Callable[[npt.NDArray[np.float32]], object]


def measure(
    infer: Infer, inputs: Sequence[npt.NDArray[np.float32]], warmup: int, n: int
) -> dict[str, float]:
    """frames/s and latency percentiles (ms) of `n` calls cycling over `inputs`."""
    for i in range(warmup):
        infer(inputs[i % len(inputs)])
    lat = np.empty(n, np.float64)
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        infer(inputs[i % len(inputs)])
        lat[i] = time.perf_counter() - t0
    total = time.perf_counter() - start
    p50, p95, p99 = np.percentile(lat * 1e3, [50, 95, 99])
    return {"fps": n / total, "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "calls": n}


def real_inputs(model: Any, video: Path, count: int) -> list[npt.NDArray[np.float32]]:
    import av

    from agent.inference.detector import Detector
    from agent.inference.onnxrt import OnnxRuntimeBackend

    prep = Detector(model, OnnxRuntimeBackend(model.onnx_path))
    out: list[npt.NDArray[np.float32]] = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            out.append(prep.preprocess_frame(frame)[0].copy())
            if len(out) >= count:
                break
    prep.close()
    return out


def find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    if found:
        return found
    return next((p for p in TRTEXEC_CANDIDATES if Path(p).is_file()), None)


def run_trtexec(trtexec: str, engine: Path, duration_s: int) -> dict[str, Any]:
    cmd = [trtexec, f"--loadEngine={engine}", "--warmUp=500", f"--duration={duration_s}"]
    proc = subprocess.run(  # noqa: S603 (argv list from a found binary, no shell)
        cmd, capture_output=True, text=True, timeout=duration_s + 120, check=False
    )
    match = re.search(r"Throughput:\s*([\d.]+)\s*qps", proc.stdout)
    if proc.returncode != 0 or match is None:
        return {"ok": False, "rc": proc.returncode, "tail": proc.stdout[-800:] + proc.stderr[-800:]}
    return {"ok": True, "qps": float(match.group(1)), "cmd": " ".join(cmd)}


def bench_ort(
    model: Any, provider: str, inputs: list[npt.NDArray[np.float32]], n: int
) -> dict[str, Any]:
    import onnxruntime as ort

    from agent.inference.onnxrt import OnnxRuntimeBackend

    if provider not in ort.get_available_providers():
        return {"measured": False, "reason": f"this onnxruntime build has no {provider}"}
    backend = OnnxRuntimeBackend(model.onnx_path, (provider,), intra_op_threads=0)
    try:
        return {"measured": True, **measure(backend.infer, inputs, 20, n)}
    finally:
        backend.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from agent.inference.model import load_model_folder
    from agent.inference.tensorrt.engines import open_engine

    avail = probe()
    if not avail.ok:
        return {"measured": False, "reason": avail.message()}
    model = load_model_folder(args.model)
    inputs = real_inputs(model, args.video, 64)
    cfg = TensorRTBackendConfig(type="tensorrt", precision=args.precision, cache_dir=args.cache_dir)
    backend, ready = open_engine(cfg, model, allow_build=True, sink=lambda s: print(f"  {s}"))
    try:
        trt = measure(backend.infer, inputs, 50, args.iterations)
    finally:
        backend.close()
    result: dict[str, Any] = {
        "measured": True,
        "device": avail.device_name,
        "compute_capability": avail.compute_capability,
        "tensorrt": avail.trt_version,
        "precision": ready.plan.precision,
        "engine": str(ready.path),
        "tensorrt_backend": trt,
        "onnxruntime_cuda": bench_ort(model, "CUDAExecutionProvider", inputs, args.iterations),
        "onnxruntime_cpu": bench_ort(model, "CPUExecutionProvider", inputs, 200),
    }
    trtexec = find_trtexec()
    if trtexec is None:
        result["trtexec"] = {"ok": False, "reason": "trtexec not found"}
    else:
        result["trtexec"] = run_trtexec(trtexec, ready.path, args.trtexec_duration)
        if result["trtexec"]["ok"]:
            result["fraction_of_trtexec"] = trt["fps"] / result["trtexec"]["qps"]
    return result


def report(result: dict[str, Any]) -> str:
    if not result["measured"]:
        return f"no GPU: not measured ({result['reason']})"
    lines = [
        f"device={result['device']} cc={result['compute_capability']} "
        f"tensorrt={result['tensorrt']} precision={result['precision']}"
    ]
    for name in ("tensorrt_backend", "onnxruntime_cuda", "onnxruntime_cpu"):
        r = result[name]
        if r.get("measured", True):
            lines.append(
                f"{name:18s} {r['fps']:8.1f} frames/s  p50 {r['p50_ms']:.2f} ms  "
                f"p95 {r['p95_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
            )
        else:
            lines.append(f"{name:18s} not measured: {r['reason']}")
    tx = result["trtexec"]
    if tx.get("ok"):
        frac = result["fraction_of_trtexec"]
        lines.append(
            f"trtexec --loadEngine {tx['qps']:.1f} qps; ours = {frac:.2f} of it (target >= 0.9)"
        )
    else:
        lines.append(f"trtexec: {tx.get('reason') or 'failed: ' + str(tx.get('tail', ''))}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "yolox_nano")
    parser.add_argument(
        "--video", type=Path, default=REPO.parent / "shared" / "assets" / "vtest.avi"
    )
    parser.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--trtexec-duration", type=int, default=10)
    parser.add_argument("--cache-dir", type=Path, default=REPO / "var" / "engines")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
