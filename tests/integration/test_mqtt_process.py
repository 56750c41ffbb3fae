"""The publisher in its own process, killed with SIGKILL: outbox replay and Last Will."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.mosquitto import REPO, Collector, Mosquitto, event_ids, validate

CHILD = """
import json, sys, threading
from pathlib import Path
from agent.config.mqtt import MqttConfig
from agent.publish import MqttPublisher
from tests.mosquitto import synthetic_record

args = json.loads(sys.argv[1])
pub = MqttPublisher(MqttConfig.model_validate(args["cfg"]), "dev-a", Path(args["state"]),
                    {"agent": "0.1.0"}, lambda: {})
pub.start()
for i in range(args["first"], args["first"] + args["count"]):
    pub.emit(synthetic_record(i))
print("EMITTED", args["count"], flush=True)
threading.Event().wait()
"""


class Child:
    """A publisher process that emits `count` events then idles until killed."""

    def __init__(self, tmp: Path, port: int, first: int, count: int) -> None:
        cfg: dict[str, Any] = {
            "host": "127.0.0.1", "port": port, "keepalive_s": 5,
            "reconnect": {"initial_s": 0.1, "max_s": 0.3},
        }  # fmt: skip
        arg = json.dumps({"cfg": cfg, "state": str(tmp / "state"), "first": first,
                          "count": count})  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, arg], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip

    def wait_emitted(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("EMITTED"), f"child said {line!r}"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def statuses(c: Collector) -> list[dict[str, Any]]:
    return [validate("status", m.payload) for m in c.on("edge/dev-a/status") if m.payload]


def test_publisher_sigkilled_with_unsent_outbox_delivers_on_restart(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # given a publisher process that queued 10 events while the broker was down
    broker.kill()
    first = Child(tmp_path, broker.port, first=0, count=10)
    first.wait_emitted()
    # when it is SIGKILLed and started again once the broker is back
    first.kill()
    broker.start()
    sub = Collector(broker.port, ["edge/dev-a/events"]).start()
    second = Child(tmp_path, broker.port, first=100, count=0)
    try:
        msgs = sub.wait_for(lambda m: len(set(event_ids(m))) >= 10, 15, "replayed events")
    finally:
        second.kill()
        sub.stop()
    # then every event acknowledged by emit() before the kill is delivered, in order
    assert list(dict.fromkeys(event_ids(msgs))) == [f"dev-a.cam1.r1.{i:06d}" for i in range(10)]


def test_status_goes_offline_by_last_will_and_online_again_with_a_new_session(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # given a running publisher process whose retained birth is online
    sub = Collector(broker.port, ["edge/dev-a/status"]).start()
    child = Child(tmp_path, broker.port, first=0, count=0)
    sub.wait_for(lambda m: len(m) >= 1, 10, "birth")
    birth = statuses(sub)[0]
    assert birth["state"] == "online"
    # when the process is SIGKILLed
    child.kill()
    # then the broker publishes the Last Will: offline, same session as the birth
    sub.wait_for(lambda m: len(m) >= 2, 10, "last will")
    will = statuses(sub)[1]
    assert (will["state"], will["reason"], will["session"]) == ("offline", "will", birth["session"])
    # and when the process returns, status is online again with a higher session
    child = Child(tmp_path, broker.port, first=0, count=0)
    try:
        sub.wait_for(lambda m: len(m) >= 3, 10, "second birth")
        reborn = statuses(sub)[2]
        assert reborn["state"] == "online" and reborn["session"] > will["session"]
        # and a late subscriber sees the retained online
        late = Collector(broker.port, ["edge/dev-a/status"], client_id="late").start()
        msgs = late.wait_for(lambda m: len(m) >= 1, 5, "retained status")
        late.stop()
        assert msgs[0].retain and json.loads(msgs[0].payload)["state"] == "online"
    finally:
        child.kill()
        sub.stop()
