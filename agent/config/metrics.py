"""Prometheus metrics endpoint configuration (docs/protocol.md, "Prometheus").

Off by default: the endpoint needs the optional `prometheus-client` package
(`pip install 'edge-vision[metrics]'`), and it binds to loopback unless told
otherwise, so a site that does not scrape pays nothing and exposes nothing.
"""

from __future__ import annotations

from pydantic import Field

from agent.config.base import StrictModel


class MetricsConfig(StrictModel):
    enabled: bool = Field(
        default=False,
        description="Serve Prometheus metrics over HTTP (needs the `metrics` extra).",
    )
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address to bind; 127.0.0.1 keeps it local, 0.0.0.0 lets a remote "
        "Prometheus scrape (put it behind the site firewall: the endpoint has no auth).",
    )
    port: int = Field(default=9108, ge=1, le=65535, description="TCP port of /metrics.")
