"""rescoin-monitor: reads every VM once per period and publishes `sample/<host>/`.

rescoin-monitor --once --json --uri qemu:///system   # one sample as JSON: does it see my VMs?
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from rescoin.proto import KIND_GUEST_MEM, KIND_SAMPLE, Envelope, topic_prefix

from ..runtime.config import Config
from ..runtime.host import network_capacity_bps
from ..runtime.service import Health, Outgoing, common_arguments, config_from_args, run_stage
from ..runtime.support import Counters
from ..schema import service_schema
from ..simhost.settings import SimhostSettings
from .backend import BackendError, MonitorBackend
from .core import SAMPLE_PRESSURE, MonitorCore, capacity_vector
from .settings import MonitorSettings

SCHEMA = service_schema(monitor=MonitorSettings, simhost=SimhostSettings)  # the config sections this program reads


def make_backend(cfg: Config) -> MonitorBackend:
    if cfg.monitor.backend == "sim":
        from .backend_sim import SimMonitorBackend

        return SimMonitorBackend(cfg.simhost.endpoint)
    if cfg.monitor.backend == "kernel":
        from .backend_kernel import KernelMonitorBackend

        m = cfg.monitor
        return KernelMonitorBackend(
            m.uri,
            xml_refresh_periods=m.xml_refresh_periods,
            balloon_stats_periods=m.balloon_stats_periods,
            crosscheck_periods=m.crosscheck_periods,
            crosscheck_tolerance=m.crosscheck_tolerance,
            qemu_pid_dir=m.qemu_pid_dir,
        )
    from .backend_libvirt import LibvirtMonitorBackend

    return LibvirtMonitorBackend(cfg.monitor.uri, cfg.monitor.xml_refresh_periods)


class MonitorStage:
    """Wires the core to a backend and the period clock."""

    name = "monitor"

    def __init__(self, cfg: Config, backend: MonitorBackend, counters: Counters) -> None:
        self.cfg = cfg
        self.backend = backend
        self.counters = counters
        self.core = MonitorCore(cfg.monitor, counters)
        self.period = -1
        self.connected = False
        self.last_error = ""
        self.net_source = ""  # how the network's C was chosen, for hb

    def subscriptions(self) -> list[bytes]:
        return [topic_prefix(KIND_GUEST_MEM)]

    def on_message(self, env: Envelope) -> list[Outgoing]:
        if env.kind == KIND_GUEST_MEM:
            self.core.on_guest_mem(env, self.period)
        return []

    def sample(self, ended_period: int) -> Outgoing | None:
        try:
            reading = self.backend.read()
            net_bps, self.net_source = network_capacity_bps(self.cfg.monitor.net_bps)
            capacity = capacity_vector(self.backend.capacity(), self.cfg.monitor, net_bps)
        except BackendError as exc:
            if self.connected or exc.args[0] != self.last_error:
                self.counters.reject("backend", str(exc))
            self.connected, self.last_error = False, exc.args[0]
            return None
        self.connected = True
        body = self.core.observe(reading, ended_period, self.cfg.host.period_s, capacity)
        return Outgoing(KIND_SAMPLE, ended_period, body)

    def on_period(self, ended_period: int) -> list[Outgoing]:
        self.period = ended_period
        out = self.sample(ended_period)
        return [out] if out else []

    def health(self) -> Health:
        return Health("ok" if self.connected else "disconnected", {**self.backend.info(), "net": self.net_source})

    def close(self) -> list[Outgoing]:
        self.backend.close()
        return []


def print_once(stage: MonitorStage, period_s: float) -> int:
    """Two readings one period apart, then the sample as JSON."""
    stage.sample(0)
    time.sleep(period_s)
    out = stage.sample(1)
    stage.close()
    if out is None:
        print(f"rescoin-monitor: {stage.last_error}", file=sys.stderr)
        return 1
    body = out.body
    print(
        json.dumps(
            {
                "C": body.capacity.tolist(),
                "vms": body.vms,
                "names": body.names,
                "tc": body.template.tolist(),
                "au": body.usage.tolist(),
                "mem_src": body.mem_source,
                "period_s": body.period_s,
                **{name: getattr(body, name).tolist() for name in SAMPLE_PRESSURE},
            },
            indent=2,
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-monitor", description=__doc__.split("\n")[0])
    common_arguments(parser)
    parser.add_argument("--uri", help="libvirt URI (monitor.uri)")
    parser.add_argument("--backend", choices=("libvirt", "kernel", "sim"), help="monitor.backend")
    parser.add_argument(
        "--once", action="store_true", help="take one sample (two readings a period apart), print it and exit"
    )
    parser.add_argument("--json", action="store_true", help="with --once: print JSON (the only format)")
    args = parser.parse_args(argv)
    overrides = [f"monitor.uri='{args.uri}'"] if args.uri else []
    if args.uri and args.backend is None:
        overrides.append("monitor.backend='libvirt'")
    if args.backend:
        overrides.append(f"monitor.backend='{args.backend}'")
    cfg = config_from_args(args, SCHEMA, overrides)
    counters = Counters(max_warnings=cfg.log.max_warnings_per_period)
    stage = MonitorStage(cfg, make_backend(cfg), counters)
    if args.once:
        return print_once(stage, cfg.host.period_s)
    return run_stage(stage, cfg, counters)


if __name__ == "__main__":
    raise SystemExit(main())
