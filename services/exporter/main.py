"""rescoin-exporter: a bus subscriber serving Prometheus metrics over HTTP."""

from __future__ import annotations

import argparse
import time

from prometheus_client import start_http_server
from prometheus_client.core import REGISTRY

from ..runtime.config import use_schema
from ..runtime.service import common_arguments, config_from_args, run_stage
from ..runtime.support import Counters
from ..schema import service_schema
from .core import ExporterCore
from .settings import ExporterSettings

SCHEMA = service_schema(exporter=ExporterSettings)  # the config sections this program reads


class _Collector:
    def __init__(self, core: ExporterCore) -> None:
        self.core = core

    def collect(self):
        return self.core.collect(time.monotonic())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-exporter", description=__doc__)
    common_arguments(parser)
    parser.add_argument("--port", type=int, help="HTTP port (exporter.listen_port)")
    args = parser.parse_args(argv)
    use_schema(SCHEMA)
    cfg = config_from_args(args, [f"exporter.listen_port={args.port}"] if args.port else [])
    core = ExporterCore(cfg.exporter.down_after_misses)
    REGISTRY.register(_Collector(core))
    start_http_server(cfg.exporter.listen_port, addr=cfg.exporter.listen_host)
    return run_stage(
        core, cfg, Counters(max_warnings=cfg.log.max_warnings_per_period), extra_sub_endpoints=cfg.exporter.buses
    )


if __name__ == "__main__":
    raise SystemExit(main())
