"""Loopback endpoints for tests that run concurrently with other tests."""

from __future__ import annotations

import socket


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
