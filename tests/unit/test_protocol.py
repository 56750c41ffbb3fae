"""Topics, ids, payload validation, committed JSON Schemas, MQTT config and backoff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.config.mqtt import MqttBackoffConfig, MqttConfig, MqttCredentialError
from agent.protocol import (
    CommandRequest,
    DesiredState,
    InvalidIdError,
    PayloadRejectedError,
    RejectCode,
    Topics,
    export_schemas,
    parse_payload,
    schemas,
)
from agent.publish.client import ConnackOutcome, backoff_delay, classify_connack

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def test_topics_are_built_under_the_device_root() -> None:
    t = Topics("edge", "dev-a")
    assert (t.status, t.health, t.events, t.desired, t.reported) == (
        "edge/dev-a/status", "edge/dev-a/health", "edge/dev-a/events",
        "edge/dev-a/desired", "edge/dev-a/reported",
    )  # fmt: skip
    assert t.snapshot("e1") == "edge/dev-a/events/e1/snapshot"
    assert t.cmd_filter == "edge/dev-a/cmd/+" and t.response("ping") == "edge/dev-a/response/ping"
    assert t.command_name("edge/dev-a/cmd/ping") == "ping"
    assert t.command_name("edge/dev-a/cmd/a/b") is None
    assert t.owns("edge/dev-a/response/x") and not t.owns("edge/dev-ab/x")
    assert Topics.fleet_filter("edge", "events") == "edge/+/events"


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "a b", "a\x00", "a\n", "-x", "é", "x" * 65])
def test_unsafe_ids_are_refused(bad: str) -> None:
    with pytest.raises(InvalidIdError):
        Topics("edge", bad)
    with pytest.raises(InvalidIdError):
        Topics(bad, "dev-a")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"x" * 101, RejectCode.TOO_LARGE),
        (b"\xff", RejectCode.NOT_UTF8),
        (b"{", RejectCode.NOT_JSON),
        (b"[" * 50 + b"]" * 50, RejectCode.NOT_OBJECT),
        (b'"s"', RejectCode.NOT_OBJECT),
        (b'{"schema": 2}', RejectCode.SCHEMA),
        (b'{"schema": 1, "unknown": 1}', RejectCode.SCHEMA),
    ],
)
def test_parse_payload_rejects_with_a_code(data: bytes, code: RejectCode) -> None:
    with pytest.raises(PayloadRejectedError) as info:
        parse_payload(CommandRequest, data, 100)
    assert info.value.code is code


def test_parse_payload_accepts_a_valid_desired_state() -> None:
    raw = b'{"schema": 1, "config": {"version": "7", "manifest_url": "u", "sequence": 3}}'
    desired = parse_payload(DesiredState, raw, 1000)
    assert desired.config is not None and desired.config.sequence == 3 and desired.model is None


def test_committed_schemas_equal_the_generated_ones(tmp_path: Path) -> None:
    # the docs/schemas files are the contract: regenerate with `python -m agent.protocol`
    written = {p.name for p in export_schemas(tmp_path)}
    # config.schema.json is the agent config's (tests/unit/test_config.py checks it)
    committed = {p.name for p in SCHEMAS.glob("*.json")} - {"config.schema.json"}
    assert written == committed == {f"{k}.json" for k in schemas()}
    for name in written:
        assert json.loads((SCHEMAS / name).read_text()) == json.loads(
            (tmp_path / name).read_text()
        ), f"docs/schemas/{name} is stale: run python -m agent.protocol docs/schemas"


def test_password_comes_from_a_file_or_credential_never_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    cfg = MqttConfig(host="h", username="dev-a", password_file=tmp_path / "pw")
    assert cfg.read_password() == "s3cret"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    from_cred = MqttConfig(host="h", username="u", password_credential="pw")  # noqa: S106
    assert from_cred.read_password() == "s3cret"
    with pytest.raises(ValidationError):
        MqttConfig.model_validate({"host": "h", "username": "u", "password": "inline"})
    with pytest.raises(ValidationError, match="needs a username"):
        MqttConfig(host="h", password_file=tmp_path / "pw")
    with pytest.raises(MqttCredentialError):
        MqttConfig(host="h", username="u", password_file=tmp_path / "missing").read_password()
    with pytest.raises(ValidationError, match="together"):
        MqttConfig.model_validate({"host": "h", "tls": {"cert_file": "c.pem"}})


def test_backoff_grows_caps_and_jitters_downwards() -> None:
    cfg = MqttBackoffConfig(initial_s=1, max_s=8, multiplier=2, jitter=0.5)
    assert [backoff_delay(n, cfg, lambda: 0.0) for n in (1, 2, 3, 4, 5, 100)] == [1, 2, 4, 8, 8, 8]
    assert backoff_delay(3, cfg, lambda: 1.0) == 2.0
    assert backoff_delay(10_000, cfg, lambda: 0.5) == 6.0


def test_connack_codes_are_classified() -> None:
    assert classify_connack(0) is ConnackOutcome.OK
    assert classify_connack(0x84) is ConnackOutcome.UNSUPPORTED_PROTOCOL
    assert classify_connack(0x86) is ConnackOutcome.REFUSED_AUTH
    assert classify_connack(0x88) is ConnackOutcome.REFUSED
