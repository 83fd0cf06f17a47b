"""Disk shares reach the kernel as BFQ weights and divide a real device (root).

The device: a loop device with direct I/O over a file, its I/O scheduler set to
BFQ. A kernel built without BFQ skips this test (a machine fact,
tests/support/machine.py); there the VM suite checks the throttle that
replaces weights. Two cgroup v1 blkio
groups stand for two VMs; the actuator core, with the real cgroup backend,
applies an alloc whose disk shares are 1 : 4, and two O_DIRECT readers, one
per group, read the device at once. Measured by hand before this test:
weights 500:500 gave 1.02, 800:200 gave 0.27, 100:800 gave 7.9.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rescoin.services.actuator.backend_cgroup import CgroupBackend, group_uuid
from rescoin.services.actuator.blockdev import kernel_offers_bfq
from rescoin.services.actuator.core import ActuatorCore
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.support import Counters

from tests.support.machine import machine_lacks
from tests.support.messages import alloc_envelope, make_alloc
from tests.support.need import missing

pytestmark = pytest.mark.root

CGROUP = Path("/sys/fs/cgroup")
BLKIO = CGROUP / "blkio"
CONTROLLERS = ("cpu", "memory", "blkio")  # the backend reads a VM's cpu and memory too
READER = """
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
size = os.lseek(fd, 0, os.SEEK_END)
buf = mmap.mmap(-1, 1 << 20)  # large reads: the device, not the CPU, is what they contend for
pos, total, end = int(sys.argv[3]) % size, 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    n = os.preadv(fd, [buf], pos)
    total += n
    pos = (pos + n) % size if n else 0
print(total)
"""


@pytest.fixture
def bfq_device(tmp_path):
    """(loop device, MAJ:MIN, two blkio groups) with BFQ on the device; all removed afterwards."""
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        missing("needs root and losetup")
    if not kernel_offers_bfq():
        machine_lacks("no_bfq")
    if not all((CGROUP / c / "cgroup.procs").exists() for c in CONTROLLERS):
        machine_lacks("no_cgroup_v1")
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.write(os.urandom(64 * 2**20))
    loop = subprocess.run(["losetup", "--direct-io=on", "-f", "--show", str(image)], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    groups = [f"rescoin-bfq-{os.getpid()}-{g}" for g in ("a", "b")]
    try:
        name = Path(loop).name
        (Path("/sys/block") / name / "queue" / "scheduler").write_text("bfq")
        if "[bfq]" not in (Path("/sys/block") / name / "queue" / "scheduler").read_text():
            missing(f"{loop} did not take BFQ although the kernel offers it")
        for g in groups:
            for c in CONTROLLERS:
                (CGROUP / c / g).mkdir()
        yield loop, (Path("/sys/block") / name / "dev").read_text().strip(), groups
    finally:
        for group in (CGROUP / c / g for g in groups for c in CONTROLLERS):
            for _ in range(50):  # readers leave their group asynchronously
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
        subprocess.run(["losetup", "-d", loop], capture_output=True)


def read_at_once(loop: str, groups: list[str], secs: float) -> list[float]:
    """Bytes/s two O_DIRECT readers got, each in its group, reading ``loop`` at the same time."""
    procs = []
    for i, g in enumerate(groups):
        enter = f'echo $$ > {BLKIO / g / "cgroup.procs"} && exec {sys.executable} -c "$0" {loop} {secs} {i * 2**25}'
        procs.append(subprocess.Popen(["sh", "-c", enter, READER], stdout=subprocess.PIPE, text=True))
    return [int(p.communicate(timeout=secs + 30)[0]) / secs for p in procs]


def test_disk_shares_one_to_four_divide_a_bfq_device_one_to_four(bfq_device, tmp_path):
    loop, device, groups = bfq_device
    cfg = load_config(None, [
        "actuator.backend='cgroup'",
        f"actuator.cgroups={{a='{groups[0]}', b='{groups[1]}'}}",
        f"actuator.cgroup_block_device='{device}'",
    ])  # fmt: skip
    core = ActuatorCore("h1", cfg.actuator, CgroupBackend(cfg.actuator), Counters(), tmp_path / "state")
    vms = [group_uuid("a"), group_uuid("b")]
    template = np.array([[1.0, 2**30, 50e6, 1e6]] * 2)
    capacity = np.array([4.0, 8 * 2**30, 200e6, 1e7])
    shares = np.array([[1.0, 0, 40e6, 1e6], [1.0, 0, 160e6, 1e6]])  # disk 1 : 4
    applied = core.on_alloc(alloc_envelope(5, make_alloc(vms, template, template, template * 0.5, capacity,
                                                         "shares", shares)))  # fmt: skip
    weights = [int((BLKIO / g / "blkio.bfq.weight").read_text().split()[-1]) for g in groups]
    assert weights == [250, 1000]  # the largest share at the kernel's 1000, the ratio kept
    assert applied.weight[:, 2].tolist() == [250.0, 1000.0] and (applied.set[:, 2] == -1).all()  # no throttle
    slow, fast = read_at_once(loop, groups, 4.0)
    print(f"\nBFQ on {loop}: weights {weights}: {slow / 1e6:.1f} vs {fast / 1e6:.1f} MB/s, ratio {fast / slow:.2f}")
    assert 2.5 <= fast / slow <= 5.5  # 4 : 1, as the shares (BFQ's own slices and idling blur it a little)
    core.restore()
    assert [int((BLKIO / g / "blkio.bfq.weight").read_text().split()[-1]) for g in groups] == [100, 100]
    even = read_at_once(loop, groups, 3.0)
    assert 0.6 <= even[1] / even[0] <= 1.6  # the weights were the cause: restored, they share evenly
