"""Rules stage: turns a camera's tracks into episode START/END events.

`RuleEngine` (one per camera) evaluates zone, line and count rules over each frame's
tracks; `geometry` holds the vectorised maths. See docs/rules.md for the semantics.
"""

from agent.rules.engine import RuleEngine
from agent.rules.events import OpenEpisode, event_id
from agent.rules.frame import RuleConfigError, RuleError

__all__ = ["OpenEpisode", "RuleConfigError", "RuleEngine", "RuleError", "event_id"]
