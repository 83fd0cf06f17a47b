"""[exporter]: the Prometheus endpoint."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import between, setting


@dataclass
class ExporterSettings:
    """Serves what the bus says as Prometheus metrics (rescoin-exporter)."""

    listen_host: str = setting(
        "127.0.0.1", "address the HTTP endpoint binds (loopback unless your Prometheus is elsewhere)"
    )
    listen_port: int = setting(9810, "port of the /metrics endpoint", between(1, 65535))
    buses: list[str] = setting([], "extra bus XPUB endpoints to watch (other hosts); this host's bus is always watched")
    down_after_misses: int = setting(
        3, "a service is reported down (rescoin_service_up 0) after this many missed heartbeats", between(1, 1000)
    )
