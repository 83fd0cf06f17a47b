"""The monitor's logic fed recorded readings and guest reports: no sockets, no libvirt."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest
from rescoin.proto import Envelope, GuestMem
from rescoin.services.monitor.backend import DomainReading, HostReading
from rescoin.services.monitor.core import MonitorCore
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.support import Counters

A, B = str(uuid.UUID(int=1)), str(uuid.UUID(int=2))
GIB = 2**30
CAP = np.array([4.0, 16 * GIB, 1e8, 1e8])


def dom(vm, cpu_s, disk, net, **kw):
    base = {
        "uuid": vm,
        "name": vm[-4:],
        "vcpus": 2,
        "mem_max_bytes": 2 * GIB,
        "mem_current_bytes": 2 * GIB,
        "cpu_time_ns": cpu_s * 1e9,
        "disk_bytes": disk,
        "net_bytes": net,
        "balloon_used_bytes": None,
    }
    base.update(kw)
    return DomainReading(**base)


def reading(t_s, *domains):
    return HostReading(int(t_s * 1e9), list(domains))


def guest(vm, used, total=2 * GIB, **pressure):
    body = GuestMem(vm, total, total - used, used, 0, 0, "test", **pressure)
    return Envelope("guest.mem", "h1", "ingress", 1, 0, 0, 0, body)


@pytest.fixture
def core():
    return MonitorCore(load_config(None).monitor, Counters())


def test_rates_come_from_counter_deltas(core):
    core.observe(reading(0, dom(A, 0, 0, 0)), 0, 1.0, CAP)
    s = core.observe(reading(2, dom(A, 3, 4e6, 1e6)), 1, 1.0, CAP)
    assert s.vms == [A]
    assert s.usage[0].tolist() == pytest.approx([1.5, 2 * GIB, 2e6, 5e5])
    assert s.mem_source == ["none"]  # no agent, no balloon stats: it uses what it has


def test_new_vm_waits_for_its_second_reading_and_gone_vm_drops_out(core):
    core.observe(reading(0, dom(A, 0, 0, 0)), 0, 1.0, CAP)
    s1 = core.observe(reading(1, dom(A, 1, 0, 0), dom(B, 5, 0, 0)), 1, 1.0, CAP)
    s2 = core.observe(reading(2, dom(B, 6, 0, 0)), 2, 1.0, CAP)
    assert s1.vms == [A] and s2.vms == [B]
    assert s2.usage[0, 0] == pytest.approx(1.0)


def test_counter_reset_is_not_a_spike(core):
    core.observe(reading(0, dom(A, 100, 1e9, 1e9)), 0, 1.0, CAP)
    core.observe(reading(1, dom(A, 101, 1e9 + 1e6, 1e9)), 1, 1.0, CAP)
    s = core.observe(reading(2, dom(A, 0.5, 1e3, 0)), 2, 1.0, CAP)  # the VM restarted
    assert s.usage[0, 0] == pytest.approx(1.0) and s.usage[0, 2] == pytest.approx(1e6)
    after = core.observe(reading(3, dom(A, 1.0, 2e3, 0)), 3, 1.0, CAP)
    assert after.usage[0, 0] == pytest.approx(0.5)
    assert core.counters.values["counter_resets"] == 1


def test_guest_report_beats_balloon_until_it_is_two_periods_old(core):
    core.observe(reading(0, dom(A, 0, 0, 0, balloon_used_bytes=GIB)), 0, 1.0, CAP)
    core.on_guest_mem(guest(A, 300 * 2**20), 0)
    s = core.observe(reading(1, dom(A, 1, 0, 0, balloon_used_bytes=GIB)), 1, 1.0, CAP)
    assert s.mem_source == ["guest"] and s.usage[0, 1] == 300 * 2**20
    s = core.observe(reading(3, dom(A, 2, 0, 0, balloon_used_bytes=GIB)), 3, 1.0, CAP)
    assert s.mem_source == ["balloon"] and s.usage[0, 1] == GIB


def test_guest_lies_are_rejected(core):
    core.observe(reading(0, dom(A, 0, 0, 0)), 0, 1.0, CAP)
    core.on_guest_mem(guest(B, GIB), 0)  # a VM this host does not have
    core.on_guest_mem(guest(A, GIB, total=64 * GIB), 0)  # more memory than the VM can have
    assert core.counters.values["rejected.guest_unknown_vm"] == 1
    assert core.counters.values["rejected.guest_absurd"] == 1
    assert A not in core.guest


@pytest.mark.parametrize("bad", [{"cpu_time_ns": math.nan}, {"disk_bytes": -5.0}, {"mem_current_bytes": math.inf}])
def test_bad_values_reject_that_vm_only(core, bad):
    core.observe(reading(0, dom(A, 0, 0, 0), dom(B, 0, 0, 0)), 0, 1.0, CAP)
    s = core.observe(reading(1, dom(A, 1, 0, 0, **bad), dom(B, 1, 0, 0)), 1, 1.0, CAP)
    assert s.vms == [B]
    assert core.counters.values["rejected.stats"] == 1 and "VM" in core.counters.recent_errors[-1]


def test_recorded_stream_gives_the_expected_samples(core):
    """A short recorded stream (three VMs over four periods, one agent) end to end."""
    stream = [
        ("read", reading(0, dom(A, 0, 0, 0), dom(B, 0, 0, 0))),
        ("guest", guest(A, 512 * 2**20)),
        ("read", reading(1, dom(A, 0.5, 1e6, 2e6), dom(B, 2, 0, 0))),
        ("read", reading(2, dom(A, 1.0, 2e6, 4e6), dom(B, 4, 0, 0))),
        ("read", reading(3, dom(A, 1.5, 3e6, 6e6))),
        ("read", reading(4, dom(A, 2.0, 4e6, 8e6))),
    ]
    samples, period = [], 0
    for what, item in stream:
        if what == "guest":
            core.on_guest_mem(item, period)
        else:
            samples.append(core.observe(item, period, 1.0, CAP))
            period += 1
    assert [s.vms for s in samples] == [[], [A, B], [A, B], [A], [A]]
    assert samples[1].usage.tolist() == [[0.5, 512 * 2**20, 1e6, 2e6], [2.0, 2 * GIB, 0.0, 0.0]]
    assert samples[2].mem_source == ["guest", "none"]
    assert samples[3].mem_source == ["guest"]  # two periods old: still fresh
    assert samples[4].mem_source == ["none"]  # three periods old: stale


SQUEEZED = {
    "psi_some_avg10": 35.5,
    "psi_some_avg60": 20.0,
    "psi_some_total": 9_000_000,
    "psi_full_avg10": 12.25,
    "psi_full_avg60": 8.0,
    "psi_full_total": 3_000_000,
    "pgmajfault_per_s": 420.0,
    "pswpin_per_s": 64.0,
}


def pressure(s, row=0):
    return [
        float(getattr(s, k)[row])
        for k in ("mem_psi_some", "mem_psi_full", "mem_majflt", "mem_swapin", "mem_unreclaimable")
    ]


def test_a_guests_pressure_and_the_balloons_unreclaimable_memory_reach_the_sample(core):
    core.observe(reading(0, dom(A, 0, 0, 0)), 0, 1.0, CAP)
    core.on_guest_mem(guest(A, 1900 * 2**20, **SQUEEZED), 0)
    s = core.observe(reading(1, dom(A, 1, 0, 0, balloon_unreclaimable_bytes=1.5 * GIB)), 1, 1.0, CAP)
    assert pressure(s) == [35.5, 12.25, 420.0, 64.0, 1.5 * GIB]  # avg10 in %, per second, bytes


def test_what_nobody_told_the_monitor_is_minus_one_not_zero(core):
    core.observe(reading(0, dom(A, 0, 0, 0), dom(B, 0, 0, 0)), 0, 1.0, CAP)
    core.on_guest_mem(guest(A, GIB), 0)  # an agent of the previous guest format: no pressure at all
    s = core.observe(reading(1, dom(A, 1, 0, 0), dom(B, 1, 0, 0)), 1, 1.0, CAP)  # B: no agent, no balloon stats
    assert pressure(s, 0) == [-1.0] * 5 and pressure(s, 1) == [-1.0] * 5
    assert s.mem_source == ["guest", "none"]


def test_each_pressure_field_is_taken_on_its_own(core):
    """A kernel with PSI but a first report without rates: the PSI is known, the rates are not."""
    psi_only = {k: v for k, v in SQUEEZED.items() if k.startswith("psi_")}
    core.observe(reading(0, dom(A, 0, 0, 0)), 0, 1.0, CAP)
    core.on_guest_mem(guest(A, GIB, **psi_only), 0)
    s = core.observe(reading(1, dom(A, 1, 0, 0, balloon_unreclaimable_bytes=0.0)), 1, 1.0, CAP)
    assert pressure(s) == [35.5, 12.25, -1.0, -1.0, 0.0]  # a measured 0 stays 0


def test_a_stale_report_stops_telling_pressure_with_its_memory_use(core):
    core.observe(reading(0, dom(A, 0, 0, 0)), 0, 1.0, CAP)
    core.on_guest_mem(guest(A, GIB, **SQUEEZED), 0)
    fresh = core.observe(reading(2, dom(A, 1, 0, 0, balloon_used_bytes=GIB)), 2, 1.0, CAP)
    stale = core.observe(reading(3, dom(A, 2, 0, 0, balloon_used_bytes=GIB)), 3, 1.0, CAP)
    assert fresh.mem_source == ["guest"] and pressure(fresh)[:4] == [35.5, 12.25, 420.0, 64.0]
    assert stale.mem_source == ["balloon"] and pressure(stale)[:4] == [-1.0] * 4


def test_a_bad_unreclaimable_reading_rejects_that_vm_only(core):
    core.observe(reading(0, dom(A, 0, 0, 0), dom(B, 0, 0, 0)), 0, 1.0, CAP)
    s = core.observe(reading(1, dom(A, 1, 0, 0, balloon_unreclaimable_bytes=math.nan), dom(B, 1, 0, 0)), 1, 1.0, CAP)
    assert s.vms == [B] and core.counters.values["rejected.stats"] == 1


def test_a_sample_with_pressure_is_one_the_bus_accepts(core):
    from rescoin.proto.codec import decode, encode

    core.observe(reading(0, dom(A, 0, 0, 0), dom(B, 0, 0, 0)), 0, 1.0, CAP)
    core.on_guest_mem(guest(A, GIB, **SQUEEZED), 0)
    s = core.observe(reading(1, dom(A, 1, 0, 0, balloon_unreclaimable_bytes=GIB), dom(B, 1, 0, 0)), 1, 1.0, CAP)
    back = decode(encode(Envelope("sample", "h1", "monitor", 1, 0, 0, 1, s))).body
    assert pressure(back, 0) == [35.5, 12.25, 420.0, 64.0, GIB] and pressure(back, 1) == [-1.0] * 5
    empty = core.observe(reading(2), 2, 1.0, CAP)
    assert empty.mem_psi_some.shape == (0,) and decode(encode(Envelope("sample", "h1", "monitor", 1, 1, 0, 2, empty)))


MIB = 2**20


def unreclaimable_seen(core, t_s, actual_mib, unreclaimable_mib, stats_at_s=None):
    """One reading of A with balloon ``actual_mib`` and raw stats actual - usable; the sample's value, MiB."""
    d = dom(
        A, t_s, 0, 0,
        mem_current_bytes=actual_mib * MIB,
        balloon_unreclaimable_bytes=unreclaimable_mib * MIB,
        balloon_stats_at_s=stats_at_s,
    )  # fmt: skip
    s = core.observe(reading(t_s, d), int(t_s), 1.0, CAP)
    return s.mem_unreclaimable[0] / MIB if s.vms else None


def test_unreclaimable_is_held_while_the_balloon_moves_and_taken_from_stats_refreshed_after():
    """Numbers like the real-VM run that found it (tests/e2e/vm/test_real_vms_memory.py): QEMU's actual is
    current, the guest's usable a stats period old, so actual - usable swung 136, 52, 141, 41 MiB."""
    core = MonitorCore(load_config(None).monitor, Counters())
    assert unreclaimable_seen(core, 99.2, 192, 94, stats_at_s=99) is None  # a rate needs two readings
    assert unreclaimable_seen(core, 100.2, 192, 94, stats_at_s=100) == 94  # first sight: as the stats say
    assert unreclaimable_seen(core, 101.2, 192, 96, stats_at_s=101) == 95  # standing still: fresh stats count
    assert unreclaimable_seen(core, 102.2, 110, 41, stats_at_s=102) == 95  # moved: stats older than the move
    assert unreclaimable_seen(core, 103.2, 152, 136, stats_at_s=103) == 95  # moved again
    assert unreclaimable_seen(core, 104.2, 152, 136, stats_at_s=103) == 95  # still, but no stats since
    assert unreclaimable_seen(core, 105.2, 152, 96, stats_at_s=105) == 96  # stats from after the move


def test_one_readings_spike_in_unreclaimable_does_not_move_it():
    """A thrashing guest filling a large inflation: MemAvailable fell for a reading (164 MiB against 94)."""
    core = MonitorCore(load_config(None).monitor, Counters())
    seen = [unreclaimable_seen(core, t, 110, value) for t, value in enumerate([94, 94, 95, 164, 94, 93])]
    assert seen[1:] == [94, 94.5, 95, 94.5, 94]  # the median of up to five: 164 never counts
    grown = [unreclaimable_seen(core, t, 110, 120) for t in range(6, 9)]
    assert grown[-1] == 120  # a lasting change is taken within three readings


def test_without_a_stats_time_unreclaimable_counts_once_the_balloon_stood_still_a_reading():
    core = MonitorCore(load_config(None).monitor, Counters())
    assert unreclaimable_seen(core, 0, 192, 94) is None
    assert unreclaimable_seen(core, 1, 192, 94) == 94
    assert unreclaimable_seen(core, 2, 120, 20) == 94  # moving
    assert unreclaimable_seen(core, 3, 120, 96) == 95  # still since the last reading
    assert unreclaimable_seen(core, 4, 120.5, 98) == 96  # half a MiB is not a move


def test_a_wall_clock_step_is_not_a_counter_going_backwards(core):
    """Rates come from the backend's monotonic clock: the host's clock stepped back an hour (or forward)
    changes no rate and resets no baseline (issue 29: "counters went backwards" every period)."""
    for second, wall_step in enumerate([0, 0, -3600, -3600, 3600, 3600]):
        wall = HostReading(int((1000 + second + wall_step) * 1e9), [dom(A, second * 0.5, 0, 0)], int(second * 1e9))
        sample = core.observe(wall, 100 + second, 1.0, CAP)
        if second:
            assert sample.usage[0, 0] == pytest.approx(0.5)
    assert core.counters.values.get("counter_resets", 0) == 0


def test_isolated_cores_and_the_hugepage_pool_are_not_vm_capacity(tmp_path):
    from rescoin.services.runtime.host import host_memory_bytes, isolated_cores

    (tmp_path / "devices/system/cpu").mkdir(parents=True)
    (tmp_path / "devices/system/cpu/isolated").write_text("2-3,6\n")
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16384000 kB\nHugePages_Total:     512\nHugepagesize:       2048 kB\n")
    assert isolated_cores(str(tmp_path)) == 3
    assert host_memory_bytes(str(meminfo)) == (16384000 - 512 * 2048) * 1024
