"""Config sections every service reads: the host, the bus, logging."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass

from .config import between, one_of, positive, setting


def _default_host_name() -> str:
    name = re.sub(r"[^A-Za-z0-9_.:\-]", "-", socket.gethostname().split(".")[0]) or "host"
    return name[:128]


def _valid_host_name(value: str) -> str | None:
    return (
        None
        if value == "" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}", value)
        else "must be 1-128 of [A-Za-z0-9_.:-]"
    )


@dataclass
class HostSettings:
    """This host: its name on the bus, the control period, where state lives."""

    name: str = setting(
        "",
        "host name in topics (sample/<name>/); empty = this machine's hostname",
        _valid_host_name,
    )
    period_s: float = setting(
        1.0,
        "control period in seconds; every stage agrees on p = floor(unix_time / period_s)",
        between(0.1, 3600),
    )
    state_dir: str = setting("/var/lib/rescoin", "directory for state files (coin ledger, original tunables, logs)")
    max_future_periods: int = setting(
        2,
        "a message more than this many periods ahead of this host's clock is refused (rejected.period): "
        "another host's clock, or a forged period (proto/README.md §6)",
        between(0, 1_000_000),
    )
    max_streams: int = setting(
        16_384,
        "publisher streams each stage tracks for seq gaps and stale drops; the least recently heard go first "
        "(filter_evicted): no sender can make a stage's table grow without bound",
        between(16, 10_000_000),
    )

    def __post_init__(self) -> None:
        if not self.name:
            self.name = _default_host_name()


@dataclass
class BusSettings:
    """The per-host bus: publishers connect to pub_endpoint, subscribers to sub_endpoint."""

    pub_endpoint: str = setting(
        "ipc:///run/rescoin/bus/pub.sock",
        "bus XSUB side: where publishers connect (the bus binds it); a unix socket only root and the bus's "
        "user may open (docs/SECURITY.md)",
    )
    sub_endpoint: str = setting(
        "ipc:///run/rescoin/bus/sub.sock",
        "bus XPUB side: where subscribers connect (the bus binds it; group rescoin may open it); tcp:// with "
        "CURVE for other hosts' tools (docs/DEPLOY.md)",
    )
    hwm: int = setting(
        10000,
        "messages queued per peer; past it a slow peer loses messages, publishers never block",
        positive,
    )
    curve_server_key: str = setting(
        "",
        "CURVE: the bus's secret cert (`rescoin keys`); set = encrypted bus; empty = plain TCP",
    )
    curve_client_key: str = setting(
        "", "CURVE: secret key file services and tools use to reach a CURVE bus; empty = plain TCP"
    )
    curve_server_public: str = setting("", "CURVE: the bus's public key file, for clients")


@dataclass
class LogSettings:
    """Logging goes to stderr in one format; supervisord captures it."""

    level: str = setting("INFO", "log level", one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    max_warnings_per_period: int = setting(
        10, "bad-input warnings logged per period before they are only counted", positive
    )
