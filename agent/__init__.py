"""On-device edge vision agent: camera feeds in, tracked rule-based events out."""

__version__ = "0.1.0"
