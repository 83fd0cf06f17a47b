"""[monitor]: where to read VMs from, the host reserve, capacities and templates."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import non_negative, one_of, positive, setting


@dataclass
class MonitorSettings:
    """Measures every VM once per period and publishes `sample` (rescoin-monitor)."""

    backend: str = setting(
        "libvirt",
        "where VMs are read from: libvirt (one bulk getAllDomainStats a period, any URI), kernel (libvirt"
        " discovers the domains, counters come from their cgroup and /proc files: a local qemu:// host) or sim"
        " (the demo's sim host)",
        one_of("libvirt", "kernel", "sim"),
    )
    uri: str = setting("qemu:///system", "libvirt URI (qemu:///system, test:///abs/path.xml, test+unix:///default)")
    guest_report_max_age_periods: int = setting(
        2, "a guest agent's report is the VM's memory use for at most this many periods after it came", positive
    )
    reserve_cores: float = setting(
        0.5, "cores kept back for the host itself (capacity = host cores - this)", non_negative
    )
    reserve_mem_bytes: float = setting(1 * 2**30, "memory kept back for the host itself, bytes", non_negative)
    disk_bps: float = setting(200e6, "host disk capacity, bytes/s read+write (the sim host reports its own)", positive)
    net_bps: float = setting(
        0.0,
        "host network capacity, bytes/s each way; 0 = the uplinks' link speed (NICs and bonds on a bridge or "
        "the default route), 1 Gbit/s where none says it (the sim host reports its own)",
        non_negative,
    )
    default_disk_bps: float = setting(
        10e6, "template disk bytes/s for a VM with no <rescoin:template> and no table entry", non_negative
    )
    default_net_bps: float = setting(
        10e6, "template net bytes/s for a VM with no <rescoin:template> and no table entry", non_negative
    )
    templates: dict[str, dict[str, float]] = setting(
        {},
        "templates by domain name or UUID: { vm1 = { disk_bps = 1e7, net_bps = 1e6, cpu_cores = 1, mem_bytes = 1e9 } }",
    )
    xml_refresh_periods: int = setting(
        60, "re-read each domain's XML (size, devices, metadata) every this many periods", positive
    )
    balloon_stats_periods: int = setting(
        30,
        "kernel backend: read each domain's balloon stats (a QMP round trip) every this many periods,"
        " spread over periods; balloon size changes in between arrive as libvirt events",
        positive,
    )
    crosscheck_periods: int = setting(
        300,
        "kernel backend: every this many periods read each domain through libvirt's bulk call as well and"
        " compare the rates (spread over periods; 0 = never)",
        non_negative,
    )
    crosscheck_tolerance: float = setting(
        0.1,
        "kernel backend: a kernel-counter rate further than this fraction from libvirt's (and beyond a small"
        " absolute floor) is counted in hb and logged",
        non_negative,
    )
    qemu_pid_dir: str = setting(
        "/run/libvirt/qemu", "kernel backend: where libvirt writes <domain name>.pid for each running QEMU"
    )
