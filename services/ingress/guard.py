"""The ingress's guests' TCP connections: counted, bounded, and the open-file limit raised (issue #29).

libzmq accepts every TCP connection before its CURVE handshake, one file
descriptor each, and has no connection limit of its own. Once the process runs
out of descriptors its listener spins on ``accept() = EMFILE`` at 100 % CPU and
nobody new gets in until descriptors come back. Three things bound that:

* the open-file soft limit is raised to the hard limit at start
  (``raise_nofile``): under systemd the hard limit is 524,288, so an idle flood
  must be that large before descriptors run out;
* libzmq drops a peer that has not finished its handshake within
  ``handshake_timeout_s`` (ZMQ_HANDSHAKE_IVL), and one that went silent after
  it within ``heartbeat_timeout_s`` (ZMTP heartbeats), so descriptors come back;
* ``ConnectionGuard`` follows every accepted connection through a socket
  monitor and, past ``max_connections`` (at most the descriptor limit less a
  reserve, so the cap is reached before ``EMFILE``), shuts down the oldest
  connections that have not sent enough bytes for a CURVE handshake (the
  kernel's ``tcpi_bytes_received``). An agent sends its whole handshake within
  milliseconds of connecting, so it is never the oldest of those for long;
  connections that sent their handshake are never evicted by the cap. A flood
  that holds more connections than the descriptor limit and reopens each one
  closed still refills every descriptor freed (libzmq accepts faster than
  this process evicts), so the process then sits at its limit, but agents
  keep getting in: what is evicted is always the flood's.

The guard shuts a connection down (``shutdown(2)``), it never closes a
descriptor libzmq owns: libzmq sees the end of the stream and closes it
itself. A descriptor is shut down only if its peer address is still the one
recorded when it was accepted, so a number libzmq has closed and reused for
another connection is never touched.

The monitor's handshake events are also counted per cause (``counters()``):
a client without CURVE (``handshake_mechanism``), with a wrong server key
(``handshake_crypto``), with a key the ZAP handler does not know
(``handshake_auth``), any other protocol error (``handshake_protocol``), and a
connection closed before its handshake ended, by its peer, the timeout or
the guard (``handshake_incomplete``).
"""

from __future__ import annotations

import logging
import os
import resource
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import zmq

log = logging.getLogger("rescoin.ingress")

# what a guest must have sent before the cap never evicts it: greeting (64) + HELLO (202) + most of INITIATE
HANDSHAKE_BYTES = 400
FD_RESERVE_MIN = 64  # descriptors kept free below the limit for the process itself (and a full listen queue)
MONITOR_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
# counters in every hb from the start (names below "rejected." and "connections.")
HANDSHAKE_CAUSES = ("handshake_mechanism", "handshake_crypto", "handshake_auth", "handshake_protocol",
                    "handshake_incomplete")  # fmt: skip
CONNECTION_COUNTERS = ("accepted", "closed", "authenticated", "evicted", "eviction_skipped")
COUNTERS = (*(f"rejected.{c}" for c in HANDSHAKE_CAUSES), *(f"connections.{c}" for c in CONNECTION_COUNTERS))
_TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received (u64) in struct tcp_info, Linux >= 4.1
_TCP_INFO_LEN = 136


def raise_nofile() -> tuple[int, int]:
    """The open-file soft limit raised to the hard limit; returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # pragma: no cover - a hard limit we may not reach
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_fds() -> int:
    """How many descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:  # pragma: no cover - no /proc
        return 0


def effective_max_connections(wanted: int, nofile_soft: int, in_use: int, backlog: int) -> int:
    """``wanted`` (0 = as many as the limit allows), kept below the descriptor limit by a reserve.

    libzmq accepts whatever waits in the listen queue in one burst, before the guard hears of it: the
    reserve holds a full queue (``backlog``) on top of what the process needs for itself.
    """
    reserve = max(FD_RESERVE_MIN, nofile_soft // 16) + backlog
    room = max(1, nofile_soft - in_use - reserve)
    return room if wanted <= 0 else min(wanted, room)


def _with_fd(fd: int, action: Callable[[socket.socket], object]) -> object:
    """``action`` on a socket object over libzmq's descriptor, which is never closed here. Family and type
    given, not probed (three syscalls less a connection); addresses are decoded by their own family."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, fd)
    try:
        return action(sock)
    finally:
        sock.detach()


def tcp_peer(fd: int) -> tuple | None:
    """(local address, peer address) of a connected socket descriptor, None if it is not one (any more)."""
    try:
        return _with_fd(fd, lambda s: (s.getsockname(), s.getpeername()))  # type: ignore[return-value]
    except OSError:
        return None


def bytes_received(fd: int) -> int | None:
    """What the peer of a TCP descriptor has sent so far (the kernel's count), None if unknown."""
    try:
        info = _with_fd(fd, lambda s: s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN))
    except OSError:
        return None
    if not isinstance(info, bytes) or len(info) < _TCPI_BYTES_RECEIVED + 8:
        return None
    return struct.unpack_from("=Q", info, _TCPI_BYTES_RECEIVED)[0]


def shutdown_fd(fd: int) -> bool:
    try:
        _with_fd(fd, lambda s: s.shutdown(socket.SHUT_RDWR))
        return True
    except OSError:
        return False


@dataclass
class _Conn:
    peer: tuple  # (local address, peer address) when accepted
    when: float


class ConnectionGuard:
    """Accepted connections by descriptor, from the socket monitor's events; evicts past the cap.

    ``on_event`` takes one monitor event; ``enforce`` evicts, oldest first, connections that have not
    yet sent ``HANDSHAKE_BYTES`` until at most ``low_water`` are open. The OS calls are attributes
    (``peer_of``, ``received``, ``shutdown``) so tests can stand in for them.
    """

    def __init__(self, max_connections: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_connections = max_connections
        self.low_water = max(1, max_connections * 9 // 10)
        self.clock = clock
        self.pending: OrderedDict[int, _Conn] = OrderedDict()  # fd -> conn, oldest first: may be evicted
        self.spoken: dict[int, _Conn] = {}  # sent a handshake's worth of bytes: never evicted by the cap
        self.values = dict.fromkeys(COUNTERS, 0)
        self.peer_of: Callable[[int], tuple | None] = tcp_peer
        self.received: Callable[[int], int | None] = bytes_received
        self.shutdown: Callable[[int], bool] = shutdown_fd

    @property
    def open(self) -> int:
        return len(self.pending) + len(self.spoken)

    def _count(self, name: str) -> None:
        self.values[name] += 1

    def on_event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            self._count("connections.accepted")
            self.spoken.pop(value, None)  # a number we still held: its close event was lost
            self.pending.pop(value, None)
            peer = self.peer_of(value)
            if peer is not None:
                self.pending[value] = _Conn(peer, self.clock())
        elif event == zmq.EVENT_DISCONNECTED:
            if self.pending.pop(value, None) or self.spoken.pop(value, None):
                self._count("connections.closed")
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._count("connections.authenticated")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._count("rejected.handshake_auth")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                self._count("rejected.handshake_mechanism")
            elif value in (zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC, zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE):
                self._count("rejected.handshake_crypto")
            else:
                self._count("rejected.handshake_protocol")
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._count("rejected.handshake_incomplete")

    def enforce(self) -> int:
        """Past the cap: evict idle handshakes, oldest first, down to ``low_water``. Returns how many."""
        if self.open <= self.max_connections:
            return 0
        evicted = 0
        for fd in list(self.pending):
            if self.open <= self.low_water:
                break
            conn = self.pending[fd]
            got = self.received(fd)
            if got is not None and got >= HANDSHAKE_BYTES:
                self.spoken[fd] = self.pending.pop(fd)  # a real handshake: the cap leaves it alone
                continue
            del self.pending[fd]
            if got is None or self.peer_of(fd) != conn.peer:  # gone, or the number now names another socket
                self._count("connections.eviction_skipped")
                continue
            if self.shutdown(fd):
                evicted += 1
                self._count("connections.evicted")
                self._count("connections.closed")  # libzmq closes it; its event finds nothing left here
            else:
                self._count("connections.eviction_skipped")
        return evicted
