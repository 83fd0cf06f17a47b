"""rescoin-actuator: enforces each `alloc` and publishes `applied`.

rescoin-actuator --dry-run      # log and publish what would be set, touch nothing
rescoin-actuator --restore      # put back the settings ResCoin found, then exit
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from ..runtime.config import Config
from ..runtime.service import common_arguments, config_from_args, current_period, run_stage
from ..runtime.support import Counters
from ..schema import service_schema
from ..simhost.settings import SimhostSettings
from .backend import ActuatorBackend, BackendError
from .core import COUNTERS, ActuatorCore
from .settings import ActuatorSettings

log = logging.getLogger("rescoin.actuator")

SCHEMA = service_schema(actuator=ActuatorSettings, simhost=SimhostSettings)  # the config sections this program reads


def make_backend(cfg: Config) -> ActuatorBackend:
    settings = cfg.actuator
    if settings.backend == "sim":
        from .backend_sim import SimActuatorBackend

        return SimActuatorBackend(cfg.simhost.endpoint)
    if settings.backend == "cgroup":
        from .backend_cgroup import CgroupBackend

        return CgroupBackend(settings)
    from .backend_libvirt import LibvirtActuatorBackend

    return LibvirtActuatorBackend(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-actuator", description=__doc__.split("\n")[0])
    common_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="touch nothing; log and publish what would be set")
    parser.add_argument("--restore", action="store_true", help="restore the recorded original settings and exit")
    parser.add_argument("--uri", help="libvirt URI (actuator.uri)")
    args = parser.parse_args(argv)
    extra = ["actuator.dry_run=true"] if args.dry_run else []
    if args.uri:
        extra.append(f"actuator.uri='{args.uri}'")
    cfg = config_from_args(args, SCHEMA, extra)
    counters = Counters(max_warnings=cfg.log.max_warnings_per_period, declared=COUNTERS)
    try:
        backend = make_backend(cfg)
    except BackendError as exc:
        log.error("cannot start the %s backend: %s", cfg.actuator.backend, exc)
        return 1
    core = ActuatorCore(
        cfg.host.name,
        cfg.actuator,
        backend,
        counters,
        Path(cfg.host.state_dir),
        own_period=lambda: current_period(time.time(), cfg.host.period_s),
    )
    if args.restore:
        applied = core.restore()
        backend.close()
        for err in applied.errors:
            print(f"rescoin-actuator: {err['vm']} {err['resource']}: {err['error']}", file=sys.stderr)
        print(f"restored {len(applied.vms)} VMs ({len(applied.errors)} errors)")
        return 1 if applied.errors else 0
    return run_stage(core, cfg, counters)


if __name__ == "__main__":
    raise SystemExit(main())
