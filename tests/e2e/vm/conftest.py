"""Real VMs: tiny Debian-kernel guests under libvirt/QEMU (TCG), the real agent inside,
the real pipeline (deploy/supervisord-host.conf) managing them.

Root, libvirtd (started by tests/support/libvirtd.py if not running), QEMU and
the guest image (deploy/guest/build.sh, cached in /var/cache/rescoin-guest)
are needed. A libvirtd the suite starts runs in its own network namespace
(tests/conftest.py): QEMU, the streaming guest's tap, the sink and the whole
pipeline run there, the bus is on unix sockets so the test can watch it, and
nothing reaches the host's network (docs/DESIGN.md appendix A.11).
`deploy/install.sh --test` installs the packages. KVM is not used: /dev/kvm on
these machines is PVM and cannot boot a stock guest (checked and reported
below, so nobody spends time on it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import libvirt
import pytest
from rescoin.services.actuator.netshape import SharedLinkShaper
from rescoin.services.ingress.keys import add_guest, init_server
from rescoin.services.runtime.domxml import parse_domain_xml

from tests.e2e.conftest import BusWatcher, leftover_pids
from tests.e2e.vm.domains import GuestSpec, domain_xml
from tests.e2e.vm.timings import TIMINGS
from tests.support.bus import wait_for
from tests.support.need import missing
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
VENV_BIN = ROOT / ".venv" / "bin"
PERIOD_S = 1.0


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
        missing(reason)
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
    netns: str | None  # where libvirtd (so QEMU, the taps and the pipeline) runs; None: the host's
    guest_dir: Path  # the built guest image
    domains: dict[str, libvirt.virDomain] = field(default_factory=dict)
    sink_counts: Path | None = None  # "monotonic_s total_bytes", rewritten by tests/e2e/vm/sink.py
    unshaped_net_bps: float = 0.0  # the streamer's rate to the sink before ResCoin ran

    def dom(self, name: str) -> libvirt.virDomain:
        return self.domains[name]

    def spec(self, name: str) -> GuestSpec:
        return next(s for s in self.specs if s.name == name)

    def start(self, spec: GuestSpec) -> libvirt.virDomain:
        """Start (or start anew) ``spec``'s VM; a tap gets the sink's host side address again."""
        self.domains[spec.name] = self.conn.createXML(domain_xml(spec, self.guest_dir), 0)
        if spec.tap and self.netns:
            for cmd in (["addr", "add", f"{HOST_IP}/24", "dev", spec.tap], ["link", "set", spec.tap, "up"]):
                subprocess.run(["ip", "-n", self.netns, *cmd], check=True, capture_output=True)
        return self.domains[spec.name]

    def net_class(self, spec: GuestSpec) -> tuple[float, float] | None:
        """(rate, ceil) in bytes/s of ``spec``'s class in the actuator's shared htb tree, as tc shows it."""
        (mac,) = parse_domain_xml(self.dom(spec.name).XMLDesc(0)).macs  # its tap: libvirt sees no other NIC
        return SharedLinkShaper(netns=self.netns or "").class_of_mac(mac)

    def sink_total(self) -> tuple[float, int]:
        assert self.sink_counts is not None
        when, total = self.sink_counts.read_text().split()
        return float(when), int(total)

    def sink_rate(self, secs: float) -> float:
        """Bytes/s the sink received over the next ``secs`` (its own counter and clock)."""
        t0, n0 = self.sink_total()
        time.sleep(secs)
        t1, n1 = self.sink_total()
        return (n1 - n0) / (t1 - t0)


MEM_RESERVE = 64 * 2**20  # the default: the actuator adds the guest kernel's own memory (balloon stats)
SAVER_IDLE_S = 90  # the saver earns coins this long after boot (the pipeline is up 30-40 s after it), then burns
VM_PLAN = [  # name, mode, memory MiB, template: cpu cores, memory MiB, disk bytes/s; burn after s
    ("rc-saver", "burn,agent", 192, 0.3, 32, 2 * 2**20, SAVER_IDLE_S),
    ("rc-hog", "burn,disk,agent", 192, 0.3, 32, 1 * 2**20, 0),
    ("rc-liar", "agent", 128, 0.1, 32, 1 * 2**20, 0),  # its agent claims to be rc-saver
]
HONEST = 2  # the first VMs report as themselves
# with libvirtd in a namespace of ours: one more VM, streaming over a tap to a sink there (docs/DESIGN.md A.11)
STREAMER = ("rc-streamer", "net,agent", 128, 0.1, 32, 1 * 2**20, 0)
# every other VM's network template: small, because coins are normalized by capacity and one currency
# (docs/DESIGN.md §6.3): 40 kB/s unused of a 250 kB/s host would earn the hog nearly as many coins as the saver
NET_TEMPLATE_BPS = 1_000
STREAMER_NET_BPS = 100_000
HOST_NET_BPS = 250_000  # the host's network by configuration: the streamer alone contends for it
TAP, HOST_IP, GUEST_IP, SINK_PORT = "rcs-net0", "10.77.0.1", "10.77.0.2", 9000


def _start_sink(lab: Lab) -> subprocess.Popen:
    """The sink listens on the tap's host side (``Lab.start`` gave it the address), in libvirtd's namespace."""
    assert lab.netns
    lab.sink_counts = lab.tmp / "sink.count"
    in_netns = ["nsenter", f"--net=/run/netns/{lab.netns}", sys.executable, str(Path(__file__).parent / "sink.py")]
    sink = subprocess.Popen([*in_netns, HOST_IP, str(SINK_PORT), str(lab.sink_counts)])
    assert wait_for(lab.sink_counts.exists, 10, 0.1)
    return sink


@pytest.fixture(scope="module")
def lab(libvirtd, guest_image, tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("vmlab")
    print(f"KVM usable here: {kvm_usable()} (the tests use TCG either way)")
    keys = tmp / "keys"
    init_server(keys)
    conn = libvirt.open("qemu:///system")
    specs = []
    # a module may bring its own VMs (VM_PLAN), without the liar (LIAR = False) or the streamer (STREAMER = None),
    # and files for their read-only "keys" share (GUEST_FILES: name -> {file: text}, e.g. mode mem's ws_mib)
    plan = getattr(request.module, "VM_PLAN", VM_PLAN)
    streamer_plan = getattr(request.module, "STREAMER", STREAMER)
    guest_files = getattr(request.module, "GUEST_FILES", {})
    for name, mode, mem, cpu, tmem, disk, delay in plan + ([streamer_plan] if libvirtd.netns and streamer_plan else []):
        vm = str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.{tmp.name}.rescoin.test"))
        add_guest(keys, vm)
        guest_keys = tmp / f"{name}-keys"
        guest_keys.mkdir()
        shutil.copy(keys / "guests" / f"{vm}.key_secret", guest_keys / "agent.key_secret")
        shutil.copy(keys / "server.key", guest_keys / "server.key")
        for file, text in guest_files.get(name, {}).items():
            (guest_keys / file).write_text(text)
        image = tmp / f"{name}.img"
        with image.open("wb") as f:
            f.write(os.urandom(64 * 2**20))  # random, so reads are real reads
        console = tmp / f"{name}.console.log"
        if name == "rc-saver":  # a module may let it save for longer (its pipeline starts later)
            delay = getattr(request.module, "SAVER_IDLE_S", delay)
        specs.append(GuestSpec(name, vm, mode, mem, cpu, tmem, disk, delay, free_port(), image, guest_keys, console))
        specs[-1].template_net_bps = NET_TEMPLATE_BPS
    if getattr(request.module, "LIAR", True):
        specs[2].claim_uuid = specs[0].uuid
    if libvirtd.netns and streamer_plan:
        streamer = specs[-1]
        streamer.template_net_bps = STREAMER_NET_BPS
        streamer.tap, streamer.tap_ip, streamer.sink = TAP, f"{GUEST_IP}/24", f"{HOST_IP}:{SINK_PORT}"
    lab = Lab(conn, specs, keys, tmp, libvirtd.netns, guest_image)
    sink = None
    t0 = time.monotonic()
    try:
        for spec in specs:
            lab.start(spec)
        if lab.netns and streamer_plan:  # the sink is the streamer's
            sink = _start_sink(lab)

        booted_at = re.compile(r"RESCOIN-BOOTED .*uptime=([\d.]+)\s")  # the guest's own clock, the whole line

        def console(spec: GuestSpec) -> str:
            return spec.console_log.read_text(errors="replace") if spec.console_log.exists() else ""

        def booted() -> bool:  # the whole line: a console read mid-line has the tag but not the uptime yet
            return all(booted_at.search(console(s)) for s in specs)

        assert wait_for(booted, 120, 0.5), "\n".join(
            s.console_log.read_text(errors="replace")[-1500:] for s in specs if s.console_log.exists()
        )
        TIMINGS.append((f"{len(specs)} TCG guests booted", time.monotonic() - t0))
        uptimes = [float(booted_at.search(console(s)).group(1)) for s in specs]  # type: ignore[union-attr]
        TIMINGS.append(("slowest guest kernel to /init", max(uptimes)))
        if lab.netns and streamer_plan:
            assert wait_for(lambda: lab.sink_total()[1] > 0, 30, 0.2), "the streamer never reached the sink"
            lab.unshaped_net_bps = lab.sink_rate(3.0)
        yield lab
    finally:
        for dom in lab.domains.values():
            try:
                dom.destroy()
            except libvirt.libvirtError:
                pass
        if sink is not None:
            sink.kill()
            sink.wait()
        conn.close()


def host_mem_bytes() -> int:
    return int(Path("/proc/meminfo").read_text().split()[1]) * 1024


def host_config(
    lab: Lab,
    state: Path,
    enforcement: str,
    guest_mem_bytes: int = 80 * 2**20,
    scheduler_extra: str = "",
    monitor_extra: str = "",
) -> str:
    cores = os.cpu_count() or 1
    agents = ", ".join(f'"{s.uuid}" = "tcp://127.0.0.1:{s.agent_port}"' for s in lab.specs)
    return f"""
[host]
name = "vmhost"
period_s = {PERIOD_S}
state_dir = "{state}"
[bus]   # unix sockets: reachable from this test, outside the namespace the pipeline may run in
pub_endpoint = "ipc://{state}/bus-pub.sock"
sub_endpoint = "ipc://{state}/bus-sub.sock"
[ingress]
keys_dir = "{lab.keys}"
bind_endpoint = ""
agents = {{ {agents} }}
[monitor]
backend = "kernel"   # what deploy/host.toml runs; checked against libvirt's bulk call every 5 periods
uri = "qemu:///system"
crosscheck_periods = 5
{monitor_extra}
reserve_cores = {cores - 1}.0   # a host of one core: the two burning guests contend
reserve_mem_bytes = {host_mem_bytes() - guest_mem_bytes}.0   # 80 MiB by default: above Σ templates, below Σ use
disk_bps = {3 * 2**20}
net_bps = {HOST_NET_BPS}
[scheduler]
coin_window = 30
# test_real_vms.py measures quotas, balloons, throttles and tc ceilings (burstable-instance mode);
# test_real_vms_shares.py the default, kernel weights with no ceilings
enforcement = "{enforcement}"
{scheduler_extra}
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
    config: Path  # the host's rescoin.toml
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

    def set_scheduler(self, **settings: bool | float) -> None:
        """Set [scheduler] settings in the host's config and restart the scheduler (its ledger is kept)."""
        lines = self.config.read_text().splitlines()
        lines = [ln for ln in lines if ln.split("=")[0].strip() not in settings]
        at = lines.index("[scheduler]") + 1
        lines[at:at] = [f"{key} = {str(v).lower() if isinstance(v, bool) else v}" for key, v in settings.items()]
        self.config.write_text("\n".join(lines) + "\n")
        done = self.ctl("restart", "rescoin:scheduler")
        assert "started" in done.stdout, done.stdout + done.stderr

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-12:])
            for p in sorted((self.state / "logs").glob("*.log"))
        )


@pytest.fixture(scope="module")
def host_pipeline(lab, request):
    state = lab.tmp / "state"
    (state / "logs").mkdir(parents=True)
    config = lab.tmp / "rescoin.toml"
    config.write_text(
        host_config(
            lab,
            state,
            getattr(request.module, "ENFORCEMENT", "ceilings"),
            getattr(request.module, "GUEST_MEM_BYTES", 80 * 2**20),  # the host's memory for guests (C)
            getattr(request.module, "SCHEDULER_CONFIG", ""),  # more [scheduler] lines
            getattr(request.module, "MONITOR_CONFIG", ""),  # more [monitor] lines
        )
    )
    text = (DEPLOY / "supervisord-host.conf").read_text()
    text = text.replace("/var/lib/rescoin", str(state)).replace("/run/rescoin", str(state))
    text = text.replace("%(here)s/host.toml", str(config)).replace(
        "files = supervisor.d/", f"files = {DEPLOY}/supervisor.d/"
    )
    text = text.replace(" supervisor.d/host/", f" {DEPLOY}/supervisor.d/host/").replace("%(here)s", str(DEPLOY))
    text = text.replace('RESCOIN_USER="rescoin"', 'RESCOIN_USER="root"')  # the venv lives where rescoin cannot read
    conf = lab.tmp / "supervisord.conf"
    conf.write_text(text)
    sub = [ln for ln in config.read_text().splitlines() if ln.startswith("sub_endpoint")][0].split('"')[1]
    watcher = BusWatcher(sub)
    watcher.start()
    in_netns = ["nsenter", f"--net=/run/netns/{lab.netns}"] if lab.netns else []  # with QEMU and the taps
    proc = subprocess.Popen(
        [*in_netns, str(VENV_BIN / "supervisord"), "--nodaemon", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pipeline = HostPipeline(state, conf, config, watcher, proc)
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
