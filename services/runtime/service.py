"""The loop every stage runs in: sockets, the period clock, signals, `hb`.

A stage's logic is a plain object (see `Stage`) that takes decoded envelopes
and returns bodies to publish; it owns no socket and reads no clock. This
module is the only place that does. A stage can therefore be driven in tests
by a list of recorded messages with no sockets at all.
"""

from __future__ import annotations

import argparse
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
from rescoin.proto.messages import decode, encode

from .config import Config, ConfigError, load_config
from .support import Counters, StopFlag, secure_client, setup_logging

log = logging.getLogger("rescoin.runtime")


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


class Publisher:
    """Stamps bodies into envelopes (host, src, epoch, seq, ts) and sends them."""

    def __init__(self, sock: zmq.Socket, host: str, src: str, clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.sock = sock
        self.host = host
        self.src = src
        self.clock_ns = clock_ns
        self.epoch = clock_ns()
        self.seq: dict[str, int] = {}  # per topic, so a subscriber to one topic sees no false gaps

    def envelope(self, kind: str, period: int, body: Any) -> Envelope:
        env = Envelope(
            kind=kind,
            host=self.host,
            src=self.src,
            epoch=self.epoch,
            seq=self.seq.get(kind, 0),
            ts=self.clock_ns(),
            period=period,
            body=body,
        )
        self.seq[kind] = env.seq + 1
        return env

    def send(self, kind: str, period: int, body: Any) -> Envelope:
        env = self.envelope(kind, period, body)
        self.sock.send_multipart(encode(env), copy=False)
        return env


class InputFilter:
    """Drops messages for a period older than the last one handled, counts sequence gaps."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.last_period: dict[tuple[str, str, str], int] = {}
        self.last_seq: dict[tuple[str, str, str], tuple[int, int]] = {}

    def accept(self, env: Envelope) -> bool:
        stream = (env.src, env.host, env.kind)
        prev = self.last_seq.get(stream)
        if prev is not None and prev[0] == env.epoch and env.seq > prev[1] + 1:
            self.counters.inc("gaps", env.seq - prev[1] - 1)
        self.last_seq[stream] = (env.epoch, env.seq)
        key = (env.kind, env.topic_key, env.src)  # per stream: hb from two services never collide
        last = self.last_period.get(key)
        if last is not None and env.period < last:
            self.counters.inc("dropped_stale")
            return False
        self.last_period[key] = env.period
        return True


def bus_sockets(
    ctx: zmq.Context, cfg: Config, subscriptions: Sequence[bytes], extra_sub_endpoints: Sequence[str] = ()
) -> tuple[zmq.Socket, zmq.Socket]:
    """A PUB connected to the bus's XSUB side and a SUB connected to its XPUB side."""
    pub = ctx.socket(zmq.PUB)
    sub = ctx.socket(zmq.SUB)
    for sock in (pub, sub):
        sock.linger = 1000
        sock.sndhwm = cfg.bus.hwm
        sock.rcvhwm = cfg.bus.hwm
        sock.reconnect_ivl = 100
        sock.reconnect_ivl_max = 2000
        if cfg.bus.curve_client_key:
            secure_client(sock, cfg.bus.curve_client_key, cfg.bus.curve_server_public)
    pub.connect(cfg.bus.pub_endpoint)
    sub.connect(cfg.bus.sub_endpoint)
    for endpoint in extra_sub_endpoints:  # other hosts' buses (exporter, central tools)
        sub.connect(endpoint)
    for prefix in subscriptions:
        sub.subscribe(prefix)
    return pub, sub


class ServiceLoop:
    """Runs one stage until SIGTERM: receive, decode, filter, dispatch, tick, heartbeat."""

    MAX_BATCH = 1000  # messages handled before the clock is checked again

    def __init__(
        self,
        stage: Stage,
        cfg: Config,
        counters: Counters,
        clock: Callable[[], float] = time.time,
        extra_sub_endpoints: Sequence[str] = (),
    ) -> None:
        self.stage = stage
        self.extra_sub_endpoints = list(extra_sub_endpoints)
        self.cfg = cfg
        self.counters = counters
        self.clock = clock
        self.filter = InputFilter(counters)
        self.stop = StopFlag()
        self.logger = logging.getLogger(f"rescoin.{stage.name}")

    def run(self) -> int:
        self.stop.install()
        ctx = zmq.Context()
        pub, sub = bus_sockets(ctx, self.cfg, self.stage.subscriptions(), self.extra_sub_endpoints)
        self.publisher = Publisher(pub, self.cfg.host.name, self.stage.name)
        period_s = self.cfg.host.period_s
        next_tick = (current_period(self.clock(), period_s) + 1) * period_s
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        self.logger.info(
            "started: host %s, period %.3f s, bus %s / %s (config: %s)",
            self.cfg.host.name,
            period_s,
            self.cfg.bus.pub_endpoint,
            self.cfg.bus.sub_endpoint,
            self.cfg.source,
        )
        try:
            while not self.stop.stopping:
                timeout_ms = max(0.0, (next_tick - self.clock()) * 1000)
                if poller.poll(timeout_ms):
                    self._drain(sub)
                now = self.clock()
                if now >= next_tick:
                    ended = current_period(now, period_s) - 1
                    next_tick = (ended + 2) * period_s
                    self._publish(self.stage.on_period(ended))
                    self._heartbeat(ended)
            self.logger.info("stopping on %s", self.stop.signal_name or "request")
            self._publish(self.stage.close())
            self._heartbeat(current_period(self.clock(), period_s), state="stopping")
        finally:
            pub.close(linger=1000)
            sub.close(linger=0)
            ctx.term()
        return 0

    def _drain(self, sub: zmq.Socket) -> None:
        for _ in range(self.MAX_BATCH):
            try:
                frames = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            self.handle_frames(frames)
        flush = getattr(self.stage, "flush", None)
        if flush is not None:  # slow persistence runs once the answers are out
            flush()

    def handle_frames(self, frames: list[bytes]) -> None:
        self.counters.inc("received")
        try:
            env = decode(frames)
        except ProtocolError as exc:
            self.counters.reject(exc.field.split(".")[0] or "frame", str(exc), self.logger)
            return
        if not self.filter.accept(env):
            return
        try:
            outgoing = self.stage.on_message(env)
        except ProtocolError as exc:  # the core found the message inconsistent (unknown VM...)
            self.counters.reject(exc.field.split(".")[0] or env.kind, str(exc), self.logger)
            return
        self._publish(outgoing)

    def _publish(self, outgoing: list[Outgoing]) -> None:
        for out in outgoing:
            self.publisher.send(out.kind, out.period, out.body)
            self.counters.inc("sent")

    def _heartbeat(self, period: int, state: str | None = None) -> None:
        health = self.stage.health()
        hb = Heartbeat(
            service=self.stage.name,
            state=state or health.state,
            period_s=self.cfg.host.period_s,
            counters=self.counters.snapshot(),
            info={"pid": os.getpid(), **health.info},
            errors=list(self.counters.recent_errors),
        )
        self.publisher.send(KIND_HB, period, hb)
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


def config_from_args(args: argparse.Namespace, extra: Sequence[str] = ()) -> Config:
    """Load the config named by the common arguments; on error print it and exit 2."""
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
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"rescoin: bad configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    setup_logging(cfg.log.level)
    return cfg


def run_stage(stage: Stage, cfg: Config, counters: Counters, extra_sub_endpoints: Sequence[str] = ()) -> int:
    """Run ``stage`` under the service loop; returns the process exit code."""
    return ServiceLoop(stage, cfg, counters, extra_sub_endpoints=extra_sub_endpoints).run()
