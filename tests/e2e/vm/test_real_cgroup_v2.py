"""The cgroup backend on a real cgroup-v2-only kernel: a guest plays the host.

This machine's own cgroups are hybrid (v1 controllers, an empty v2 mount) and
must not be rearranged, so one TCG guest boots with cgroup2 mounted and the cpu,
io and memory controllers on (deploy/guest/init.sh, mode cgroup2), and runs
ResCoin's real cgroup backend (copied into its root file system) against it: two
groups, a busy loop in each on the guest's one vCPU, cpu weights written by the
backend, the split read from each group's cpu.stat. What ran on the real v2
kernel is listed in docs/DESIGN.md §7.12.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
from rescoin.services.actuator.backend_cgroup import CPU_WEIGHT_V2
from rescoin.services.actuator.core import weights

from tests.support.bus import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.vm, pytest.mark.root, pytest.mark.libvirtd]

VM_PLAN = [("rc-v2host", "cgroup2", 192, 1.0, 64, 2**20, 0)]
STREAMER = None
LIAR = False
# cpu shares of 40 and 160 cores, as the core turns them into weights for cgroup v2 (cpu.weight stops at
# 10000 = 100 cores): both scaled by one factor, so 1 : 4 stays 1 : 4 (the largest at the kernel's maximum)
SCALED = weights(np.array([[40.0, 0, 0, 0], [160.0, 0, 0, 0]]), CPU_WEIGHT_V2)[:, 0].tolist()
CHECK = """
import json, os, time
from rescoin.services.actuator.backend import NO_LIMIT, Change, Setting
from rescoin.services.actuator.backend_cgroup import CgroupBackend, group_uuid
from rescoin.services.actuator.settings import ActuatorSettings
from rescoin.services.runtime.config import load_config

ROOT = "/sys/fs/cgroup"
for group in "ab":
    os.makedirs(f"{ROOT}/{group}", exist_ok=True)
cfg = load_config(None, ["actuator.backend='cgroup'", "actuator.cgroups={a='a', b='b'}"],
                  sections={"actuator": ActuatorSettings})
backend = CgroupBackend(cfg.actuator)


def burner(group):
    pid = os.fork()
    if pid == 0:
        with open(f"{ROOT}/{group}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        while True:
            pass
    return pid


def usage(group):
    for line in open(f"{ROOT}/{group}/cpu.stat"):
        key, value = line.split()
        if key == "usage_usec":
            return int(value)


def split(cores, secs=8.0):
    errors = backend.write([Change(group_uuid(g), 0, Setting(NO_LIMIT, w)) for g, w in zip("ab", cores)])
    written = [open(f"{ROOT}/{g}/cpu.weight").read().strip() for g in "ab"]
    time.sleep(1.0)
    before = [usage(g) for g in "ab"]
    time.sleep(secs)
    used = [usage(g) - b for g, b in zip("ab", before)]
    return {"cpu.weight": written, "errors": [e.error for e in errors], "used_usec": used}


result = {"layout": backend.layout, "range": [backend.cpu_weight_range().lo, backend.cpu_weight_range().hi]}
pids = [burner("a"), burner("b")]
try:
    result["one_to_three"] = split([0.25, 0.75])
    result["scaled"] = split(json.load(open("/mnt/scaled.json")))
    result["errors"] = [e.error for e in backend.write([Change(group_uuid("a"), 1, Setting(64 * 2**20))])]
    result["memory.high"] = open(f"{ROOT}/a/memory.high").read().strip()
    result["read"] = [[s.ceiling, s.weight] for s in (backend.read(group_uuid("a"), r) for r in (0, 1))]
finally:
    for pid in pids:
        os.kill(pid, 9)
print("RESULT " + json.dumps(result), flush=True)
"""
GUEST_FILES = {"rc-v2host": {"cgroup2_check.py": CHECK, "scaled.json": json.dumps(SCALED)}}


def test_the_cgroup_backend_divides_a_real_v2_core_by_its_weights(lab):
    spec = lab.specs[0]
    found = re.compile(r"RESCOIN-CGROUP2 RESULT (\{.*\})")

    def result():
        return found.search(spec.console_log.read_text(errors="replace"))

    t0 = time.monotonic()
    assert wait_for(result, 180, 1.0), spec.console_log.read_text(errors="replace")[-3000:]
    out = json.loads(result().group(1))  # type: ignore[union-attr]
    print(f"on a cgroup v2 kernel ({time.monotonic() - t0:.0f} s): {out}")
    assert out["layout"] == {"cpu": "v2", "mem": "v2", "disk": "v2"} and out["range"] == [1, 10000]
    low, high = out["one_to_three"]["used_usec"]
    assert out["one_to_three"]["cpu.weight"] == ["25", "75"] and out["one_to_three"]["errors"] == []
    assert high / low == pytest.approx(3.0, rel=0.15)  # the weights' 1 : 3, on one vCPU
    low, high = out["scaled"]["used_usec"]
    assert out["scaled"]["cpu.weight"] == ["2500", "10000"] and out["scaled"]["errors"] == []  # legal, 1 : 4 kept
    assert high / low == pytest.approx(4.0, rel=0.15)
    assert out["errors"] == [] and out["memory.high"] == str(64 * 2**20)
    assert out["read"][0] == [-1.0, 25.0] and out["read"][1] == [64.0 * 2**20, 0.0]
