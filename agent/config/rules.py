"""Rule configuration: zones, lines and counts over tracked objects.

Coordinates are normalised to the camera image: (0, 0) top-left, (1, 1) bottom-right,
so a rule survives a change of stream resolution.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from agent.config.base import StrictModel

Point = tuple[
    Annotated[float, Field(ge=0.0, le=1.0)],
    Annotated[float, Field(ge=0.0, le=1.0)],
]

RuleId = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="Rule id, unique per camera: letters, digits, '_', '.', '-'.",
    ),
]


class _RuleBase(StrictModel):
    id: RuleId
    classes: list[str] = Field(
        default_factory=lambda: ["person"],
        description="Labels this rule applies to (model label names); empty means all.",
    )
    min_score: float = Field(default=0.3, ge=0, le=1, description="Ignore weaker tracks.")
    cooldown_s: float = Field(
        default=0.0,
        ge=0,
        le=86400,
        description="After an episode ends, no new episode for the same subject for this long.",
    )


def _check_polygon(points: list[Point]) -> list[Point]:
    if len(points) < 3:
        raise ValueError("a polygon needs at least 3 points")
    area2 = 0.0
    for (x1, y1), (x2, y2) in zip(points, points[1:] + points[:1], strict=True):
        area2 += x1 * y2 - x2 * y1
    if abs(area2) < 1e-9:
        raise ValueError("polygon has zero area")
    return points


class ZoneRuleConfig(_RuleBase):
    type: Literal["zone"] = Field(description="Presence of a tracked object inside a polygon.")
    polygon: list[Point] = Field(description="Zone polygon, normalised (x, y) points.")
    min_dwell_s: float = Field(
        default=0.0, ge=0, le=86400, description="Raise only after this long inside."
    )
    reentry_grace_s: float = Field(
        default=2.0,
        ge=0,
        le=600,
        description="A subject that leaves, or whose track is lost and re-found nearby, "
        "within this time keeps its episode (no duplicate alert).",
    )
    reassociate_radius: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="A new track id of the same class that appears inside the zone within "
        "this many box heights (of the lost box) of where a lost subject was last seen, "
        "within reentry_grace_s, continues that subject's episode. 0 disables.",
    )

    _poly = field_validator("polygon")(_check_polygon)


class LineRuleConfig(_RuleBase):
    type: Literal["line"] = Field(description="A tracked object crossing a line segment.")
    points: tuple[Point, Point] = Field(description="Line segment from A to B, normalised.")
    direction: Literal["any", "left_to_right", "right_to_left"] = Field(
        default="any",
        description="Crossing direction relative to travelling from A to B: 'left_to_right' "
        "means from the left side of A->B to its right side.",
    )
    hysteresis: float = Field(
        default=0.1,
        ge=0,
        le=2,
        description="Dead band around the line, as a fraction of the track's box height: "
        "the anchor must be this far past the line before a side change counts, so jitter "
        "along the line does not raise crossings.",
    )

    @field_validator("points")
    @classmethod
    def _distinct(cls, pts: tuple[Point, Point]) -> tuple[Point, Point]:
        if pts[0] == pts[1]:
            raise ValueError("line end points must differ")
        return pts


class CountRuleConfig(_RuleBase):
    type: Literal["count"] = Field(description="Number of objects in a polygon over a threshold.")
    polygon: list[Point] = Field(description="Counting polygon, normalised (x, y) points.")
    threshold: int = Field(ge=1, le=10000, description="Raise when count >= threshold.")
    min_duration_s: float = Field(
        default=0.0, ge=0, le=86400, description="Count must hold for this long first."
    )
    grace_s: float = Field(
        default=2.0,
        ge=0,
        le=600,
        description="The episode ends once the count has stayed below threshold for longer "
        "than this; shorter dips (a missed detection) neither end nor restart it.",
    )

    _poly = field_validator("polygon")(_check_polygon)


RuleConfig = Annotated[
    ZoneRuleConfig | LineRuleConfig | CountRuleConfig, Field(discriminator="type")
]
