"""rescoin-bus: the host's XSUB -> XPUB proxy, with counters in `hb`.

One thread forwards: messages from publishers (XSUB) to subscribers (XPUB),
and, the other way, the subscribers' subscriptions, which it reads itself
(``ZMQ_XPUB_MANUAL``) so that none costs more than a legal one
(docs/SECURITY.md "Subscriptions"):

* a subscription message longer than ``MAX_SUBSCRIPTION_MESSAGE`` bytes never
  reaches the bus: libzmq disconnects its sender (``ZMQ_MAXMSGSIZE``) before it
  is buffered; the SUB reconnects and may try again (counted among
  ``subscribers_disconnected``);
* a prefix longer than a topic (``rejected.subscription_length``) or that no
  legal topic (``kind/key/``, proto/README.md §2) starts with
  (``rejected.subscription_prefix``) is refused, and so is any beyond
  ``MAX_SUBSCRIPTIONS`` in force at once (``rejected.subscription_limit``);
* nothing goes upstream: the bus subscribes once to every topic (``""``), so a
  publisher holds one subscription, whatever subscribers ask for.

A slow subscriber hits the XPUB high-water mark and loses messages
(subscribers see the gap in ``seq``); it never blocks a publisher.

With ``[bus] curve_server_key`` set, both sides are CURVE servers and a ZAP
handler (``BusAuthenticator``) decides who may connect: the publish side
(XSUB) only this host's own services, which use the bus's own key pair; the
subscribe side (XPUB) those too and every client public key in the allow-list,
the ``*.key`` files in ``clients/`` next to the server key (``rescoin keys
allow``), read again on SIGHUP. Any other key is refused during the handshake
and counted in ``hb`` (``rejected.unknown_key``: a subscriber,
``rejected.unknown_publisher``: a publisher). libzmq does not retry a refused
handshake, so a refused client is counted once per connect. A key removed from
the list keeps a connection it already has until that connection drops;
restart the bus to cut it at once. Without CURVE (``ipc://`` buses) nothing changes: Unix
permissions decide (docs/SECURITY.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import re
import signal
import threading
from pathlib import Path

import zmq
import zmq.auth
from rescoin.proto import KINDS
from rescoin.proto.envelope import MAX_TOPIC_BYTES
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from ..runtime.config import Config
from ..runtime.service import (
    MAX_FRAME_BYTES,
    BusSilentStage,
    Health,
    Outgoing,
    ServiceLoop,
    common_arguments,
    config_from_args,
)
from ..runtime.support import Counters, load_curve_keypair
from ..schema import service_schema
from .ipc import PUBLISH_MODE, SUBSCRIBE_MODE, prepare_socket_dir, restrict_socket

log = logging.getLogger("rescoin.bus")

SCHEMA = service_schema()  # the config sections this program reads

# Every message a subscriber sends the bus is at most this long, or libzmq disconnects it before it
# is buffered: room for the CURVE handshake (INITIATE, ~300 bytes) and a ZMTP 3.1 SUBSCRIBE command for
# a topic prefix of MAX_TOPIC_BYTES (CURVE adds 33 bytes); longer prefixes up to it are refused here.
MAX_SUBSCRIPTION_MESSAGE = 512
# Subscriptions in force at once, all subscribers together (XPUB cannot tell one connection from
# another): a host's services and tools hold a few dozen.
MAX_SUBSCRIPTIONS = 1024
# A prefix of a legal topic: "", part of a kind, a kind and "/", then part of a key (a name or a
# uuid, 1-128 chars of [A-Za-z0-9_.:-]), then the closing "/".
_KIND_PREFIXES = frozenset(kind[:i].encode() for kind in KINDS for i in range(len(kind) + 1))
_KEY_PREFIX = re.compile(rb"(?:[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}/?)?")
FORWARD_BATCH = 1000  # messages forwarded before subscriptions and control are looked at again


PUBLISH_DOMAIN = "rescoin-bus-publish"  # ZAP domains of the XSUB and XPUB sides
SUBSCRIBE_DOMAIN = "rescoin-bus-subscribe"
CLIENTS_DIR = "clients"  # next to the server key: the allow-list of subscribers' public keys


def clients_dir(server_key: str) -> Path:
    return Path(server_key).parent / CLIENTS_DIR


def read_allow_list(folder: Path) -> dict[bytes, str]:
    """z85 public key -> name (the file's stem), for every ``*.key`` in ``folder``; unreadable files are
    logged and left out (one bad file must not lock everybody out)."""
    allowed: dict[bytes, str] = {}
    if not folder.is_dir():
        return allowed
    for path in sorted(folder.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(str(path))
        except (OSError, ValueError) as exc:
            log.warning("allow-list: skipping %s: %s", path, exc)
            continue
        if public and len(public) == 40:
            allowed[public] = path.stem
        else:
            log.warning("allow-list: skipping %s: no CURVE public key in it", path)
    return allowed


class BusAuthenticator(ThreadAuthenticator):
    """ZAP for the bus: publishers must hold the bus's own key, subscribers that or an allowed one."""

    def __init__(self, ctx: zmq.Context, own_public: bytes, folder: Path) -> None:
        super().__init__(ctx)
        self.own_public = own_public
        self.folder = folder
        self.allowed: dict[bytes, str] = {}
        self.denied = {PUBLISH_DOMAIN: 0, SUBSCRIBE_DOMAIN: 0}  # written by the ZAP thread only
        self.reload()

    def reload(self) -> int:
        """Read the allow-list again (SIGHUP); how many keys it holds."""
        self.allowed = read_allow_list(self.folder)  # one reference swap: the ZAP thread sees old or new
        log.info("allow-list %s: %d subscriber keys", self.folder, len(self.allowed))
        return len(self.allowed)

    def callback(self, domain: str, z85_key: bytes) -> bool:
        ok = z85_key == self.own_public or (domain == SUBSCRIBE_DOMAIN and z85_key in self.allowed)
        if not ok:
            self.denied[domain] = self.denied.get(domain, 0) + 1
        return ok

    def curve_user_id(self, client_public_key: bytes) -> str:
        z85_key = zmq.utils.z85.encode(client_public_key)
        return "bus" if z85_key == self.own_public else self.allowed.get(z85_key, "?")

    def counters(self) -> dict[str, int]:
        unknown_sub, unknown_pub = self.denied[SUBSCRIBE_DOMAIN], self.denied[PUBLISH_DOMAIN]
        return {"rejected.unknown_key": unknown_sub, "rejected.unknown_publisher": unknown_pub}


def legal_prefix(prefix: bytes) -> bool:
    """Whether ``prefix`` starts some legal topic ``kind/key/`` (proto/README.md §2)."""
    kind, slash, key = prefix.partition(b"/")
    if not slash:
        return kind in _KIND_PREFIXES
    return kind.decode("ascii", "replace") in KINDS and _KEY_PREFIX.fullmatch(key) is not None


class Bus:
    """Owns the forwarding thread and its control socket."""

    def __init__(self, ctx: zmq.Context, cfg: Config, max_subscriptions: int = MAX_SUBSCRIPTIONS) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.max_subscriptions = max_subscriptions
        self.xsub = ctx.socket(zmq.XSUB)
        self.xpub = ctx.socket(zmq.XPUB)
        # a publisher sending a larger frame, or a subscriber a longer subscription, is disconnected
        # before it is buffered (the decoders refuse such frames anyway)
        self.xsub.maxmsgsize = MAX_FRAME_BYTES
        self.xpub.maxmsgsize = MAX_SUBSCRIPTION_MESSAGE
        self.xpub.setsockopt(zmq.XPUB_MANUAL, 1)  # subscriptions come to this thread, which applies them
        self.auth: BusAuthenticator | None = None
        if cfg.bus.curve_server_key:
            public, secret = load_curve_keypair(cfg.bus.curve_server_key)
            self.auth = BusAuthenticator(ctx, public, clients_dir(cfg.bus.curve_server_key))
            self.auth.start()  # before any bind: no handshake is ever made without it
            for domain in (PUBLISH_DOMAIN, SUBSCRIBE_DOMAIN):
                self.auth.configure_curve_callback(domain, credentials_provider=self.auth)
        for sock, domain in ((self.xsub, PUBLISH_DOMAIN), (self.xpub, SUBSCRIBE_DOMAIN)):
            sock.linger = 0
            sock.rcvhwm = cfg.bus.hwm
            sock.sndhwm = cfg.bus.hwm
            if self.auth is not None:
                sock.curve_server = True
                sock.curve_publickey = public
                sock.curve_secretkey = secret
                sock.zap_domain = domain.encode()
        self.monitor = self.xpub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        for endpoint in (cfg.bus.pub_endpoint, cfg.bus.sub_endpoint):
            prepare_socket_dir(endpoint)  # ipc://: who may connect is decided by Unix permissions
        self.xsub.bind(cfg.bus.pub_endpoint)
        self.xpub.bind(cfg.bus.sub_endpoint)
        restrict_socket(cfg.bus.pub_endpoint, PUBLISH_MODE)  # the pipeline's own services publish
        restrict_socket(cfg.bus.sub_endpoint, SUBSCRIBE_MODE)  # group rescoin may subscribe
        self.xsub.send(b"\x01")  # every topic, from every publisher, now and after it (re)connects
        control_addr = f"inproc://bus-control-{id(self)}"
        self.control = ctx.socket(zmq.PAIR)
        self.control.bind(control_addr)
        self._proxy_control = ctx.socket(zmq.PAIR)
        self._proxy_control.connect(control_addr)
        self.counters: collections.Counter[str] = collections.Counter()
        self.in_force: collections.Counter[bytes] = collections.Counter()  # prefix -> subscriptions holding it
        self.thread = threading.Thread(target=self._run, name="bus-proxy", daemon=True)

    def _run(self) -> None:
        poller = zmq.Poller()
        for sock in (self.xsub, self.xpub, self._proxy_control, self.monitor):
            poller.register(sock, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if self.xsub in ready:
                    self._forward()
                if self.xpub in ready:
                    self._subscriptions()
                if self.monitor in ready:
                    while self.monitor.poll(0):
                        parse_monitor_message(self.monitor.recv_multipart())
                        self.counters["subscribers_disconnected"] += 1
                if self._proxy_control in ready:
                    command = self._proxy_control.recv()
                    if command == b"TERMINATE":
                        return
                    self._proxy_control.send(json.dumps(self.snapshot()).encode())
        except zmq.ContextTerminated:
            pass
        finally:
            self.xpub.disable_monitor()
            for sock in (self._proxy_control, self.monitor):
                sock.close(linger=0)

    def _forward(self) -> None:
        counters = self.counters
        for _ in range(FORWARD_BATCH):
            try:
                frames = self.xsub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            size = sum(len(f) for f in frames)
            counters["received"] += 1
            counters["received_bytes"] += size
            self.xpub.send_multipart(frames, copy=False)
            counters["sent"] += 1
            counters["sent_bytes"] += size

    def _subscriptions(self) -> None:
        counters, in_force = self.counters, self.in_force
        while True:
            try:
                message = self.xpub.recv(zmq.NOBLOCK)  # b"\x01" + prefix or b"\x00" + prefix
            except zmq.Again:
                return
            counters["subscription_frames"] += 1
            flag, prefix = message[:1], message[1:]
            if flag == b"\x00":  # an unsubscription, or libzmq's own for a subscriber that left
                if in_force[prefix] > 0:
                    self.xpub.setsockopt(zmq.UNSUBSCRIBE, prefix)
                    in_force[prefix] -= 1
                    if not in_force[prefix]:
                        del in_force[prefix]
                continue
            if len(prefix) > MAX_TOPIC_BYTES:
                self._refuse("subscription_length")
            elif flag != b"\x01" or not legal_prefix(prefix):
                self._refuse("subscription_prefix")
            elif in_force.total() >= self.max_subscriptions:
                self._refuse("subscription_limit")
            else:
                self.xpub.setsockopt(zmq.SUBSCRIBE, prefix)  # for the subscriber this came from
                in_force[prefix] += 1
                counters["subscribed"] += 1

    def _refuse(self, cause: str) -> None:
        self.counters["rejected"] += 1
        self.counters[f"rejected.{cause}"] += 1

    def snapshot(self) -> dict[str, int]:
        """The counters, and the subscriptions in force (``subscriptions``, not a counter)."""
        return {**self.counters, "subscriptions": self.in_force.total()}

    def start(self) -> None:
        self.thread.start()

    def statistics(self) -> dict[str, int]:
        self.control.send(b"STATISTICS")
        return json.loads(self.control.recv())

    def stop(self) -> None:
        self.control.send(b"TERMINATE")
        self.thread.join(timeout=5)
        for sock in (self.control, self.xsub, self.xpub):
            sock.close(linger=0)
        if self.auth is not None:
            self.auth.stop()


COUNTERS = (
    "received",
    "sent",
    "received_bytes",
    "sent_bytes",
    "subscription_frames",
    "subscribed",
    "subscribers_disconnected",
    "rejected",
    "rejected.subscription_length",
    "rejected.subscription_prefix",
    "rejected.subscription_limit",
)
AUTH_COUNTERS = ("rejected.unknown_key", "rejected.unknown_publisher")  # a CURVE bus's, from its ZAP handler


class BusStage(BusSilentStage):
    """The bus as a stage: it forwards in its own thread (``Bus``); each period its counters, which
    ``Bus`` keeps as running totals, and its allow-list reread after a SIGHUP (``reload_wanted``)."""

    name = "bus"

    def __init__(self, bus: Bus, cfg: Config, counters: Counters, reload_wanted: threading.Event) -> None:
        self.bus = bus
        self.cfg = cfg
        self.counters = counters
        self.reload_wanted = reload_wanted

    def on_period(self, ended_period: int) -> list[Outgoing]:
        if self.reload_wanted.is_set() and self.bus.auth is not None:
            self.reload_wanted.clear()
            self.bus.auth.reload()
        return []

    def health(self) -> Health:
        stats = self.bus.statistics()
        totals = {name: stats.get(name, 0) for name in COUNTERS}
        if self.bus.auth is not None:
            refused = self.bus.auth.counters()
            totals.update(refused)
            totals["rejected"] += sum(refused.values())
        self.counters.set_totals(totals)
        auth = self.bus.auth
        return Health("ok", {
            "pub_endpoint": self.cfg.bus.pub_endpoint,
            "sub_endpoint": self.cfg.bus.sub_endpoint,
            "subscriptions": stats["subscriptions"],
            "max_subscriptions": self.bus.max_subscriptions,
            **({"allowed_keys": len(auth.allowed)} if auth is not None else {}),
        })  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-bus", description=__doc__.split("\n")[0])
    common_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args, SCHEMA)
    reload_wanted = threading.Event()
    signal.signal(signal.SIGHUP, lambda _signum, _frame: reload_wanted.set())
    ctx = zmq.Context()
    try:
        bus = Bus(ctx, cfg)
    except (zmq.ZMQError, OSError, ValueError) as exc:
        log.error("cannot bind %s / %s: %s", cfg.bus.pub_endpoint, cfg.bus.sub_endpoint, exc)
        ctx.destroy(linger=0)
        return 1
    bus.start()
    log.info(
        "bus up: publishers -> %s, subscribers -> %s (host %s)",
        cfg.bus.pub_endpoint,
        cfg.bus.sub_endpoint,
        cfg.host.name,
    )
    counters = Counters(max_warnings=cfg.log.max_warnings_per_period, declared=(*COUNTERS,))
    try:  # its heartbeat goes through itself, like every stage's
        return ServiceLoop(BusStage(bus, cfg, counters, reload_wanted), cfg, counters, ctx=ctx).run()
    finally:
        bus.stop()
        ctx.term()


if __name__ == "__main__":
    raise SystemExit(main())
