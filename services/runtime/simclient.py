"""The client side of the sim host's request/reply socket (proto/simhost.py).

Shared by the monitor's and the actuator's ``sim`` backends, which run in
their own processes. A request that gets no reply within ``timeout_s`` (the
sim host is restarting, say) raises SimhostError and drops the socket; the
next call connects afresh (ZeroMQ's "lazy pirate": a REQ socket that lost
its reply can never be used again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import zmq
from rescoin.proto import ProtocolError
from rescoin.proto.simhost import (
    OP_DESCRIBE,
    OP_GET_TUNABLES,
    OP_SET_TUNABLES,
    OP_STATS,
    HostInfo,
    HostStats,
    Tunables,
    WriteResult,
    decode_reply,
    encode_request,
)


class SimhostError(RuntimeError):
    """The sim host did not answer, or answered with an error."""


class SimhostClient:
    """Blocking calls to one sim host. Opens its socket on first use, not in the constructor."""

    def __init__(self, endpoint: str, timeout_s: float = 2.0, ctx: zmq.Context | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_ms = max(1, int(timeout_s * 1000))
        self.ctx = ctx
        self.sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self.sock is None:
            self.ctx = self.ctx or zmq.Context.instance()
            self.sock = self.ctx.socket(zmq.REQ)
            self.sock.linger = 0
            self.sock.connect(self.endpoint)
        return self.sock

    def call(self, op: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and wait for its validated result body."""
        sock = self._socket()
        try:
            sock.send(encode_request(op, args))
            if not sock.poll(self.timeout_ms):
                raise SimhostError(f"no reply from the sim host at {self.endpoint} within {self.timeout_ms} ms")
            return decode_reply(op, sock.recv())
        except ProtocolError as exc:
            raise SimhostError(f"sim host {op}: {exc}") from exc
        except SimhostError:
            self.close()  # a REQ socket without its reply is stuck: start over next call
            raise
        except zmq.ZMQError as exc:
            self.close()
            raise SimhostError(f"sim host {op}: {exc}") from exc

    def describe(self) -> HostInfo:
        return self.call(OP_DESCRIBE)

    def stats(self) -> HostStats:
        return self.call(OP_STATS)

    def tunables(self) -> Tunables:
        return self.call(OP_GET_TUNABLES)

    def set_tunables(self, writes: Sequence[dict[str, Any]]) -> WriteResult:
        return self.call(OP_SET_TUNABLES, {"writes": list(writes)})

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
