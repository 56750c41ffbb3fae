"""`edge-agent listen`: events from a real broker, one line each."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

from agent.protocol import EventPayload
from agent.publish.listen import format_event, listen
from tests.mosquitto import Mosquitto, free_port, make_cfg, publisher, synthetic_record


def test_listen_prints_one_line_per_event(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    out = io.StringIO()
    result: list[int] = []
    ready = threading.Event()
    # given a listener waiting for two events of dev-a, in JSON-lines mode
    t = threading.Thread(
        target=lambda: result.append(
            listen("127.0.0.1", broker.port, "edge", "dev-a", out=out, json_lines=True,
                   max_events=2, timeout_s=10, ready=ready)
        )
    )  # fmt: skip
    t.start()
    assert ready.wait(5)
    pub = publisher(make_cfg(broker.port), tmp_path / "state")
    try:
        # when the device publishes two events
        pub.start()
        pub.emit(synthetic_record(1))
        pub.emit(synthetic_record(2))
        t.join(10)
    finally:
        pub.stop(1)
        broker.stop()
    # then it printed exactly two lines and exited 0
    assert result == [0]
    lines = out.getvalue().splitlines()
    assert [json.loads(x)["event_id"] for x in lines] == [
        "dev-a.cam1.r1.000001", "dev-a.cam1.r1.000002"
    ]  # fmt: skip


def test_listen_text_line_and_errors() -> None:
    # the text line names device, camera, rule, phase, label and id
    record = synthetic_record(3)
    line = format_event(EventPayload.model_validate(record.event.to_dict()))
    assert line.startswith("2023-11-14T22:13:23Z device=dev-a camera=cam1 rule=r1 start person")
    assert line.endswith("id=dev-a.cam1.r1.000003")
    # an unreachable broker returns 1, a wildcard smuggled into the device filter 2
    assert listen("127.0.0.1", free_port(), timeout_s=1, out=io.StringIO()) == 1
    assert listen("127.0.0.1", free_port(), device_filter="a/#", out=io.StringIO()) == 2
