"""rescoin-scheduler: samples + estimates in, allocations and coin balances out."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..runtime.service import common_arguments, config_from_args, run_stage
from ..runtime.support import Counters
from ..schema import service_schema
from .core import COUNTERS, SchedulerCore
from .settings import SchedulerSettings

SCHEMA = service_schema(scheduler=SchedulerSettings)  # the config sections this program reads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-scheduler", description=__doc__)
    common_arguments(parser)
    parser.add_argument("--policy", help="allocation policy (scheduler.policy)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args, SCHEMA, [f"scheduler.policy='{args.policy}'"] if args.policy else [])
    counters = Counters(max_warnings=cfg.log.max_warnings_per_period, declared=COUNTERS)
    core = SchedulerCore(cfg.host.name, cfg.scheduler, counters, Path(cfg.host.state_dir))
    return run_stage(core, cfg, counters)


if __name__ == "__main__":
    raise SystemExit(main())
