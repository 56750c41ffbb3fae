"""MqttPublisher against a real Mosquitto: delivery, schemas, outages, eviction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.publish import MqttPublisher
from tests.mosquitto import (
    SLOW,
    Collector,
    Mosquitto,
    event_ids,
    make_cfg,
    publisher,
    synthetic_record,
    validate,
    wait_until,
)


@pytest.fixture
def collector(broker: Mosquitto) -> Iterator[Collector]:
    topics = ["events", "events/+/snapshot", "status", "health", "reported", "response/#"]
    c = Collector(broker.port, [f"edge/+/{t}" for t in topics])
    c.start()
    yield c
    c.stop()


def revive(broker: Mosquitto, pub: MqttPublisher, topics: list[str]) -> Collector:
    """Restart the broker right after a failed reconnect (the next attempt is >= 0.7 s
    away with SLOW backoff) and subscribe before the publisher is back."""
    failures = pub.stats()["connect_failures"]
    wait_until(lambda: pub.stats()["connect_failures"] > failures, 10, "a failed reconnect")
    connects = pub.stats()["connects"]
    broker.start()
    sub = Collector(broker.port, topics, client_id="collector-after").start()
    assert pub.stats()["connects"] == connects, "publisher reconnected before the subscriber"
    return sub


def test_events_reach_subscriber_valid_against_schemas(
    broker: Mosquitto, collector: Collector, tmp_path: Path, assets: Path
) -> None:
    # given a connected publisher and a real JPEG snapshot
    jpeg = (assets / "person.jpg").read_bytes()
    pub = publisher(make_cfg(broker.port, health_interval_s=0.2), tmp_path / "state")
    pub.start()
    # when three events are emitted, the first with a snapshot
    pub.emit(synthetic_record(0, snapshot=jpeg))
    pub.emit(synthetic_record(1))
    pub.emit(synthetic_record(2))
    msgs = collector.wait_for(lambda m: len(event_ids(m)) >= 3, 10, "3 events")
    collector.wait_for(lambda m: len([x for x in m if x.topic == "edge/dev-a/health"]) >= 2,
                       10, "2 health reports")  # fmt: skip
    pub.stop(5)
    # then events arrive in order and every payload fits its JSON Schema
    assert event_ids(msgs) == [f"dev-a.cam1.r1.{i:06d}" for i in range(3)]
    first = validate("event", collector.on("edge/dev-a/events")[0].payload)
    ref = first["snapshot"]
    assert ref["topic"] == "edge/dev-a/events/dev-a.cam1.r1.000000/snapshot"
    snap = collector.wait_for(lambda m: any(x.topic == ref["topic"] for x in m), 5, "snapshot")
    body = next(x for x in snap if x.topic == ref["topic"]).payload
    assert body == jpeg and hashlib.sha256(body).hexdigest() == ref["sha256"]
    for m in collector.on("edge/dev-a/events"):
        validate("event", m.payload)
    healths = [validate("health", m.payload) for m in collector.on("edge/dev-a/health")]
    assert healths[0]["cameras"]["cam1"]["state"] == "streaming"
    assert [h["seq"] for h in healths] == sorted({h["seq"] for h in healths})
    statuses = [validate("status", m.payload) for m in collector.on("edge/dev-a/status")]
    assert statuses[0]["state"] == "online" and statuses[0]["versions"]["model"] == "m1"
    assert statuses[-1]["state"] == "offline" and statuses[-1]["reason"] == "shutdown"
    assert pub.stats()["outbox"]["depth"] == 0 and pub.stats()["published"] == 4


@pytest.mark.parametrize("qos", [1, 2])
def test_broker_killed_and_restarted_delivers_outage_events_in_order(
    broker: Mosquitto, tmp_path: Path, qos: int
) -> None:
    # given a publisher delivering to a subscriber
    cfg = make_cfg(broker.port, events_qos=qos, **SLOW)
    pub = publisher(cfg, tmp_path / "state")
    pub.start()
    sub = Collector(broker.port, ["edge/dev-a/events"]).start()
    for i in range(5):
        pub.emit(synthetic_record(i))
    sub.wait_for(lambda m: len(event_ids(m)) >= 5, 10, "events before the outage")
    sub.stop()
    # when the broker is SIGKILLed and events keep coming during the outage
    broker.kill()
    for i in range(5, 25):
        pub.emit(synthetic_record(i))
    # ... and the broker comes back
    sub = revive(broker, pub, ["edge/dev-a/events"])
    msgs = sub.wait_for(lambda m: len(set(event_ids(m))) >= 20, 15, "outage events")
    pub.stop(5)
    sub.stop()
    # then every outage event arrives, in order, none lost; duplicates are identical
    ids = event_ids(msgs)
    first_seen = list(dict.fromkeys(ids))
    assert first_seen == [f"dev-a.cam1.r1.{i:06d}" for i in range(5, 25)]
    by_id: dict[str, set[bytes]] = {}
    for m in msgs:
        by_id.setdefault(json.loads(m.payload)["event_id"], set()).add(m.payload)
    assert all(len(v) == 1 for v in by_id.values())
    assert pub.stats()["outbox"]["depth"] == 0


def test_full_outbox_evicts_oldest_first_and_counts_it(broker: Mosquitto, tmp_path: Path) -> None:
    # given a publisher whose outbox holds 5 messages and a broker that is down
    broker.kill()
    pub = publisher(make_cfg(broker.port, outbox={"max_messages": 5}, **SLOW), tmp_path / "state")
    pub.start()
    # when 8 events are emitted
    for i in range(8):
        pub.emit(synthetic_record(i))
    # then the 3 oldest were evicted, visibly
    stats = pub.stats()
    assert stats["outbox"] == {"depth": 5, "bytes": stats["outbox"]["bytes"], "evicted": 3,
                               "oversize_dropped": 0}  # fmt: skip
    # and when the broker returns, the 5 newest are delivered
    sub = revive(broker, pub, ["edge/dev-a/events"])
    msgs = sub.wait_for(lambda m: len(set(event_ids(m))) >= 5, 15, "surviving events")
    wait_until(lambda: pub.stats()["outbox"]["depth"] == 0, 5, "outbox drained")
    pub.stop(5)
    sub.stop()
    assert list(dict.fromkeys(event_ids(msgs))) == [f"dev-a.cam1.r1.{i:06d}" for i in range(3, 8)]
    assert pub.stats()["outbox"]["evicted"] == 3


def test_stop_without_broker_keeps_the_outbox_for_next_start(
    broker: Mosquitto, tmp_path: Path
) -> None:
    # given a publisher that cannot reach its broker and has queued two events
    broker.kill()
    pub = publisher(make_cfg(broker.port), tmp_path / "state")
    pub.start()
    pub.emit(synthetic_record(1))
    pub.emit(synthetic_record(2))
    # when it is stopped, then asked to emit again
    pub.stop(0.2)
    pub.emit(synthetic_record(3))
    # then the late event is counted, not raised, and the queued ones wait for the next start
    assert pub.stats()["dropped_after_stop"] == 1
    again = publisher(make_cfg(broker.port), tmp_path / "state")
    assert again.stats()["outbox"]["depth"] == 2 and again.stats()["session"] >= 1
    again.stop(0)
