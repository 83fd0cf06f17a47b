"""The kernel-counter monitor backend on a fake procfs/cgroupfs in a temporary directory.

Discovery runs against libvirt's test driver (in-process, tests/fixtures/libvirt/host4.xml: vm1, vm2
and vm4-big running); every kernel file the backend reads is laid out under tmp_path.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from rescoin.services.monitor import backend_kernel as bk
from rescoin.services.monitor.backend_kernel import KernelMonitorBackend
from rescoin.services.runtime.cgroups import CgroupMounts, domain_dir, proc_cgroups
from rescoin.services.runtime.qemu import QemuPids, is_qemu_of

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "libvirt" / "host4.xml"
URI = f"test://{FIXTURE}"
VM1, VM2, VM4 = (f"{d * 8}-{d * 4}-{d * 4}-{d * 4}-{d * 12}" for d in "124")
NAMES = {"vm1": (1, 101), "vm2": (2, 102), "vm4-big": (3, 103)}  # name -> (libvirt ID, fake pid)
NET_DEV_HEAD = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls"
    " carrier compressed\n"
)


def net_dev(devices: dict[str, tuple[int, int]]) -> str:
    lines = [f"{name:>6}: {rx} 10 0 0 0 0 0 0 {tx} 5 0 0 0 0 0 0" for name, (rx, tx) in devices.items()]
    return NET_DEV_HEAD + "\n".join(lines) + "\n"


class FakeHost:
    """procfs, cgroupfs and libvirt's run dir under one temporary directory, like this lab host:
    cpu/cpuacct/blkio v1 (QEMU left in cpuacct:/), a controller-less cgroup2 at unified/."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc = root / "proc"
        self.run = root / "run"
        self.cg = root / "cgroup"
        for d in (self.proc, self.run, self.cg / "cpu", self.cg / "cpuacct", self.cg / "blkio", self.cg / "unified"):
            d.mkdir(parents=True, exist_ok=True)
        (self.proc / "meminfo").write_text("MemTotal:       16384000 kB\n")
        self.mounts = CgroupMounts(
            {"cpu": self.cg / "cpu", "cpuacct": self.cg / "cpuacct", "blkio": self.cg / "blkio"}, self.cg / "unified"
        )

    def group(self, name: str, dom_id: int) -> str:
        return f"machine/qemu-{dom_id}-{name}.libvirt-qemu"

    def qemu(self, name: str, dom_id: int, pid: int, *, cpuacct_root: bool = True, io_stat: bool = False) -> None:
        """A running QEMU of domain ``name``: its pid file, /proc/<pid> and its cgroups."""
        (self.run / f"{name}.pid").write_text(str(pid))
        proc = self.proc / str(pid)
        (proc / "net").mkdir(parents=True, exist_ok=True)
        (proc / "ns").mkdir(exist_ok=True)
        argv = [b"/usr/bin/qemu-system-x86_64", b"-name", b"guest=" + name.encode() + b",debug-threads=on", b"-S"]
        (proc / "cmdline").write_bytes(b"\0".join([*argv, b""]))
        group = self.group(name, dom_id)
        cpuacct = "/" if cpuacct_root else f"/{group}"
        (proc / "cgroup").write_text(
            f"7:blkio:/{group}\n3:cpuset:/{group}/emulator\n2:cpuacct:{cpuacct}\n1:cpu:/{group}/emulator\n"
            f"0::/{group}/emulator\n"
        )
        (self.cg / "unified" / group / "emulator").mkdir(parents=True, exist_ok=True)
        if not cpuacct_root:
            (self.cg / "cpuacct" / group).mkdir(parents=True, exist_ok=True)
        if io_stat:
            (self.cg / "unified" / group / "io.stat").write_text("")
        (proc / "ns" / "net").write_text(f"netns of {pid}")  # its own namespace: an inode of its own
        self.counters(name, dom_id, pid, cpu_ns=0, disk=0, net={})

    def counters(self, name: str, dom_id: int, pid: int, *, cpu_ns: int, disk: int, net: dict) -> None:
        proc = self.proc / str(pid)
        group = self.cg / "unified" / self.group(name, dom_id)
        (group / "cpu.stat").write_text(f"usage_usec {cpu_ns // 1000}\nuser_usec 0\nsystem_usec 0\n")
        if (self.cg / "cpuacct" / self.group(name, dom_id)).exists():
            (self.cg / "cpuacct" / self.group(name, dom_id) / "cpuacct.usage").write_text(f"{cpu_ns}\n")
        if (group / "io.stat").exists():
            (group / "io.stat").write_text(f"254:0 rbytes={disk // 2} wbytes={disk - disk // 2} rios=1 wios=1\n")
        ticks = cpu_ns // int(bk.NS_PER_TICK)
        (proc / "stat").write_text(f"{pid} (qemu-system-x86) S 1 1 1 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 0 3 0 1 1 1\n")
        (proc / "io").write_text(
            f"rchar: 99\nwchar: 99\nsyscr: 1\nsyscw: 1\nread_bytes: {disk // 4}\nwrite_bytes: {disk - disk // 4}\n"
            "cancelled_write_bytes: 0\n"
        )
        (proc / "net" / "dev").write_text(net_dev({"lo": (7, 7), **net}))

    def backend(self, **kw) -> KernelMonitorBackend:
        return KernelMonitorBackend(URI, qemu_pid_dir=str(self.run), proc_root=str(self.proc), mounts=self.mounts, **kw)


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    fake = FakeHost(tmp_path)
    for name, (dom_id, pid) in NAMES.items():
        fake.qemu(name, dom_id, pid)
    return fake


def by_uuid(reading):
    return {d.uuid: d for d in reading.domains}


def test_counters_come_from_the_kernel_files(host: FakeHost):
    backend = host.backend()
    first = by_uuid(backend.read())
    assert set(first) == {VM1, VM2, VM4}
    assert first[VM1].cpu_time_ns == first[VM1].disk_bytes == first[VM1].net_bytes == 0.0
    host.counters("vm1", 1, 101, cpu_ns=2_500_000_000, disk=4096 * 10, net={"testnet0": (1000, 234)})
    host.counters("vm4-big", 3, 103, cpu_ns=1_000_000, disk=0, net={"testnet0": (1, 2), "testnet1": (30, 40)})
    second = by_uuid(backend.read())
    assert second[VM1].cpu_time_ns == 2.5e9  # cpu.stat usage_usec of the unified domain group
    assert second[VM1].disk_bytes == 40960  # /proc/<pid>/io read_bytes + write_bytes
    assert second[VM1].net_bytes == 1234  # rx + tx of its tap in its namespace's net/dev
    assert second[VM4].net_bytes == 73  # both NICs
    assert second[VM2].cpu_time_ns == 0.0
    info = backend.info()
    assert info["sources"] == "cpu:cgroup2,disk:proc,net:proc=3"
    assert info["discovered"] == 3 and info["backend"] == "kernel"


def test_sizes_templates_and_balloon_come_from_libvirt(host: FakeHost):
    d = by_uuid(host.backend().read())
    assert d[VM1].vcpus == 2.0 and d[VM1].template[2] == 10485760.0  # XML and <rescoin:template>
    assert d[VM1].mem_current_bytes == 1024 * 2**20  # the test driver's balloon (memoryStats)
    assert d[VM1].balloon_used_bytes == 512 * 2**20  # available - usable
    assert d[VM1].balloon_unreclaimable_bytes == 512 * 2**20


def test_a_non_root_cpuacct_group_and_io_stat_are_preferred(tmp_path: Path):
    fake = FakeHost(tmp_path)
    fake.qemu("vm1", 1, 101, cpuacct_root=False, io_stat=True)
    fake.qemu("vm2", 2, 102)
    fake.qemu("vm4-big", 3, 103)
    backend = fake.backend()
    backend.read()
    fake.counters("vm1", 1, 101, cpu_ns=123_456_789, disk=1000, net={})
    d = by_uuid(backend.read())
    assert d[VM1].cpu_time_ns == 123_456_789  # cpuacct.usage: ns, not cpu.stat's µs
    assert d[VM1].disk_bytes == 1000  # io.stat rbytes + wbytes
    assert backend.instances[VM1].sources() == "cpu:cgroup1,disk:cgroup2,net:proc"


def test_without_cgroup2_cpu_is_the_process_time_in_ticks(host: FakeHost):
    host.mounts = CgroupMounts(host.mounts.v1, None)
    backend = host.backend()
    backend.read()
    host.counters("vm1", 1, 101, cpu_ns=3 * 10**9, disk=0, net={})
    assert by_uuid(backend.read())[VM1].cpu_time_ns == pytest.approx(3e9)
    assert backend.instances[VM1].sources() == "cpu:proc,disk:proc,net:proc"


def test_a_domain_without_a_qemu_process_is_read_through_libvirt(host: FakeHost):
    (host.run / "vm2.pid").unlink()
    (host.proc / "102" / "cmdline").write_bytes(b"sleep\x00100\x00")  # and no scan finds it
    backend = host.backend()
    backend.read()
    time.sleep(0.05)
    d = by_uuid(backend.read())
    assert set(d) == {VM1, VM2, VM4}
    assert d[VM2].disk_bytes > 0  # the test driver's blockStats, not a kernel file
    assert backend.info()["sources"] == "cpu:cgroup2,disk:proc,net:proc=2;libvirt=1"


def test_a_stale_pid_file_is_checked_and_proc_scanned(host: FakeHost):
    (host.run / "vm1.pid").write_text("102")  # vm2's QEMU: its cmdline says so
    backend = host.backend()
    backend.read()
    assert backend.instances[VM1].pid == 101  # found by the scan of /proc/*/cmdline
    pids = QemuPids(str(host.proc), (str(host.run),))
    assert pids("vm2", 2) == 102 and pids("nope", 9) is None


def test_a_restarted_domain_is_rediscovered_with_its_new_process(host: FakeHost):
    backend = host.backend()
    backend.libvirt.read_only = False  # this test stops and starts domains on its private test driver
    backend.read()
    host.counters("vm1", 1, 101, cpu_ns=9 * 10**9, disk=0, net={})
    conn = backend.libvirt.get()
    dom = conn.lookupByName("vm1")
    dom.destroy()
    dom.create()  # a new ID: a new QEMU with new cgroups
    new_id = dom.ID()
    assert new_id != 1
    host.qemu("vm1", new_id, 201)
    host.counters("vm1", new_id, 201, cpu_ns=10**6, disk=0, net={})
    d = by_uuid(backend.read())
    assert backend.instances[VM1].pid == 201 and backend.instances[VM1].dom_id == new_id
    assert d[VM1].cpu_time_ns == 1e6  # the core sees a counter going back: a reset, no spike
    assert backend.info()["discovered"] == 4


def test_a_counter_that_vanishes_drops_the_domain_for_one_period(host: FakeHost):
    backend = host.backend()
    backend.read()
    (host.cg / "unified" / host.group("vm2", 2) / "cpu.stat").write_text("garbage\n")
    assert set(by_uuid(backend.read())) == {VM1, VM4}
    assert backend.info()["counter_gone"] == 1
    host.counters("vm2", 2, 102, cpu_ns=0, disk=0, net={})
    assert set(by_uuid(backend.read())) == {VM1, VM2, VM4}  # rediscovered


def test_a_stopped_domain_drops_out_and_its_files_are_closed(host: FakeHost):
    backend = host.backend()
    backend.libvirt.read_only = False  # this test stops and starts domains on its private test driver
    backend.read()
    fd = backend.instances[VM2].cpu.fd  # type: ignore[union-attr]
    backend.libvirt.get().lookupByName("vm2").destroy()
    assert set(by_uuid(backend.read())) == {VM1, VM4}
    with pytest.raises(OSError):
        os.fstat(fd)


def checked(backend: bk.KernelMonitorBackend) -> None:
    """One period that sends the due domains' cross-check to the worker, then the next, which takes it."""
    backend.read()
    job = backend._jobs.get(bk.CROSS_CHECK)
    assert job is not None  # off the period's path: the read did not wait for it
    job.result()
    backend.read()


def test_cross_check_counts_rates_that_disagree(host: FakeHost):
    backend = host.backend(crosscheck_periods=1)
    backend.read()  # first seen: read through libvirt, the checks' first point
    time.sleep(0.1)
    checked(backend)  # the kernel says 0 cores; the test driver's cpu time is the wall clock: 1 core
    info = backend.info()
    assert info["crosscheck_checks"] == 3
    assert info["crosscheck_disagreements_cpu"] == 3
    assert info["crosscheck_disagreements_net"] == 3  # 100 + 50 kB/s per NIC against 0


def test_cross_check_agrees_within_tolerance(host: FakeHost):
    backend = host.backend(crosscheck_periods=1, crosscheck_tolerance=0.1)
    backend.read()
    t0 = time.time_ns()
    time.sleep(0.2)
    for name, (dom_id, pid) in NAMES.items():  # one core since t0, as the test driver reports
        host.counters(name, dom_id, pid, cpu_ns=time.time_ns() - t0, disk=0, net={})
    checked(backend)
    assert backend.info()["crosscheck_checks"] == 3
    assert backend.info()["crosscheck_disagreements_cpu"] == 0


def test_a_slow_cross_check_does_not_hold_up_the_periods(host: FakeHost, monkeypatch):
    backend = host.backend(crosscheck_periods=1)
    backend.libvirt.read_only = False  # it stops a domain on its private test driver
    release = threading.Event()
    fetch = backend._fetch

    def stalled(kind, conn, insts):  # libvirtd and QEMU answering slowly
        assert release.wait(30)
        return fetch(kind, conn, insts)

    monkeypatch.setattr(backend, "_fetch", stalled)
    backend.read()
    for _ in range(3):  # the periods go on, with kernel counters, while the check waits
        assert set(by_uuid(backend.read())) == {VM1, VM2, VM4}
    job = backend._jobs[bk.CROSS_CHECK]
    assert not job.done()
    assert backend.info()["crosscheck_checks"] == 0
    backend.libvirt.get().lookupByName("vm2").destroy()  # stopped meanwhile: its answer is dropped
    release.set()
    job.result()
    assert set(by_uuid(backend.read())) == {VM1, VM4}
    assert backend.info()["crosscheck_checks"] == 2


def test_balloon_stats_are_spread_and_events_move_the_size(host: FakeHost, monkeypatch):
    backend = host.backend(balloon_stats_periods=4, crosscheck_periods=0)
    full: list[int] = []
    slices: list[int] = []
    bulk, fetch = backend._bulk, backend._fetch

    def counted_full(conn, insts, groups):
        full.append(len(insts))
        return bulk(conn, insts, groups)

    def counted_slice(kind, conn, insts):
        assert kind == bk.BALLOON_STATS  # cross-checks are off
        slices.append(len(insts))
        return fetch(kind, conn, insts)

    monkeypatch.setattr(backend, "_bulk", counted_full)
    monkeypatch.setattr(backend, "_fetch", counted_slice)
    backend.read()
    for inst in backend.instances.values():
        inst.memory = None  # forgotten: only a slice's answer brings it back
    for _ in range(8):
        backend.read()
        if bk.BALLOON_STATS in backend._jobs:
            backend._jobs[bk.BALLOON_STATS].result()  # the worker's answer, taken by the next read
    assert full[0] == 3 and sum(full[1:]) == 0  # no full reads after the first: no fallback, no check
    assert sum(slices) == 6  # 3 domains, each every 4th of 8 periods, in the worker
    assert all(inst.memory is not None for inst in backend.instances.values())  # each slice's answer was taken
    dom = backend.instances[VM1].dom
    backend._on_balloon(None, dom, 300 * 1024, None)  # libvirt's BALLOON_CHANGE event, in KiB
    assert by_uuid(backend.read())[VM1].mem_current_bytes == 300 * 2**20


def test_parsers():
    assert bk.parse_cpu_stat_usec(b"usage_usec 12\nuser_usec 3\n") == 12_000
    assert bk.parse_io_stat(b"8:0 rbytes=10 wbytes=5 rios=1 wios=1 dbytes=7 dios=1\n259:0 rbytes=1 wbytes=1\n") == 17
    assert bk.parse_proc_stat(b"7 (a b) c) R 1 1 1 0 -1 0 0 0 0 0 5 6 0 0 20 0\n") == 11 * bk.NS_PER_TICK
    table = bk.parse_net_dev(net_dev({"vnet0": (10, 20), "rcs-net0": (1, 2)}).encode())
    assert table == {"vnet0": 30.0, "rcs-net0": 3.0}


def test_a_domains_group_and_its_qemu_are_found_from_proc():
    assert domain_dir("/machine/qemu-1-a.libvirt-qemu/emulator") == "machine/qemu-1-a.libvirt-qemu"
    assert domain_dir("/machine.slice/machine-qemu\\x2d1\\x2da.scope/libvirt/vcpu0") == (
        "machine.slice/machine-qemu\\x2d1\\x2da.scope"
    )
    assert domain_dir("/") == ""
    v1, v2 = proc_cgroups("2:cpuacct:/\n1:cpu,cpuacct:/x/emulator\n0::/x/vcpu1\n")
    assert v1 == {"cpuacct": "x", "cpu": "x"} and v2 == "x"
    mounts = CgroupMounts({"cpu": Path("/cg/cpu"), "cpuacct": Path("/cg/cpu")}, Path("/cg/unified"))
    assert mounts.group_of("cpu", "1:cpu,cpuacct:/x/emulator\n0::/x/vcpu1\n") == ("v1", Path("/cg/cpu/x"))
    assert mounts.group_of("cpu", "1:cpu,cpuacct:/emulator\n") is None  # the root: the whole host's
    assert mounts.group_of("memory", "1:cpu,cpuacct:/x\n") is None  # not mounted
    assert is_qemu_of(b"qemu\0-name\0guest=a,,b,debug-threads=on\0", "a,b")
    assert not is_qemu_of(b"qemu\0-name\0guest=ab,debug-threads=on\0", "a")


def test_pread_all_reads_a_big_table(tmp_path: Path):
    big = tmp_path / "dev"
    devices = {f"vnet{i}": (i, i) for i in range(5000)}
    big.write_text(net_dev(devices))
    fd = os.open(big, os.O_RDONLY)
    try:
        assert len(bk.parse_net_dev(bk.pread_all(fd))) == 5000
    finally:
        os.close(fd)
