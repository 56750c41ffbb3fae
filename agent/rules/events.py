"""Event construction and deterministic event ids.

An event id is the first 32 hex digits of sha256 over (device, boot, camera, rule,
subject, episode): identical for the START and END of an episode, different for every
other episode, and reproducible from the same inputs on any machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.rules.frame import FrameClock
from agent.types import Box, Event, EventPhase

RULE_SUBJECT = "rule"
"""Subject of episodes that belong to the rule as a whole (count rules)."""


def track_subject(track_id: int) -> str:
    """Subject of an episode that follows one object, named by its first track id."""
    return f"track:{track_id}"


def event_id(
    *, device_id: str, boot_id: int, camera_id: str, rule_id: str, subject: str, episode: int
) -> str:
    """Deterministic id of one episode (both of its phases)."""
    parts = (device_id, str(boot_id), camera_id, rule_id, subject, str(episode))
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class EpisodeRef:
    """Who an event is about: one rule's episode of one subject."""

    rule_id: str
    rule_type: str
    subject: str
    episode: int
    started_at: float


@dataclass(frozen=True, slots=True)
class Observation:
    """What the subject looked like when a phase was raised."""

    class_id: int
    score: float
    box: Box | None
    track_id: int | None


@dataclass(frozen=True, slots=True)
class EventFactory:
    """Stamps events with this camera's identity and the model's labels."""

    device_id: str
    boot_id: int
    camera_id: str
    labels: tuple[str, ...]

    def label(self, class_id: int) -> str:
        if 0 <= class_id < len(self.labels):
            return self.labels[class_id]
        return f"class_{class_id}"

    def make(
        self,
        phase: EventPhase,
        ref: EpisodeRef,
        obs: Observation,
        clock: FrameClock,
        *,
        attributes: Mapping[str, Any],
        label: str | None = None,
    ) -> Event:
        return Event(
            event_id=event_id(
                device_id=self.device_id,
                boot_id=self.boot_id,
                camera_id=self.camera_id,
                rule_id=ref.rule_id,
                subject=ref.subject,
                episode=ref.episode,
            ),
            phase=phase,
            device_id=self.device_id,
            camera_id=self.camera_id,
            rule_id=ref.rule_id,
            rule_type=ref.rule_type,
            label=self.label(obs.class_id) if label is None else label,
            class_id=obs.class_id,
            track_id=obs.track_id,
            episode=ref.episode,
            score=obs.score,
            box=obs.box,
            started_at=ref.started_at,
            stream_time=clock.stream_time,
            wall_time=clock.wall_time,
            frame_seq=clock.frame_seq,
            attributes={
                k: round(v, 3) if isinstance(v, float) else v for k, v in attributes.items()
            },
        )


def class_label(classes: Sequence[str]) -> str:
    """Label for rule-level events: the rule's classes joined by '+', or '*' for all."""
    return "+".join(classes) if classes else "*"


@dataclass(frozen=True, slots=True)
class OpenEpisode:
    """Snapshot of one episode a rule is following (for health pages and tests)."""

    rule_id: str
    subject: str
    episode: int
    """0 while pending (condition not yet held long enough, no START raised)."""
    track_id: int | None
    """The track currently carrying the episode (None for rule-level subjects)."""
    since: float
    """Stream time the subject entered (zone) or the condition first held (count)."""
