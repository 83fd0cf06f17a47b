"""The cgroup backend on this machine's real cgroup v1 hierarchy (root)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rescoin.services.actuator.backend import NO_LIMIT, Change, Setting
from rescoin.services.actuator.backend_cgroup import CgroupBackend, group_uuid
from rescoin.services.runtime.config import load_config

from tests.support.machine import machine_lacks
from tests.support.need import missing

pytestmark = pytest.mark.root

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("cpu", "memory", "blkio")


@pytest.fixture
def v1_group():
    if os.geteuid() != 0:
        missing("needs root to create cgroups")
    if not all((ROOT / c / "cgroup.procs").exists() for c in CONTROLLERS):
        machine_lacks("no_cgroup_v1")
    rel = f"rescoin-test-{os.getpid()}"
    for c in CONTROLLERS:
        (ROOT / c / rel).mkdir()
    procs: list[subprocess.Popen] = []
    try:
        yield rel, procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for c in CONTROLLERS:
            for _ in range(50):  # the killed child leaves the group asynchronously
                try:
                    (ROOT / c / rel).rmdir()
                    break
                except OSError:
                    time.sleep(0.05)


def backend_for(rel: str) -> CgroupBackend:
    cfg = load_config(
        None, ["actuator.backend='cgroup'", f"actuator.cgroups={{t='{rel}'}}", "actuator.cgroup_block_device='7:0'"]
    )
    return CgroupBackend(cfg.actuator)


def test_files_hold_the_settings_and_the_originals_come_back(v1_group):
    rel, _procs = v1_group
    backend = backend_for(rel)
    vm = group_uuid("t")
    assert backend.layout["cpu"] == "v1" and backend.layout["mem"] == "v1"
    original = [backend.read(vm, r) for r in range(4)]
    assert (
        backend.write(
            [Change(vm, 0, Setting(0.3, 0.5)), Change(vm, 1, Setting(256 * 2**20)), Change(vm, 2, Setting(2 * 2**20))]
        )
        == []
    )
    assert (ROOT / "cpu" / rel / "cpu.cfs_quota_us").read_text().strip() == "30000"
    assert (ROOT / "cpu" / rel / "cpu.shares").read_text().strip() == "512"
    assert (ROOT / "memory" / rel / "memory.soft_limit_in_bytes").read_text().strip() == str(256 * 2**20)
    assert "7:0 2097152" in (ROOT / "blkio" / rel / "blkio.throttle.read_bps_device").read_text()
    assert backend.write([Change(vm, r, original[r]) for r in range(3)]) == []
    assert [backend.read(vm, r) for r in range(2)] == original[:2]
    assert backend.read(vm, 2).ceiling == NO_LIMIT


def test_a_cpu_bound_process_capped_at_a_fifth_of_a_core_uses_about_that(v1_group):
    rel, procs = v1_group
    backend = backend_for(rel)
    assert backend.write([Change(group_uuid("t"), 0, Setting(0.2, 1.0))]) == []
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    procs.append(burner)
    (ROOT / "cpu" / rel / "cgroup.procs").write_text(str(burner.pid))
    (ROOT / "cpuacct" / "cgroup.procs").exists()
    ticks = os.sysconf("SC_CLK_TCK")

    def cpu_seconds() -> float:
        fields = Path(f"/proc/{burner.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    time.sleep(0.5)
    t0, c0 = time.monotonic(), cpu_seconds()
    time.sleep(3.0)
    used = (cpu_seconds() - c0) / (time.monotonic() - t0)
    assert 0.1 <= used <= 0.3, f"capped at 0.2 core, measured {used:.3f}"
