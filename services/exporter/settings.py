"""[exporter]: the Prometheus endpoint."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import between, positive, setting


@dataclass
class ExporterSettings:
    """Serves what the bus says as Prometheus metrics (rescoin-exporter)."""

    listen_host: str = setting(
        "127.0.0.1", "address the HTTP endpoint binds (loopback unless your Prometheus is elsewhere)"
    )
    listen_port: int = setting(
        9810, "port of the /metrics endpoint; 0 = no TCP endpoint (unix_socket only)", between(0, 65535)
    )
    unix_socket: str = setting(
        "", "also serve /metrics on this Unix socket, mode 0660 (the exporter's group may connect); empty = none"
    )
    buses: list[str] = setting(
        [],
        "extra bus XPUB endpoints to watch (other hosts), with this host's [bus] CURVE keys; this host's bus is "
        "always watched",
    )
    fleet: str = setting(
        "",
        "fleet file (deploy/fleet.toml): watch every host's bus in it, each with its own server key, and export "
        "rescoin_host_up for every host in it (0 until heard); empty = none",
    )
    down_after_misses: int = setting(
        3, "a service is reported down (rescoin_service_up 0) after this many missed heartbeats", between(1, 1000)
    )
    nice: int = setting(
        10,
        "added to the exporter's nice value at start: monitoring load cannot take a period from the pipeline",
        between(0, 19),
    )
    max_connections: int = setting(
        1024, "open HTTP connections at most; past it the longest-idle one is closed, or the new one", between(1, 10000)
    )
    request_timeout_s: float = setting(
        2.0, "a client that has not sent its whole request this long after connecting is disconnected", positive
    )
    response_timeout_s: float = setting(
        10.0, "a client that has not read its whole response this long after it was ready is disconnected", positive
    )
    listen_backlog: int = setting(
        4096, "listen backlog of the HTTP sockets (the kernel caps it at net.core.somaxconn)", between(1, 65535)
    )
    forget_after_s: float = setting(
        86400.0,
        "a host or a (host, service) heard nothing from this long leaves the metrics (after rescoin_service_up 0)",
        positive,
    )
    max_services: int = setting(
        4096,
        "distinct (host, service) heartbeats kept at most; more are counted series_capped.service",
        between(1, 10**6),
    )
    max_hosts: int = setting(
        1024,
        "distinct hosts with samples, estimates, allocs or applied kept; more: series_capped.host",
        between(1, 10**6),
    )
    max_vms: int = setting(
        20000, "(host, vm) label sets kept over all hosts; a message past it: series_capped.vm", between(1, 10**7)
    )
