"""The actuator's cgroup backend: the same semantics on plain cgroups, no libvirt.

Each group in ``actuator.cgroups`` (name = path below the hierarchy root) is
one "VM", identified by ``uuid5(CGROUP_NAMESPACE, name)``. The layout is
detected per controller: cgroup v1 if ``<root>/<controller>/`` is mounted,
else the v2 hierarchy at ``cgroup_v2_root`` (its ``cgroup.controllers`` must
list the controller).

| resource | v1 | v2 |
| --- | --- | --- |
| cpu ceiling | cpu.cfs_quota_us / cpu.cfs_period_us (-1 = none) | cpu.max "quota period" ("max" = none) |
| cpu shares | cpu.shares = 1024 × template cores | cpu.weight = 100 × template cores (1…10000) |
| mem | memory.soft_limit_in_bytes (reclaimed to it under pressure, never OOM-killed) | memory.high |
| disk weight | blkio.bfq.weight (1…1000) where the device runs BFQ | io.bfq.weight |
| disk ceiling | blkio.throttle.read_bps_device + write_bps_device | io.max rbps= wbps= |
| net | unsupported: reported in every `applied` and in `hb` | unsupported |

A disk weight needs BFQ on the device; elsewhere the core sends a throttle instead (disk_weights_honoured).
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from .backend import (
    NO_LIMIT,
    RESOURCES,
    BackendError,
    Change,
    ChangeError,
    DomainLimits,
    Setting,
    UnenforceableError,
    change_error,
)
from .blockdev import WEIGHTED_SCHEDULERS, active_scheduler_of
from .settings import ActuatorSettings

log = logging.getLogger("rescoin.actuator.cgroup")
CGROUP_NAMESPACE = uuid.UUID("0c2b3a8e-5d1f-4e0b-9c3a-72657363676f")
V1_DIRS = {"cpu": "cpu", "mem": "memory", "disk": "blkio"}
V2_CONTROLLERS = {"cpu": "cpu", "mem": "memory", "disk": "io"}
UNLIMITED_V1 = 2**63 - 1  # what v1 memory files print for "no limit" (rounded to the page size)
NET_UNSUPPORTED = "unsupported: cgroups have no network bandwidth control (use the libvirt backend's tc shaping)"


def group_uuid(name: str) -> str:
    return str(uuid.uuid5(CGROUP_NAMESPACE, name))


class CgroupBackend:
    name = "cgroup"

    def __init__(self, settings: ActuatorSettings) -> None:
        self.settings = settings
        self.root = Path(settings.cgroup_root)
        self.v2_root = Path(settings.cgroup_v2_root)
        self.groups = {group_uuid(name): (name, rel) for name, rel in settings.cgroups.items()}
        self.layout = {res: self._detect(res) for res in V1_DIRS}
        self.weights_honoured: bool | None = None  # the disk's I/O scheduler divides by weight (asked once)
        if not self.groups:
            raise BackendError("actuator.cgroups names no cgroup to manage")

    def _detect(self, resource: str) -> str:
        if (self.root / V1_DIRS[resource]).is_dir():
            return "v1"
        controllers = self.v2_root / "cgroup.controllers"
        if controllers.exists() and V2_CONTROLLERS[resource] in controllers.read_text().split():
            return "v2"
        return "none"

    def _dir(self, vm: str, resource: str) -> Path:
        _name, rel = self.groups[vm]
        base = self.root / V1_DIRS[resource] if self.layout[resource] == "v1" else self.v2_root
        return base / rel

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

    def read(self, vm: str) -> list[Setting]:
        if vm not in self.groups:
            raise BackendError(f"no cgroup for VM {vm}")
        return [self._read_cpu(vm), self._read_mem(vm), self._read_disk(vm), Setting()]

    def _read_cpu(self, vm: str) -> Setting:
        if self.layout["cpu"] == "v1":
            quota = int(self._read(vm, "cpu", "cpu.cfs_quota_us"))
            period = int(self._read(vm, "cpu", "cpu.cfs_period_us"))
            shares = int(self._read(vm, "cpu", "cpu.shares")) / 1024
            return Setting(quota / period if quota > 0 else NO_LIMIT, shares)
        if self.layout["cpu"] == "v2":
            max_quota, max_period = self._read(vm, "cpu", "cpu.max").split()
            weight = int(self._read(vm, "cpu", "cpu.weight")) / 100
            return Setting(NO_LIMIT if max_quota == "max" else int(max_quota) / int(max_period), weight)
        return Setting()

    def _read_mem(self, vm: str) -> Setting:
        if self.layout["mem"] == "v1":
            value = int(self._read(vm, "mem", "memory.soft_limit_in_bytes"))
            return Setting(NO_LIMIT if value >= UNLIMITED_V1 - 2**20 else float(value))
        if self.layout["mem"] == "v2":
            high = self._read(vm, "mem", "memory.high")
            return Setting(NO_LIMIT if high == "max" else float(high))
        return Setting()

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

    def disk_weights_honoured(self, vm: str) -> bool:
        if not self.settings.cgroup_block_device:
            return False  # no disk control at all: _write_disk says so once
        return self._device_weights_honoured() and self._has_weight(vm)

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
            try:
                if resource == "net":
                    if change.setting.ceiling != NO_LIMIT:
                        raise UnenforceableError(NET_UNSUPPORTED)
                    continue
                if self.layout[resource] == "none":
                    raise UnenforceableError(f"unsupported: no {resource} controller (v1 or v2) on this host")
                getattr(self, f"_write_{resource}")(change.vm, change.setting)
            except BackendError as exc:
                errors.append(change_error(change.vm, resource, exc))
        return errors

    def _write_cpu(self, vm: str, setting: Setting) -> None:
        period = self.settings.cpu_period_us
        quota = -1 if setting.ceiling == NO_LIMIT else max(int(setting.ceiling * period), 1000)
        if self.layout["cpu"] == "v1":
            self._write(vm, "cpu", "cpu.cfs_period_us", str(period))
            self._write(vm, "cpu", "cpu.cfs_quota_us", str(quota))
            if setting.shares > 0:
                self._write(vm, "cpu", "cpu.shares", str(max(int(setting.shares * 1024), 2)))
        else:
            self._write(vm, "cpu", "cpu.max", f"{'max' if quota < 0 else quota} {period}")
            if setting.shares > 0:
                self._write(vm, "cpu", "cpu.weight", str(min(max(int(setting.shares * 100), 1), 10000)))

    def _write_mem(self, vm: str, setting: Setting) -> None:
        unlimited = setting.ceiling == NO_LIMIT
        if self.layout["mem"] == "v1":
            self._write(vm, "mem", "memory.soft_limit_in_bytes", "-1" if unlimited else str(int(setting.ceiling)))
        else:
            self._write(vm, "mem", "memory.high", "max" if unlimited else str(int(setting.ceiling)))

    def _write_disk(self, vm: str, setting: Setting) -> None:
        device = self.settings.cgroup_block_device
        if not device:
            if setting.ceiling != NO_LIMIT:
                raise UnenforceableError("unsupported: actuator.cgroup_block_device is not set")
            return
        ceiling = setting.ceiling
        if setting.shares > 0:  # the core sends none where disk_weights_honoured says no
            self._write(vm, "disk", self._weight_file(), str(int(min(max(round(setting.shares), 1), 1000))))
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
        caps = {
            res: f"cgroup {layout}" if layout != "none" else "unsupported: no controller"
            for res, layout in self.layout.items()
        }
        if not self.settings.cgroup_block_device:
            caps["disk"] = "unsupported: actuator.cgroup_block_device not set"
        caps["net"] = NET_UNSUPPORTED
        return caps

    def close(self) -> None:
        """Files need no closing."""
