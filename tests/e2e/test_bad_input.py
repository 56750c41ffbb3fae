"""Bad input of every kind gets a clear error and an exit status, never a traceback."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

from tests.agent_helpers import agent_config, read_events, run_agent
from tests.model_helpers import make_model_dir
from tests.rtsp_server import free_port


def _assert_clean_failure(proc: object, *needles: str) -> str:
    rc = proc.returncode  # type: ignore[attr-defined]
    text = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    assert rc == 1, text[-2000:]
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, text[-2000:]
    return str(text)


def test_config_with_wrong_types_and_unknown_keys(tmp_path: Path, assets: Path) -> None:
    cfg = agent_config(tmp_path, assets, camera={"max_fps": "fast", "colour": "red"})
    for command in ("check-config", "run"):
        args = [command, str(cfg)] if command == "check-config" else ["run", "-c", str(cfg)]
        proc = run_agent(*args)
        _assert_clean_failure(
            proc,
            "cameras.0.max_fps: Input should be a valid number",
            "cameras.0.colour: Extra inputs are not permitted",
        )


def test_missing_model_file(tmp_path: Path, assets: Path) -> None:
    cfg = agent_config(tmp_path, assets)
    (tmp_path / "model" / "yolox_nano.onnx").unlink()
    _assert_clean_failure(run_agent("run", "-c", str(cfg)), "agent cannot start", "yolox_nano.onnx")


def test_corrupt_model_file(tmp_path: Path, assets: Path) -> None:
    cfg = agent_config(tmp_path, assets)
    onnx = tmp_path / "model" / "yolox_nano.onnx"
    onnx.unlink()
    onnx.write_bytes((assets / "yolox_nano.onnx").read_bytes()[:100_000])
    text = _assert_clean_failure(run_agent("run", "-c", str(cfg)), "agent cannot start")
    assert "sha256" in text


def test_corrupt_model_with_matching_manifest_hash(tmp_path: Path, assets: Path) -> None:
    # a manifest that vouches for a broken file: the loader must still refuse it
    garbage = os.urandom(4096)
    import hashlib

    make_model_dir(tmp_path, assets, name="bad", sha256=hashlib.sha256(garbage).hexdigest())
    (tmp_path / "bad" / "yolox_nano.onnx").unlink()
    (tmp_path / "bad" / "yolox_nano.onnx").write_bytes(garbage)
    cfg = agent_config(tmp_path, assets, extra={"model": {"path": str(tmp_path / "bad")}})
    _assert_clean_failure(run_agent("run", "-c", str(cfg)), "agent cannot start")


def test_truncated_video_processes_what_it_can(tmp_path: Path, assets: Path) -> None:
    data = (assets / "vtest.avi").read_bytes()
    video = tmp_path / "truncated.avi"
    video.write_bytes(data[: len(data) // 3])
    cfg = agent_config(tmp_path, assets, source={"type": "file", "path": str(video)})
    proc = run_agent("run", "-c", str(cfg), "--summary-json", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    cam = json.loads((tmp_path / "s.json").read_text())["cameras"]["street"]
    assert cam["state"] == "finished"
    assert 100 < cam["frames_processed"] < 795


def test_garbage_video_fails_the_camera_clearly(tmp_path: Path, assets: Path) -> None:
    video = tmp_path / "garbage.avi"
    video.write_bytes(os.urandom(200_000))
    cfg = agent_config(
        tmp_path,
        assets,
        source={"type": "file", "path": str(video)},
        camera={"reconnect": {"initial_s": 0.05, "max_s": 0.1, "max_attempts": 2}},
    )
    text = _assert_clean_failure(run_agent("run", "-c", str(cfg)), "state=failed")
    assert "garbage.avi" in text
    # the dead camera is itself an alert: raised once, closed at shutdown
    events = read_events(tmp_path / "events.jsonl")
    assert [(e["rule_id"], e["phase"]) for e in events] == [
        ("camera-offline", "start"),
        ("camera-offline", "end"),
    ]
    assert events[0]["attributes"]["state"] == "reconnecting"


def test_rtsp_url_that_does_not_answer(tmp_path: Path, assets: Path) -> None:
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/stream"
    cfg = agent_config(
        tmp_path,
        assets,
        source={"type": "rtsp", "url": url, "open_timeout_s": 2},
        camera={"reconnect": {"initial_s": 0.05, "max_s": 0.1, "max_attempts": 2}},
    )
    text = _assert_clean_failure(run_agent("run", "-c", str(cfg)), "state=failed")
    assert "hunter2" not in text
    assert "127.0.0.1" in text


def test_detect_cli_finds_person_and_dog(tmp_path: Path, assets: Path) -> None:
    model = make_model_dir(tmp_path, assets)
    proc = run_agent("detect", str(assets / "person.jpg"), "--model", str(model))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    labels = {d["label"] for d in result["detections"] if d["score"] > 0.7}
    assert {"person", "dog"} <= labels
    for det in result["detections"]:
        x1, y1, x2, y2 = det["box"]
        assert 0 <= x1 < x2 <= result["width"]
        assert 0 <= y1 < y2 <= result["height"]


def test_detect_cli_on_unreadable_image(tmp_path: Path, assets: Path) -> None:
    model = make_model_dir(tmp_path, assets)
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"this is text")
    _assert_clean_failure(run_agent("detect", str(bad), "--model", str(model)), "detect failed")


def test_unwritable_state_folder(tmp_path: Path, assets: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    cfg = agent_config(tmp_path, assets, extra={"device": {"id": "d", "state_dir": str(blocker)}})
    _assert_clean_failure(run_agent("run", "-c", str(cfg)), "agent cannot start", "state folder")
    shutil.rmtree(tmp_path / "model")


def test_listen_cli_reports_an_unreachable_broker(tmp_path: Path) -> None:
    proc = run_agent("listen", "--port", str(free_port()), "--timeout", "2")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "127.0.0.1" in proc.stdout + proc.stderr


def test_stream_with_corrupt_packets_is_decoded_past_the_damage(
    tmp_path: Path, assets: Path
) -> None:
    # given vtest with garbage written over 20 places in its middle third
    data = bytearray((assets / "vtest.avi").read_bytes())
    rng = random.Random(7)
    for _ in range(20):
        at = rng.randrange(len(data) // 3, 2 * len(data) // 3)
        data[at : at + 3000] = rng.randbytes(3000)
    video = tmp_path / "corrupt.avi"
    video.write_bytes(bytes(data))
    cfg = agent_config(tmp_path, assets, source={"type": "file", "path": str(video)})
    # when the agent runs over it
    proc = run_agent("run", "-c", str(cfg), "--summary-json", str(tmp_path / "s.json"))
    # then it finishes cleanly, having processed frames beyond the damaged region
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    cam = json.loads((tmp_path / "s.json").read_text())["cameras"]["street"]
    assert cam["state"] == "finished"
    assert cam["frames_processed"] > 700
