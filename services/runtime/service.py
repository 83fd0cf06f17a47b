"""The loop every stage runs in: sockets, the period clock, signals, `hb`.

A stage's logic is a plain object (see `Stage`) that takes decoded envelopes
and returns bodies to publish; it owns no socket and reads no clock. This
module is the only place that does. A stage can therefore be driven in tests
by a list of recorded messages with no sockets at all.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq
from rescoin.proto import KIND_HB, Envelope, Heartbeat, ProtocolError
from rescoin.proto.codec import decode, encode
from rescoin.proto.envelope import MAX_PAYLOAD_BYTES

from .config import Config, ConfigError, Schema, load_config
from .owners import from_owner
from .settings import HostSettings
from .support import Counters, StopFlag, keep_freed_memory, secure_client, setup_logging

log = logging.getLogger("rescoin.runtime")

# ZMQ_MAXMSGSIZE (per frame): a peer that sends a larger frame is disconnected
# before the frame is buffered. Data: the decoder's own payload limit, which is
# sized for proto's MAX_VMS. Subscription traffic (all a PUB or an XPUB ever
# receives): a topic prefix is at most 256 bytes.
MAX_FRAME_BYTES = MAX_PAYLOAD_BYTES
MAX_SUBSCRIPTION_BYTES = 64 * 1024
# The input filter's bounds ([host] max_streams, max_future_periods): its table is keyed by what senders
# choose (src, host, VM), and one forged far-future period would otherwise make every real one "stale".
MAX_STREAMS = HostSettings.max_streams
MAX_FUTURE_PERIODS = HostSettings.max_future_periods


@dataclass
class Outgoing:
    """A message a stage wants published: the runtime adds the envelope."""

    kind: str
    period: int
    body: Any


@dataclass
class Health:
    state: str = "ok"  # one of rescoin.proto.SERVICE_STATES
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Reader:
    """A socket of the stage's own beside the bus (the ingress's guest socket): when it is readable the
    loop calls ``handle(current_period)`` and publishes what it returns, as for a bus message.
    ``current_period()`` is the period in progress when it is called: a batch that crosses a boundary
    labels each message by its own moment."""

    sock: zmq.Socket
    handle: Callable[[Callable[[], int]], Sequence[Outgoing]]


class BusSilentStage:
    """What a stage that hears nothing on the bus needs not write (its input comes through a ``Reader``, or
    from its own thread): no subscriptions, nothing to say to a message, a tick or a stop."""

    def subscriptions(self) -> Sequence[bytes]:
        return ()

    def on_message(self, env: Envelope) -> list[Outgoing]:
        return []

    def on_period(self, ended_period: int) -> list[Outgoing]:
        return []

    def close(self) -> list[Outgoing]:
        return []


class Stage(Protocol):
    """What a stage's core offers the runtime."""

    name: str  # service name: "monitor", "scheduler", ...

    def subscriptions(self) -> Sequence[bytes]:
        """Topic prefixes to subscribe to (``b"sample/h1/"``)."""
        ...

    def on_message(self, env: Envelope) -> list[Outgoing]:
        """A decoded, validated, in-order message arrived."""
        ...

    def on_period(self, ended_period: int) -> list[Outgoing]:
        """The wall clock crossed a period boundary; ``ended_period`` just ended."""
        ...

    def health(self) -> Health:
        """State and facts for this period's `hb`."""
        ...

    def close(self) -> list[Outgoing]:
        """The service is stopping (SIGTERM): last words, e.g. restored tunables."""
        ...

    # Optional: ``flush() -> None`` is called after each batch of messages has been
    # handled and its answers published: the place for state files off the critical path.


def current_period(now: float, period_s: float) -> int:
    return math.floor(now / period_s)


class PeriodPacer:
    """When a period ends: paced by the monotonic clock, numbered by the wall clock.

    Every stage agrees on ``p = floor(unix_time / period_s)``, so the numbers
    come from the wall clock; the waiting does not. A wall clock that steps
    (NTP, an operator, a resumed VM) changes the numbers, never the pace: the
    loop wakes at least once per ``period_s`` of monotonic time and a period
    ends at least every two. After a step back the numbers go back too (the
    input filter copes, see InputFilter).
    """

    def __init__(
        self,
        period_s: float,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.period_s = period_s
        self.wall = wall
        self.monotonic = monotonic
        now = wall()
        self.last_ended = current_period(now, period_s) - 1
        self.deadline = monotonic() + self._until_boundary(now)
        self.deferred = False

    def _until_boundary(self, now: float) -> float:
        """Wall seconds to the next period boundary, in (0, period_s]."""
        left = (current_period(now, self.period_s) + 1) * self.period_s - now
        return min(self.period_s, max(left, 1e-6))

    def current(self) -> int:
        """The period in progress, by the wall clock."""
        return current_period(self.wall(), self.period_s)

    def timeout_s(self) -> float:
        """How long the loop may wait for messages: never more than one period."""
        return min(self.period_s, max(0.0, self.deadline - self.monotonic()))

    def due(self) -> int | None:
        """The period that just ended, once per period; None if none ended yet."""
        mono = self.monotonic()
        if mono < self.deadline:
            return None
        now = self.wall()
        ended = current_period(now, self.period_s) - 1
        if ended == self.last_ended and not self.deferred:
            # the wall clock has not crossed the boundary yet (slewed, or stepped back by less than a
            # period): wait for it once, at most one more period, then tick whatever it says
            self.deferred = True
            self.deadline = mono + self._until_boundary(now)
            return None
        self.deferred = False
        self.last_ended = ended
        self.deadline = mono + self._until_boundary(now)
        return ended


class Publisher:
    """Stamps bodies into envelopes (host, src, epoch, seq, ts) and sends them."""

    def __init__(self, sock: zmq.Socket, host: str, src: str, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.sock = sock
        self.host = host
        self.src = src
        self.clock_ns = clock_ns
        self.epoch = clock_ns()
        self.seq: dict[bytes, int] = {}  # per topic, so a subscriber to one topic sees no false gaps

    def envelope(self, kind: str, period: int, body: Any) -> Envelope:
        """The next envelope for ``kind``; its seq is used up only once it is sent."""
        env = Envelope(kind=kind, host=self.host, src=self.src, epoch=self.epoch, seq=0, ts=self.clock_ns(),
                       period=period, body=body)  # fmt: skip
        return dataclasses.replace(env, seq=self.seq.get(env.topic, 0))

    def send(self, kind: str, period: int, body: Any) -> Envelope:
        """Encode (validating: ProtocolError for anything a receiver would reject, nothing sent) and send."""
        env = self.envelope(kind, period, body)
        self.sock.send_multipart(encode(env), copy=False)
        self.seq[env.topic] = env.seq + 1  # a refused message leaves no gap for subscribers to count
        return env


class InputFilter:
    """Drops messages for a period older than the last one handled, counts sequence gaps.

    One entry per stream (kind, topic key, src, host), in an LRU table of at
    most ``max_entries``: senders choose those values, so a flood of made-up
    ones evicts the oldest entries (counted as ``filter_evicted``) instead of
    growing memory. A message about this host (``host``) for a period more
    than ``max_future_periods`` ahead of ``own_period()`` is rejected
    (``rejected.period``), so a forged far-future period cannot make every
    real one stale; a stream whose last period is that far ahead (this host's
    wall clock stepped back) starts over. Other hosts (their own period
    lengths) are only ordered, not compared with this clock.
    """

    def __init__(
        self,
        counters: Counters,
        own_period: Callable[[], int] | None = None,
        host: str = "",
        max_entries: int = MAX_STREAMS,
        max_future_periods: int = MAX_FUTURE_PERIODS,
    ) -> None:
        self.counters = counters
        self.own_period = own_period
        self.host = host
        self.max_entries = max_entries
        self.max_future_periods = max_future_periods
        # (kind, topic key, src, host) -> [epoch, seq, period]; hb from two services never collide
        self.streams: collections.OrderedDict[tuple[str, str, str, str], list[int]] = collections.OrderedDict()

    def accept(self, env: Envelope) -> bool:
        horizon = None
        if self.own_period is not None and env.host == self.host:
            horizon = self.own_period() + self.max_future_periods
            if env.period > horizon:
                self.counters.reject(
                    "period",
                    f"{env.kind} from {env.src:.40}: period {env.period} is more than {self.max_future_periods} "
                    f"ahead of this host's {horizon - self.max_future_periods}",
                )
                return False
        key = (env.kind, env.topic_key, env.src, env.host)
        entry = self.streams.get(key)
        if entry is None:
            self.streams[key] = [env.epoch, env.seq, env.period]
            if len(self.streams) > self.max_entries:
                self.streams.popitem(last=False)
                self.counters.inc("filter_evicted")
            return True
        self.streams.move_to_end(key)
        epoch, seq, last = entry
        if epoch == env.epoch and env.seq > seq + 1:
            self.counters.inc("gaps", env.seq - seq - 1)
        entry[0], entry[1] = env.epoch, env.seq
        if env.period < last and (horizon is None or last <= horizon):
            self.counters.inc("dropped_stale")
            return False
        entry[2] = env.period
        return True


class BusConnector(Protocol):
    """Another host's bus that brings its own keys (tools/buses.py BusTarget: a fleet file's host)."""

    def connect(self, sock: zmq.Socket) -> None: ...


def _bus_options(sock: zmq.Socket, cfg: Config) -> None:
    sock.linger = 1000
    sock.sndhwm = cfg.bus.hwm
    sock.rcvhwm = cfg.bus.hwm
    sock.reconnect_ivl = 100
    sock.reconnect_ivl_max = 2000
    if cfg.bus.curve_client_key:
        secure_client(sock, cfg.bus.curve_client_key, cfg.bus.curve_server_public)


def bus_publisher(ctx: zmq.Context, cfg: Config) -> zmq.Socket:
    """A PUB connected to the bus's XSUB side, set up as every stage's (hwm, message size, CURVE key)."""
    pub = ctx.socket(zmq.PUB)
    pub.maxmsgsize = MAX_SUBSCRIPTION_BYTES  # a PUB only ever receives subscriptions
    _bus_options(pub, cfg)
    pub.connect(cfg.bus.pub_endpoint)
    return pub


def bus_sockets(
    ctx: zmq.Context,
    cfg: Config,
    subscriptions: Sequence[bytes],
    extra_sub_endpoints: Sequence[str | BusConnector] = (),
) -> tuple[zmq.Socket, zmq.Socket]:
    """A PUB connected to the bus's XSUB side and a SUB connected to its XPUB side, and to each of
    ``extra_sub_endpoints``: an endpoint string with this host's [bus] keys, a ``BusConnector`` with its
    own (connected last: each sets the socket's CURVE options for the connections made after it)."""
    pub = bus_publisher(ctx, cfg)
    sub = ctx.socket(zmq.SUB)
    sub.maxmsgsize = MAX_FRAME_BYTES
    _bus_options(sub, cfg)
    sub.connect(cfg.bus.sub_endpoint)
    for endpoint in extra_sub_endpoints:  # other hosts' buses (exporter, central tools)
        if isinstance(endpoint, str):
            sub.connect(endpoint)
    for endpoint in extra_sub_endpoints:
        if not isinstance(endpoint, str):
            endpoint.connect(sub)
    for prefix in subscriptions:
        sub.subscribe(prefix)
    return pub, sub


class ServiceLoop:
    """Runs one stage until SIGTERM: receive, decode, filter, dispatch, tick, heartbeat.

    Nothing one message or one tick does stops it: any exception while handling
    a message (decode, filter, the stage's ``on_message``), a tick
    (``on_period``, ``health``) or a flush is counted as ``rejected.<where>``
    (``rejected.handler.KeyError``), logged (rate-limited, with its traceback)
    and survived; a message the codec refuses to send is counted as
    ``send_failed.<kind>``.
    """

    MAX_BATCH = 1000  # messages handled before the clock is checked again

    def __init__(
        self,
        stage: Stage,
        cfg: Config,
        counters: Counters,
        clock: Callable[[], float] = time.time,
        extra_sub_endpoints: Sequence[str | BusConnector] = (),
        monotonic: Callable[[], float] = time.monotonic,
        ctx: zmq.Context | None = None,
        readers: Sequence[Reader] = (),
    ) -> None:
        self.stage = stage
        self.ctx = ctx  # the caller's, if its readers' sockets live in it (then the caller ends it)
        self.readers = list(readers)
        self.extra_sub_endpoints = list(extra_sub_endpoints)
        self.cfg = cfg
        self.counters = counters
        self.clock = clock  # wall: numbers periods
        self.monotonic = monotonic  # paces them
        self.period_mismatch: str | None = None  # the last stage heard running another period_s
        self.filter = InputFilter(
            counters,
            own_period=lambda: current_period(self.clock(), cfg.host.period_s),
            host=cfg.host.name,
            max_entries=cfg.host.max_streams,
            max_future_periods=cfg.host.max_future_periods,
        )
        self.stop = StopFlag()
        self.logger = logging.getLogger(f"rescoin.{stage.name}")

    def make_pacer(self) -> PeriodPacer:
        return PeriodPacer(self.cfg.host.period_s, self.clock, self.monotonic)

    def run(self) -> int:
        self.stop.install()
        if not keep_freed_memory():
            self.logger.info("this C library has no mallopt: freed numpy blocks go back to the kernel each period")
        ctx = self.ctx or zmq.Context()
        pub, sub = bus_sockets(ctx, self.cfg, self.stage.subscriptions(), self.extra_sub_endpoints)
        self.publisher = Publisher(pub, self.cfg.host.name, self.stage.name)
        pacer = self.make_pacer()
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        for reader in self.readers:
            poller.register(reader.sock, zmq.POLLIN)
        self.logger.info(
            "started: host %s, period %.3f s, bus %s / %s (config: %s)",
            self.cfg.host.name,
            self.cfg.host.period_s,
            self.cfg.bus.pub_endpoint,
            self.cfg.bus.sub_endpoint,
            self.cfg.source,
        )
        try:
            while not self.stop.stopping:
                ready = dict(poller.poll(round(pacer.timeout_s() * 1000)))  # at most a period: SIGTERM seen within one
                if sub in ready:
                    self._drain(sub)
                for reader in self.readers:
                    if reader.sock in ready:
                        self._read(reader, pacer.current)
                ended = pacer.due()
                if ended is not None:
                    self._tick(ended)
            self.logger.info("stopping on %s", self.stop.signal_name or "request")
            try:
                last_words = self.stage.close()
            except Exception as exc:
                self._failed("close", exc)
                last_words = []
            self._publish(last_words)
            self._heartbeat(pacer.current() - 1, state="stopping")  # like every hb: the last period that ended
        finally:
            pub.close(linger=1000)
            sub.close(linger=0)
            if self.ctx is None:
                ctx.term()
        return 0

    def _read(self, reader: Reader, current_period: Callable[[], int]) -> None:
        try:
            outgoing = reader.handle(current_period)
        except Exception as exc:
            self._failed("reader", exc)
            return
        self._publish(outgoing)

    def _drain(self, sub: zmq.Socket) -> None:
        for _ in range(self.MAX_BATCH):
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.handle_frames(frames)
        self._flush()

    def _flush(self) -> None:
        flush = getattr(self.stage, "flush", None)
        if flush is None:
            return
        try:  # slow persistence runs once the answers are out
            flush()
        except Exception as exc:
            self._failed("flush", exc)

    def _tick(self, ended: int) -> None:
        """Period ``ended`` just ended: the stage's tick, then this period's heartbeat, whatever the tick did."""
        try:
            outgoing = self.stage.on_period(ended)
        except Exception as exc:
            self._failed("period", exc)
            outgoing = []
        self._publish(outgoing)
        self._heartbeat(ended)

    def _failed(self, where: str, exc: BaseException) -> None:
        """An exception nobody foresaw: counted by where and type, logged rate-limited, survived."""
        name = type(exc).__name__
        self.counters.reject(f"{where}.{name}", f"{name}: {exc}", self.logger, exc_info=exc)

    def handle_frames(self, frames: list[bytes]) -> None:
        self.counters.inc("received")
        try:
            env = decode(frames)
        except ProtocolError as exc:
            self.counters.reject(exc.field.split(".")[0] or "frame", str(exc), self.logger)
            return
        except Exception as exc:  # decode raises only ProtocolError; belt and braces
            self._failed("decode", exc)
            return
        try:
            if not from_owner(env, self.counters) or not self.filter.accept(env):
                return
            self._check_period(env)
            outgoing = self.stage.on_message(env)
        except ProtocolError as exc:  # the core found the message inconsistent (unknown VM...)
            self.counters.reject(exc.field.split(".")[0] or env.kind, str(exc), self.logger)
            return
        except Exception as exc:
            self._failed("handler", exc)
            return
        self._publish(outgoing)

    def _check_period(self, env: Envelope) -> None:
        """A stage of this host that hears another period length (a sample's or a heartbeat's period_s)
        runs on another config: its periods and this one's do not line up. Counted, said in hb, handled."""
        heard = getattr(env.body, "period_s", None)
        if heard is None or env.host != self.cfg.host.name or math.isclose(heard, self.cfg.host.period_s):
            return
        self.counters.inc("period_mismatch")
        if self.period_mismatch is None:
            self.logger.warning("%s on %s runs %g s periods, this %s %g s: their configs differ",
                                env.src, env.host, heard, self.stage.name, self.cfg.host.period_s)  # fmt: skip
        self.period_mismatch = f"{env.src} runs {heard:g} s periods"

    def _publish(self, outgoing: Sequence[Outgoing] | None) -> None:
        for out in outgoing or ():  # a stage that returned None has nothing to say
            if self._send(out.kind, out.period, out.body):
                self.counters.inc("sent")

    def _send(self, kind: str, period: int, body: Any) -> bool:
        """Publish one body; one the codec refuses (NaN...) is counted as ``send_failed.<kind>``, not sent."""
        try:
            self.publisher.send(kind, period, body)
        except Exception as exc:
            self.counters.fail("send_failed", str(kind)[:40], f"{type(exc).__name__}: {exc}", self.logger)
            return False
        return True

    def _heartbeat(self, period: int, state: str | None = None) -> None:
        try:
            health = self.stage.health()
        except Exception as exc:
            self._failed("health", exc)
            health = Health("degraded")
        hb = Heartbeat(
            service=self.stage.name,
            state=state or health.state,
            period_s=self.cfg.host.period_s,
            counters=self.counters.snapshot(),
            info={
                "pid": os.getpid(),
                **health.info,
                **({"period_mismatch": self.period_mismatch} if self.period_mismatch else {}),
            },  # fmt: skip
            errors=list(self.counters.recent_errors),
        )
        self._send(KIND_HB, period, hb)
        self.counters.end_period(self.logger)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --set and the few keys every service takes as flags."""
    parser.add_argument(
        "--config",
        default=os.environ.get("RESCOIN_CONFIG"),
        help="TOML config file (default: $RESCOIN_CONFIG, else built-in defaults)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key (repeatable)",
    )
    parser.add_argument("--host", help="host name on the bus (host.name)")
    parser.add_argument("--period", type=float, help="control period in seconds (host.period_s)")
    parser.add_argument("--state-dir", help="state directory (host.state_dir)")


def config_from_args(args: argparse.Namespace, schema: Schema, extra: Sequence[str] = ()) -> Config:
    """Load the config named by the common arguments, validated against the program's ``schema`` with
    ``extra`` overrides last; on error print it and exit 2."""
    overrides = list(args.set)
    for flag, key in (
        ("host", "host.name"),
        ("period", "host.period_s"),
        ("state_dir", "host.state_dir"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}")
    overrides.extend(extra)
    try:
        cfg = load_config(args.config, overrides, schema)
    except ConfigError as exc:
        print(f"rescoin: bad configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    setup_logging(cfg.log.level)
    return cfg


def run_stage(
    stage: Stage, cfg: Config, counters: Counters, extra_sub_endpoints: Sequence[str | BusConnector] = ()
) -> int:
    """Run ``stage`` under the service loop; returns the process exit code."""
    return ServiceLoop(stage, cfg, counters, extra_sub_endpoints=extra_sub_endpoints).run()
