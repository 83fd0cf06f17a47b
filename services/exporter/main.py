"""rescoin-exporter: a bus subscriber serving Prometheus metrics over HTTP.

The process lowers its own CPU priority first (``[exporter] nice``), every
thread's before it starts any of its own (on Linux a thread's nice value is its
own, inherited by the threads it starts), so however it is scraped it cannot take a period's CPU
from the pipeline. /metrics is served by ``http.MetricsServer``: one thread,
bounded connections, deadlines; prometheus_client only renders.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time

from prometheus_client.core import REGISTRY
from prometheus_client.exposition import choose_encoder

from ..runtime.service import Health, Outgoing, common_arguments, config_from_args, run_stage
from ..runtime.support import Counters
from ..schema import service_schema
from ..tools.buses import FleetError, load_fleet
from .core import CORE_COUNTERS, ExporterCore
from .http import STATS, MetricsServer
from .settings import ExporterSettings

SCHEMA = service_schema(exporter=ExporterSettings)  # the config sections this program reads
HTTP_COUNTERS = tuple(f"http.{name}" for name in STATS)
log = logging.getLogger("rescoin.exporter")


class _Collector:
    def __init__(self, core: ExporterCore) -> None:
        self.core = core

    def collect(self):
        return self.core.collect(time.monotonic())


def render(accept: str) -> tuple[bytes, str]:
    """The default registry (ours and the process's own metrics) in the format the scraper accepts."""
    encoder, content_type = choose_encoder(accept)
    return encoder(REGISTRY), content_type


class Exporter:
    """The core as a stage, plus the HTTP server's counts copied into its hb each period."""

    name = "exporter"

    def __init__(self, core: ExporterCore, server: MetricsServer, counters: Counters) -> None:
        self.core = core
        self.server = server
        self.counters = counters

    def subscriptions(self) -> list[bytes]:
        return self.core.subscriptions()

    def on_message(self, env) -> list[Outgoing]:
        return self.core.on_message(env)

    def on_period(self, ended_period: int) -> list[Outgoing]:
        out = self.core.on_period(ended_period)
        self.counters.set_totals({f"http.{name}": v for name, v in dict(self.server.stats).items()})
        return out

    def health(self) -> Health:
        health = self.core.health()
        health.info["connections"] = self.server.open_connections()
        return health

    def close(self) -> list[Outgoing]:
        self.server.stop()
        return self.core.close()


def lower_priority(increment: int) -> None:
    """Add ``increment`` to the nice value of every thread there is (on Linux each thread has its own:
    numpy's BLAS starts threads at import) and so of every thread started later, which inherit it."""
    if increment <= 0:
        return
    target = min(os.getpriority(os.PRIO_PROCESS, 0) + increment, 19)
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]  # no /proc: the calling thread (the whole process where threads share one value)
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(target, os.getpriority(os.PRIO_PROCESS, tid)))
        except ProcessLookupError:
            pass  # a thread that ended meanwhile
        except OSError as exc:
            log.warning("could not lower the exporter's priority to nice %d: %s", target, exc)
            return
    log.info("running at nice %d", target)


def enough_files(connections: int) -> None:
    """Raise the soft limit on open files to what ``connections`` need (supervisord gives 1024), up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 256  # the bus's sockets, the listeners, the Python runtime's files
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            log.warning("open files limited to %d: fewer than %d connections will fit", new, connections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-exporter", description=__doc__)
    common_arguments(parser)
    parser.add_argument("--port", type=int, help="HTTP port (exporter.listen_port)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, SCHEMA, [f"exporter.listen_port={args.port}"] if args.port else [])
    settings: ExporterSettings = cfg.exporter
    if not settings.listen_port and not settings.unix_socket:
        print("rescoin: bad configuration: exporter.listen_port is 0 and exporter.unix_socket empty", file=sys.stderr)
        return 2
    fleet = None
    if settings.fleet:
        try:
            fleet = load_fleet(settings.fleet)
        except FleetError as exc:
            print(f"rescoin: bad configuration: exporter.fleet: {exc}", file=sys.stderr)
            return 2
    lower_priority(settings.nice)  # before any thread exists: every thread started later inherits it
    enough_files(settings.max_connections)
    counters = Counters(max_warnings=cfg.log.max_warnings_per_period, declared=(*CORE_COUNTERS, *HTTP_COUNTERS))
    core = ExporterCore(
        settings.down_after_misses,
        forget_after_s=settings.forget_after_s,
        max_services=settings.max_services,
        max_hosts=settings.max_hosts,
        max_vms=settings.max_vms,
        counters=counters,
        fleet=fleet.names if fleet is not None else (),
    )
    REGISTRY.register(_Collector(core))
    server = MetricsServer(
        render,
        host=settings.listen_host,
        port=settings.listen_port or None,
        unix_path=settings.unix_socket,
        max_connections=settings.max_connections,
        request_timeout_s=settings.request_timeout_s,
        response_timeout_s=settings.response_timeout_s,
        backlog=settings.listen_backlog,
    ).start()
    log.info(
        "serving /metrics on %s%s, at most %d connections",
        f"{settings.listen_host}:{settings.listen_port}" if settings.listen_port else "",
        f" and {settings.unix_socket}" if settings.unix_socket else "",
        settings.max_connections,
    )
    try:
        # [exporter] buses with this host's keys, then each fleet host's bus with its own server key
        extra = [*cfg.exporter.buses, *(fleet.targets(skip=[cfg.bus.sub_endpoint]) if fleet is not None else [])]
        if fleet is not None:
            log.info("fleet %s: %d hosts, %d buses", fleet.path, len(fleet.hosts), len(extra) - len(cfg.exporter.buses))
        return run_stage(Exporter(core, server, counters), cfg, counters, extra_sub_endpoints=extra)
    finally:
        server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
