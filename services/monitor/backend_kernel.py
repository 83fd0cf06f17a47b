"""The monitor's kernel-counter backend: libvirt for discovery, kernel files for the counters.

``getAllDomainStats`` costs 4.9 ms per domain on real QEMU (QMP round trips for block and balloon
stats, docs/BENCHMARKS.md). The counters the monitor needs are plain kernel counters, read here
with ``os.pread`` on files kept open (a few µs each):

* **discovery** (libvirt, cheap): every period one ``listAllDomains`` (name, UUID and ID travel
  with it: no per-domain call). A domain seen for the first time, or with a new ID (it restarted),
  is discovered once: its XML is parsed, its QEMU pid found (libvirt's pid file
  ``<qemu_pid_dir>/<name>.pid``, checked against ``/proc/<pid>/cmdline``; else a scan of
  ``/proc/*/cmdline`` for ``-name guest=<name>``), its cgroups read from ``/proc/<pid>/cgroup``
  and joined with the mount points from /proc/self/mountinfo (services/runtime/cgroups.py), and
  its counter files opened. The XML is parsed again every ``xml_refresh_periods`` (spread over
  periods, so 1,000 domains do not all cost one period);
* **cpu** (ns), the first that exists: the v1 ``cpuacct.usage`` of the domain's own cpuacct group
  (not the root: libvirt without systemd here leaves QEMU in ``cpuacct:/``); the v2 ``cpu.stat``
  ``usage_usec`` of the domain's unified group (present in every v2 group, with or without
  controllers: on the hybrid lab hosts libvirt puts QEMU in ``unified/machine/qemu-<id>-<name>
  .libvirt-qemu/emulator``); else QEMU's process CPU clock (all its threads, living and exited:
  ``clock_gettime`` on the pid's CPU clock, or ``/proc/<pid>/stat`` utime + stime under a fake
  proc root). The v1 ``cpu`` controller's ``cpu.stat`` has no usage on these kernels;
* **disk** (read + write bytes): v2 ``io.stat`` rbytes + wbytes of the domain's group where the
  io controller is on; else ``/proc/<pid>/io`` read_bytes + write_bytes (QEMU's own storage I/O,
  which for ``cache='none'`` is the guest's disk I/O). v1 ``blkio.throttle.io_service_bytes`` is
  not used: on kernel 6.18 it stays 0 for a domain that did I/O (the kernel counts it only on a
  queue with a throttle rule), and v1 writeback is charged to the root anyway;
* **net** (rx + tx bytes): each tap of the XML in ``/proc/<pid>/net/dev``, the table of QEMU's
  own network namespace, read once per namespace per period. ``/sys/class/net`` shows only the
  namespace sysfs was mounted in, which is not libvirtd's when libvirtd runs in a namespace of its
  own (as the test suite's does);
* **memory**: the balloon facts (size, stats) cost a QMP round trip, so each domain's are read
  with one bulk ``domainListGetStats`` only every ``balloon_stats_periods`` periods (spread over
  periods), in a worker thread whose answer the next period takes (a call costs ~6 ms of waiting
  on libvirtd and QEMU however few domains it names: off the period's path, the read is the
  counters'); a slice still running when the next is due is not doubled. A balloon size change in
  between arrives as libvirt's BALLOON_CHANGE event. Guest
  agent reports are merged by the core, as with every backend;
* **fallback and cross-check**: a domain whose QEMU pid cannot be found (a remote URI, another
  driver) is read with the libvirt bulk call every period, as the libvirt backend does. Every
  ``crosscheck_periods`` each domain's counters are also read with the bulk call, in the same
  worker (its kernel counters read there too, right after libvirt answers, so that both are read
  at nearly one moment), and the rates of both over the interval since its last check compared
  when the next period takes the answer; a disagreement beyond ``crosscheck_tolerance``
  (relative, with a small absolute floor per resource) is counted in `hb` and logged. A check
  still running when the next is due is not doubled: those domains wait for their next turn.

Every path is relative to roots the constructor takes (``proc_root``, the cgroup mounts), so tests
lay out a fake procfs and cgroupfs in a temporary directory.
"""

from __future__ import annotations

import logging
import os
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from threading import Lock

import libvirt

from ..runtime.cgroups import CgroupMounts, cgroup_mounts, proc_cgroups
from ..runtime.domxml import DomainFacts, DomainXMLError, parse_domain_xml
from ..runtime.host import HostFactsError, host_memory_bytes, usable_cores
from ..runtime.libvirt_conn import LibvirtConnection, LibvirtDown
from ..runtime.qemu import QemuPids
from .backend import BackendError, DomainReading, HostCapacity, HostReading
from .backend_libvirt import (
    GROUP_KEYS,
    KIB,
    STATS,
    LibvirtMonitorBackend,
    _balloon_unreclaimable,
    _balloon_used,
)

log = logging.getLogger("rescoin.monitor.kernel")

NS_PER_TICK = 1e9 / os.sysconf("SC_CLK_TCK")
CPUCLOCK_SCHED = 2  # linux/posix-timers.h: a process CPU clock id is (~pid << 3) | CPUCLOCK_SCHED
BALLOON_GROUPS = libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_BALLOON
BALLOON_STATS, CROSS_CHECK = "balloon stats", "cross-check"  # the worker's two kinds of call
Counts = tuple[float, float, float]  # cpu ns, disk bytes, network bytes
# a cross-check disagreement is beyond tolerance * the larger rate AND beyond this floor (cores, B/s, B/s)
CROSSCHECK_FLOOR = (0.02, 64 * 1024.0, 16 * 1024.0)
RESOURCES = ("cpu", "disk", "net")
MAX_LOGGED_PER_PERIOD = 10


class CounterGone(OSError):
    """A counter file or process vanished (the domain stopped): the domain is rediscovered."""


# ---- parsers: raw bytes of one file -> one cumulative counter -------------------------------------


def parse_cpu_stat_usec(data: bytes) -> float:
    """cgroup v2 cpu.stat: usage_usec -> ns."""
    for line in data.split(b"\n"):
        if line.startswith(b"usage_usec "):
            return float(line.split()[1]) * 1e3
    raise ValueError("no usage_usec in cpu.stat")


def parse_ns(data: bytes) -> float:
    """v1 cpuacct.usage: one number, ns."""
    return float(data.split()[0])


def parse_proc_stat(data: bytes) -> float:
    """/proc/<pid>/stat utime + stime (clock ticks) -> ns; the name may hold spaces and ')'."""
    fields = data.rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * NS_PER_TICK


def parse_io_stat(data: bytes) -> float:
    """cgroup v2 io.stat: rbytes + wbytes over every device."""
    total = 0.0
    for token in data.split():
        if token.startswith(b"rbytes=") or token.startswith(b"wbytes="):
            total += float(token[7:])
    return total


def parse_proc_io(data: bytes) -> float:
    """/proc/<pid>/io: read_bytes + write_bytes (storage I/O the process caused)."""
    total = 0.0
    for line in data.split(b"\n"):
        if line.startswith(b"read_bytes:") or line.startswith(b"write_bytes:"):
            total += float(line.split()[1])
    return total


def parse_net_dev(data: bytes) -> dict[str, float]:
    """/proc/<pid>/net/dev: device -> rx_bytes + tx_bytes."""
    out = {}
    for line in data.split(b"\n")[2:]:
        name, sep, rest = line.partition(b":")
        if not sep:
            continue
        fields = rest.split()
        out[name.strip().decode(errors="replace")] = float(fields[0]) + float(fields[8])
    return out


SMALL_FILE = 8192  # a counter file is far smaller: one pread reads it whole


def pread_all(fd: int, size: int = 65536) -> bytes:
    """The whole file from offset 0, however many preads it takes (a seq_file such as net/dev returns
    about one page per read)."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, size, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def pread_small(fd: int) -> bytes:
    data = os.pread(fd, SMALL_FILE, 0)
    return data if len(data) < SMALL_FILE else pread_all(fd)


@dataclass
class FileCounter:
    """One kernel file kept open; ``read()`` -> its counter."""

    path: str
    parse: Callable[[bytes], float]
    kind: str  # for hb: cgroup1, cgroup2, proc, ...
    fd: int = -1

    def open(self) -> FileCounter:
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        return self

    def read(self) -> float:
        try:
            return self.parse(pread_small(self.fd))
        except (OSError, ValueError, IndexError) as exc:
            raise CounterGone(f"{self.path}: {exc}") from exc

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class ClockCounter:
    """A process's CPU clock (every thread, living or exited), ns: no file at all."""

    pid: int
    kind: str = "clock"

    def __post_init__(self) -> None:
        self.clock = ((~self.pid) << 3) | CPUCLOCK_SCHED

    def open(self) -> ClockCounter:
        self.read()
        return self

    def read(self) -> float:
        try:
            return float(time.clock_gettime_ns(self.clock))
        except OSError as exc:  # EINVAL: the process is gone
            raise CounterGone(f"cpu clock of pid {self.pid}: {exc}") from exc

    def close(self) -> None:
        pass


Counter = FileCounter | ClockCounter


# ---- finding QEMU and its cgroups ------------------------------------------------------------------


# ---- one domain instance ---------------------------------------------------------------------------


@dataclass
class _Memory:
    current: float  # balloon size, bytes
    maximum: float
    used: float | None = None
    unreclaimable: float | None = None
    stats_at_s: float | None = None


@dataclass
class Instance:
    """A domain while it keeps one ID: its facts, its QEMU and its open counters."""

    uuid: str
    dom_id: int
    dom: libvirt.virDomain
    facts: DomainFacts
    slot: int  # a stable hash: which period of a cycle this domain's slow reads fall in
    pid: int | None = None
    cpu: Counter | None = None
    disk: Counter | None = None
    netdev: FileCounter | None = None  # QEMU's /proc/<pid>/net/dev (its network namespace's table)
    netns: int = 0  # that namespace's inode: one table read per namespace per period
    memory: _Memory | None = None
    periods: int = 0  # read this many periods
    check: tuple[int, Counts, Counts] | None = None  # the last cross-check: monotonic ns, libvirt's, the kernel's

    @property
    def kernel(self) -> bool:
        return self.cpu is not None and self.disk is not None and self.netdev is not None

    def sources(self) -> str:
        if not self.kernel:
            return "libvirt"
        return f"cpu:{self.cpu.kind},disk:{self.disk.kind},net:proc"  # type: ignore[union-attr]

    def close(self) -> None:
        for counter in (self.cpu, self.disk, self.netdev):
            if counter is not None:
                counter.close()
        self.cpu = self.disk = self.netdev = None


@dataclass
class SlowAnswer:
    """What one libvirt bulk call in the worker brought back, for the next period to take."""

    kind: str  # "balloon stats" or "cross-check"
    insts: list[Instance]
    stats: dict[str, dict] | libvirt.libvirtError  # uuid -> stats, or the call's error
    kernel: dict[str, Counts] = field(default_factory=dict)  # the cross-check's counters, read just after
    at_ns: int = 0  # when those were read (monotonic)


def due(slot: int, period: int, every: int) -> bool:
    return every > 0 and (slot + period) % every == 0


class KernelMonitorBackend:
    name = "kernel"

    def __init__(
        self,
        uri: str,
        *,
        xml_refresh_periods: int = 60,
        balloon_stats_periods: int = 5,
        crosscheck_periods: int = 30,
        crosscheck_tolerance: float = 0.1,
        qemu_pid_dir: str = "/run/libvirt/qemu",
        proc_root: str = "/proc",
        mounts: CgroupMounts | None = None,
        pid_of: Callable[[str, int], int | None] | None = None,
    ) -> None:
        self.uri = uri
        self.xml_refresh_periods = xml_refresh_periods
        self.balloon_stats_periods = balloon_stats_periods
        self.crosscheck_periods = crosscheck_periods
        self.tolerance = crosscheck_tolerance
        self.proc_root = Path(proc_root)
        self.mounts = mounts if mounts is not None else cgroup_mounts(str(self.proc_root / "self" / "mountinfo"))
        self.pids = QemuPids(proc_root, (qemu_pid_dir,))
        self.pid_of = pid_of or self.pids
        self.real_proc = os.path.realpath(proc_root) == "/proc"  # process CPU clocks only for real pids
        self.libvirt = LibvirtConnection(uri, read_only=True)
        self.bulk = LibvirtMonitorBackend(uri, xml_refresh_periods)  # its per-domain conversion and fallbacks
        self.bulk.libvirt = self.libvirt
        self.instances: dict[str, Instance] = {}
        self.period = 0
        self.balloon_events: dict[str, float] = {}  # uuid -> balloon size (bytes) from BALLOON_CHANGE
        self._events_conn: libvirt.virConnect | None = None
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="libvirt-slow")  # balloon stats, cross-checks
        self._jobs: dict[str, Future[SlowAnswer]] = {}  # kind -> the call in flight
        self._counters_lock = Lock()  # the worker reads counters the period's read may close
        self.stats = {"discovered": 0, "crosscheck_checks": 0, "crosscheck_disagreements": 0, "counter_gone": 0}
        self.disagreements = dict.fromkeys(RESOURCES, 0)
        self._logged = 0
        self.ts_ns = 0
        self.monotonic_ns = 0  # the same moment, for rates (a wall-clock step must not make one)

    # -- libvirt side ---------------------------------------------------------------------------------

    def _watch_balloons(self, conn: libvirt.virConnect) -> None:
        if conn is self._events_conn:
            return
        self._events_conn = conn
        self.balloon_events.clear()
        try:
            conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_BALLOON_CHANGE, self._on_balloon, None)
        except libvirt.libvirtError as exc:  # sizes then change only with the periodic stats
            log.warning("no balloon events from %s: %s", self.uri, exc)

    def _on_balloon(self, _conn: object, dom: libvirt.virDomain, actual_kib: int, _opaque: object) -> None:
        self.balloon_events[dom.UUIDString().lower()] = float(actual_kib) * KIB

    @staticmethod
    def _stats(conn: libvirt.virConnect, insts: list[Instance], groups: int) -> dict[str, dict]:
        """uuid -> stats dict of one domainListGetStats call for ``insts`` (its libvirtError raised)."""
        stats = conn.domainListGetStats([i.dom for i in insts], groups, 0)
        return {dom.UUIDString().lower(): st for dom, st in stats}

    def _bulk(self, conn: libvirt.virConnect, insts: list[Instance], groups: int) -> dict[str, dict]:
        """The period's own bulk call (nothing for an empty list); a failure skips it this period."""
        if not insts:
            return {}
        try:
            return self._stats(conn, insts, groups)
        except libvirt.libvirtError as exc:
            if self.libvirt.failed(exc):
                raise
            log.warning("domainListGetStats of %d domains on %s: %s (skipped this period)", len(insts), self.uri, exc)
            return {}

    def _submit(self, kind: str, conn: libvirt.virConnect, insts: list[Instance]) -> None:
        if insts and kind not in self._jobs:
            self._jobs[kind] = self._worker.submit(self._fetch, kind, conn, insts)

    def _fetch(self, kind: str, conn: libvirt.virConnect, insts: list[Instance]) -> SlowAnswer:
        """In the worker: one bulk call for ``insts`` (its error returned, not raised); for a
        cross-check, their kernel counters read right after it."""
        groups = STATS if kind == CROSS_CHECK else BALLOON_GROUPS
        try:
            answer = SlowAnswer(kind, insts, self._stats(conn, insts, groups))
        except libvirt.libvirtError as exc:
            return SlowAnswer(kind, insts, exc)
        if kind == CROSS_CHECK:
            with self._counters_lock:
                answer.at_ns = time.monotonic_ns()
                tables: dict[int, dict[str, float]] = {}
                for inst in insts:
                    try:
                        if inst.kernel:
                            answer.kernel[inst.uuid] = self._counts(inst, tables)
                    except (CounterGone, OSError, ValueError):
                        pass  # stopped meanwhile (or a torn read): the period's own read notices and says so
        return answer

    def _finished(self, kind: str) -> SlowAnswer | None:
        """The call of ``kind``'s answer once it is back, with only the instances still current
        (not gone or restarted since); None while it runs or if it failed."""
        job = self._jobs.get(kind)
        if job is None or not job.done():
            return None
        del self._jobs[kind]
        answer = job.result()
        if isinstance(answer.stats, libvirt.libvirtError):
            self.libvirt.failed(answer.stats)  # a lost connection is reopened by the next read
            log.warning("%s of %d domains on %s: %s (skipped)", answer.kind, len(answer.insts), self.uri, answer.stats)
            return None
        stats = answer.stats
        answer.insts = [i for i in answer.insts if i.uuid in stats and self.instances.get(i.uuid) is i]
        return answer

    def _collect(self) -> None:
        """Take what the worker brought back: balloon facts, and cross-checks to compare."""
        if (balloons := self._finished(BALLOON_STATS)) is not None:
            for inst in balloons.insts:
                self._take_balloon(inst, balloons.stats[inst.uuid])  # type: ignore[index]
        if (check := self._finished(CROSS_CHECK)) is not None:
            readings = self._libvirt_readings(check.insts, check.stats)  # type: ignore[arg-type]
            for inst in check.insts:
                if inst.uuid in readings and inst.uuid in check.kernel:
                    self._cross_check(inst, readings[inst.uuid], check.kernel[inst.uuid], check.at_ns)

    # -- discovery ------------------------------------------------------------------------------------

    def _discover(self, dom: libvirt.virDomain, uuid: str, dom_id: int) -> Instance:
        facts = parse_domain_xml(dom.XMLDesc(0))
        if facts.template_problem:
            log.warning("domain %s: %s (the configured template is used)", dom.name(), facts.template_problem)
        inst = Instance(uuid, dom_id, dom, facts, zlib.crc32(uuid.encode()))
        self.stats["discovered"] += 1
        pid = self.pid_of(dom.name(), dom_id)
        if pid is None:
            log.warning("domain %s: no QEMU process found; read through libvirt", dom.name())
            return inst
        inst.pid = pid
        try:
            self._open_counters(inst, pid)
        except OSError as exc:
            inst.close()
            log.warning(
                "domain %s (pid %d): kernel counters unreadable (%s); read through libvirt", dom.name(), pid, exc
            )
        else:
            log.info("domain %s: pid %d, %s", dom.name(), pid, inst.sources())
        return inst

    def _open_counters(self, inst: Instance, pid: int) -> None:
        proc = self.proc_root / str(pid)
        v1, v2 = proc_cgroups((proc / "cgroup").read_text())
        cpu: list[Counter] = []
        disk: list[Counter] = []
        cpuacct = self.mounts.v1.get("cpuacct")
        if cpuacct is not None and v1.get("cpuacct"):  # not the root: that would be the whole host
            cpu.append(FileCounter(str(cpuacct / v1["cpuacct"] / "cpuacct.usage"), parse_ns, "cgroup1"))
        if self.mounts.v2 is not None and v2:
            cpu.append(FileCounter(str(self.mounts.v2 / v2 / "cpu.stat"), parse_cpu_stat_usec, "cgroup2"))
            io_stat = self.mounts.v2 / v2 / "io.stat"
            if io_stat.exists():
                disk.append(FileCounter(str(io_stat), parse_io_stat, "cgroup2"))
        cpu.append(ClockCounter(pid) if self.real_proc else FileCounter(str(proc / "stat"), parse_proc_stat, "proc"))
        disk.append(FileCounter(str(proc / "io"), parse_proc_io, "proc"))
        inst.cpu = _first_open(cpu)
        inst.disk = _first_open(disk)
        inst.netdev = FileCounter(str(proc / "net" / "dev"), lambda _b: 0.0, "proc").open()
        inst.netns = os.stat(proc / "ns" / "net").st_ino

    # -- one period -----------------------------------------------------------------------------------

    def read(self) -> HostReading:
        try:
            conn = self.libvirt.get()
        except LibvirtDown as exc:
            raise BackendError(str(exc)) from exc
        self.period += 1
        self._logged = 0
        self.pids.new_period()
        try:
            self._watch_balloons(conn)
            with self._counters_lock:  # instances gone are closed here; the worker reads none meanwhile
                insts = self._instances(conn)
            full = [i for i in insts if not i.kernel or i.periods == 0]  # no counters, or first seen: now
            later = [i for i in insts if i.kernel and i.periods > 0]
            self._collect()
            checks = [i for i in later if due(i.slot, self.period, self.crosscheck_periods)]
            checked = {i.uuid for i in checks}
            balloons = [
                i for i in later if i.uuid not in checked and due(i.slot, self.period, self.balloon_stats_periods)
            ]
            self._submit(CROSS_CHECK, conn, checks)  # its bulk call brings the balloon facts too
            self._submit(BALLOON_STATS, conn, balloons)
            libvirt_readings = self._libvirt_readings(full, self._bulk(conn, full, STATS))
        except libvirt.libvirtError as exc:
            if self.libvirt.failed(exc):
                raise BackendError(f"lost {self.uri}: {exc}") from exc
            raise BackendError(f"listing or reading domains on {self.uri}: {exc}") from exc
        with self._counters_lock:
            domains = self._kernel_readings(insts, libvirt_readings)
        return HostReading(self.ts_ns, sorted(domains, key=lambda d: d.uuid), self.monotonic_ns)

    def _instances(self, conn: libvirt.virConnect) -> list[Instance]:
        """The running domains' instances: new and restarted ones discovered, stopped ones closed."""
        live: dict[str, Instance] = {}
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            uuid, dom_id = dom.UUIDString().lower(), dom.ID()
            inst = self.instances.pop(uuid, None)
            if inst is not None and inst.dom_id != dom_id:
                inst.close()  # restarted: a new QEMU, new cgroups
                inst = None
            try:
                if inst is None:
                    inst = self._discover(dom, uuid, dom_id)
                elif due(inst.slot, self.period, self.xml_refresh_periods):
                    inst.facts = parse_domain_xml(dom.XMLDesc(0))
            except (DomainXMLError, libvirt.libvirtError) as exc:
                log.warning("skipping domain %s: %s", dom.name(), exc)
                if inst is not None:
                    inst.close()
                continue
            inst.dom = dom
            live[uuid] = inst
        for gone in self.instances.values():
            gone.close()
        self.instances = live
        return list(live.values())

    def _libvirt_readings(self, insts: list[Instance], stats: dict[str, dict]) -> dict[str, DomainReading]:
        """Full libvirt readings (the fallback, the cross-check, a first sight), with the libvirt backend's
        conversion and its per-domain calls for groups the driver leaves empty."""
        empty = {g for g, key in GROUP_KEYS.items() if stats and not any(key in st for st in stats.values())}
        self.bulk._note_fallbacks(empty)
        out = {}
        for inst in insts:
            if inst.uuid not in stats:  # it stopped in between, or the call failed
                continue
            self.bulk.facts[inst.uuid] = (0, inst.facts)  # our facts: no second XML parse
            reading = self.bulk._reading(inst.dom, stats.get(inst.uuid, {}), empty)
            self.bulk.facts.pop(inst.uuid, None)
            if reading is not None:
                out[inst.uuid] = reading
                inst.memory = _Memory(
                    reading.mem_current_bytes,
                    reading.mem_max_bytes,
                    reading.balloon_used_bytes,
                    reading.balloon_unreclaimable_bytes,
                    reading.balloon_stats_at_s,
                )
        return out

    def _take_balloon(self, inst: Instance, st: dict) -> None:
        balloon = {k.split(".", 1)[1]: v for k, v in st.items() if k.startswith("balloon.")}
        if not balloon:
            balloon = inst.dom.memoryStats()  # a driver without the balloon group (the test driver)
        current = balloon.get("current", balloon.get("actual"))
        inst.memory = _Memory(
            float(current) * KIB if current is not None else inst.facts.mem_max_bytes,
            float(balloon["maximum"]) * KIB if "maximum" in balloon else inst.facts.mem_max_bytes,
            _balloon_used(balloon),
            _balloon_unreclaimable(balloon),
            _float_or_none(balloon.get("last-update", balloon.get("last_update"))),
        )

    @staticmethod
    def _counts(inst: Instance, tables: dict[int, dict[str, float]]) -> Counts:
        """cpu ns, disk bytes and network bytes from ``inst``'s open counters (one net/dev table per
        network namespace, kept in ``tables`` for the pass)."""
        if inst.netns not in tables:
            tables[inst.netns] = parse_net_dev(pread_all(inst.netdev.fd))  # type: ignore[union-attr]
        table = tables[inst.netns]
        net = sum(table.get(tap, 0.0) for tap in inst.facts.interfaces)
        return inst.cpu.read(), inst.disk.read(), net  # type: ignore[union-attr]

    def _kernel_readings(
        self, insts: list[Instance], libvirt_readings: dict[str, DomainReading]
    ) -> list[DomainReading]:
        tables: dict[int, dict[str, float]] = {}
        counters: dict[str, Counts] = {}
        for inst in insts:
            if not inst.kernel:
                continue
            try:
                counters[inst.uuid] = self._counts(inst, tables)
            except (CounterGone, OSError) as exc:  # stopped while read: rediscovered if it is still there
                self.stats["counter_gone"] += 1
                log.info("domain %s: %s", inst.facts.name, exc)
                inst.close()
                self.instances.pop(inst.uuid, None)
        self.ts_ns, self.monotonic_ns = time.time_ns(), time.monotonic_ns()
        out = []
        for inst in insts:
            inst.periods += 1
            lv = libvirt_readings.get(inst.uuid)
            if inst.uuid not in counters:
                if lv is not None and inst.uuid in self.instances and not inst.kernel:
                    out.append(lv)  # the fallback: a domain with no kernel counters
                continue
            if lv is not None:  # first seen: the cross-check's first point
                self._cross_check(inst, lv, counters[inst.uuid], self.monotonic_ns)
            memory = inst.memory
            if memory is None:
                continue
            if inst.uuid in self.balloon_events:
                memory.current = self.balloon_events.pop(inst.uuid)
            cpu, disk, net = counters[inst.uuid]
            out.append(
                DomainReading(
                    uuid=inst.facts.uuid or inst.uuid,
                    name=inst.facts.name or inst.dom.name(),
                    vcpus=float(inst.facts.vcpus),
                    mem_max_bytes=memory.maximum,
                    mem_current_bytes=memory.current,
                    cpu_time_ns=cpu,
                    disk_bytes=disk,
                    net_bytes=net,
                    balloon_used_bytes=memory.used,
                    template=inst.facts.template,
                    balloon_unreclaimable_bytes=memory.unreclaimable,
                    balloon_stats_at_s=memory.stats_at_s,
                    carried_coins=inst.facts.carried_coins,
                )
            )
        return out

    def _cross_check(self, inst: Instance, lv: DomainReading, kernel: Counts, at_ns: int) -> None:
        """Compare the rates of libvirt's and the kernel's counters since this domain's last check."""
        libvirt_counters = (lv.cpu_time_ns or 0.0, lv.disk_bytes or 0.0, lv.net_bytes or 0.0)
        before, inst.check = inst.check, (at_ns, libvirt_counters, kernel)
        if before is None:
            return
        dt = (at_ns - before[0]) / 1e9
        if dt <= 0:
            return
        self.stats["crosscheck_checks"] += 1
        scale = (1e9, 1.0, 1.0)  # cpu ns -> s (cores)
        for r, name in enumerate(RESOURCES):
            rl = (libvirt_counters[r] - before[1][r]) / scale[r] / dt
            rk = (kernel[r] - before[2][r]) / scale[r] / dt
            if abs(rl - rk) > max(self.tolerance * max(abs(rl), abs(rk)), CROSSCHECK_FLOOR[r]):
                self.stats["crosscheck_disagreements"] += 1
                self.disagreements[name] += 1
                if self._logged < MAX_LOGGED_PER_PERIOD:
                    self._logged += 1
                    log.warning(
                        "domain %s: %s rate %.4g from kernel counters (%s), %.4g from libvirt over %.1f s",
                        inst.facts.name, name, rk, inst.sources(), rl, dt,
                    )  # fmt: skip

    # -- the rest of the backend ------------------------------------------------------------------------

    def capacity(self) -> HostCapacity:
        try:  # isolated cores and the hugepage pool are no VM's to share (runtime/host.py)
            return HostCapacity(usable_cores(), host_memory_bytes(str(self.proc_root / "meminfo")))
        except (HostFactsError, OSError) as exc:
            raise BackendError(str(exc)) from exc

    def info(self) -> dict[str, str | int | float | bool]:
        sources: dict[str, int] = {}
        for inst in self.instances.values():
            sources[inst.sources()] = sources.get(inst.sources(), 0) + 1
        return {
            "backend": "kernel",
            "uri": self.uri,
            "domains": len(self.instances),
            "sources": ";".join(f"{k}={v}" for k, v in sorted(sources.items())) or "none",
            "fallback_groups": ",".join(sorted(self.bulk.fallbacks)) or "none",
            "connects": self.libvirt.connects,
            **self.stats,
            **{f"crosscheck_disagreements_{r}": n for r, n in self.disagreements.items()},
        }

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)  # no call left on the connection
        for inst in self.instances.values():
            inst.close()
        self.instances = {}
        self.libvirt.drop()


def _first_open(candidates: list[Counter]) -> Counter:
    """The first candidate that opens and reads; OSError if none does."""
    error: Exception | None = None
    for counter in candidates:
        try:
            counter.open()
            counter.read()
            return counter
        except (OSError, ValueError) as exc:
            counter.close()
            error = exc
    raise OSError(f"no readable counter among {[getattr(c, 'path', 'clock') for c in candidates]}: {error}")


def _float_or_none(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
