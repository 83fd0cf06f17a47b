"""The cost on a real libvirt host: N QEMU/TCG domains (the real-VM suite's tiny guests, each with a
disk, a tap and a balloon with stats), N = 10, 25, 50, 100.

Each guest boots (in batches of BOOT_BATCH, so boots do not starve each other) and is then *paused*:
an idle TCG guest costs ~0.17 of a core here (10 running idle guests took 1.7 of the 2 cores, and at 25
libvirt's own calls slowed 15-fold), so running guests would measure this machine's CPU starvation, not
libvirt. A paused guest keeps its QEMU, its monitor socket, its cgroups, disk, tap and balloon, so every
call below does the same work it does for a running guest, minus the guest's own latency in answering.
The first 6 guests (one boot batch, RUNNING) are measured running, idle, first, and then paused.

Per N: the monitor's one bulk call (getAllDomainStats with the monitor's groups, over active domains,
the paused included) and each stats group alone, against the kernel-counter monitor; the actuator
(ActuatorCore + the libvirt backend with its defaults, cpu written to the cgroups directly, tc shaping
of the taps) per alloc in `shares` and `ceilings` mode, steady (nothing moves) and when every setting
of every VM changes, with its libvirt and tc calls counted and the CPU it costs this process, libvirtd
and the QEMUs, and at the largest N by `workers`; the CPU
of this process (monitor + actuator) and of libvirtd per simulated 1 s period, with either monitor. A
monitor read or an apply is timed 0.2 s after the last one ended, as a period apart: what the last left
to its workers (the monitor's slow calls, the actuator's metadata writes) has ended. Run as root; it starts its own libvirtd in a
network namespace (tests/support/libvirtd.py) and re-runs itself inside it, where the taps are.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import libvirt  # noqa: E402
from bench_actuator import Driver  # noqa: E402
from common import machine, timed, write_section  # noqa: E402
from rescoin.proto import Envelope  # noqa: E402
from rescoin.proto.messages import Alloc  # noqa: E402
from rescoin.services.actuator.backend_libvirt import LibvirtActuatorBackend  # noqa: E402
from rescoin.services.actuator.core import ActuatorCore  # noqa: E402
from rescoin.services.actuator.settings import ActuatorSettings  # noqa: E402
from rescoin.services.model.enforcement import ceilings, template_shares  # noqa: E402
from rescoin.services.monitor.backend_kernel import KernelMonitorBackend  # noqa: E402
from rescoin.services.monitor.backend_libvirt import STATS  # noqa: E402
from rescoin.services.runtime.support import Counters  # noqa: E402

from tests.e2e.vm.domains import GuestSpec, domain_xml  # noqa: E402
from tests.support import libvirtd as libvirtd_support  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.proc import cpu_seconds as cpu_s  # noqa: E402

NETNS = "rescoin-bench"
SIZES = (10, 25, 50, 100)
SIZES_RUN = list(SIZES)  # what this run measures (the command line may ask for fewer)
WORKER_SWEEP = (4, 8, 16, 32)  # [actuator] workers tried at the largest N
GAP_S = 0.2  # before each period-like call timed: what the last one left to its workers (the monitor's
# slow calls, the actuator's metadata writes) ends first, as it does a period apart
RUNNING = 6  # the first guests, measured running (their balloons follow) and then paused: one boot batch
PERIODS = 20  # simulated 1 s periods for the CPU figures
GUEST_MIB = 96  # Debian's kernel does not boot in 64
BOOT_BATCH = 6
BOOT_WAIT_S = 420  # a batch of TCG guests beside 30+ paused ones once took longer than 180 s here
MIB = 2**20
STAT_GROUPS = {
    "state": libvirt.VIR_DOMAIN_STATS_STATE,
    "cpu": libvirt.VIR_DOMAIN_STATS_CPU_TOTAL,
    "balloon": libvirt.VIR_DOMAIN_STATS_BALLOON,
    "vcpu": libvirt.VIR_DOMAIN_STATS_VCPU,
    "interface": libvirt.VIR_DOMAIN_STATS_INTERFACE,
    "block": libvirt.VIR_DOMAIN_STATS_BLOCK,
}


class Calls:
    """Counts the libvirt domain calls and tc/ip runs the actuator makes (wrapping, not changing, them)."""

    def __init__(self) -> None:
        self.libvirt = 0
        self.commands = 0
        run = subprocess.run

        def counted_run(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.commands += 1
            return run(*args, **kwargs)

        subprocess.run = counted_run  # type: ignore[assignment]
        for name in ("setSchedulerParametersFlags", "setMemoryFlags", "setBlkioParameters", "setBlockIoTune",
                     "schedulerParameters", "info", "blockIoTune", "blkioParameters", "XMLDesc"):  # fmt: skip
            original = getattr(libvirt.virDomain, name)

            def counted(dom, *a, _original=original, **k):  # type: ignore[no-untyped-def]
                self.libvirt += 1
                return _original(dom, *a, **k)

            setattr(libvirt.virDomain, name, counted)


def alloc(vms: list[str], scale: float, mode: str) -> Alloc:
    """A contended host of 1 core and 1 GiB per VM: allocations ``scale`` × template."""
    n = len(vms)
    template = np.tile([0.2, 64.0 * MIB, 1e6, 125e3], (n, 1))  # as each domain's metadata states it
    usage = template * 0.5
    capacity = template.sum(axis=0) * 1.6
    allocation = template * scale
    ceiling = ceilings(allocation, template, usage, 8 * MIB, np.zeros(4, bool))
    every_other = 1.0 + (scale - 1.0) * (np.arange(n) % 2)[:, None]
    return Alloc(vms, allocation, np.zeros((n, 4)), template, usage, capacity,
                 template_shares(template * every_other, capacity), np.where(np.isinf(ceiling), -1.0, ceiling),
                 mode, ["contended"] * 4, "rescoin", "estimate")  # fmt: skip


def start_guests(
    conn: libvirt.virConnect, tmp: Path, guest_dir: Path, first: int, last: int, pause: bool = True
) -> None:
    """Boot guests ``first``..``last`` - 1, BOOT_BATCH at a time, pausing each batch once it has booted."""
    for start in range(first, last, BOOT_BATCH):
        end = min(start + BOOT_BATCH, last)
        doms = [define_and_start(conn, tmp, guest_dir, i) for i in range(start, end)]
        t0 = time.monotonic()
        while not booted(tmp, end):
            if time.monotonic() - t0 > BOOT_WAIT_S:
                raise SystemExit(f"guests {start}..{end - 1} did not boot in {BOOT_WAIT_S} s (see {tmp})")
            time.sleep(1)
        time.sleep(3)  # the balloon driver and its stats period are up
        for dom in doms if pause else ():
            dom.suspend()


def define_and_start(conn: libvirt.virConnect, tmp: Path, guest_dir: Path, i: int) -> libvirt.virDomain:
    keys = tmp / "keys"
    keys.mkdir(exist_ok=True)
    name = f"rcbench-{i:03d}"
    disk = tmp / f"{name}.img"
    with disk.open("wb") as f:
        f.truncate(8 * MIB)
    spec = GuestSpec(name, str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{name}.bench")), "", GUEST_MIB, 0.2, 64, 1e6,
                     0, free_port(), disk, keys, tmp / f"{name}.console.log", tap=f"rcbt{i}")  # fmt: skip
    dom = conn.createXML(domain_xml(spec, guest_dir), 0)
    subprocess.run(["ip", "link", "set", spec.tap, "up"], check=True, capture_output=True)
    return dom


def booted(tmp: Path, count: int) -> bool:
    logs = sorted(tmp.glob("rcbench-*.console.log"))
    return len(logs) >= count and all("RESCOIN-BOOTED" in p.read_text(errors="replace") for p in logs)


def actuator(**settings: Any) -> ActuatorCore:
    """The actuator as a host runs it (its defaults: cpu written to the cgroups directly), on qemu:///system."""
    chosen = ActuatorSettings(uri="qemu:///system", **settings)
    return ActuatorCore("bench", chosen, LibvirtActuatorBackend(chosen), Counters(), None)


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_s(p) for p in pids)


def own_cpu() -> float:
    """This process's CPU and its waited-for children's (the tc runs)."""
    return sum(os.times()[:4])


def measure(conn: libvirt.virConnect, n: int, libvirtd_pid: int, qemu_pids: list[int]) -> dict[str, float]:
    doms = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    vms = sorted(d.UUIDString() for d in doms)
    out: dict[str, float] = {}
    active = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE  # the monitor asks for RUNNING: these are paused
    for group, flag in STAT_GROUPS.items():
        out[f"group.{group}"] = timed(lambda flag=flag: conn.getAllDomainStats(flag, active), repeat=10)[0]
    out["bulk"] = timed(lambda: conn.getAllDomainStats(STATS, active), repeat=10)[0]
    # the kernel-counter monitor on the same domains: discovery once, then one period's read (its defaults:
    # balloon stats for 1/k of the domains, a libvirt cross-check spread over crosscheck_periods), and the
    # counters alone (no libvirt call at all in the period)
    kernel = KernelMonitorBackend("qemu:///system")
    t0 = time.perf_counter()
    kernel.read()
    out["kernel.discovery"] = time.perf_counter() - t0
    out["kernel"] = timed(kernel.read, repeat=30, warmup=1, gap_s=GAP_S)[0]
    kernel.close()
    counters_only = KernelMonitorBackend("qemu:///system", balloon_stats_periods=10**9, crosscheck_periods=0)
    counters_only.read()
    out["kernel.counters"] = timed(counters_only.read, repeat=30, warmup=1, gap_s=GAP_S)[0]
    out["kernel.found"] = sum(1 for inst in counters_only.instances.values() if inst.kernel)
    counters_only.close()
    calls = Calls()
    for mode in ("shares", "ceilings"):
        core = actuator()
        driver = Driver(core, (alloc(vms, 1.0, mode), alloc(vms, 1.5, mode)))
        driver.steady()  # first sight: reads, originals, the shared htb tree
        before = (calls.libvirt, calls.commands)
        out[f"{mode}.steady"] = timed(driver.steady, repeat=10, gap_s=GAP_S)[0]
        out[f"{mode}.steady_calls"] = (calls.libvirt - before[0] + calls.commands - before[1]) / 12
        before = (calls.libvirt, calls.commands)
        # the CPU a full rewrite costs every process it touches: what bounds it on this machine's cores
        # (the pipeline's own: this process and the tc runs it waited for)
        processes: dict[str, Callable[[], float]] = {
            "pipeline": own_cpu,
            "libvirtd": lambda: cpu_s(libvirtd_pid),
            "qemu": lambda: cpu_of(qemu_pids),
        }
        cpu_before = {name: cpu() for name, cpu in processes.items()}
        out[f"{mode}.change"] = timed(driver.changing, repeat=6, warmup=1, gap_s=GAP_S)[0]
        for name, cpu in processes.items():
            out[f"{mode}.change_cpu.{name}"] = (cpu() - cpu_before[name]) / 7
        out[f"{mode}.change_cpu"] = sum(out[f"{mode}.change_cpu.{name}"] for name in processes)
        out[f"{mode}.change_libvirt"] = (calls.libvirt - before[0]) / 7
        out[f"{mode}.change_tc"] = (calls.commands - before[1]) / 7
        core.restore()
        core.backend.close()
    for workers in WORKER_SWEEP if n == max(SIZES_RUN) else ():  # libvirt calls at once, every setting changing
        core = actuator(workers=workers)
        driver = Driver(core, (alloc(vms, 1.0, "shares"), alloc(vms, 1.5, "shares")))
        driver.steady()
        out[f"workers.{workers}"] = timed(driver.changing, repeat=6, warmup=1, gap_s=GAP_S)[0]
        core.restore()
        core.backend.close()
    # simulated 1 s periods: a monitor read + a steady shares apply, CPU of this process and of libvirtd,
    # with each monitor: libvirt's bulk call (0.2's) and the kernel counters (the default, with its defaults)
    body = alloc(vms, 1.0, "shares")
    kernel = KernelMonitorBackend("qemu:///system")
    kernel.read()  # discovery, once
    for name, monitor_read in (("bulk", lambda: conn.getAllDomainStats(STATS, active)), ("kernel", kernel.read)):
        core = actuator()
        core.on_alloc(Envelope("alloc", "bench", "scheduler", 1, 1, 0, 1, body))
        mine, theirs, wall = cpu_s(os.getpid()), cpu_s(libvirtd_pid), time.monotonic()
        for p in range(PERIODS):
            t0 = time.monotonic()
            monitor_read()
            core.on_alloc(Envelope("alloc", "bench", "scheduler", 1, p + 2, 0, p + 2, body))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
        elapsed = time.monotonic() - wall
        out[f"cpu.pipeline.{name}"] = (cpu_s(os.getpid()) - mine) / elapsed
        out[f"cpu.libvirtd.{name}"] = (cpu_s(libvirtd_pid) - theirs) / elapsed
        core.restore()
        core.backend.close()
    kernel.close()
    return out


def inside(sizes: tuple[int, ...]) -> None:
    """In libvirtd's network namespace: boot the guests in steps and measure at each size."""
    conn = libvirt.open("qemu:///system")
    libvirtd_pid = int(Path("/run/libvirtd.pid").read_text())
    guest_dir = Path(
        subprocess.run([str(ROOT / "deploy" / "guest" / "build.sh")], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[-1]
    )
    tmp = Path(tempfile.mkdtemp(prefix="rescoin-bench-"))
    results: dict[int, dict[str, float]] = {}
    both: dict[str, dict[str, float]] = {}  # the first RUNNING guests, running and then paused
    # each QEMU with aio=native reserves ~1,024 kernel AIO events: Debian's default fs.aio-max-nr (65,536)
    # stops the 65th domain ("failed to create linux AIO context"); raised for the run, put back after
    aio_max = Path("/proc/sys/fs/aio-max-nr")
    aio_before = aio_max.read_text().strip()
    aio_max.write_text(str(max(int(aio_before), 1024 * 1024)))
    try:
        started = 0
        if RUNNING <= min(sizes):
            start_guests(conn, tmp, guest_dir, 0, RUNNING, pause=False)
            started = RUNNING
            for state in ("running", "paused"):
                time.sleep(5)
                both[state] = measure(conn, RUNNING, libvirtd_pid, qemu_pids())
                print(state, {k: round(v, 5) for k, v in both[state].items()}, flush=True)
                for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING):
                    dom.suspend()
        for n in sizes:
            start_guests(conn, tmp, guest_dir, started, n)
            started = n
            time.sleep(5)
            qemu = qemu_pids()
            q0, w0 = cpu_of(qemu), time.monotonic()
            results[n] = measure(conn, n, libvirtd_pid, qemu)
            results[n]["cpu.guests"] = (cpu_of(qemu) - q0) / (time.monotonic() - w0)
            print(n, {k: round(v, 5) for k, v in results[n].items()}, flush=True)
    finally:
        for dom in conn.listAllDomains():
            if dom.name().startswith("rcbench-"):
                dom.destroy()
        conn.close()
        shutil.rmtree(tmp, ignore_errors=True)
        aio_max.write_text(aio_before)
    report(results, both)


def qemu_pids() -> list[int]:
    return [
        int(p) for p in subprocess.run(["pgrep", "-f", "qemu-system"], capture_output=True, text=True).stdout.split()
    ]


def report(results: dict[int, dict[str, float]], both: dict[str, dict[str, float]]) -> None:
    def ms(x: float) -> str:
        return f"{x * 1e3:.1f}"

    kernel_rows = [
        "| domains | bulk stats call (ms) | kernel counters, one period (ms) | counters alone (ms) | "
        "× faster (counters) | discovery, once (ms) | domains read from kernel files |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n, r in results.items():
        kernel_rows.append(
            f"| {n} | {ms(r['bulk'])} | {ms(r['kernel'])} | {ms(r['kernel.counters'])} | "
            f"{r['bulk'] / r['kernel.counters']:.0f} | {ms(r['kernel.discovery'])} | {r['kernel.found']:.0f} |"
        )
    rows = [
        "| domains | monitor's bulk stats call (ms) | shares: steady / all change (ms) | libvirt + tc calls "
        "all change | ceilings: steady / all change (ms) | monitor + actuator CPU, 1 s period: bulk call / kernel "
        "counters | libvirtd CPU: bulk call / kernel counters | paused guests' CPU |",
        "| ---: | ---: | --- | ---: | --- | --- | --- | ---: |",
    ]
    for n, r in results.items():
        rows.append(
            f"| {n} | {ms(r['bulk'])} | {ms(r['shares.steady'])} / {ms(r['shares.change'])} | "
            f"{r['shares.change_libvirt']:.0f} + {r['shares.change_tc']:.0f} | {ms(r['ceilings.steady'])} / "
            f"{ms(r['ceilings.change'])} | {r['cpu.pipeline.bulk']:.1%} / {r['cpu.pipeline.kernel']:.1%} | "
            f"{r['cpu.libvirtd.bulk']:.1%} / {r['cpu.libvirtd.kernel']:.1%} | "
            f"{r['cpu.guests']:.0%} |"
        )
    cores = os.cpu_count() or 1
    cpu_rows = [
        "| domains | all change, wall (ms) | CPU a rewrite: pipeline / libvirtd / QEMUs (ms) | CPU in all (ms) | "
        f"least wall on {cores} cores (ms) | wall ÷ least |",
        "| ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for n, r in results.items():
        parts = [r[f"shares.change_cpu.{name}"] for name in ("pipeline", "libvirtd", "qemu")]
        cpu_rows.append(
            f"| {n} | {ms(r['shares.change'])} | {' / '.join(ms(x) for x in parts)} | {ms(r['shares.change_cpu'])} | "
            f"{ms(r['shares.change_cpu'] / cores)} | {r['shares.change'] / (r['shares.change_cpu'] / cores):.2f} |"
        )
    state_rows = [
        "| the same domains | bulk stats call (ms) | kernel counters, one period (ms) | shares: steady / all "
        "change (ms) | libvirt calls all change | CPU a rewrite: pipeline / libvirtd (ms) | monitor + actuator "
        "CPU, 1 s period (kernel counters) | libvirtd CPU (kernel counters) |",
        "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for state, r in both.items():
        state_rows.append(
            f"| {RUNNING} {state} | {ms(r['bulk'])} | {ms(r['kernel'])} | {ms(r['shares.steady'])} / "
            f"{ms(r['shares.change'])} | {r['shares.change_libvirt']:.0f} | {ms(r['shares.change_cpu.pipeline'])} / "
            f"{ms(r['shares.change_cpu.libvirtd'])} | {r['cpu.pipeline.kernel']:.1%} | {r['cpu.libvirtd.kernel']:.1%} |"
        )
    running_text = (
        f"\n\nThe first {RUNNING} guests measured running (booted and idle: their balloons follow their targets) "
        "and then paused, in the same run (the QEMUs' CPU is left out: a running guest's own mixes in):\n\n"
        + "\n".join(state_rows)
        if both
        else ""
    )
    largest = results[max(results)]
    sweep = ", ".join(f"{w}: {ms(largest[f'workers.{w}'])} ms" for w in WORKER_SWEEP if f"workers.{w}" in largest)
    groups = ["| domains | " + " | ".join(STAT_GROUPS) + " |", "| ---: |" + " ---: |" * len(STAT_GROUPS)]
    for n, r in results.items():
        groups.append(f"| {n} | " + " | ".join(ms(r[f"group.{g}"]) for g in STAT_GROUPS) + " |")
    sizes = np.array(list(results))
    # the monitor's period, a steady and a full apply, and the CPU that full apply costs every process
    keys = ("kernel", "shares.steady", "shares.change", "shares.change_cpu")
    fit = {key: np.polyfit(sizes, [results[n][key] for n in sizes], 1) for key in keys}
    fit_text = "; ".join(
        f"{key}: {slope * 1e3:.3f} ms a domain + {icpt * 1e3:.1f} ms" for key, (slope, icpt) in fit.items()
    )
    # the largest N whose monitor read + a full apply fit in a 1 s period, by the fit (an extrapolation)
    slope, icpt = fit["kernel"] + fit["shares.change"]
    holds = int((1.0 - icpt) / slope) if slope > 0 else 0
    biggest = results[int(sizes.max())]
    body = (
        __doc__.split("\n\n", 1)[1]
        + f"\n\n{machine()}; guests of {GUEST_MIB} MiB, 1 vCPU, booted, then paused. What limits N here: "
        "fs.aio-max-nr (65,536 by default: QEMU with aio=native cannot start a 65th domain; the run raises "
        "it), then memory (96 MiB a guest) and the 2 cores an idle TCG guest costs 0.17 of.\n\n"
        + "\n".join(rows)
        + running_text
        + "\n\nThe monitor's two paths on the same domains: libvirt's bulk call against the kernel-counter "
        'backend (`[monitor] backend = "kernel"`), a period\'s read with its defaults (balloon stats via '
        "QMP for 1/k of the domains, a libvirt cross-check spread over `crosscheck_periods`) and its counters "
        "alone:\n\n"
        + "\n".join(kernel_rows)
        + "\n\nWhat a shares apply with every setting changing costs in CPU, summed over every process it "
        "touches (this one, libvirtd, the QEMUs): no schedule of the same calls can end sooner than that CPU "
        "divided by the cores:\n\n"
        + "\n".join(cpu_rows)
        + f"\n\nThe shares apply with every setting changing at {max(results)} domains, by `[actuator] workers` (libvirt "
        f"calls at once, one domain each): {sweep}.\n\nEach stats group alone (one getAllDomainStats call, ms):\n\n"
        + "\n".join(groups)
        + f"\n\nA linear fit over N (least squares on the {len(sizes)} sizes), per period: {fit_text}. By it, the "
        f"kernel monitor's read plus an apply where every setting changes fit in a 1 s period up to about "
        f"{holds:,} domains (an extrapolation, not measured). At {int(sizes.max())} domains the pipeline's own CPU "
        f"at a 1 s period (monitor + steady apply) is {biggest['cpu.pipeline.kernel']:.1%} of a core with the "
        f"kernel counters ({biggest['cpu.pipeline.bulk']:.1%} with the bulk call; target ≤ 2 %)."
    )
    write_section("Real libvirt: the cost per period with N QEMU domains", body)


def main() -> None:
    sizes = tuple(int(a) for a in sys.argv[1:] if a.isdigit()) or SIZES  # bench_libvirt.py 2 5: a quick try
    SIZES_RUN[:] = sizes
    if "--inside" in sys.argv:
        inside(sizes)
        return
    if os.geteuid() != 0:
        raise SystemExit("run as root: it starts libvirtd and QEMU guests")
    daemons = libvirtd_support.start(netns=NETNS)
    if daemons.netns is None:
        raise SystemExit("a libvirtd is already running outside a namespace of ours: stop it first")
    try:
        subprocess.run(["nsenter", f"--net=/run/netns/{NETNS}", sys.executable, __file__, "--inside",
                        *sys.argv[1:]], check=True)  # fmt: skip
    finally:
        libvirtd_support.stop(daemons)


if __name__ == "__main__":
    main()
