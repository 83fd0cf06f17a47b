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


def guest(vm, used, total=2 * GIB):
    body = GuestMem(vm, total, total - used, used, 0, 0, "test")
    return Envelope("guest.mem", "guestA", "agent", 1, 0, 0, 0, body)


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
