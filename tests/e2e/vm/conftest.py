"""Real VMs: tiny Debian-kernel guests under libvirt/QEMU (TCG), the real agent inside,
the real pipeline (deploy/supervisord-host.conf) managing them.

Root, libvirtd (started by tests/support/libvirtd.py if not running), QEMU and
the guest image (deploy/guest/build.sh, cached in /var/cache/rescoin-guest)
are needed; `deploy/install.sh --test` installs the packages. KVM is not used:
/dev/kvm on these machines is PVM and cannot boot a stock guest (checked and
reported below, so nobody spends time on it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest
from rescoin.services.ingress.keys import add_guest, init_server

from tests.e2e.conftest import BusWatcher, leftover_pids
from tests.e2e.vm.domains import GuestSpec, domain_xml
from tests.support.bus import wait_for
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
VENV_BIN = ROOT / ".venv" / "bin"
PERIOD_S = 1.0
TIMINGS: list[tuple[str, float]] = []


def kvm_usable() -> bool:
    """KVM only with real VT-x/AMD-V; the kvm_pvm module here cannot boot stock guests."""
    flags = Path("/proc/cpuinfo").read_text()
    return (
        Path("/dev/kvm").exists() and not Path("/sys/module/kvm_pvm").exists() and (" vmx" in flags or " svm" in flags)
    )


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "real-VM tests need root (libvirtd, cgroups)"
    for tool in ("qemu-system-x86_64", "libvirtd", "busybox", "debootstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (deploy/install.sh --test installs it)"
    return None


@pytest.fixture(scope="session")
def guest_image() -> Path:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    out = subprocess.run([str(DEPLOY / "guest" / "build.sh")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    TIMINGS.append(("guest image (build or cache)", time.monotonic() - t0))
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass
class Lab:
    conn: libvirt.virConnect
    specs: list[GuestSpec]
    keys: Path
    tmp: Path
    domains: dict[str, libvirt.virDomain] = field(default_factory=dict)

    def dom(self, name: str) -> libvirt.virDomain:
        return self.domains[name]


MEM_RESERVE = 96 * 2**20  # the guest kernel's own ~40 MiB are not in MemTotal: keep a wide margin
SAVER_IDLE_S = 50  # the saver earns coins this long after boot, then burns too
VM_PLAN = [  # name, mode, memory MiB, template: cpu cores, memory MiB, disk bytes/s; burn after s
    ("rc-saver", "burn,agent", 192, 0.3, 32, 2 * 2**20, SAVER_IDLE_S),
    ("rc-hog", "burn,disk,agent", 192, 0.3, 32, 1 * 2**20, 0),
    ("rc-liar", "agent", 128, 0.1, 32, 1 * 2**20, 0),  # its agent claims to be rc-saver
]
HONEST = 2  # the first VMs report as themselves


@pytest.fixture(scope="module")
def lab(libvirtd, guest_image, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vmlab")
    print(f"KVM usable here: {kvm_usable()} (the tests use TCG either way)")
    keys = tmp / "keys"
    init_server(keys)
    conn = libvirt.open("qemu:///system")
    specs = []
    for name, mode, mem, cpu, tmem, disk, delay in VM_PLAN:
        vm = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.{tmp.name}.rescoin.test"))
        add_guest(keys, vm)
        guest_keys = tmp / f"{name}-keys"
        guest_keys.mkdir()
        shutil.copy(keys / "guests" / f"{vm}.key_secret", guest_keys / "agent.key_secret")
        shutil.copy(keys / "server.key", guest_keys / "server.key")
        image = tmp / f"{name}.img"
        with image.open("wb") as f:
            f.write(os.urandom(64 * 2**20))  # random, so reads are real reads
        specs.append(
            GuestSpec(
                name, vm, mode, mem, cpu, tmem, disk, delay, free_port(), image, guest_keys, tmp / f"{name}.console.log"
            )
        )
    specs[2].claim_uuid = specs[0].uuid
    lab = Lab(conn, specs, keys, tmp)
    t0 = time.monotonic()
    try:
        for spec in specs:
            lab.domains[spec.name] = conn.createXML(domain_xml(spec, guest_image), 0)

        def booted() -> bool:
            logs = [s.console_log.read_text(errors="replace") if s.console_log.exists() else "" for s in specs]
            return all("RESCOIN-BOOTED" in log for log in logs)

        assert wait_for(booted, 120, 0.5), "\n".join(
            s.console_log.read_text(errors="replace")[-1500:] for s in specs if s.console_log.exists()
        )
        TIMINGS.append((f"{len(specs)} TCG guests booted", time.monotonic() - t0))
        yield lab
    finally:
        for dom in lab.domains.values():
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
        conn.close()


def host_mem_bytes() -> int:
    return int(Path("/proc/meminfo").read_text().split()[1]) * 1024


def host_config(lab: Lab, state: Path) -> str:
    cores = os.cpu_count() or 1
    agents = ", ".join(f'"{s.uuid}" = "tcp://127.0.0.1:{s.agent_port}"' for s in lab.specs)
    return f"""
[host]
name = "vmhost"
period_s = {PERIOD_S}
state_dir = "{state}"
[bus]
pub_endpoint = "tcp://127.0.0.1:{free_port()}"
sub_endpoint = "tcp://127.0.0.1:{free_port()}"
[ingress]
keys_dir = "{lab.keys}"
bind_endpoint = ""
agents = {{ {agents} }}
[monitor]
backend = "libvirt"
uri = "qemu:///system"
reserve_cores = {cores - 1}.0   # a host of one core: the two burning guests contend
reserve_mem_bytes = {host_mem_bytes() - 80 * 2**20}.0   # 80 MiB: above Σ templates, below Σ use
disk_bps = {3 * 2**20}
[scheduler]
coin_window = 30
[actuator]
backend = "libvirt"
uri = "qemu:///system"
stale_periods = 3
mem_reserve_bytes = {MEM_RESERVE}
[exporter]
listen_port = {free_port()}
"""


@dataclass
class HostPipeline:
    state: Path
    conf: Path
    watcher: BusWatcher
    proc: subprocess.Popen

    def ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(self.conf), *args], capture_output=True, text=True, timeout=60
        )

    def pid(self, program: str) -> int:
        for line in self.ctl("status").stdout.splitlines():
            parts = line.split()
            if parts and parts[0] == f"rescoin:{program}" and parts[1] == "RUNNING":
                return int(parts[3].rstrip(","))
        return 0

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-12:])
            for p in sorted((self.state / "logs").glob("*.log"))
        )


@pytest.fixture(scope="module")
def host_pipeline(lab):
    state = lab.tmp / "state"
    (state / "logs").mkdir(parents=True)
    config = lab.tmp / "rescoin.toml"
    config.write_text(host_config(lab, state))
    text = (DEPLOY / "supervisord-host.conf").read_text()
    text = text.replace("/var/lib/rescoin", str(state)).replace("/run/rescoin", str(state))
    text = text.replace("%(here)s/host.toml", str(config)).replace(
        "files = supervisor.d/", f"files = {DEPLOY}/supervisor.d/"
    )
    text = text.replace(" supervisor.d/host/", f" {DEPLOY}/supervisor.d/host/").replace("%(here)s", str(DEPLOY))
    conf = lab.tmp / "supervisord.conf"
    conf.write_text(text)
    sub = [ln for ln in config.read_text().splitlines() if ln.startswith("sub_endpoint")][0].split('"')[1]
    watcher = BusWatcher(sub)
    watcher.start()
    proc = subprocess.Popen(
        [str(VENV_BIN / "supervisord"), "--nodaemon", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pipeline = HostPipeline(state, conf, watcher, proc)
    try:
        yield pipeline
    finally:
        pipeline.ctl("stop", "all")
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        watcher.stop()
        for pid in leftover_pids(state):
            os.kill(pid, 9)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line("real-VM timings: " + ", ".join(f"{what} {secs:.1f} s" for what, secs in TIMINGS))
