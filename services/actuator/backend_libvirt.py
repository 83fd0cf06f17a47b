"""The actuator's libvirt backend (any URI).

Mapping and units (DESIGN §7; libvirt wants µs, KiB and KiB/s in places):

* cpu: ``cpu_shares`` = 1024 × share cores (2…262144); the ceiling as a
  domain-wide quota, ``global_period`` = cpu_period_us and ``global_quota`` =
  ceiling × period (µs) — or, where the driver has no global_quota,
  ``vcpu_quota`` = ceiling × period / vcpus per vCPU; -1 = no quota. The test
  driver knows only ``weight`` (and no *Flags scheduler calls): shares go
  there, and a quota is reported as unsupported.
* mem: ``setMemoryFlags(KiB, AFFECT_LIVE)`` (plain ``setMemory`` where the
  driver lacks the flags call).
* disk: the weight as ``setBlkioParameters({"weight"})`` (blkiotune, 100–1000:
  libvirt writes ``blkio.bfq.weight``) where every disk's device is scheduled
  by BFQ; elsewhere (mq-deadline, none) weights do nothing, so that is logged
  once (``disk_weights_honoured``) and the core sends a throttle instead. The
  ceiling as ``setBlockIoTune(dev, total_bytes_sec)`` per disk, every other
  field passed as 0 (libvirt keeps old values otherwise); the test driver also
  needs ``total_bytes_sec_max``. 0 = no limit.
* net: ResCoin's own tc shaping (services/actuator/netshape.py): one htb
  tree per direction for the whole host, the link = the alloc's network
  capacity, each VM a class with its share as the guaranteed rate and its
  ceiling (or the link) as ceil. ``net_shaping = "libvirt"`` holds ceilings
  through ``setInterfaceParameters`` instead (the kernel needs sch_sfq and
  act_police, shared/LAB.md §3.9); it has no guarantee against neighbours,
  so network shares are not enforced there.

Settings read back: quota → cores, cpu_shares → template cores, balloon
(``info()[2]`` KiB), block I/O tune bytes/s, interface average KiB/s.
"""

from __future__ import annotations

import logging
import math

import libvirt

from ..runtime.domxml import DomainFacts, parse_domain_xml
from ..runtime.libvirt_conn import LibvirtConnection, LibvirtDown
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
from .blockdev import active_scheduler, honours_weights
from .netshape import ShapingError, SharedLinkShaper
from .settings import ActuatorSettings

log = logging.getLogger("rescoin.actuator.libvirt")
KIB = 1024
SHARES_PER_CORE = 1024
BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX = 100, 1000  # what libvirt's blkiotune accepts
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE


class LibvirtActuatorBackend:
    name = "libvirt"

    def __init__(self, settings: ActuatorSettings) -> None:
        self.settings = settings
        self.libvirt = LibvirtConnection(settings.uri)  # reconnects after a libvirtd restart; keepalive
        self.facts: dict[str, DomainFacts] = {}  # parsed domain XML, per VM instance (see ``forget``)
        self.net_mode = settings.net_shaping
        if self.net_mode == "libvirt":
            log.warning("libvirt's interface shaping holds ceilings only: network shares are not enforced")
        self.shaper = SharedLinkShaper()
        self.stale_shaping_checked = False  # classes an earlier process left: dropped after the first write
        self.disk_weights: dict[tuple[str, ...], bool] = {}  # disk sources -> their scheduler honours weights
        self.warned_schedulers: set[str] = set()  # I/O schedulers already said to ignore weights

    def _conn(self) -> libvirt.virConnect:
        try:
            return self.libvirt.get()
        except LibvirtDown as exc:
            raise BackendError(str(exc)) from exc

    def _lost(self, exc: libvirt.libvirtError, what: str) -> BackendError:
        if self.libvirt.failed(exc):
            return BackendError(f"lost {self.settings.uri}: {exc}")
        return BackendError(f"{what}: {exc}")

    def _domain(self, vm: str) -> libvirt.virDomain:
        conn = self._conn()
        try:
            return conn.lookupByUUIDString(vm)
        except libvirt.libvirtError as exc:
            raise self._lost(exc, f"no domain {vm}") from exc

    def _facts(self, vm: str, dom: libvirt.virDomain) -> DomainFacts:
        if vm not in self.facts:
            self.facts[vm] = parse_domain_xml(dom.XMLDesc(0))
        return self.facts[vm]

    def domains(self) -> dict[str, DomainLimits]:
        conn = self._conn()
        try:
            doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            out = {}
            for d in doms:
                vm = d.UUIDString().lower()
                cpu, mem, disk, net = (  # parsed once per VM instance (``forget``); nan: not stated
                    math.nan if t is None else t for t in self._facts(vm, d).template
                )
                out[vm] = DomainLimits(d.name(), float(d.maxMemory()) * KIB, str(d.ID()), (cpu, mem, disk, net))
            return out
        except libvirt.libvirtError as exc:
            raise self._lost(exc, f"listing domains on {self.settings.uri}") from exc

    def forget(self, vm: str) -> None:
        self.facts.pop(vm, None)  # its XML (tap names...) may have changed
        if self.net_mode == "tc":  # its taps went with it; its class and MAC filters would stay behind
            self.shaper.remove_vm(vm)

    # -- read ----------------------------------------------------------------------

    def read(self, vm: str) -> list[Setting]:
        dom = self._domain(vm)
        try:
            return [
                self._read_cpu(vm, dom),
                Setting(float(dom.info()[2]) * KIB, 0.0),
                self._read_disk(vm, dom),
                self._read_net(vm, dom),
            ]
        except libvirt.libvirtError as exc:
            raise self._lost(exc, f"reading {vm}") from exc

    def _read_cpu(self, vm: str, dom: libvirt.virDomain) -> Setting:
        params = dom.schedulerParameters()
        if "cpu_shares" not in params:
            return Setting(NO_LIMIT, float(params.get("weight", 0)) / SHARES_PER_CORE)
        shares = float(params["cpu_shares"]) / SHARES_PER_CORE
        quota, period = params.get("global_quota", -1), params.get("global_period", 0)
        if quota > 0 and period > 0:
            return Setting(quota / period, shares)
        quota, period = params.get("vcpu_quota", -1), params.get("vcpu_period", 0)
        if quota > 0 and period > 0:
            return Setting(quota / period * self._facts(vm, dom).vcpus, shares)
        return Setting(NO_LIMIT, shares)

    def _read_disk(self, vm: str, dom: libvirt.virDomain) -> Setting:
        disks = self._facts(vm, dom).disks
        if not disks:
            return Setting(NO_LIMIT, 0.0)
        total = float(dom.blockIoTune(disks[0], LIVE).get("total_bytes_sec", 0))
        weight = float(dom.blkioParameters(LIVE).get("weight", 0))
        return Setting(total if total > 0 else NO_LIMIT, weight)

    def _read_net(self, vm: str, dom: libvirt.virDomain) -> Setting:
        nics = self._facts(vm, dom).interfaces
        mode = self.net_mode if nics else "off"
        if mode == "tc":
            rate, ceil = self.shaper.rate_bps(vm), self.shaper.ceiling_bps(vm)
            if rate is None or ceil is None:
                return Setting(NO_LIMIT, 0.0)
            return Setting(NO_LIMIT if ceil >= self.shaper.link_bps else ceil, rate)
        if mode != "libvirt":
            return Setting(NO_LIMIT, 0.0)
        params = dom.interfaceParameters(nics[0], LIVE)
        average = float(params.get("inbound.average", 0)) * KIB
        return Setting(average if average > 0 else NO_LIMIT, 0.0)

    # -- write ---------------------------------------------------------------------

    def write(self, changes: list[Change]) -> list[ChangeError]:
        errors = []
        for change in changes:
            resource = RESOURCES[change.resource]
            try:
                dom = self._domain(change.vm)
                getattr(self, f"_write_{resource}")(change.vm, dom, change.setting)
            except (BackendError, libvirt.libvirtError, ShapingError, LookupError) as exc:
                if isinstance(exc, libvirt.libvirtError):
                    self.libvirt.failed(exc)  # a lost connection is reopened by the next call
                errors.append(change_error(change.vm, resource, exc))
        if self.net_mode == "tc" and not self.stale_shaping_checked:
            self.stale_shaping_checked = True  # every VM of the first alloc has its class by now
            try:
                self.shaper.remove_stale()
            except ShapingError as exc:
                errors.append(change_error("*", "net", exc))
        return errors

    def _write_cpu(self, vm: str, dom: libvirt.virDomain, setting: Setting) -> None:
        known = dom.schedulerParameters()
        shares = int(min(max(round(setting.shares * SHARES_PER_CORE), 2), 262144))
        if "cpu_shares" not in known:  # libvirt's test driver: a weight, no quota, no *Flags calls
            dom.setSchedulerParameters({"weight": shares})
            if setting.ceiling != NO_LIMIT:
                raise BackendError("this driver has no cpu quota (only 'weight'): ceiling not enforced")
            return
        period = self.settings.cpu_period_us
        params: dict[str, int] = {"cpu_shares": shares}
        if "global_quota" in known:
            params["global_period"] = period
            params["global_quota"] = -1 if setting.ceiling == NO_LIMIT else max(int(setting.ceiling * period), 1000)
        else:
            vcpus = max(self._facts(vm, dom).vcpus, 1)
            params["vcpu_period"] = period
            params["vcpu_quota"] = (
                -1 if setting.ceiling == NO_LIMIT else max(int(setting.ceiling * period / vcpus), 1000)
            )
        dom.setSchedulerParametersFlags(params, LIVE)

    def _write_mem(self, vm: str, dom: libvirt.virDomain, setting: Setting) -> None:
        target_kib = int((setting.ceiling if setting.ceiling != NO_LIMIT else dom.maxMemory() * KIB) // KIB)
        try:
            dom.setMemoryFlags(target_kib, LIVE)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT and "unsupported flags" not in str(exc):
                raise
            dom.setMemory(target_kib)

    def _write_disk(self, vm: str, dom: libvirt.virDomain, setting: Setting) -> None:
        facts = self._facts(vm, dom)
        if setting.shares > 0:  # the core sends none where disk_weights_honoured says no
            weight = int(min(max(round(setting.shares), BLKIO_WEIGHT_MIN), BLKIO_WEIGHT_MAX))
            dom.setBlkioParameters({"weight": weight}, LIVE)
        bps = 0 if setting.ceiling == NO_LIMIT else max(int(setting.ceiling), 1)
        params = {
            "total_bytes_sec": bps,
            "read_bytes_sec": 0,
            "write_bytes_sec": 0,
            "total_iops_sec": 0,
            "read_iops_sec": 0,
            "write_iops_sec": 0,
        }
        for disk in facts.disks:
            try:
                dom.setBlockIoTune(disk, params, LIVE)
            except libvirt.libvirtError as exc:
                if "cannot be set higher than" not in str(exc):
                    raise
                dom.setBlockIoTune(disk, {**params, "total_bytes_sec_max": bps}, LIVE)  # test-driver quirk

    def disk_weights_honoured(self, vm: str) -> bool:
        """Every disk's device schedules by weight (BFQ); said once per I/O scheduler when not."""
        if self.settings.uri.startswith("test"):
            return True  # the test driver stores the weight; there is no device to ask
        try:
            sources = (self.facts.get(vm) or self._facts(vm, self._domain(vm))).disk_sources
        except libvirt.libvirtError as exc:
            raise BackendError(f"reading {vm}: {exc}") from exc
        key = tuple(sources)
        if key not in self.disk_weights:
            self.disk_weights[key] = all(honours_weights(src) for src in sources if src)
            ignoring = {active_scheduler(src) or "an unknown scheduler" for src in sources if not honours_weights(src)}
            for scheduler in sorted(ignoring - self.warned_schedulers):  # once per scheduler, not per VM
                log.warning("disk weights are ignored by %s (e.g. %s): throttling instead", scheduler, sources[0])
            self.warned_schedulers |= ignoring
        return self.disk_weights[key]

    def _write_net(self, vm: str, dom: libvirt.virDomain, setting: Setting) -> None:
        nics = self._facts(vm, dom).interfaces
        if not nics:  # nothing libvirt knows of to shape (e.g. QEMU user networking)
            raise UnenforceableError("no interface with a host device: its network is not limited")
        mode = self.net_mode
        if mode == "off":
            return
        if mode == "libvirt":
            kib = 0 if setting.ceiling == NO_LIMIT else max(int(setting.ceiling // KIB), 1)
            for nic in nics:
                dom.setInterfaceParameters(nic, {"inbound.average": kib, "outbound.average": kib}, LIVE)
        elif setting.ceiling == NO_LIMIT and setting.shares <= 0:  # nothing to hold (restore): out of the tree
            self.shaper.remove_vm(vm)
        else:
            if not setting.link > 0:
                raise BackendError("no link capacity to divide: network shares need the alloc's capacity")
            ceil = math.inf if setting.ceiling == NO_LIMIT else setting.ceiling
            taps = list(zip(nics, self._facts(vm, dom).macs, strict=True))
            self.shaper.set_vm(vm, taps, rate_bps=max(setting.shares, 1.0), ceil_bps=ceil, link_bps=setting.link)

    def capabilities(self) -> dict[str, str]:
        return {
            "cpu": "cpu_shares + quota",
            "mem": "balloon",
            "disk": self._disk_capability(),
            "net": {"tc": "shared htb tree (tc)", "libvirt": "interface average (ceilings only)"}.get(
                self.net_mode, "off"
            ),
        }

    def _disk_capability(self) -> str:
        if self.disk_weights and not all(self.disk_weights.values()):
            return "blkiotune weight; throttle (setBlockIoTune) where the I/O scheduler ignores weights"
        return "blkiotune weight + setBlockIoTune"

    def close(self) -> None:
        self.libvirt.drop()
