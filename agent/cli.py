"""`edge-agent` command line: run, detect, check-config, schema, assets."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from agent import __version__

log = logging.getLogger("agent.cli")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RESTART = 75
"""A config update needs a restart: systemd's Restart=always starts the new config."""


def _cmd_check_config(args: argparse.Namespace) -> int:
    from agent.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"config invalid:\n{exc}", file=sys.stderr)
        return EXIT_FAILED
    rules = sum(len(c.rules) for c in cfg.cameras)
    print(f"config OK: device={cfg.device.id} cameras={len(cfg.cameras)} rules={rules}")
    return EXIT_OK


def _cmd_schema(args: argparse.Namespace) -> int:
    from agent.config import json_schema

    text = json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _cmd_detect(args: argparse.Namespace) -> int:
    from agent.config import OnnxRuntimeBackendConfig
    from agent.inference.detector import Detector, detections_to_json, load_image
    from agent.inference.errors import InferenceError
    from agent.inference.model import load_model_folder
    from agent.inference.onnxrt import create_backend

    try:
        model = load_model_folder(Path(args.model))
        backend = create_backend(OnnxRuntimeBackendConfig(type="onnxruntime", workers=1), model)
        detector = Detector(model, backend, score_threshold=args.score)
        results = []
        for image_path in args.images:
            image = load_image(Path(image_path))
            dets = detector.detect_image(image)
            results.append(
                {
                    "image": image_path,
                    "width": int(image.shape[1]),
                    "height": int(image.shape[0]),
                    "detections": detections_to_json(dets, model.manifest.labels),
                }
            )
    except InferenceError as exc:
        print(f"detect failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    out: Any = results[0] if len(results) == 1 else results
    print(json.dumps(out, indent=2))
    return EXIT_OK


def _install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, _frame: FrameType | None) -> None:
        log.info("signal received signal=%s: stopping", signal.Signals(signum).name)
        # Not stop.set() here: the handler runs on the main thread, which may be inside
        # stop.wait() holding the event's lock, and set() would then wait on itself
        # forever (cpython#126434). A short-lived thread sets it instead.
        threading.Thread(target=stop.set, name="signal-stop", daemon=True).start()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _cmd_run(args: argparse.Namespace) -> int:
    from agent.app import Agent
    from agent.config import ConfigError, load_config
    from agent.health.prometheus import MetricsError
    from agent.inference.errors import InferenceError
    from agent.logs import configure_logging
    from agent.state import StateError

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"config invalid:\n{exc}", file=sys.stderr)
        return EXIT_FAILED
    configure_logging(args.log_level or cfg.logging.level, args.log_format or cfg.logging.format)
    cfg = _ota_active_config(cfg, Path(args.config))
    try:
        agent = Agent(cfg, max_frames=args.max_frames, config_path=Path(args.config))
    except (InferenceError, StateError, OSError) as exc:
        log.error("agent cannot start: %s", exc)
        print(f"agent cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _install_signal_handlers(agent.stop_event)
    try:
        agent.start()
        agent.wait()
    except (InferenceError, MetricsError) as exc:
        log.error("agent stopped: %s", exc)
        agent.close()
        return EXIT_FAILED
    summary = agent.close()
    _print_summary(summary.__dict__, args.summary_json)
    if agent.restart_requested:
        return EXIT_RESTART
    return EXIT_OK if summary.ok else EXIT_FAILED


def _ota_active_config(cfg: Any, provisioned: Path) -> Any:
    """The config OTA activated (state_dir/configs/active), else the provisioned one.

    Relative paths in either are relative to the provisioned file's folder. An activated
    config that no longer validates is logged and ignored: the device keeps running on
    the provisioned config rather than failing to start.
    """
    from agent.config import ConfigError, parse_config
    from agent.ota.staging import active_config_path

    active = active_config_path(cfg.device.state_dir)
    if active is None or not active.is_file():
        return cfg
    try:
        text = active.read_text(encoding="utf-8")
        return parse_config(text, str(active), provisioned.resolve().parent)
    except (OSError, UnicodeDecodeError, ConfigError) as exc:
        log.error("OTA config %s invalid, using %s: %s", active, provisioned, exc)
        return cfg


def _print_summary(summary: dict[str, Any], json_path: str | None) -> None:
    lines = [
        f"summary: boot={summary['boot_id']} duration={summary['duration_s']:.1f}s "
        f"events={summary['events']}"
    ]
    for cid, cam in summary["cameras"].items():
        lat = cam["frame_latency_ms"]
        lines.append(
            f"  camera {cid}: state={cam['state']} decoded={cam['frames_decoded']} "
            f"processed={cam['frames_processed']} dropped={cam['frames_dropped']} "
            f"reconnects={cam['reconnects']} events={cam['events']} "
            f"latency p50={lat['p50']}ms p99={lat['p99']}ms"
        )
    print("\n".join(lines), flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")


def _cmd_assets_fetch(args: argparse.Namespace) -> int:
    from agent.assets import AssetError, default_mirror, fetch_assets

    root = Path(args.root).resolve()
    mirror = Path(args.mirror).resolve() if args.mirror else default_mirror(root)
    try:
        paths = fetch_assets(root, mirror)
    except AssetError as exc:
        print(f"assets fetch failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for p in paths:
        print(f"ok {p}")
    return EXIT_OK


def _cmd_listen(args: argparse.Namespace) -> int:
    from agent.config.mqtt import MqttTlsConfig
    from agent.publish.listen import listen

    tls = None
    if args.ca_file or args.cert_file:
        tls = MqttTlsConfig(ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file)
    return listen(
        args.host,
        args.port,
        args.prefix,
        args.device,
        tls=tls,
        username=args.username,
        password_file=Path(args.password_file) if args.password_file else None,
        json_lines=args.json,
        max_events=args.max_events,
        timeout_s=args.timeout,
    )


def _trt_config(args: argparse.Namespace) -> Any:
    from agent.config import TensorRTBackendConfig

    return TensorRTBackendConfig(
        type="tensorrt", precision=args.precision, cache_dir=args.cache_dir
    )


def _cmd_models_build_engine(args: argparse.Namespace) -> int:
    from agent.inference.tensorrt.cli_ops import build_engine_cmd

    return build_engine_cmd(Path(args.model_dir), _trt_config(args), sys.stdout)


def _cmd_models_verify(args: argparse.Namespace) -> int:
    from agent.config import OnnxRuntimeBackendConfig
    from agent.inference.tensorrt.cli_ops import verify_cmd

    cfg = (
        _trt_config(args)
        if args.backend == "tensorrt"
        else OnnxRuntimeBackendConfig(type="onnxruntime", providers=args.providers)
    )
    return verify_cmd(Path(args.model_dir), cfg, sys.stdout)


def _add_models_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="model folders: TensorRT engines, verification")
    msub = models.add_subparsers(dest="models_command", required=True)
    build = msub.add_parser("build-engine", help="build (or reuse) the TensorRT engine")
    verify = msub.add_parser(
        "verify", help="compare a backend's outputs with ONNX Runtime CPU on golden inputs"
    )
    for p, func in ((build, _cmd_models_build_engine), (verify, _cmd_models_verify)):
        p.add_argument("model_dir", help="model folder (ONNX + model.json)")
        p.add_argument("--precision", choices=["fp16", "fp32"], default="fp16")
        p.add_argument("--cache-dir", type=Path, default=None, help="engine cache folder")
        p.set_defaults(func=func)
    verify.add_argument("--backend", choices=["tensorrt", "onnxruntime"], default="tensorrt")
    verify.add_argument(
        "--providers",
        nargs="+",
        default=["CPUExecutionProvider"],
        help="ONNX Runtime providers for --backend onnxruntime",
    )


def _add_listen_parser(sub: Any) -> None:
    lis = sub.add_parser("listen", help="print events from an MQTT broker (for operators)")
    lis.add_argument("--host", default="127.0.0.1")
    lis.add_argument("--port", type=int, default=1883)
    lis.add_argument("--prefix", default="edge")
    lis.add_argument("--device", default="+", help="device id, or + for all")
    lis.add_argument("--json", action="store_true", help="one JSON object per line")
    lis.add_argument("--max-events", type=int, default=None)
    lis.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
    lis.add_argument("--username", default=None)
    lis.add_argument("--password-file", default=None)
    lis.add_argument("--ca-file", default=None)
    lis.add_argument("--cert-file", default=None)
    lis.add_argument("--key-file", default=None)
    lis.set_defaults(func=_cmd_listen)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent on the configured cameras")
    run.add_argument("-c", "--config", required=True, help="YAML config file")
    run.add_argument("--max-frames", type=int, default=None, help="stop after N frames per camera")
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=None)
    run.add_argument("--log-format", choices=["text", "json"], default=None)
    run.add_argument("--summary-json", default=None, help="also write the summary to this file")
    run.set_defaults(func=_cmd_run)

    det = sub.add_parser("detect", help="run the detector on still images, print JSON")
    det.add_argument("images", nargs="+", help="image files (JPEG, PNG)")
    det.add_argument("--model", default="models/yolox_nano", help="model folder")
    det.add_argument(
        "--score-threshold",
        "--score",
        dest="score",
        type=float,
        default=None,
        help="score threshold override (default: the model manifest's)",
    )
    det.set_defaults(func=_cmd_detect)

    chk = sub.add_parser("check-config", help="validate a config file")
    chk.add_argument("config")
    chk.set_defaults(func=_cmd_check_config)

    sch = sub.add_parser("schema", help="print the config JSON Schema (for editors)")
    sch.add_argument("-o", "--output", default=None)
    sch.set_defaults(func=_cmd_schema)

    _add_models_parser(sub)
    _add_listen_parser(sub)

    assets = sub.add_parser("assets", help="sample model and video")
    assets_sub = assets.add_subparsers(dest="assets_command", required=True)
    fetch = assets_sub.add_parser("fetch", help="place the sample assets, verifying sha256")
    fetch.add_argument("--mirror", default=None, help="local folder holding the files")
    fetch.add_argument("--root", default=".", help="project root to place them under")
    fetch.set_defaults(func=_cmd_assets_fetch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "run":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    sys.exit(main())
