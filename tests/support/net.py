"""Loopback endpoints for tests that run concurrently with other tests."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def bus_overrides(pub_port: int | None = None, sub_port: int | None = None) -> list[str]:
    """--set overrides that point a service at a bus on fresh loopback ports."""
    return [
        f"bus.pub_endpoint='tcp://127.0.0.1:{pub_port or free_port()}'",
        f"bus.sub_endpoint='tcp://127.0.0.1:{sub_port or free_port()}'",
    ]


def free_ports(n: int) -> list[int]:
    """``n`` free loopback ports below the kernel's ephemeral range, so that no outgoing connection made
    meanwhile (hundreds, with many buses) takes one before the server meant for it binds it."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports: list[int] = []
    for port in random.sample(range(max(low - 15000, 1024), low), min(15000, low - 1024)):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == n:
            return ports
    raise RuntimeError(f"not {n} free loopback ports below the ephemeral range")


def curve_bus_command(secret: str, public: str, period_s: float = 0.2) -> tuple[list[str], str, str]:
    """(argv, pub endpoint, sub endpoint) of a rescoin-bus on fresh loopback ports with CURVE on, the
    given key pair being its server key and the one its own heartbeat publisher uses."""
    import sys

    pub_ep, sub_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    args = [sys.executable, "-m", "rescoin.services.bus.main", "--host", "h1", "--period", str(period_s)]
    for item in (
        f"bus.pub_endpoint='{pub_ep}'",
        f"bus.sub_endpoint='{sub_ep}'",
        f"bus.curve_server_key='{secret}'",
        f"bus.curve_client_key='{secret}'",
        f"bus.curve_server_public='{public}'",
    ):
        args += ["--set", item]
    return args, pub_ep, sub_ep
