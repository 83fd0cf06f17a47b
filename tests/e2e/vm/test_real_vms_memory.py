"""Guest memory on real QEMU/TCG guests: both guest formats, and the pressure guard against a working set.

"rc-mem" runs the current agent (guest format 3: PSI, major faults) and
touches a working set of W MiB of its disk through mmap, in a random order
without readahead (deploy/guest/init.sh mode ``mem``); "rc-old" runs an agent
of the previous guest format (mode ``agent2``: ``--format 2``, no pressure
fields). Both report to the same ingress at once and both VMs' memory must
reach the sample.

The host's memory for guests is sized from what the two cannot give back
(their balloon stats, read before the pipeline starts) plus W and headroom,
so memory is contended. The guard test runs rc-mem with the defaults (the
guard on), grows W live, then switches the scheduler to the floor alone
(guard off, shrink step 1), and prints per period what the sample said and
the balloon the alloc set: docs/EVALUATION.md has the numbers.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass

import pytest

from tests.e2e.vm.conftest import PERIOD_S
from tests.support.bus import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.vm, pytest.mark.root, pytest.mark.libvirtd]
MIB = 2**20
MEM = 1
W_MIB = 32  # the working set (the disk it is read from is 64 MiB)
W_GROWTH_MIB = 16  # then it grows by this much
WARM_UP_S = 60  # reading W in at ~1 MiB/s (random 4 KiB reads on TCG), then probing down
GUARD_WINDOW_S = 60
GROWN_WINDOW_S = 60
FLOOR_WINDOW_S = 25
RESERVE_MIB = 16
# read by conftest's lab: name, mode, memory MiB, template: cpu cores, memory MiB, disk bytes/s; burn after s
VM_PLAN = [
    ("rc-mem", "mem,agent", 192, 0.2, 32, 1 * MIB, 0),
    ("rc-old", "agent2", 128, 0.1, 32, 1 * MIB, 0),
]
LIAR = False  # no VM claims another's UUID here
STREAMER = None  # and none streams
GUEST_FILES = {"rc-mem": {"ws_mib": str(W_MIB)}}  # mode mem reads its working set from here, live
ENFORCEMENT = "shares"  # the default: memory's ceiling is the balloon
SCHEDULER_CONFIG = f"release_when_fit = false\nshare_leftover = false\nmem_reserve_bytes = {RESERVE_MIB * MIB}"
GUEST_MEM_BYTES = 0  # set by host_memory below, from the guests' own balloon stats
MONITOR_CONFIG = "balloon_stats_periods = 1"  # the floor counts what the guest cannot give back, every period
HEADROOM_MIB = 40  # the host's memory beyond the floors and W


def unreclaimable(dom) -> float | None:
    stats = dom.memoryStats()
    if "usable" not in stats or "actual" not in stats:
        return None
    return (stats["actual"] - stats["usable"]) * 1024.0


@pytest.fixture(scope="module", autouse=True)
def host_memory(lab):
    """The host's memory for guests (C): both floors (unreclaimable + reserve), W and HEADROOM_MIB, read
    from the balloon stats once the guests have settled and before the pipeline starts."""
    global GUEST_MEM_BYTES
    doms = [lab.dom(s.name) for s in lab.specs]
    assert wait_for(lambda: all(unreclaimable(d) is not None for d in doms), 60, 1.0)
    time.sleep(20)  # the agents and the working set are up (they start from 9p after boot)
    need = [unreclaimable(d) for d in doms]
    GUEST_MEM_BYTES = int(sum(need) + 2 * RESERVE_MIB * MIB + (W_MIB + HEADROOM_MIB) * MIB)
    print(
        "unreclaimable at boot: "
        + ", ".join(f"{s.name} {n / MIB:.0f} MiB" for s, n in zip(lab.specs, need, strict=True))
        + f"; host memory for guests {GUEST_MEM_BYTES / MIB:.0f} MiB"
    )
    return need


def test_agents_of_both_guest_formats_report_their_memory_into_the_sample(lab, host_pipeline):
    new, old = lab.spec("rc-mem"), lab.spec("rc-old")

    def both_in_sample():
        got = host_pipeline.watcher.since(0, "sample")
        if not got or not {new.uuid, old.uuid} <= set(got[-1].body.vms):
            return False
        body = got[-1].body
        return all(body.mem_source[body.vms.index(s.uuid)] == "guest" for s in (new, old))

    assert wait_for(both_in_sample, 120, 0.5), host_pipeline.logs()
    time.sleep(3 * PERIOD_S)  # a rate needs two reports
    body = host_pipeline.watcher.latest("sample").body
    i, j = body.vms.index(new.uuid), body.vms.index(old.uuid)
    print(
        f"rc-mem (format 3): use {body.usage[i, MEM] / MIB:.0f} MiB, PSI some {body.mem_psi_some[i]}, "
        f"full {body.mem_psi_full[i]}, major faults {body.mem_majflt[i]}/s; rc-old (format 2): use "
        f"{body.usage[j, MEM] / MIB:.0f} MiB, PSI {body.mem_psi_some[j]}"
    )
    assert 0 < body.usage[j, MEM] < old.mem_mib * MIB and 0 < body.usage[i, MEM] < new.mem_mib * MIB
    assert body.mem_psi_some[i] >= 0 and body.mem_majflt[i] >= 0  # the current format carries pressure
    assert body.mem_psi_some[j] == -1 and body.mem_majflt[j] == -1  # the previous one: unknown, not 0
    assert (body.mem_unreclaimable[[i, j]] > 0).all()  # balloon stats, whatever the agent speaks
    beats = [e.body for e in host_pipeline.watcher.since(0, "hb") if e.body.service == "ingress"]
    assert beats[-1].counters.get("guest_format.2", 0) >= 1 and beats[-1].counters.get("guest_format.3", 0) >= 1


@dataclass
class Window:
    """What a stretch of periods showed for rc-mem: the balloon (libvirt) and, from inside the guest
    (its agent), major faults and PSI; the working set's own progress (the guest's console)."""

    balloon_mib: list[float]
    majflt: list[float]  # per second
    psi_some: list[float]  # avg10, %
    psi_full: list[float]
    passes_per_s: float
    oom_kills: int

    def median(self, name: str) -> float:
        return statistics.median(getattr(self, name))

    def summary(self) -> str:
        return (
            f"balloon median {self.median('balloon_mib'):.0f} MiB (min {min(self.balloon_mib):.0f}, max "
            f"{max(self.balloon_mib):.0f}); in the guest: major faults median {self.median('majflt'):.0f}/s, "
            f"PSI some {self.median('psi_some'):.1f} %, full {self.median('psi_full'):.1f} % (max "
            f"{max(self.psi_full):.1f}); working set {self.passes_per_s:.1f} passes/s; OOM kills {self.oom_kills}"
        )


def balloon_mib(dom) -> float:
    """The balloon's actual size: the guest's memory now (libvirt's domain info keeps the boot size)."""
    return dom.memoryStats()["actual"] / 1024


def console_since(spec, start: int) -> str:
    return spec.console_log.read_bytes()[start:].decode(errors="replace")


def watch(lab, pipe, spec, secs: float) -> Window:
    dom, start, rows = lab.dom(spec.name), spec.console_log.stat().st_size, []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        body = pipe.watcher.latest("sample").body
        i = body.vms.index(spec.uuid)
        rows.append((balloon_mib(dom), body.mem_majflt[i], body.mem_psi_some[i], body.mem_psi_full[i]))
        time.sleep(PERIOD_S)
    console = console_since(spec, start)
    passes = [int(n) for n in re.findall(r"RESCOIN-MEM ws_mib=\d+ passes=(\d+)", console)]
    balloon, majflt, some, full = (list(col) for col in zip(*rows, strict=True))
    return Window(
        balloon, majflt, some, full, sum(passes) / (5.0 * max(len(passes), 1)), console.count("Out of memory: Killed")
    )


def trace(pipe, spec, since: float) -> str:
    """Per period: what the sample said of rc-mem's memory, and the balloon the alloc set for it (MiB)."""
    balloon = {
        env.period: env.body.ceiling[env.body.vms.index(spec.uuid), MEM] / MIB
        for env in pipe.watcher.since(since, "alloc")
        if spec.uuid in env.body.vms
    }
    lines = []
    for env in pipe.watcher.since(since, "sample"):
        if spec.uuid in env.body.vms:
            b, i = env.body, env.body.vms.index(spec.uuid)
            lines.append(
                f"use {b.usage[i, MEM] / MIB:.0f} unreclaimable {b.mem_unreclaimable[i] / MIB:.0f} "
                f"PSI {b.mem_psi_some[i]:.1f}/{b.mem_psi_full[i]:.1f} majflt {b.mem_majflt[i]:.0f} "
                f"-> balloon {balloon.get(env.period, float('nan')):.0f}"
            )
    return "\n".join(lines)


def first_regrowth(pipe, spec, since: float) -> tuple[float, float, int]:
    """The balloon the alloc set for rc-mem, per period since ``since``: at its first rise, (the low it
    rose from, the high it rose to, periods from the one to the other), MiB."""
    balloon = [
        env.body.ceiling[env.body.vms.index(spec.uuid), MEM] / MIB
        for env in pipe.watcher.since(since, "alloc")
        if spec.uuid in env.body.vms
    ]
    start = next(k for k in range(1, len(balloon)) if balloon[k] > balloon[k - 1]) - 1
    end = next((k for k in range(start + 1, len(balloon) - 1) if balloon[k + 1] <= balloon[k]), len(balloon) - 1)
    return balloon[start], balloon[end], end - start


def test_the_pressure_guard_stops_the_balloon_above_the_working_set(lab, host_pipeline):
    """Guard on (the defaults), the working set grows, then the floor alone (guard off, shrink step 1)."""
    spec = lab.spec("rc-mem")
    t0 = time.monotonic()
    time.sleep(WARM_UP_S)  # the working set is read in at the guest's full size, then the probe starts
    guard = watch(lab, host_pipeline, spec, GUARD_WINDOW_S)
    print(f"guard on, W = {W_MIB} MiB: {guard.summary()}")
    print(trace(host_pipeline, spec, t0))

    t0 = time.monotonic()
    (spec.keys_dir / "ws_mib").write_text(str(W_MIB + W_GROWTH_MIB))
    grown = watch(lab, host_pipeline, spec, GROWN_WINDOW_S)
    low, high, periods = first_regrowth(host_pipeline, spec, t0)
    print(
        f"W {W_MIB} -> {W_MIB + W_GROWTH_MIB} MiB: {grown.summary()}; at its first thrash the balloon grew "
        f"{low:.0f} -> {high:.0f} MiB in {periods} periods"
    )
    print(trace(host_pipeline, spec, t0))

    t0 = time.monotonic()
    host_pipeline.set_scheduler(mem_pressure_guard=False, mem_shrink_step=1.0)
    time.sleep(5 * PERIOD_S)
    floor = watch(lab, host_pipeline, spec, FLOOR_WINDOW_S)
    print(f"floor alone, W = {W_MIB + W_GROWTH_MIB} MiB: {floor.summary()}")
    print(trace(host_pipeline, spec, t0))

    assert floor.oom_kills == 0 and guard.oom_kills == 0 and grown.oom_kills == 0
    # the floor alone holds the balloon still at use + reserve and the guest reads its working set from disk
    assert max(floor.balloon_mib) - min(floor.balloon_mib) < 8 and floor.median("majflt") >= 100
    # the guard stops shrinking above that, and the guest spends most periods without a major fault
    assert min(guard.balloon_mib) >= floor.median("balloon_mib") + 8
    assert guard.median("majflt") < 100 <= floor.median("majflt")
    # a thrash grows the balloon back by more than the working set grew, within a few periods (+10 % a period)
    assert high - low >= W_GROWTH_MIB and periods <= 5
