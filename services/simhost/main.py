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
import time
from collections.abc import Callable
from pathlib import Path

import zmq
from rescoin.proto import ProtocolError
from rescoin.proto.simhost import (
    OP_DESCRIBE,
    OP_GET_TUNABLES,
    OP_SET_TUNABLES,
    OP_STATS,
    decode_request,
    encode_error,
    encode_result,
)

from ..runtime.service import BusSilentStage, Health, Outgoing, Reader, ServiceLoop, common_arguments, config_from_args
from ..runtime.support import Counters, atomic_write
from ..schema import service_schema
from .core import SimHost, build_workload
from .settings import SimhostSettings

log = logging.getLogger("rescoin.simhost")

SCHEMA = service_schema(simhost=SimhostSettings)  # the config sections this program reads
REQUEST_BATCH = 100  # requests answered before the clock and the bus are looked at again


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


class SimhostStage(BusSilentStage):
    """The sim host as a stage: nothing from the bus, requests in, its state file kept; the period's
    tick moves the host on. Socket- and clock-free: the loop passes the time of each request."""

    name = "simhost"

    def __init__(self, sim: SimHost, state: Path, counters: Counters, endpoint: str) -> None:
        self.sim = sim
        self.state = state
        self.counters = counters
        self.info = {"backend": "sim", "vms": len(sim.vms), "endpoint": endpoint}

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

    def on_request(self, frame: bytes, now_ns: int) -> bytes:
        reply = handle_request(self.sim, frame, now_ns, self.counters)
        self.sim.advance(now_ns)  # a request after a boundary sees the new period's sample
        return reply

    def on_period(self, ended_period: int) -> list[Outgoing]:
        before = self.sim.period
        self.sim.advance(int((ended_period + 1) * self.sim.period_s * 1e9))  # to the boundary that just passed
        self.counters.inc("periods", max(self.sim.period - before, 0))
        if self.sim.changed:
            self.save()
        return []

    def health(self) -> Health:
        return Health("ok", self.info)


def serve_until_quiet(rep: zmq.Socket, stage: SimhostStage, quiet_s: float, grace_s: float) -> None:
    """After SIGTERM: answer until nobody has called for ``quiet_s`` (an actuator stopped at the same
    moment still restores), ``grace_s`` at most."""
    deadline = time.monotonic() + grace_s
    last_request = time.monotonic()
    while (left := min(deadline, last_request + quiet_s) - time.monotonic()) > 0:
        if rep.poll(int(left * 1000) + 1):
            rep.send(stage.on_request(rep.recv(), time.time_ns()))
            last_request = time.monotonic()


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
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.linger = 0
    try:
        _bind(rep, settings.endpoint)
    except zmq.ZMQError as exc:
        log.error("cannot bind %s: %s", settings.endpoint, exc)
        ctx.destroy(linger=0)
        return 1
    counters = Counters(max_warnings=cfg.log.max_warnings_per_period)
    stage = SimhostStage(sim, Path(cfg.host.state_dir) / cfg.simhost.state_file, counters, settings.endpoint)
    stage.load()

    def requests(_current_period: Callable[[], int]) -> list[Outgoing]:
        for _ in range(REQUEST_BATCH):
            try:
                frame = rep.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            rep.send(stage.on_request(frame, time.time_ns()))
        return []

    log.info(
        "sim host up: %d VMs, capacity %s, serving %s (config: %s)",
        len(sim.vms),
        ", ".join(f"{v:.4g}" for v in workload.capacity),
        settings.endpoint,
        cfg.source,
    )
    try:
        ServiceLoop(stage, cfg, counters, ctx=ctx, readers=[Reader(rep, requests)]).run()
        log.info("serving until quiet")
        serve_until_quiet(rep, stage, max(1.0, 2 * cfg.host.period_s), settings.stop_grace_s)
        stage.save()
    finally:
        rep.close(linger=0)
        ctx.term()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
