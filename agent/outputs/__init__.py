"""Event outputs: console, JSONL, snapshots (and MQTT, in agent.publish)."""
