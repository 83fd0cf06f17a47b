"""The kernel-counter monitor backend on this machine's real cgroups, /proc and a veth pair (root).

Domains are discovered from libvirt's test driver (tests/fixtures/libvirt/host4.xml) with the
"QEMU pid" lookup injected: each domain is played by a real process of this test, placed in cgroups
laid out the way libvirt lays a domain out here (``<mount>/<parent>/qemu-<id>-<name>.libvirt-qemu``,
cpu and unified in its ``emulator`` sub-group):

* vm1: a CPU-bound process; the backend's rate agrees with /proc/<pid>/stat;
* vm2: a process reading a file with O_DIRECT; the backend's disk bytes grow by what it read;
* vm4-big: a process in a network namespace of this test holding one end (named ``testnet0``, as the
  test driver names vm4's first NIC) of a veth pair to a second namespace; UDP traffic between the
  two namespaces shows up as its net bytes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rescoin.services.monitor.backend_kernel import KernelMonitorBackend
from rescoin.services.runtime.cgroups import cgroup_mounts

from tests.support.machine import machine_lacks
from tests.support.need import missing

pytestmark = pytest.mark.root

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "libvirt" / "host4.xml"
URI = f"test://{FIXTURE}"
VM1, VM2, VM4 = (f"{d * 8}-{d * 4}-{d * 4}-{d * 4}-{d * 12}" for d in "124")
IDS = {"vm1": 1, "vm2": 2, "vm4-big": 3}  # the test driver's domain IDs
MIB = 2**20
BUSY = "import sys\nsys.stdout.write('up\\n'); sys.stdout.flush()\nwhile True: pass\n"
READER = """
import mmap, os, sys
path, size = sys.argv[1], int(sys.argv[2])
buf = mmap.mmap(-1, 1 << 20)
sys.stdout.write('up\\n'); sys.stdout.flush()
for line in sys.stdin:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    done = 0
    while done < size:
        done += os.preadv(fd, [buf], done)
    os.close(fd)
    sys.stdout.write(f'{done}\\n'); sys.stdout.flush()
"""


def proc_cpu_ns(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1e9 / os.sysconf("SC_CLK_TCK")


class Lab:
    """This test's cgroups, processes and namespaces; ``close()`` removes every one of them."""

    def __init__(self) -> None:
        self.mounts = cgroup_mounts()
        self.parent = f"rescoin-kt-{os.getpid()}"
        self.dirs: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        self.netns: list[str] = []

    def group_dirs(self, name: str) -> dict[str, Path]:
        """The domain's group per controller (cpu, cpuacct, blkio, unified) and where its process goes."""
        group = f"{self.parent}/qemu-{IDS[name]}-{name}.libvirt-qemu"
        out = {}
        for controller in ("cpu", "blkio"):
            if controller in self.mounts.v1:
                out[controller] = self.mounts.v1[controller] / group / ("emulator" if controller == "cpu" else "")
        if self.mounts.v2 is not None:
            out["unified"] = self.mounts.v2 / group / "emulator"
        return out

    def place(self, name: str, pid: int) -> dict[str, Path]:
        dirs = self.group_dirs(name)
        for leaf in dirs.values():
            for d in reversed([leaf, *leaf.parents]):
                if d in self.mounts.v1.values() or d == self.mounts.v2 or d.exists():
                    continue
                d.mkdir()
                self.dirs.append(d)
            with open(leaf / "cgroup.procs", "w") as f:
                f.write(str(pid))
        return dirs

    def start(self, argv: list[str], **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **kw)
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        return proc

    def ns(self, name: str) -> str:
        full = f"rescoin-kt-{os.getpid()}-{name}"
        subprocess.run(["ip", "netns", "add", full], check=True, capture_output=True)
        self.netns.append(full)
        subprocess.run(["ip", "-n", full, "link", "set", "lo", "up"], check=True, capture_output=True)
        return full

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        for d in reversed(self.dirs):  # children first
            for _ in range(50):  # a killed process leaves its group asynchronously
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.05)
        for ns in self.netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lab():
    if os.geteuid() != 0:
        missing("needs root to create cgroups and network namespaces")
    mounts = cgroup_mounts()
    if not all(c in mounts.v1 for c in ("cpu", "blkio")):
        machine_lacks("no_cgroup_v1")
    lab = Lab()
    try:
        yield lab
    finally:
        lab.close()


def backend_with(pids: dict[str, int], **kw) -> KernelMonitorBackend:
    return KernelMonitorBackend(URI, pid_of=lambda name, _id: pids.get(name), **kw)


def test_cpu_rate_of_a_busy_domain_agrees_with_proc(lab: Lab):
    busy = lab.start([sys.executable, "-c", BUSY])
    lab.place("vm1", busy.pid)
    idle = lab.start([sys.executable, "-c", "import sys,time\nprint('up',flush=True)\ntime.sleep(600)"])
    lab.place("vm2", idle.pid)
    backend = backend_with({"vm1": busy.pid, "vm2": idle.pid})
    first = {d.uuid: d for d in backend.read().domains}
    t0, p0 = backend.ts_ns, proc_cpu_ns(busy.pid)
    time.sleep(1.0)
    second = {d.uuid: d for d in backend.read().domains}
    t1, p1 = backend.ts_ns, proc_cpu_ns(busy.pid)
    dt = (t1 - t0) / 1e9
    rate = (second[VM1].cpu_time_ns - first[VM1].cpu_time_ns) / 1e9 / dt  # type: ignore[operator]
    assert rate == pytest.approx((p1 - p0) / 1e9 / dt, abs=0.05)  # /proc ticks: 10 ms resolution
    assert rate > 0.3  # it did burn (2 shared cores: not necessarily a whole one)
    idle_rate = (second[VM2].cpu_time_ns - first[VM2].cpu_time_ns) / 1e9 / dt  # type: ignore[operator]
    assert idle_rate < 0.02
    expected = "cgroup2" if lab.mounts.v2 is not None else "clock"  # cpuacct: this lab leaves QEMU at its root
    assert backend.instances[VM1].sources().startswith(f"cpu:{expected},")
    assert backend.instances[VM4].sources() == "libvirt"  # no process: libvirt's bulk call


def test_the_process_cpu_clock_agrees_with_the_cgroup(lab: Lab):
    if lab.mounts.v2 is None:
        machine_lacks("no_cgroup2", "only the process clock to compare with")
    busy = lab.start([sys.executable, "-c", BUSY])
    dirs = lab.place("vm1", busy.pid)
    group = dirs["unified"].parent / "cpu.stat"
    clock = ((~busy.pid) << 3) | 2

    def usage() -> float:
        return float(group.read_text().split()[1]) * 1e3

    u0, c0 = usage(), time.clock_gettime_ns(clock)
    time.sleep(0.5)
    u1, c1 = usage(), time.clock_gettime_ns(clock)
    assert (u1 - u0) == pytest.approx(c1 - c0, rel=0.02, abs=5e6)


def test_disk_bytes_of_an_o_direct_reader(lab: Lab, tmp_path: Path):
    path = Path("/var/tmp") / f"rescoin-kt-{os.getpid()}.img"
    size = 16 * MIB
    try:
        with open(path, "wb") as f:
            f.write(os.urandom(size))
            f.flush()
            os.fsync(f.fileno())
        reader = lab.start([sys.executable, "-c", READER, str(path), str(size)])
        dirs = lab.place("vm2", reader.pid)
        backend = backend_with({"vm2": reader.pid})
        before = {d.uuid: d for d in backend.read().domains}[VM2].disk_bytes
        assert reader.stdin is not None and reader.stdout is not None
        reader.stdin.write("go\n")
        reader.stdin.flush()
        assert int(reader.stdout.readline()) == size
        after = {d.uuid: d for d in backend.read().domains}[VM2].disk_bytes
        assert after - before == pytest.approx(size, rel=0.05)  # type: ignore[operator]
        assert backend.instances[VM2].sources().split(",")[1] in ("disk:proc", "disk:cgroup2")
        blkio = (dirs["blkio"] / "blkio.throttle.io_service_bytes_recursive").read_text().split()
        print("v1 blkio.throttle.io_service_bytes_recursive after the read:", " ".join(blkio))
    finally:
        path.unlink(missing_ok=True)


def test_net_bytes_on_a_veth_pair_between_two_namespaces(lab: Lab):
    a, b = lab.ns("a"), lab.ns("b")
    subprocess.run(["ip", "-n", a, "link", "add", "testnet0", "type", "veth", "peer", "name", "rckt-peer", "netns", b],
                   check=True, capture_output=True)  # fmt: skip
    for ns, dev, addr in ((a, "testnet0", "10.231.0.1/30"), (b, "rckt-peer", "10.231.0.2/30")):
        subprocess.run(["ip", "-n", ns, "addr", "add", addr, "dev", dev], check=True, capture_output=True)
        subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True, capture_output=True)
    sleeper = "import time\nprint('up', flush=True)\ntime.sleep(600)"
    qemu = lab.start(["ip", "netns", "exec", a, sys.executable, "-c", sleeper])
    backend = backend_with({"vm4-big": qemu.pid})
    before = {d.uuid: d for d in backend.read().domains}[VM4].net_bytes
    send = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n" + (
        "for _ in range(1000): s.sendto(b'x' * 1000, ('10.231.0.2', 9))\n"
    )
    subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", send], check=True, timeout=30)
    after = {d.uuid: d for d in backend.read().domains}[VM4].net_bytes
    sent = after - before  # type: ignore[operator]
    assert 1_000_000 <= sent <= 1_200_000  # payload plus UDP/IP/Ethernet headers, maybe a neighbour probe
    assert backend.instances[VM4].sources().endswith("net:proc")


def test_cgroup2_io_stat_where_the_io_controller_is_on(lab: Lab):
    if "io" not in lab.mounts.v2_controllers():
        machine_lacks("no_v2_controller", f"io at {lab.mounts.v2} ({lab.mounts.layout()}); disk bytes from /proc")
    reader = lab.start([sys.executable, "-c", READER, "/dev/null", "0"])
    leaf = lab.group_dirs("vm2")["unified"]
    for parent in reversed(leaf.parents):  # io.stat exists where the parent enabled the io controller
        if parent == lab.mounts.v2 or lab.mounts.v2 in parent.parents:
            parent.mkdir(exist_ok=True)
            if parent != lab.mounts.v2 and parent not in lab.dirs:
                lab.dirs.append(parent)
            (parent / "cgroup.subtree_control").write_text("+io")
    lab.place("vm2", reader.pid)
    backend = backend_with({"vm2": reader.pid})
    backend.read()
    assert backend.instances[VM2].sources().split(",")[1] == "disk:cgroup2"
