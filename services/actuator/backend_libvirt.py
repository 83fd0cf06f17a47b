"""The actuator's libvirt backend (any URI).

Mapping and units (libvirt wants µs, KiB and KiB/s in places):

* cpu: ``cpu_shares`` = 1024 × weight cores; libvirt writes it unchanged
  into cgroup v1 cpu.shares (2…262144) or v2 cpu.weight (1…10000), so the
  range is this host's cgroup layout's, read from the actuator's own
  mountinfo (the domains' cgroups are on the same mounts;
  ``cpu_weight_range``: on v2 the core scales every VM's weight by one factor
  above 9.8 cores). The ceiling as a domain-wide quota,
  ``global_period``/``global_quota`` (or, where the driver has no
  global_quota, ``vcpu_quota`` per vCPU). With ``cpu_direct`` (the default)
  both go straight into the domain's own cgroup files instead (cpufiles.py:
  ~20 µs against ~1.2 ms a libvirt call, measured on real QEMU): the probe
  finds the group from QEMU's /proc/<pid>/cgroup and uses it only if its
  files hold what libvirt reports, i.e. it is the group libvirt reads back
  live (``virsh schedinfo`` shows what is in force; the live XML's
  <cputune> keeps libvirt's last own write). Elsewhere (a remote URI, a
  mismatch) through libvirt, the quota in its own call so a refused weight
  does not cost it. The test driver knows only
  ``weight``: no quota there (the probe says so).
* mem: ``setMemoryFlags(KiB, AFFECT_LIVE)``; a domain without a balloon
  device, or hugepage-backed (a balloon frees nothing), is *unenforced*.
* disk: the weight as ``setBlkioParameters({"weight"})`` where every disk's
  physical device is scheduled by BFQ (dm/md/LVM resolved to the devices
  below them, blockdev.py); elsewhere, and for network disks (rbd, iscsi,
  nbd: no host device), the probe says weights are ignored and the plan
  throttles at the alloc's ceiling. The throttle is ``setBlockIoTune`` on
  every disk, all in one QEMU throttle group per VM (``group_name``) when it
  has several, so N disks share one ceiling; every other field passed as 0.
* net: ResCoin's own tc shaping (netshape.py): one htb tree per direction
  for the whole host, each VM a class (a class per NIC under it when it has
  several); traffic between two VMs of the host is outside the link's class
  (``net_local_bps``). ``net_shaping = "libvirt"`` holds
  ceilings through ``setInterfaceParameters`` instead (a throttle: no
  guarantee against neighbours). A VM with no tap (user, vhost-user,
  hostdev NICs) or with macvtap (its traffic never crosses the host's tap)
  is *unenforced*.

Busy domains: every call for a domain runs in a worker (``workers`` at
once, one domain each) and is waited for ``busy_after_s`` at most. A
domain that takes longer (a migration holds its job lock for up to 30 s; a
stopped QEMU answers nothing) is reported busy for the period and skipped
until its worker returns: the other domains are not held up. The coins kept
in each domain's metadata are never waited for; one running past
``busy_after_s`` makes its domain busy too, so a domain that answers nothing
holds one worker.
tc runs in the calling thread, after the libvirt calls, with its own timeout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from threading import Lock
from typing import Any, TypeVar

import libvirt
from rescoin.proto import NO_LIMIT, RESOURCES

from ..runtime.cgroups import cgroup_mounts
from ..runtime.domxml import STATE_NS, DomainFacts, DomainXMLError, parse_domain_xml, state_xml
from ..runtime.libvirt_conn import LibvirtConnection, LibvirtDown
from ..runtime.qemu import QemuPids
from .backend import (
    CPU_SHARES_V1,
    EVERY_BALLOON,
    BackendError,
    BusyError,
    Capability,
    Change,
    ChangeError,
    CpuWeightRange,
    DomainLimits,
    Setting,
    capable,
    change_error,
    incapable,
)
from .blockdev import WEIGHTED_SCHEDULERS, schedulers
from .cpufiles import CpuFiles
from .netshape import ShapingError, SharedLinkShaper
from .settings import ActuatorSettings

log = logging.getLogger("rescoin.actuator.libvirt")
KIB = 1024
CPU_SHARES_ON_V2 = CpuWeightRange(1024, 1, 10000)  # libvirt passes cpu_shares to cpu.weight unchanged
BLKIO_WEIGHT_MIN, BLKIO_WEIGHT_MAX = 100, 1000  # what libvirt's blkiotune accepts
LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
T = TypeVar("T")


class LibvirtActuatorBackend:
    name = "libvirt"

    def __init__(self, settings: ActuatorSettings) -> None:
        self.settings = settings
        self.libvirt = LibvirtConnection(settings.uri)  # reconnects after a libvirtd restart; keepalive
        self.facts: dict[str, DomainFacts] = {}  # parsed domain XML, per VM instance (see ``forget``)
        self.probed: dict[str, list[Capability]] = {}  # per VM instance
        self.net_mode = settings.net_shaping
        if self.net_mode == "libvirt":
            log.warning("libvirt's interface shaping holds ceilings only: network shares are throttles there")
        self.shaper = SharedLinkShaper(local_bps=settings.net_local_bps)
        self.stale_shaping_checked = False  # classes an earlier process left: dropped after the first write
        self.warned_schedulers: set[str] = set()  # I/O schedulers already said to ignore weights
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="libvirt")
        # VM -> a call not waited for to its end (one past busy_after_s, or a metadata write) and from when
        # it makes the domain busy while it runs
        self.in_flight: dict[str, tuple[Future[Any], float]] = {}
        self.mounts = cgroup_mounts()  # read once: a host's cgroup layout does not change while it runs
        self.cgroup_layout = self.mounts.layout()
        self.cpu_range = CPU_SHARES_ON_V2 if self.mounts.where("cpu")[0] == "v2" else CPU_SHARES_V1
        self.qemu_pids = QemuPids()
        self.sched_keys: dict[str, frozenset[str]] = {}  # VM -> what its driver's schedulerParameters knows
        self.cpu_files: dict[str, CpuFiles] = {}  # VM -> its own cgroup's cpu files (cpu_direct)
        self.watched: libvirt.virConnect | None = None  # the connection our device events are registered on
        self.device_changes: dict[str, int] = {}  # VM -> hot-plugs seen (libvirt's event thread counts them)
        self.facts_changes: dict[str, int] = {}  # VM -> the hot-plugs its cached XML already shows
        self.balloon_lock = Lock()
        self.balloon_moves: set[str] = set()  # VMs whose balloon moved (libvirt's event thread fills it)
        self.balloon_events = False  # the connection delivers BALLOON_CHANGE
        self.handles: dict[str, libvirt.virDomain] = {}  # VM -> its handle from the last listing

    def _conn(self) -> libvirt.virConnect:
        try:
            conn = self.libvirt.get()
        except LibvirtDown as exc:
            raise BackendError(str(exc)) from exc
        if conn is not self.watched:  # a new connection (first, or after libvirtd came back): watch it
            self.watched = conn
            for event in (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED):
                try:
                    conn.domainEventRegisterAny(None, event, self._device_changed, None)
                except libvirt.libvirtError as exc:  # the test driver has no events: no hot-plug there either
                    log.info("no device events on %s (hot-plugged devices wait for a restart): %s", conn, exc)
            with self.balloon_lock:
                self.balloon_moves = {EVERY_BALLOON}  # what moved while we were away is unknown
            try:
                conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, self._balloon_moved, None)
                self.balloon_events = True
            except libvirt.libvirtError as exc:
                self.balloon_events = False
                log.info("no balloon events on %s (stuck balloons are read every grace period): %s", conn, exc)
        return conn

    def _balloon_moved(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, _kib: int, _opaque: object) -> None:
        with self.balloon_lock:
            self.balloon_moves.add(dom.UUIDString().lower())

    def balloons_moved(self) -> set[str] | None:
        self._conn()  # a new connection is watched before we answer
        with self.balloon_lock:
            moved, self.balloon_moves = self.balloon_moves, set()
        return moved if self.balloon_events else None

    def _device_changed(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, alias: str, _opaque: object) -> None:
        """A device was hot-plugged or unplugged: the VM's next listing is a new instance, so the core
        probes and reads it again (its disks, taps, balloon as they are now)."""
        vm = dom.UUIDString().lower()
        self.device_changes[vm] = self.device_changes.get(vm, 0) + 1
        log.info("%s: device %s added or removed: probing it again", dom.name(), alias)

    def _lost(self, exc: libvirt.libvirtError, what: str) -> BackendError:
        if self.libvirt.failed(exc):
            return BackendError(f"lost {self.settings.uri}: {exc}")
        return BackendError(f"{what}: {exc}")

    def _domain(self, vm: str) -> libvirt.virDomain:
        """The domain's handle from this period's listing (a lookup is a round trip through libvirtd,
        made in this one thread: at 100 domains the lookups alone serialised a full rewrite), else looked up."""
        conn = self._conn()
        dom = self.handles.get(vm)
        if dom is not None and dom.connect() is conn:
            return dom
        try:
            return conn.lookupByUUIDString(vm)
        except libvirt.libvirtError as exc:
            raise self._lost(exc, f"no domain {vm}") from exc

    def _facts(self, vm: str, dom: libvirt.virDomain) -> DomainFacts:
        if vm not in self.facts:
            self.facts[vm] = parse_domain_xml(dom.XMLDesc(0))
        return self.facts[vm]

    # -- one worker per domain, waited for busy_after_s --------------------------------

    def _running(self, vm: str) -> bool:
        """A call for the domain that was not waited for to its end still runs."""
        call = self.in_flight.get(vm)
        if call is not None and call[0].done():
            del self.in_flight[vm]
            return False
        return call is not None

    def _busy(self, vm: str) -> bool:
        """The domain's last call has run past busy_after_s and not returned."""
        return self._running(vm) and time.monotonic() >= self.in_flight[vm][1]

    def _call(self, vm: str, fn: Callable[[], T]) -> T:
        """``fn()`` in a worker; BusyError if the domain's last call still runs or this one takes too long."""
        if self._busy(vm):
            raise BusyError(f"{vm} is still answering an earlier call (a migration, a stopped QEMU?)")
        future = self.pool.submit(fn)
        done, _ = wait([future], timeout=self.settings.busy_after_s)
        if not done:
            self.in_flight[vm] = (future, time.monotonic())
            raise BusyError(f"{vm} did not answer within {self.settings.busy_after_s:g} s: skipped this period")
        try:
            return future.result()
        except libvirt.libvirtError as exc:
            raise self._lost(exc, f"{vm}") from exc

    # -- discovery -----------------------------------------------------------------

    def domains(self) -> dict[str, DomainLimits]:
        conn = self._conn()
        try:
            doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        except libvirt.libvirtError as exc:
            raise self._lost(exc, f"listing domains on {self.settings.uri}") from exc
        out = {}
        self.handles = {}
        for d in doms:  # one domain's trouble (it went away, its XML is broken) costs only itself
            try:
                vm = d.UUIDString().lower()
                self.handles[vm] = d
                facts = self._facts(vm, d)
                template = tuple(math.nan if t is None else t for t in facts.template)
                changes = self.device_changes.get(vm, 0)
                if changes != self.facts_changes.get(vm, 0):  # hot-plug since the XML was read: read it anew
                    self.facts.pop(vm, None)
                    self.facts_changes[vm] = changes
                    facts = self._facts(vm, d)
                instance = f"{d.ID()}.{changes}"  # a restart or a hot-plug: the core reads the VM anew
                out[vm] = DomainLimits(facts.name, facts.mem_max_bytes, instance, template,  # type: ignore[arg-type]
                                       facts.template_problem)  # fmt: skip
            except (libvirt.libvirtError, DomainXMLError) as exc:
                log.warning("domain %s left out this period: %s", d.name() if d else "?", exc)
        return out

    def forget(self, vm: str) -> None:
        self.facts.pop(vm, None)  # its XML (tap names, disks...) may have changed
        self.probed.pop(vm, None)
        self.sched_keys.pop(vm, None)
        self.cpu_files.pop(vm, None)
        if self.net_mode == "tc":  # its taps went with it; its class and MAC filters would stay behind
            self.shaper.remove_vm(vm)

    def cpu_weight_range(self) -> CpuWeightRange:
        return self.cpu_range

    def carry(self, states: dict[str, tuple[tuple[float, ...], list[Setting | None]]], period: int) -> None:
        """<rescoin:state> in each domain's live metadata (libvirt migrates it with the domain), each
        domain in its worker, not waited for: the `applied` that came before is not held up (6-8 ms at
        100 domains). A domain that is busy, gone or still writing its last one is skipped this time;
        what failed is logged when it ends. A write running past busy_after_s makes its domain busy
        (``_busy``), so a domain that answers nothing holds one worker, not one more each period."""
        for vm, (coins, originals) in states.items():
            if self._running(vm):  # its last write, or a late call, still runs
                continue
            try:
                dom = self._domain(vm)
            except BackendError:
                continue
            xml = state_xml(coins, [None if o is None else (o.ceiling, o.weight) for o in originals], period)
            element = libvirt.VIR_DOMAIN_METADATA_ELEMENT
            write = self.pool.submit(dom.setMetadata, element, xml, "rescoin", STATE_NS, LIVE)
            write.add_done_callback(partial(self._carried, vm))
            self.in_flight[vm] = (write, time.monotonic() + self.settings.busy_after_s)

    @staticmethod
    def _carried(vm: str, write: Future[None]) -> None:
        """Said when a metadata write ends (in the worker that made it)."""
        if not write.cancelled() and write.exception() is not None:
            log.info("%s: could not keep its coins in its metadata: %s", vm, write.exception())

    def carried_originals(self, vm: str) -> list[Setting | None] | None:
        facts = self.facts.get(vm)
        if facts is None or facts.carried_originals is None:
            return None
        return [None if o is None else Setting(o[0], o[1]) for o in facts.carried_originals]

    def probe(self, vm: str) -> list[Capability]:
        dom = self._domain(vm)
        facts = self._call(vm, lambda: self._facts(vm, dom))
        params = self._call(vm, dom.schedulerParameters)
        self.sched_keys[vm] = frozenset(params)
        files = self._direct_cpu_files(vm, dom, facts, params) if self.settings.cpu_direct else None
        if files is not None:
            self.cpu_files[vm] = files
            log.info("%s: cpu weight and quota written to %s directly", facts.name, files.directory)
        found = [
            capable(f"cgroup {files.layout} {files.names()} (direct; libvirt reads them back)")
            if files is not None
            else capable("cpu_shares + global_quota")
            if "cpu_shares" in params
            else capable("weight (this driver has no cpu quota)", ceiling=False),
            self._probe_mem(facts),
            self._probe_disk(facts),
            self._probe_net(facts),
        ]
        self.probed[vm] = found
        return found

    def _direct_cpu_files(
        self, vm: str, dom: libvirt.virDomain, facts: DomainFacts, params: dict[str, Any]
    ) -> CpuFiles | None:
        """The domain's own cgroup cpu files, if they are the ones libvirt reads: the weight and the
        domain-wide quota in them equal what libvirt just reported. None: every write through libvirt."""
        if "cpu_shares" not in params or "global_quota" not in params:
            return None  # the test driver, a remote host, a libvirt without domain-wide quotas
        try:
            pid = self.qemu_pids(facts.name, dom.ID())
            proc_cgroup = None if pid is None else (self.qemu_pids.proc_root / str(pid) / "cgroup").read_text()
            group = None if proc_cgroup is None else self.mounts.group_of("cpu", proc_cgroup)
            files = None if group is None else CpuFiles(group[1], group[0])
            found = None if files is None else files.read()
        except (OSError, ValueError, libvirt.libvirtError) as exc:
            log.info("%s: cpu through libvirt (its cgroup files: %s)", facts.name, exc)
            return None
        finally:
            self.qemu_pids.new_period()  # a /proc scan is good for this probe only
        quota = params["global_quota"] if params["global_quota"] > 0 else -1
        if files is None or found is None or found[:2] != (params["cpu_shares"], quota):
            log.info("%s: cpu through libvirt (no cgroup of its own whose files match libvirt's %s/%s: %s)",
                     facts.name, params["cpu_shares"], quota, found)  # fmt: skip
            return None
        return files

    @staticmethod
    def _probe_mem(facts: DomainFacts) -> Capability:
        if not facts.balloon:
            return incapable("no_balloon", "no balloon device (<memballoon model='none'>)")
        if facts.hugepages:
            return incapable("no_balloon", "hugepage-backed memory: a balloon frees nothing on the host")
        return capable("balloon (setMemoryFlags)", weight=False)

    def _probe_disk(self, facts: DomainFacts) -> Capability:
        if not facts.disks:
            return incapable("no_device", "no disk")
        if self.settings.uri.startswith("test"):
            return capable("blkiotune weight + setBlockIoTune")  # the test driver stores both; no device to ask
        network = [d for d, src in zip(facts.disks, facts.disk_sources, strict=True) if not src]
        ignoring = {  # each source's devices asked once: a dm/md source walks its slaves
            (", ".join(found) or "an unknown scheduler")
            for found in (sorted(set(schedulers(src))) for src in facts.disk_sources if src)
            if not set(found) <= set(WEIGHTED_SCHEDULERS)
        }
        for scheduler in sorted(ignoring - self.warned_schedulers):  # once per scheduler, not per VM
            log.warning("disk weights are ignored by %s: throttling at the allocation instead", scheduler)
        self.warned_schedulers |= ignoring
        if network or ignoring:
            why = ", ".join([*(f"{s} ignores weights" for s in sorted(ignoring)),
                             *(f"{d} has no host device" for d in network)])  # fmt: skip
            return capable(f"setBlockIoTune throttle ({why})", weight=False)
        return capable("blkiotune weight (BFQ) + setBlockIoTune")

    def _probe_net(self, facts: DomainFacts) -> Capability:
        if self.net_mode == "off":
            return incapable("unsupported", "actuator.net_shaping = off")
        if facts.macvtap:
            return incapable("unsupported", "macvtap: its traffic never crosses a host tap to shape")
        if not facts.interfaces:
            kinds = ", ".join(facts.hostless_nics) or "none"
            return incapable("no_device", f"no NIC with a host tap (NICs: {kinds})")
        if facts.hostless_nics:
            return incapable("no_device", f"NICs without a host tap ({', '.join(facts.hostless_nics)}) bypass shaping")
        taps = ", ".join(facts.interfaces)
        for tap in facts.interfaces if self.net_mode == "tc" else ():
            foreign = self.shaper.foreign_qdisc(tap)
            if foreign:
                return incapable("foreign_qdisc", f"{tap} carries {foreign} ResCoin did not create: left alone")
        if self.net_mode == "libvirt":
            return capable(f"interface average on {taps}", weight=False)
        return capable(f"htb class on {taps}")

    # -- read ----------------------------------------------------------------------

    def read(self, vm: str, resource: int) -> Setting:
        dom = self._domain(vm)
        res = RESOURCES[resource]
        if res == "mem":
            return Setting(float(self._call(vm, dom.info)[2]) * KIB, 0.0)
        if res == "net":
            return self._call(vm, lambda: self._read_net(vm, dom))
        return self._call(vm, lambda: getattr(self, f"_read_{res}")(vm, dom))

    def _read_cpu(self, vm: str, dom: libvirt.virDomain) -> Setting:
        per_core = self.cpu_range.per_core
        files = self.cpu_files.get(vm)
        if files is not None:
            try:
                raw_weight, quota_us, period_us = files.read()
            except (OSError, ValueError) as exc:
                raise BackendError(f"{vm}: cannot read {files.directory}: {exc}") from exc
            return Setting(quota_us / period_us if quota_us > 0 else NO_LIMIT, raw_weight / per_core)
        params = dom.schedulerParameters()
        if "cpu_shares" not in params:
            return Setting(NO_LIMIT, float(params.get("weight", 0)) / per_core)
        weight = float(params["cpu_shares"]) / per_core
        quota, period = params.get("global_quota", -1), params.get("global_period", 0)
        if quota > 0 and period > 0:
            return Setting(quota / period, weight)
        quota, period = params.get("vcpu_quota", -1), params.get("vcpu_period", 0)
        if quota > 0 and period > 0:
            return Setting(quota / period * self._facts(vm, dom).vcpus, weight)
        return Setting(NO_LIMIT, weight)

    def _read_disk(self, vm: str, dom: libvirt.virDomain) -> Setting:
        disks = self._facts(vm, dom).disks
        totals = {float(dom.blockIoTune(disk, LIVE).get("total_bytes_sec", 0)) for disk in disks}
        # one ceiling for the VM only if every disk has it (a disk hot-plugged since has none): else
        # "none", so the plan writes the VM's ceiling to all of them
        total = totals.pop() if len(totals) == 1 else 0.0
        weighted = self.probed.get(vm, [None, None, capable("")])[2]
        # blkio weights can be read only where a weighted scheduler runs ("valid only for bfq or cfq")
        weight = float(dom.blkioParameters(LIVE).get("weight", 0)) if weighted and weighted.weight else 0.0
        return Setting(total if total > 0 else NO_LIMIT, weight)

    def _read_net(self, vm: str, dom: libvirt.virDomain) -> Setting:
        nics = self._facts(vm, dom).interfaces
        if self.net_mode == "tc":
            rate, ceil = self.shaper.rate_bps(vm), self.shaper.ceiling_bps(vm)
            if rate is None or ceil is None:
                return Setting(NO_LIMIT, 0.0)
            return Setting(NO_LIMIT if ceil >= self.shaper.link_bps else ceil, rate)
        params = dom.interfaceParameters(nics[0], LIVE)
        average = float(params.get("inbound.average", 0)) * KIB
        return Setting(average if average > 0 else NO_LIMIT, 0.0)

    # -- write ---------------------------------------------------------------------

    def write(self, changes: list[Change]) -> list[ChangeError]:
        """Each domain's libvirt changes in its own worker, all waited for busy_after_s; then tc."""
        errors: list[ChangeError] = []
        per_vm: dict[str, list[Change]] = {}
        net: list[Change] = []
        for change in changes:
            if self.net_mode == "tc" and change.resource == RESOURCES.index("net"):
                net.append(change)
            elif change.resource == RESOURCES.index("cpu") and change.vm in self.cpu_files:
                errors += self._write_cpu_direct(change)  # µs: no worker, no wait
            else:
                per_vm.setdefault(change.vm, []).append(change)
        running: dict[Future[list[ChangeError]], str] = {}
        for vm, mine in per_vm.items():
            if self._busy(vm):
                errors += [ChangeError(vm, RESOURCES[c.resource], "still answering an earlier call", "busy")
                           for c in mine]  # fmt: skip
                continue
            try:  # the lookup in this thread: workers never open or reopen the connection
                dom = self._domain(vm)
            except BackendError as exc:
                errors += [change_error(vm, RESOURCES[c.resource], exc) for c in mine]
                continue
            running[self.pool.submit(self._write_domain, vm, dom, mine)] = vm
        done, late = wait(running, timeout=self.settings.busy_after_s)
        for future in done:
            errors += future.result()
        for future in late:  # still running: reported busy now, its result is not waited for
            vm = running[future]
            self.in_flight[vm] = (future, time.monotonic())
            errors += [
                ChangeError(vm, RESOURCES[c.resource], f"no answer within {self.settings.busy_after_s:g} s", "busy")
                for c in per_vm[vm]
            ]
        errors += self._write_tc(net)
        if net and not self.stale_shaping_checked:
            self.stale_shaping_checked = True  # every VM of the first alloc has its class by now
            try:
                self.shaper.remove_stale()
            except ShapingError as exc:
                errors.append(change_error("*", "net", exc))
        return errors

    def _write_domain(self, vm: str, dom: libvirt.virDomain, changes: list[Change]) -> list[ChangeError]:
        """One domain's changes, each on its own: one refused change costs only itself (in a worker)."""
        errors = []
        for change in changes:
            resource = RESOURCES[change.resource]
            try:
                getattr(self, f"_write_{resource}")(vm, dom, change.setting)
            except Exception as exc:  # noqa: BLE001 - whatever one change raises costs only that change
                if isinstance(exc, libvirt.libvirtError):
                    self.libvirt.failed(exc)  # a lost connection is reopened by the next call
                elif not isinstance(exc, BackendError | LookupError):
                    log.exception("%s %s: unexpected error", vm, resource)
                errors.append(change_error(vm, resource, exc))
        return errors

    def _write_tc(self, changes: list[Change]) -> list[ChangeError]:
        """The tc changes of a period: every VM's class in one tc batch; if that fails, VM by VM, so one
        VM's tap (gone, foreign) costs only that VM."""
        classes = [c for c in changes if not (c.setting.ceiling == NO_LIMIT and c.setting.weight <= 0)]
        if len(classes) > 1 and len({c.setting.link for c in classes}) == 1:
            try:
                self.shaper.set_vms([self._class_of(c) for c in classes], classes[0].setting.link)
                changes = [c for c in changes if c not in classes]
            except (BackendError, ShapingError, LookupError, ValueError, libvirt.libvirtError) as exc:
                log.info("one tc batch for %d VMs failed (%s): VM by VM", len(classes), exc)
        errors = []
        for change in changes:
            try:
                self._write_net(change.vm, None, change.setting)
            except (BackendError, ShapingError, LookupError, ValueError, libvirt.libvirtError) as exc:
                errors.append(change_error(change.vm, "net", exc))
        return errors

    def _class_of(self, change: Change) -> tuple[str, list[tuple[str, str]], float, float]:
        """(vm, taps, rate, ceil) of one tc change, for ``SharedLinkShaper.set_vms``."""
        if not change.setting.link > 0:
            raise BackendError("no link capacity to divide: network shares need the alloc's capacity")
        facts = self.facts.get(change.vm) or self._facts(change.vm, self._domain(change.vm))
        ceil = math.inf if change.setting.ceiling == NO_LIMIT else change.setting.ceiling
        taps = list(zip(facts.interfaces, facts.macs, strict=True))
        return change.vm, taps, max(change.setting.weight, 1.0), ceil

    def _raw_weight(self, setting: Setting) -> int:
        span = self.cpu_range
        return int(min(max(round(setting.weight * span.per_core), span.lo), span.hi))

    def _cpu_values(self, setting: Setting, vcpus: int = 1) -> tuple[int | None, int]:
        """(raw weight, None to leave it as it is; quota µs per vCPU asked for, -1 for none)."""
        weight = self._raw_weight(setting) if setting.weight > 0 else None
        if setting.ceiling == NO_LIMIT:
            return weight, -1
        return weight, max(int(setting.ceiling * self.settings.cpu_period_us / vcpus), 1000)

    def _write_cpu_direct(self, change: Change) -> list[ChangeError]:
        files = self.cpu_files[change.vm]
        weight, quota = self._cpu_values(change.setting)
        try:
            files.write(weight, quota, self.settings.cpu_period_us)
        except OSError as exc:  # the domain went away under us, or the kernel refused a value
            return [change_error(change.vm, "cpu", BackendError(f"{files.directory}: {exc}"))]
        return []

    def _write_cpu(self, vm: str, dom: libvirt.virDomain, setting: Setting) -> None:
        """Through libvirt: the weight, then the quota in its own call (a refused weight does not cost it)."""
        known = self.sched_keys.get(vm) or frozenset(dom.schedulerParameters())
        if "cpu_shares" not in known:  # libvirt's test driver: a weight, no quota (the probe says so)
            dom.setSchedulerParameters({"weight": self._raw_weight(setting)})
            return
        period = self.settings.cpu_period_us
        if "global_quota" in known:
            weight, quota = self._cpu_values(setting)
            params = {"global_period": period, "global_quota": quota}
        else:
            weight, quota = self._cpu_values(setting, max(self._facts(vm, dom).vcpus, 1))
            params = {"vcpu_period": period, "vcpu_quota": quota}
        if weight is not None:
            dom.setSchedulerParametersFlags({"cpu_shares": weight}, LIVE)
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
        if setting.weight > 0:  # the plan sends none where the probe said the devices ignore weights
            weight = int(min(max(round(setting.weight), BLKIO_WEIGHT_MIN), BLKIO_WEIGHT_MAX))
            dom.setBlkioParameters({"weight": weight}, LIVE)
        bps = 0 if setting.ceiling == NO_LIMIT else max(int(setting.ceiling), 1)
        params: dict[str, Any] = {
            "total_bytes_sec": bps,
            "read_bytes_sec": 0,
            "write_bytes_sec": 0,
            "total_iops_sec": 0,
            "read_iops_sec": 0,
            "write_iops_sec": 0,
        }
        if len(facts.disks) > 1:  # one QEMU throttle group: the VM's disks share one ceiling, not N of them
            params["group_name"] = f"rescoin-{vm[:8]}"
        for disk in facts.disks:
            try:
                dom.setBlockIoTune(disk, params, LIVE)
            except libvirt.libvirtError as exc:
                if "cannot be set higher than" not in str(exc):
                    raise
                dom.setBlockIoTune(disk, {**params, "total_bytes_sec_max": bps}, LIVE)  # test-driver quirk

    def _write_net(self, vm: str, dom: libvirt.virDomain | None, setting: Setting) -> None:
        facts = self.facts.get(vm) or self._facts(vm, dom or self._domain(vm))
        nics = facts.interfaces
        if self.net_mode == "libvirt":
            kib = 0 if setting.ceiling == NO_LIMIT else max(int(setting.ceiling // KIB), 1)
            for nic in nics:
                (dom or self._domain(vm)).setInterfaceParameters(
                    nic, {"inbound.average": kib, "outbound.average": kib}, LIVE
                )
        elif setting.ceiling == NO_LIMIT and setting.weight <= 0:  # nothing to hold (restore): out of the tree
            self.shaper.remove_vm(vm)
        else:
            key, taps, rate, ceil = self._class_of(Change(vm, RESOURCES.index("net"), setting))
            self.shaper.set_vm(key, taps, rate_bps=rate, ceil_bps=ceil, link_bps=setting.link)

    def capabilities(self) -> dict[str, str]:
        return {
            "cgroups": self.cgroup_layout,
            "cpu.weight_range": f"{self.cpu_range.lo}-{self.cpu_range.hi} ({self.cpu_range.per_core:g} per core)",
            "net.shaping": self.net_mode,
            "busy_domains": str(sum(1 for vm in list(self.in_flight) if self._busy(vm))),
        }

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.libvirt.drop()
