"""The actuator's cgroup backend: the same semantics on plain cgroups, no libvirt.

Each group in ``actuator.cgroups`` (name = path below the hierarchy root) is
one "VM", identified by ``uuid5(CGROUP_NAMESPACE, name)``. The layout is
found per controller from /proc/self/mountinfo (runtime/cgroups.py): v1
where a v1 mount has the controller, else v2 where the cgroup2 root offers
it; ``cgroup_root``/``cgroup_v2_root`` override that (tests on a file tree).

| resource | v1 | v2 |
| --- | --- | --- |
| cpu ceiling | cpu.cfs_quota_us / cpu.cfs_period_us (-1 = none) | cpu.max "quota period" ("max" = none) |
| cpu weight | cpu.shares = 1024 × weight cores (2…262144) | cpu.weight = 100 × weight cores (1…10000) |
| mem | memory.soft_limit_in_bytes (reclaimed to it under pressure, never OOM-killed) | memory.high |
| disk weight | blkio.bfq.weight (1…1000) where the device runs BFQ | io.bfq.weight |
| disk ceiling | blkio.throttle.read_bps_device + write_bps_device | io.max rbps= wbps= |
| net | unenforced ("unsupported"): cgroups have no bandwidth control | unenforced |

The core scales every group's cpu weight by one factor where the largest
would pass the range (``cpu_weight_range``), so the ratios hold. A disk
weight needs BFQ on the device; elsewhere the probe says so and the plan
throttles at the alloc's ceiling instead.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from rescoin.proto import NO_LIMIT, RESOURCES

from ..runtime.cgroups import CgroupMounts, cgroup_mounts
from .backend import (
    CPU_SHARES_V1,
    BackendError,
    Capability,
    Change,
    ChangeError,
    CpuWeightRange,
    DomainLimits,
    Setting,
    UnenforceableError,
    capable,
    change_error,
    incapable,
)
from .blockdev import WEIGHTED_SCHEDULERS, active_scheduler_of
from .cpufiles import CpuFiles
from .settings import ActuatorSettings

log = logging.getLogger("rescoin.actuator.cgroup")
CGROUP_NAMESPACE = uuid.UUID("0c2b3a8e-5d1f-4e0b-9c3a-72657363676f")
V1_DIRS = {"cpu": "cpu", "mem": "memory", "disk": "blkio"}
V2_CONTROLLERS = {"cpu": "cpu", "mem": "memory", "disk": "io"}
CPU_WEIGHT_V2 = CpuWeightRange(100, 1, 10000)
UNLIMITED_V1 = 2**63 - 1  # what v1 memory files print for "no limit" (rounded to the page size)
NET_UNSUPPORTED = "cgroups have no network bandwidth control (the libvirt backend's tc shaping has)"


def group_uuid(name: str) -> str:
    return str(uuid.uuid5(CGROUP_NAMESPACE, name))


class CgroupBackend:
    name = "cgroup"

    def __init__(self, settings: ActuatorSettings) -> None:
        self.settings = settings
        self.mounts = self._mounts(settings)
        self.groups = {group_uuid(name): (name, rel) for name, rel in settings.cgroups.items()}
        self.base: dict[str, Path] = {}
        self.layout: dict[str, str] = {}
        for res, controller in V2_CONTROLLERS.items():
            layout, base = self.mounts.where(controller)
            self.layout[res] = layout
            if base is not None:
                self.base[res] = base
        self.weights_honoured: bool | None = None  # the disk's I/O scheduler divides by weight (asked once)
        if not self.groups:
            raise BackendError("actuator.cgroups names no cgroup to manage")

    @staticmethod
    def _mounts(settings: ActuatorSettings) -> CgroupMounts:
        """From /proc/self/mountinfo, unless the settings name the roots (a file tree in tests)."""
        if not settings.cgroup_root and not settings.cgroup_v2_root:
            return cgroup_mounts()
        root = Path(settings.cgroup_root) if settings.cgroup_root else None
        v1 = {d: root / d for d in V1_DIRS.values() if root and (root / d).is_dir()}
        return CgroupMounts(v1, Path(settings.cgroup_v2_root) if settings.cgroup_v2_root else None)

    def _dir(self, vm: str, resource: str) -> Path:
        _name, rel = self.groups[vm]
        return self.base[resource] / rel

    def domains(self) -> dict[str, DomainLimits]:
        host_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return {vm: DomainLimits(name, float(host_mem)) for vm, (name, _rel) in self.groups.items()}

    # -- files ---------------------------------------------------------------------

    def _read(self, vm: str, resource: str, file: str) -> str:
        try:
            return (self._dir(vm, resource) / file).read_text().strip()
        except OSError as exc:
            raise BackendError(f"{self.groups[vm][0]}: cannot read {file}: {exc}") from exc

    def _write(self, vm: str, resource: str, file: str, value: str) -> None:
        try:
            (self._dir(vm, resource) / file).write_text(value)
        except OSError as exc:
            raise BackendError(f"{self.groups[vm][0]}: cannot write {value!r} to {file}: {exc}") from exc

    # -- read ----------------------------------------------------------------------

    def probe(self, vm: str) -> list[Capability]:
        if vm not in self.groups:
            raise BackendError(f"no cgroup for VM {vm}")
        files = {"v1": ("cpu.shares + cpu.cfs_quota_us", "memory.soft_limit_in_bytes", "blkio.throttle"),
                 "v2": ("cpu.weight + cpu.max", "memory.high", "io.max")}  # fmt: skip
        found = []
        for r, res in enumerate(("cpu", "mem", "disk")):
            layout = self.layout[res]
            if layout == "none":
                found.append(incapable("unsupported", f"no {V2_CONTROLLERS[res]} controller, v1 or v2"))
            elif res == "disk" and not self.settings.cgroup_block_device:
                found.append(incapable("unsupported", "actuator.cgroup_block_device is not set"))
            elif res == "disk":
                weighted = self._device_weights_honoured() and self._has_weight(vm)
                how = f"{self._weight_file()} + {files[layout][r]}" if weighted else f"{files[layout][r]} (throttle)"
                found.append(capable(f"cgroup {layout} {how}", weight=weighted))
            else:
                found.append(capable(f"cgroup {layout} {files[layout][r]}", weight=res == "cpu"))
        found.append(incapable("unsupported", NET_UNSUPPORTED))
        return found

    def carry(self, states: dict, period: int) -> None:
        """A cgroup has no metadata to carry state in."""

    def balloons_moved(self) -> None:
        return None  # memory.high holds at once; a read is a file read

    def carried_originals(self, vm: str) -> None:
        return None

    def cpu_weight_range(self) -> CpuWeightRange:
        return CPU_WEIGHT_V2 if self.layout["cpu"] == "v2" else CPU_SHARES_V1

    def read(self, vm: str, resource: int) -> Setting:
        if vm not in self.groups:
            raise BackendError(f"no cgroup for VM {vm}")
        res = RESOURCES[resource]
        if res == "net" or self.layout[res] == "none":
            return Setting()
        return getattr(self, f"_read_{res}")(vm)

    def _cpu_files(self, vm: str) -> CpuFiles:
        return CpuFiles(self._dir(vm, "cpu"), self.layout["cpu"])

    def _read_cpu(self, vm: str) -> Setting:
        try:
            weight, quota, period = self._cpu_files(vm).read()
        except (OSError, ValueError) as exc:
            raise BackendError(f"{self.groups[vm][0]}: cannot read its cpu files: {exc}") from exc
        return Setting(quota / period if quota > 0 else NO_LIMIT, weight / self.cpu_weight_range().per_core)

    def _read_mem(self, vm: str) -> Setting:
        if self.layout["mem"] == "v1":
            value = int(self._read(vm, "mem", "memory.soft_limit_in_bytes"))
            return Setting(NO_LIMIT if value >= UNLIMITED_V1 - 2**20 else float(value))
        high = self._read(vm, "mem", "memory.high")
        return Setting(NO_LIMIT if high == "max" else float(high))

    def _read_disk(self, vm: str) -> Setting:
        device = self.settings.cgroup_block_device
        if not device or self.layout["disk"] == "none":
            return Setting()
        weight = float(self._read(vm, "disk", self._weight_file()).split()[-1]) if self._has_weight(vm) else 0.0
        if self.layout["disk"] == "v1":
            for line in self._read(vm, "disk", "blkio.throttle.read_bps_device").splitlines():
                dev, bps = line.split()
                if dev == device:
                    return Setting(float(bps), weight)
            return Setting(NO_LIMIT, weight)
        for line in self._read(vm, "disk", "io.max").splitlines():
            fields = line.split()
            if fields and fields[0] == device:
                values = dict(f.split("=") for f in fields[1:])
                rbps = values.get("rbps", "max")
                return Setting(NO_LIMIT if rbps == "max" else float(rbps), weight)
        return Setting(NO_LIMIT, weight)

    def _weight_file(self) -> str:
        return "blkio.bfq.weight" if self.layout["disk"] == "v1" else "io.bfq.weight"

    def _has_weight(self, vm: str) -> bool:
        return (self._dir(vm, "disk") / self._weight_file()).exists()

    def _device_weights_honoured(self) -> bool:
        """The device's I/O scheduler divides it by weight (BFQ); said once when not."""
        if self.weights_honoured is None:
            device = self.settings.cgroup_block_device
            scheduler = active_scheduler_of(device)
            self.weights_honoured = scheduler in WEIGHTED_SCHEDULERS
            if not self.weights_honoured:
                log.warning("disk %s is scheduled by %s, which ignores weights: throttling instead",
                            device, scheduler or "an unknown scheduler")  # fmt: skip
        return self.weights_honoured

    # -- write ---------------------------------------------------------------------

    def write(self, changes: list[Change]) -> list[ChangeError]:
        errors = []
        for change in changes:
            resource = RESOURCES[change.resource]
            try:  # the plan writes only what the probe said can hold it; anything else is refused here too
                if resource == "net" or self.layout[resource] == "none":
                    raise UnenforceableError("unsupported", NET_UNSUPPORTED if resource == "net" else "no controller")
                getattr(self, f"_write_{resource}")(change.vm, change.setting)
            except BackendError as exc:
                errors.append(change_error(change.vm, resource, exc))
        return errors

    def _write_cpu(self, vm: str, setting: Setting) -> None:
        period = self.settings.cpu_period_us
        quota = -1 if setting.ceiling == NO_LIMIT else max(int(setting.ceiling * period), 1000)
        span = self.cpu_weight_range()
        weight = min(max(round(setting.weight * span.per_core), span.lo), span.hi) if setting.weight > 0 else None
        try:
            self._cpu_files(vm).write(weight, quota, period)
        except OSError as exc:
            raise BackendError(f"{self.groups[vm][0]}: cannot write its cpu files: {exc}") from exc

    def _write_mem(self, vm: str, setting: Setting) -> None:
        unlimited = setting.ceiling == NO_LIMIT
        if self.layout["mem"] == "v1":
            self._write(vm, "mem", "memory.soft_limit_in_bytes", "-1" if unlimited else str(int(setting.ceiling)))
        else:
            self._write(vm, "mem", "memory.high", "max" if unlimited else str(int(setting.ceiling)))

    def _write_disk(self, vm: str, setting: Setting) -> None:
        device = self.settings.cgroup_block_device
        ceiling = setting.ceiling
        if setting.weight > 0:  # the plan sends none where the probe said the device ignores weights
            self._write(vm, "disk", self._weight_file(), str(int(min(max(round(setting.weight), 1), 1000))))
        if self.layout["disk"] == "v1":
            bps = "0" if ceiling == NO_LIMIT else str(max(int(ceiling), 1))
            for file in ("blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"):
                self._write(vm, "disk", file, f"{device} {bps}")
        else:
            bps = "max" if ceiling == NO_LIMIT else str(max(int(ceiling), 1))
            self._write(vm, "disk", "io.max", f"{device} rbps={bps} wbps={bps}")

    def forget(self, vm: str) -> None:
        """Nothing is cached per VM instance here."""

    def capabilities(self) -> dict[str, str]:
        facts = {"cgroups": self.mounts.layout()}
        facts.update({f"{res}.controller": layout for res, layout in self.layout.items()})
        device = self.settings.cgroup_block_device
        facts["disk.device"] = f"{device} ({active_scheduler_of(device) or 'scheduler unknown'})" if device else "none"
        return facts

    def close(self) -> None:
        """Files need no closing."""
