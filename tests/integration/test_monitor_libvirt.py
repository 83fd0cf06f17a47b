"""The monitor against libvirt's test driver with a fixture host of four domains."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rescoin.services.monitor.backend import BackendError
from rescoin.services.monitor.backend_libvirt import LibvirtMonitorBackend
from rescoin.services.monitor.core import MonitorCore, capacity_vector
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.support import Counters

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "libvirt" / "host4.xml"
URI = f"test://{FIXTURE}"
VM1, VM2, VM3, VM4 = (f"{d}{d}{d}{d}{d}{d}{d}{d}-{d}{d}{d}{d}-{d}{d}{d}{d}-{d}{d}{d}{d}-" + d * 12 for d in "1234")


def two_samples(cfg_overrides=()):
    cfg = load_config(None, list(cfg_overrides))
    backend = LibvirtMonitorBackend(URI)
    core = MonitorCore(cfg.monitor, Counters())
    cap = capacity_vector(backend.capacity(), cfg.monitor, 125e6)
    first = core.observe(backend.read(), 1, 0.3, cap)
    time.sleep(0.3)
    second = core.observe(backend.read(), 2, 0.3, cap)
    return backend, first, second


def test_running_domains_with_their_templates():
    backend, first, sample = two_samples(["monitor.templates={vm2={disk_bps=3e6, net_bps=4e5}}"])
    assert first.vms == []  # no rates before the second reading
    assert sample.vms == [VM1, VM2, VM4]  # vm3-off is shut off
    tc = dict(zip(sample.vms, sample.template.tolist(), strict=True))
    assert tc[VM1] == [2.0, 1024 * 2**20, 10485760.0, 1250000.0]  # vcpus current=2, metadata disk/net
    assert tc[VM2] == [2.0, 2048 * 2**20, 3e6, 4e5]  # the config's template table
    assert tc[VM4] == [1.5, 2 * 2**30, 20971520.0, 2500000.0]  # full <rescoin:template>
    assert backend.info()["fallback_groups"] == "balloon,block,cpu,interface"  # the test driver's empty groups


def test_rates_follow_the_test_drivers_counters():
    _backend, _first, sample = two_samples()
    use = dict(zip(sample.vms, sample.usage.tolist(), strict=True))
    # test driver: cpuTime is wall clock (1 core), each disk 50+25 kB/s, each NIC 100+50 kB/s
    assert use[VM1][0] == pytest.approx(1.0, rel=0.05)
    assert use[VM1][2] == pytest.approx(75_000, rel=0.05)
    assert use[VM2][2] == pytest.approx(150_000, rel=0.05)  # two disks
    assert use[VM4][3] == pytest.approx(300_000, rel=0.05)  # two NICs
    assert sample.mem_source == ["balloon"] * 3


def test_unreclaimable_memory_is_the_balloons_actual_minus_usable_and_pressure_waits_for_agents():
    _backend, _first, sample = two_samples()
    unreclaimable = dict(zip(sample.vms, sample.mem_unreclaimable.tolist(), strict=True))
    # the test driver's balloon stats: actual = the current memory, usable = half of it (KiB)
    assert unreclaimable == {VM1: 512 * 2**20, VM2: 1024 * 2**20, VM4: 1536 * 2**20}
    assert sample.mem_psi_some.tolist() == sample.mem_majflt.tolist() == [-1.0] * 3  # no agent reported


def test_capacity_is_the_host_minus_the_reserve():
    cfg = load_config(None, ["monitor.reserve_cores=0.5", "monitor.disk_bps=5e8"])
    backend = LibvirtMonitorBackend(URI)
    cap = capacity_vector(backend.capacity(), cfg.monitor, 3e8)
    meminfo = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    import os

    assert cap[0] == (os.cpu_count() or 1) - 0.5
    assert cap[1] == pytest.approx(meminfo - 2**30)
    assert cap[2] == 5e8 and cap[3] == 3e8  # the network: what the uplinks say (or net_bps)


def test_unreachable_libvirt_is_a_backend_error_not_a_crash():
    backend = LibvirtMonitorBackend("test+unix:///nonexistent-rescoin")
    with pytest.raises(BackendError):
        backend.read()


def test_once_json_prints_one_sample():
    out = subprocess.run(
        [sys.executable, "-m", "rescoin.services.monitor.main", "--once", "--json", "--uri", URI, "--period", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    sample = json.loads(out.stdout)
    assert sample["vms"] == [VM1, VM2, VM4] and len(sample["tc"]) == 3 and np.isfinite(sample["au"]).all()
