"""Everything that arrives from the broker: desired state, commands, our own status.

Every payload is untrusted: size cap, UTF-8, JSON object, then the pydantic model
(`agent.protocol.parse_payload`). A rejected payload is counted by reason and
logged rate-limited; nothing here raises into the network loop.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.metrics import RateLimitedLog
from agent.protocol import (
    CommandCode,
    CommandRequest,
    CommandResponse,
    DesiredState,
    PayloadRejectedError,
    StatusPayload,
    Topics,
    parse_payload,
)

log = logging.getLogger(__name__)

CommandHandler = Callable[[CommandRequest], dict[str, Any]]
"""Runs on the publisher thread: return a result dict quickly, or raise to report 'error'."""


@dataclass(frozen=True, slots=True)
class Reply:
    topic: str
    payload: bytes
    properties: Properties | None = None


@dataclass(frozen=True, slots=True)
class IncomingResult:
    replies: list[Reply] = field(default_factory=list)
    rebirth: bool = False
    """An older session's status sits retained on our status topic: publish the birth again."""


class IncomingHandler:
    """Validates and dispatches incoming messages. Called on the publisher thread."""

    def __init__(
        self,
        topics: Topics,
        max_bytes: int,
        on_desired: Callable[[DesiredState], None] | None,
        commands: dict[str, CommandHandler],
    ) -> None:
        self._topics = topics
        self._max_bytes = max_bytes
        self._on_desired = on_desired
        self._commands = commands
        self._lock = threading.Lock()
        self._rejected: collections.Counter[str] = collections.Counter()
        self._ratelog = RateLimitedLog(10.0)
        self.desired: DesiredState | None = None

    def rejected(self) -> dict[str, int]:
        with self._lock:
            return dict(self._rejected)

    def handle(
        self, topic: str, payload: bytes, props: Properties | None, session: int
    ) -> IncomingResult:
        try:
            if topic == self._topics.desired:
                self._desired(payload)
                return IncomingResult()
            if topic == self._topics.status:
                return IncomingResult(rebirth=self._stale_will(payload, session))
            name = self._topics.command_name(topic)
            if name is not None:
                return IncomingResult(replies=[self._command(name, payload, props)])
            self._reject(topic, "unexpected_topic", "not subscribed to this topic")
        except PayloadRejectedError as exc:
            self._reject(topic, exc.code.value, exc.detail)
        except Exception:  # a hook or handler bug must not kill the network loop
            log.exception("incoming message handling failed topic=%s", topic)
            self._count("handler_error")
        return IncomingResult()

    def _count(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    def _reject(self, topic: str, reason: str, detail: str) -> None:
        suppressed = self._ratelog.allow(reason, time.monotonic())
        if suppressed is not None:
            log.warning(
                "rejected incoming payload topic=%r reason=%s detail=%s suppressed=%d",
                topic[:200],
                reason,
                detail,
                suppressed,
            )
        self._count(reason)

    def _desired(self, payload: bytes) -> None:
        if not payload:
            log.info("desired state cleared topic=%s", self._topics.desired)
            self.desired = None
            return
        desired = parse_payload(DesiredState, payload, self._max_bytes)
        self.desired = desired
        log.info(
            "desired state received model=%s config=%s",
            desired.model.version if desired.model else None,
            desired.config.version if desired.config else None,
        )
        if self._on_desired is not None:
            self._on_desired(desired)

    def _stale_will(self, payload: bytes, session: int) -> bool:
        if not payload:
            return True  # someone cleared our retained status
        status = parse_payload(StatusPayload, payload, self._max_bytes)
        if status.session > session:
            log.error(
                "status from a newer session %d than ours %d: is another process using "
                "device id %s?",
                status.session,
                session,
                self._topics.device_id,
            )
        stale = status.session < session
        if stale:
            log.warning(
                "retained status is stale state=%s session=%d current=%d: publishing birth again",
                status.state.value,
                status.session,
                session,
            )
        return stale

    def _command(self, name: str, payload: bytes, props: Properties | None) -> Reply:
        request: CommandRequest | None = None
        code: CommandCode
        detail: str | None
        result: dict[str, Any] = {}
        try:
            request = parse_payload(CommandRequest, payload, self._max_bytes)
        except PayloadRejectedError as exc:
            self._reject(self._topics.cmd(name), exc.code.value, exc.detail)
            code, detail = CommandCode.INVALID, exc.code.value
        else:
            code, detail, result = self._run(name, request)
        response = CommandResponse(
            device_id=self._topics.device_id,
            command=name,
            request_id=request.request_id if request else None,
            code=code,
            detail=detail,
            result=result,
            timestamp=round(time.time(), 3),
        )
        return Reply(self._response_topic(name, props), response.to_json(), _reply_props(props))

    def _run(
        self, name: str, request: CommandRequest
    ) -> tuple[CommandCode, str | None, dict[str, Any]]:
        handler = self._commands.get(name)
        if handler is None:
            log.info("unsupported command name=%s", name)
            return CommandCode.UNSUPPORTED, f"unknown command {name}", {}
        try:
            return CommandCode.OK, None, handler(request)
        except Exception as exc:
            log.warning("command failed name=%s error=%s", name, exc)
            return CommandCode.ERROR, type(exc).__name__, {}

    def _response_topic(self, name: str, props: Properties | None) -> str:
        wanted = getattr(props, "ResponseTopic", None) if props is not None else None
        if isinstance(wanted, str) and wanted:
            if self._topics.owns(wanted) and "+" not in wanted and "#" not in wanted:
                return wanted
            self._reject(wanted, "response_topic", "outside this device's namespace")
        return self._topics.response(name)


def _reply_props(request_props: Properties | None) -> Properties | None:
    data = getattr(request_props, "CorrelationData", None) if request_props is not None else None
    if data is None:
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.CorrelationData = data
    return props
