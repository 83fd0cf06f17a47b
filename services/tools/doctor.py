"""`rescoin doctor`: what ResCoin can enforce on this host and on each running VM, and why not.

In the spirit of ``virt-host-validate``: run it first on a real host, as root
(it reads libvirt and sysfs, and changes nothing). It asks the actuator's own
backend (the same ``probe`` every apply uses), so what it prints is what the
actuator will do: per VM and resource a weight, a ceiling, a throttle in
place of a weight the device ignores, or NOT ENFORCED with the reason.
``--json`` for scripts. Exit status 1 when nothing can be enforced (libvirt
unreachable, no cpu controller, or no resource of any running VM), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from rescoin.proto import RESOURCES

from ..actuator.backend import BackendError, Capability
from ..actuator.blockdev import kernel_offers_bfq, parse_scheduler
from ..actuator.settings import ActuatorSettings
from ..runtime.cgroups import cgroup_mounts
from ..runtime.config import ConfigError, load_config
from ..runtime.host import hugepage_pool_bytes, isolated_cores, network_capacity_bps
from ..schema import service_schema

SKIPPED_DEVICES = ("loop", "ram", "zram", "sr", "fd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the host's config (its [actuator] section: uri, net_shaping, ...)")
    parser.add_argument("--uri", help="libvirt URI (default: [actuator] uri, qemu:///system)")
    parser.add_argument("--json", action="store_true", help="one JSON document instead of tables")
    parser.add_argument("--sysfs", default="/sys", help=argparse.SUPPRESS)  # tests point it at a copy


def block_devices(sysfs: str = "/sys") -> dict[str, dict[str, Any]]:
    """Each disk's I/O schedulers: the active one and what the kernel offers."""
    out = {}
    for scheduler in sorted(Path(sysfs, "block").glob("*/queue/scheduler")):
        name = scheduler.parent.parent.name
        if not name.startswith(SKIPPED_DEVICES):
            active, offered = parse_scheduler(scheduler.read_text())
            out[name] = {"active": active, "offered": offered}
    return out


def host_facts(sysfs: str = "/sys") -> dict[str, Any]:
    mounts = cgroup_mounts()
    cores = os.cpu_count() or 0
    isolated = isolated_cores(sysfs)
    hugepages = hugepage_pool_bytes()
    return {
        "cgroups": mounts.layout(),
        "controllers": {c: mounts.where(c)[0] for c in ("cpu", "memory", "io", "cpuacct")},
        "bfq": kernel_offers_bfq(sysfs),
        "block_devices": block_devices(sysfs),
        "cores": cores,
        "isolated_cores": isolated,
        "hugepage_pool_bytes": hugepages,
        "tc": shutil.which("tc") is not None,
        "network": network_capacity_bps(0.0)[1],
    }


def mechanism(capability: Capability) -> str:
    if not capability.enforceable:
        return "unenforced"
    if capability.weight:
        return "weight+ceiling" if capability.ceiling else "weight"
    return "ceiling"


def diagnose(settings: ActuatorSettings, sysfs: str = "/sys") -> dict[str, Any]:
    """Host facts, and per running VM what can hold each resource (the actuator backend's probe)."""
    from ..actuator.backend_libvirt import LibvirtActuatorBackend

    report: dict[str, Any] = {"host": host_facts(sysfs), "uri": settings.uri, "vms": [], "problems": []}
    try:
        backend = LibvirtActuatorBackend(settings)
    except BackendError as exc:
        report["problems"].append(f"libvirt: {exc}")
        return report
    try:
        report["host"].update(backend.capabilities())
        domains = backend.domains()
    except BackendError as exc:
        report["problems"].append(f"libvirt {settings.uri}: {exc}")
        backend.close()
        return report
    for vm, limits in sorted(domains.items(), key=lambda kv: kv[1].name):
        entry: dict[str, Any] = {"uuid": vm, "name": limits.name, "resources": {}}
        if limits.problem:
            entry["problem"] = limits.problem
        try:
            capabilities = backend.probe(vm)
        except BackendError as exc:
            entry["problem"] = f"could not be probed: {exc}"
            capabilities = [Capability(False, False, str(exc), "read_failed")] * 4
        for resource, capability in zip(RESOURCES, capabilities, strict=True):
            entry["resources"][resource] = {
                "mechanism": mechanism(capability),
                "how": capability.how,
                "reason": capability.reason,
            }
        report["vms"].append(entry)
    backend.close()
    return report


def verdict(report: dict[str, Any]) -> tuple[int, str]:
    """(exit status, summary line)."""
    cells = [r for vm in report["vms"] for r in vm["resources"].values()]
    held = [c for c in cells if c["mechanism"] != "unenforced"]
    throttled = sum(1 for c in held if c["mechanism"] == "ceiling")
    if report["problems"]:
        return 1, "nothing can be enforced: " + "; ".join(report["problems"])
    if report["host"]["controllers"]["cpu"] == "none":
        return 1, "nothing can be enforced: no cpu cgroup controller (v1 or v2)"
    if not cells:
        return 0, "no running VM to enforce anything on yet (the host itself can hold what is shown above)"
    reasons: dict[str, int] = {}
    for cell in cells:
        if cell["mechanism"] == "unenforced":
            reasons[cell["reason"]] = reasons.get(cell["reason"], 0) + 1
    line = f"{len(held)} of {len(cells)} VM x resource can be enforced ({throttled} by a ceiling or throttle only)"
    if reasons:
        line += "; not enforced: " + ", ".join(f"{k} {n}" for k, n in sorted(reasons.items()))
    return (0 if held else 1), line


def render(report: dict[str, Any]) -> str:
    host = report["host"]
    controllers = ", ".join(f"{c} {where}" for c, where in host["controllers"].items())
    devices = ", ".join(f"{name} [{d['active']}]" for name, d in host["block_devices"].items()) or "none found"
    lines = [
        f"ResCoin doctor: {report['uri']}",
        "",
        "HOST",
        f"  cgroups          {host['cgroups']} ({controllers})",
        f"  cpu weights      {host.get('cpu.weight_range', 'unknown (libvirt not reached)')}",
        f"  disk weights     {'BFQ offered' if host['bfq'] else 'the kernel has no BFQ: disk shares become throttles'}"
        f"; disks: {devices}",
        f"  network shaping  {host.get('net.shaping', '?')} (tc {'found' if host['tc'] else 'MISSING'})",
        f"  network link     {host['network']}",
        f"  cores            {host['cores']}"
        + (
            f", {host['isolated_cores']} isolated (not for VMs: lower [monitor] capacity)"
            if host["isolated_cores"]
            else ""
        ),  # fmt: skip
    ]
    if host["hugepage_pool_bytes"]:
        lines.append(
            f"  hugepages        {host['hugepage_pool_bytes'] / 2**30:.1f} GiB pool (not counted as VM memory)"
        )
    lines += ["", f"VMS ({len(report['vms'])} running)"]
    if report["vms"]:
        lines.append(f"  {'name':<20} {'resource':<5} {'enforced by':<15} how / why not")
        for vm in report["vms"]:
            if vm.get("problem"):
                lines.append(f"  {vm['name']:<20} note: {vm['problem']}")
            for resource, cell in vm["resources"].items():
                shown = cell["mechanism"] if cell["mechanism"] != "unenforced" else f"NOT: {cell['reason']}"
                lines.append(f"  {vm['name']:<20} {resource:<5} {shown:<15} {cell['how']}")
    status, summary = verdict(report)
    lines += ["", ("OK: " if status == 0 else "FAIL: ") + summary]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    overrides = [f"actuator.uri={args.uri!r}"] if args.uri else []
    try:
        cfg = load_config(args.config, overrides, sections=service_schema(actuator=ActuatorSettings))
    except ConfigError as exc:
        print(f"rescoin doctor: {exc}", file=sys.stderr)
        return 2
    report = diagnose(cfg.actuator, args.sysfs)
    status, summary = verdict(report)
    if args.json:
        print(json.dumps({**report, "ok": status == 0, "summary": summary}, indent=1))
    else:
        print(render(report))
    return status
