"""Run a real rescoin-bus process on fresh loopback ports, and talk to it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import zmq
from rescoin.proto import Envelope, ProtocolError
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


class BusListener:
    """A subscriber on a thread of its own that hands each message's frames to ``on_frames``: the bus
    watchers of the tests and benchmarks differ only in what they keep. ``hwm`` 0 = never drop."""

    def __init__(
        self,
        endpoint: str,
        on_frames: Callable[[list[bytes]], None],
        prefixes: Sequence[bytes] = (b"",),
        hwm: int | None = None,
    ) -> None:
        self.endpoint, self.on_frames, self.prefixes, self.hwm = endpoint, on_frames, prefixes, hwm
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> BusListener:
        self.thread.start()
        return self

    def _run(self) -> None:
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        if self.hwm is not None:
            sub.rcvhwm = self.hwm
        sub.connect(self.endpoint)
        for prefix in self.prefixes:
            sub.subscribe(prefix)
        try:
            while not self.stopping:
                if sub.poll(100):
                    self.on_frames(sub.recv_multipart())
        finally:
            ctx.destroy(linger=0)

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)


def decoded(on_message: Callable[[list[bytes], Envelope], None]) -> Callable[[list[bytes]], None]:
    """``on_frames`` for a BusListener that hands on each message decoded, skipping what does not decode."""

    def on_frames(frames: list[bytes]) -> None:
        try:
            env = decode(frames)
        except ProtocolError:
            return
        on_message(frames, env)

    return on_frames


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
