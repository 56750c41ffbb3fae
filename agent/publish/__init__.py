"""Publishing: the durable outbox and the MQTT publisher (see docs/protocol.md).

emit -> events.py (EventQueue) -> outbox.py (SQLite FIFO) -> sender.py (in-order,
acked deletes), all driven by publisher.py (EventSink, `mqtt-publisher` thread).
client.py (paho clients, TLS, backoff), payloads.py (wire messages), incoming.py
(desired/cmd validation), health.py (periodic reports), session.py (bdSeq-like
counter), listen.py (the `edge-agent listen` consumer).
"""

from agent.publish.publisher import MqttPublisher, PublisherState

__all__ = ["MqttPublisher", "PublisherState"]
