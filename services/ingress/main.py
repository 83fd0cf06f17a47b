"""rescoin-ingress: the only way guests reach the bus.

A CURVE-server SUB socket (bound for agents that connect, and/or connected to
agents that bind behind NAT) authenticates every agent through ZAP against
the key store; each message's User-Id is the VM its key was issued for, and
only that VM's own ``guest.mem`` reports, in any guest format it speaks
(``rescoin.proto.GUEST_FORMATS``), at most ``reports_per_period`` a period
each, are converted to the bus's ``guest.mem`` and published on the bus under
the ingress's own envelope (services/ingress/core.py). Its guests' TCP
connections are bounded (services/ingress/guard.py): the open-file limit is
raised to the hard limit, unfinished handshakes and silent peers are closed,
and past ``max_connections`` the oldest connections that have not sent a
handshake are evicted; handshake failures are counted per cause.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from rescoin.proto import GUEST_FORMATS
from rescoin.proto.envelope import MAX_GUEST_PAYLOAD_BYTES
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from ..runtime.service import Outgoing, Reader, ServiceLoop, common_arguments, config_from_args
from ..runtime.support import Counters, load_curve_keypair
from ..schema import service_schema
from .core import COUNTERS, GuestRateLimit, IngressStage
from .guard import COUNTERS as GUARD_COUNTERS
from .guard import MONITOR_EVENTS, ConnectionGuard, effective_max_connections, open_fds, raise_nofile
from .keys import SERVER, trusted_guests
from .settings import IngressSettings

log = logging.getLogger("rescoin.ingress")

SCHEMA = service_schema(ingress=IngressSettings)  # the config sections this program reads
# connections the kernel queues for accept() (libzmq's default is 100): libzmq takes a full queue at once,
# so the guard keeps that many descriptors in reserve (a longer queue only lengthens a flood's bursts)
LISTEN_BACKLOG = 128
MONITOR_BATCH = 10_000  # monitor events handled before the guest socket is looked at again
GUEST_BATCH = 1000  # guest messages handled before the clock and the bus are looked at again


class GuestAuthenticator(ThreadAuthenticator):
    """ZAP: a guest key is known or the connection is refused; User-Id = its VM UUID."""

    def __init__(self, ctx: zmq.Context, guests: dict[bytes, str]) -> None:
        super().__init__(ctx)
        self.guests = guests
        self.denied = 0

    def callback(self, _domain: str, z85_key: bytes) -> bool:
        known = z85_key in self.guests
        self.denied += not known
        return known

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self.guests[zmq.utils.z85.encode(client_public_key)]


def _curve_user_id(frames: list[zmq.Frame]) -> str | None:
    """The VM the ZAP handler named for this message (its first frame's User-Id), if any."""
    user_id = frames[0].get("User-Id") if frames else None
    return user_id if isinstance(user_id, str) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-ingress", description=__doc__.split("\n")[0])
    common_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv), SCHEMA)
    keys_dir = Path(cfg.ingress.keys_dir)
    try:
        server_public, server_secret = load_curve_keypair(str(keys_dir / f"{SERVER}.key_secret"))
    except (OSError, ValueError) as exc:
        log.error("no server key in %s (run `rescoin keys init`): %s", keys_dir, exc)
        return 1
    guests = trusted_guests(keys_dir)
    nofile_soft, nofile_hard = raise_nofile()
    ctx = zmq.Context()
    auth = GuestAuthenticator(ctx, guests)
    auth.start()
    auth.configure_curve_callback("*", credentials_provider=auth)
    guest_sock = ctx.socket(zmq.SUB)
    guest_sock.curve_server = True
    guest_sock.curve_publickey, guest_sock.curve_secretkey = server_public, server_secret
    guest_sock.rcvhwm = 1000
    guest_sock.maxmsgsize = MAX_GUEST_PAYLOAD_BYTES  # a guest report is ~250 bytes: larger frames drop the peer
    guest_sock.subscribe(b"")
    settings = cfg.ingress
    guest_sock.handshake_ivl = round(settings.handshake_timeout_s * 1000)
    if settings.heartbeat_s > 0:
        guest_sock.heartbeat_ivl = round(settings.heartbeat_s * 1000)
        guest_sock.heartbeat_timeout = round(settings.heartbeat_timeout_s * 1000)
        guest_sock.heartbeat_ttl = round(settings.heartbeat_timeout_s * 1000)
    guest_sock.backlog = LISTEN_BACKLOG
    # every guest connection and handshake, seen as it happens; unbounded queue: no event is dropped
    guest_sock.monitor(f"inproc://ingress.monitor.{os.getpid()}", MONITOR_EVENTS)
    monitor = ctx.socket(zmq.PAIR)
    monitor.rcvhwm = 0
    monitor.connect(f"inproc://ingress.monitor.{os.getpid()}")
    if cfg.ingress.bind_endpoint:
        guest_sock.bind(cfg.ingress.bind_endpoint)
    for endpoint in cfg.ingress.agents.values():  # bind-mode agents behind NAT: we dial them
        guest_sock.connect(endpoint)
    counters = Counters(max_warnings=cfg.log.max_warnings_per_period, declared=(*COUNTERS, *GUARD_COUNTERS))
    limit = GuestRateLimit(cfg.ingress.reports_per_period, cfg.ingress.report_burst, cfg.host.period_s)
    guard = ConnectionGuard(
        effective_max_connections(settings.max_connections, nofile_soft, open_fds(), LISTEN_BACKLOG)
    )

    def facts() -> tuple[dict[str, int], dict[str, Any]]:
        info = {"guest_keys": len(guests), "guest_formats": ",".join(map(str, GUEST_FORMATS)),
                "connections": guard.open, "max_connections": guard.max_connections,
                "open_files_limit": nofile_soft}  # fmt: skip
        return {"rejected.zap_denied": auth.denied, **guard.values}, info

    stage = IngressStage(counters, limit, facts)

    def guest_messages(current_period: Callable[[], int]) -> list[Outgoing]:
        out: list[Outgoing] = []
        for _ in range(GUEST_BATCH):
            try:
                frames = guest_sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            out += stage.on_guest([f.bytes for f in frames], _curve_user_id(frames), current_period())
        return out

    def monitor_events(_current_period: Callable[[], int]) -> list[Outgoing]:
        for handled in range(MONITOR_BATCH):
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            guard.on_event(event["event"], event["value"])
            if handled % 64 == 63:  # a fast flood: make room as it comes, not after the batch
                guard.enforce()
        guard.enforce()
        return []

    log.info(
        "ingress up: %d guest keys, bind %s, %d agents to dial; open files %d (hard %d), at most %d guest "
        "connections, handshake within %.1f s",
        len(guests),
        cfg.ingress.bind_endpoint or "-",
        len(cfg.ingress.agents),
        nofile_soft,
        nofile_hard,
        guard.max_connections,
        settings.handshake_timeout_s,
    )
    readers = [Reader(monitor, monitor_events), Reader(guest_sock, guest_messages)]  # room first, then reports
    try:
        return ServiceLoop(stage, cfg, counters, ctx=ctx, readers=readers).run()
    finally:
        guest_sock.disable_monitor()
        monitor.close(linger=0)
        guest_sock.close(linger=0)
        auth.stop()
        ctx.destroy(linger=200)


if __name__ == "__main__":
    raise SystemExit(main())
