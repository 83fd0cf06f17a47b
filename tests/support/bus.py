"""Run a real rescoin-bus process on fresh loopback ports, and talk to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import zmq
from rescoin.proto import Envelope
from rescoin.proto.codec import decode

from .net import free_port


@dataclass
class BusProcess:
    pub_endpoint: str  # where publishers connect
    sub_endpoint: str  # where subscribers connect
    proc: subprocess.Popen | None = None

    def overrides(self) -> list[str]:
        return [
            f"bus.pub_endpoint='{self.pub_endpoint}'",
            f"bus.sub_endpoint='{self.sub_endpoint}'",
        ]

    def start(self, host: str = "h1", period_s: float = 0.2) -> None:
        args = [
            sys.executable,
            "-m",
            "rescoin.services.bus.main",
            "--host",
            host,
            "--period",
            str(period_s),
        ]
        for item in self.overrides():
            args += ["--set", item]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        rc = self.proc.wait(timeout=10)
        self.proc.stdout.close()
        return rc


@contextmanager
def running_bus(host: str = "h1", period_s: float = 0.2) -> Iterator[BusProcess]:
    bus = BusProcess(f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}")
    bus.start(host, period_s)
    try:
        yield bus
    finally:
        bus.stop()


def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0, interval_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return predicate()


def receive(sub: zmq.Socket, timeout_s: float = 5.0) -> Envelope | None:
    """The next decoded message on ``sub``, or None after ``timeout_s``."""
    if sub.poll(int(timeout_s * 1000)):
        return decode(sub.recv_multipart())
    return None
