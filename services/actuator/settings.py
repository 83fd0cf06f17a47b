"""[actuator]: the backend, the safety rules and the hysteresis."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import between, non_negative, one_of, positive, setting


def _four_non_negative(value: list[float]) -> str | None:
    return None if len(value) == 4 and all(v >= 0 for v in value) else "must be 4 numbers >= 0 (cpu, mem, disk, net)"


@dataclass
class ActuatorSettings:
    """Enforces what each alloc says: kernel weights and ceilings (rescoin-actuator)."""

    backend: str = setting(
        "libvirt",
        "libvirt (any URI), cgroup (plain cgroups, no libvirt) or sim (the demo's sim host)",
        one_of("libvirt", "cgroup", "sim"),
    )
    uri: str = setting("qemu:///system", "libvirt URI")
    stale_periods: int = setting(
        3,
        "periods without a valid alloc before the fail-safe state (weights by template; ceilings at template "
        "unless the last alloc's enforcement was shares)",
        positive,
    )
    hysteresis_relative: float = setting(
        0.05, "write a setting only if it moved more than this fraction ...", between(0.0, 1.0)
    )
    hysteresis_absolute: list[float] = setting(
        [0.02, 8 * 2**20, 256 * 1024, 128 * 1024],
        "... and more than this much (cores, bytes, bytes/s, bytes/s)",
        _four_non_negative,
    )
    mem_reserve_bytes: float = setting(
        64 * 2**20,
        "the fail-safe's memory floor: a balloon at least the VM's last use + this (and never below the last "
        "alloc's); in normal operation the floor is the scheduler's ([scheduler] mem_reserve_bytes)",
        non_negative,
    )
    busy_after_s: float = setting(
        0.5,
        "libvirt: a domain whose calls take longer than this (a migration's job lock, a stopped QEMU) is "
        "skipped for the period and reported busy; the others are not held up",
        between(0.01, 60.0),
    )
    workers: int = setting(8, "libvirt: domains whose calls run at once (one worker per domain)", between(1, 256))
    balloon_grace_periods: int = setting(
        5,
        "a balloon not within the hysteresis of its target this many periods after it was set is reported "
        "unenforced (no_balloon: a guest without a balloon driver, or one that cannot give the memory back)",
        positive,
    )
    carry_every_periods: int = setting(
        5,
        "libvirt: write each VM's coin balance and original settings into its domain's metadata every this "
        "many periods (spread over them), so they travel with a live migration; 0 = never",
        between(0, 100_000),
    )
    cpu_direct: bool = setting(
        True,
        "libvirt: write a domain's cpu weight and quota straight into its cgroup (µs, not a libvirt round trip "
        "of ~1 ms; `virsh schedinfo` reads them back live), where the probe finds the group libvirt reads",
    )
    cpu_period_us: int = setting(100_000, "CFS period for quotas, microseconds", between(1000, 1_000_000))
    net_shaping: str = setting(
        "tc",
        "net: tc (one htb tree per host: shares as guaranteed rates, ceilings as ceil), "
        "libvirt (interface averages: ceilings only, shares not enforced), off",
        one_of("tc", "libvirt", "off"),
    )
    net_local_bps: float = setting(
        0.0,
        "net (tc): the cap on traffic between two VMs of this host (a bridge forwards it tap to tap; it never "
        "crosses the link), bytes/s each direction; 0 = none",
        non_negative,
    )
    cgroups: dict[str, str] = setting(
        {}, "cgroup backend: name = path relative to the cgroup root, e.g. { web = 'rescoin/web' }"
    )
    cgroup_root: str = setting(
        "", "cgroup backend: where v1 controllers are mounted (empty: found in /proc/self/mountinfo)"
    )
    cgroup_v2_root: str = setting("", "cgroup backend: the cgroup v2 root (empty: found in /proc/self/mountinfo)")
    cgroup_block_device: str = setting(
        "", "cgroup backend: MAJ:MIN of the disk to throttle (blkio/io.max); empty = no disk control"
    )
    dry_run: bool = setting(False, "compute, log and publish what would be set; touch nothing")
    restore_on_stop: bool = setting(True, "on SIGTERM put back every setting as it was found")
    originals_file: str = setting("actuator-originals.json", "original settings state file, relative to host.state_dir")
