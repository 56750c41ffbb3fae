"""Control loops that adapt the pipeline to its load: fair per-camera rate control."""

from agent.control.overload import (
    CameraSample,
    FairRateController,
    OverloadDecision,
    samples_from,
    water_fill,
)

__all__ = [
    "CameraSample",
    "FairRateController",
    "OverloadDecision",
    "samples_from",
    "water_fill",
]
