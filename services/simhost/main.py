"""rescoin-simhost: serve the trace-driven virtual host to the monitor and actuator.

A REP socket on ``simhost.endpoint`` answers proto/simhost.py requests; the
host advances on the period clock and publishes its `hb` on the bus like
every service. Its tunables survive a restart (``<state_dir>/simhost.json``),
as a real host's do. On SIGTERM it keeps serving until nobody has called for
two periods, so an actuator stopped at the same moment can still restore.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import zmq
from rescoin.proto import KIND_HB, Heartbeat, ProtocolError
from rescoin.proto.simhost import (
    OP_DESCRIBE,
    OP_GET_TUNABLES,
    OP_SET_TUNABLES,
    OP_STATS,
    decode_request,
    encode_error,
    encode_result,
)

from ..runtime.service import Publisher, bus_sockets, common_arguments, config_from_args
from ..runtime.support import Counters, StopFlag, atomic_write
from ..schema import service_schema
from .core import SimHost, build_workload
from .settings import SimhostSettings

log = logging.getLogger("rescoin.simhost")

SCHEMA = service_schema(simhost=SimhostSettings)  # the config sections this program reads


def handle_request(sim: SimHost, frame: bytes, now_ns: int, counters: Counters) -> bytes:
    """One request frame -> one reply frame; bad requests are counted and answered with an error."""
    counters.inc("requests")
    try:
        op, args = decode_request(frame)
    except ProtocolError as exc:
        counters.reject(exc.field.split(".")[0] or "request", str(exc), log)
        return encode_error(str(exc))
    if op == OP_DESCRIBE:
        result = sim.describe()
    elif op == OP_STATS:
        result = sim.stats(now_ns)
    elif op == OP_GET_TUNABLES:
        result = sim.tunables()
    else:
        assert op == OP_SET_TUNABLES
        result = sim.set_tunables(args["writes"], now_ns)
        counters.inc("writes", result.writes)
        for err in result.errors:
            counters.reject("write", f"{err['vm']} {err['resource']}: {err['error']}", log)
    return encode_result(result)


class Server:
    """The REP socket, the period clock, the state file and the `hb`."""

    def __init__(self, sim: SimHost, rep: zmq.Socket, publisher: Publisher, state: Path, counters: Counters) -> None:
        self.sim = sim
        self.rep = rep
        self.publisher = publisher
        self.state = state
        self.counters = counters
        self.info = {"pid": os.getpid(), "backend": "sim", "vms": len(sim.vms)}
        self.last_request = time.monotonic()

    def load(self) -> None:
        """Continue from the state file if it fits these VMs; either way, (re)write it."""
        try:
            saved = json.loads(self.state.read_text())
        except FileNotFoundError:
            saved = None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", self.state, exc)
            saved = None
        if saved is not None and self.sim.load_state(saved):
            log.info("tunables and trace position restored from %s", self.state)
        elif saved is not None:
            log.warning("%s is for other VMs: starting from the boot tunables", self.state)
        self.save()

    def save(self) -> None:
        atomic_write(self.state, json.dumps(self.sim.saved_state()).encode())

    def serve_once(self, timeout_s: float) -> None:
        """Answer at most one request, then let the host catch up with the clock."""
        ended = self.sim.period  # before the request: answering it may cross the boundary
        if self.rep.poll(max(0, int(timeout_s * 1000)) + 1):
            frame = self.rep.recv()
            self.rep.send(handle_request(self.sim, frame, time.time_ns(), self.counters))
            self.last_request = time.monotonic()
        self.sim.advance(time.time_ns())
        if self.sim.period != ended:
            self.counters.inc("periods", self.sim.period - ended)
            if self.sim.changed:
                self.save()
            self.heartbeat(ended, "ok")

    def heartbeat(self, period: int, state: str) -> None:
        hb = Heartbeat(
            "simhost",
            state,
            self.sim.period_s,
            self.counters.snapshot(),
            self.info,
            list(self.counters.recent_errors),
        )
        self.publisher.send(KIND_HB, period, hb)
        self.counters.end_period(log)

    def run(self, stop: StopFlag, grace_s: float) -> None:
        period_s = self.sim.period_s
        while not stop.stopping:
            # at most a period: after the wall clock steps back, the next boundary is not an hour away
            self.serve_once(min(period_s, (self.sim.period + 1) * period_s - time.time()))
        log.info("stopping on %s: serving until quiet", stop.signal_name)
        self.heartbeat(self.sim.period, "stopping")
        quiet_s = max(1.0, 2 * period_s)
        deadline = time.monotonic() + grace_s
        self.last_request = time.monotonic()
        while time.monotonic() < min(deadline, self.last_request + quiet_s):
            self.serve_once(min(period_s, self.last_request + quiet_s - time.monotonic()))
        self.save()


def _bind(sock: zmq.Socket, endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        Path(endpoint[len("ipc://") :]).parent.mkdir(parents=True, exist_ok=True)
    sock.bind(endpoint)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-simhost", description=__doc__.split("\n")[0])
    common_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv), SCHEMA)
    settings = cfg.simhost
    try:
        workload = build_workload(settings)
    except (OSError, ValueError) as exc:
        log.error("cannot load the traces: %s", exc)
        return 1
    sim = SimHost(
        cfg.host.name,
        cfg.host.period_s,
        workload,
        time.time_ns(),
        settings.samples_per_period,
        settings.start_sample,
    )
    stop = StopFlag().install()
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    try:
        _bind(rep, settings.endpoint)
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", settings.endpoint, exc)
        ctx.destroy(linger=0)
        return 1
    pub, sub = bus_sockets(ctx, cfg, [])
    sub.close(linger=0)  # the sim host only speaks on the bus (its hb)
    server = Server(
        sim,
        rep,
        Publisher(pub, cfg.host.name, "simhost"),
        Path(cfg.host.state_dir) / cfg.simhost.state_file,
        Counters(max_warnings=cfg.log.max_warnings_per_period),
    )
    server.info["endpoint"] = settings.endpoint
    server.load()
    log.info(
        "sim host up: %d VMs, capacity %s, serving %s (config: %s)",
        len(sim.vms),
        ", ".join(f"{v:.4g}" for v in workload.capacity),
        settings.endpoint,
        cfg.source,
    )
    try:
        server.run(stop, settings.stop_grace_s)
    finally:
        rep.close(linger=0)
        pub.close(linger=200)
        ctx.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
