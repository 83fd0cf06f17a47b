"""The demo shows what ResCoin is for: within a minute of starting, its own scenario (deploy/demo.toml:
8 VMs, 1 s periods) puts a contended resource on the bus, and coins and shares differ between VMs."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import start_pipeline, stop_pipeline
from tests.support.bus import wait_for
from tests.support.machine import machine_lacks
from tests.support.need import missing

pytestmark = pytest.mark.e2e


def test_the_demo_is_contended_within_a_minute(tmp_path):
    pipeline = start_pipeline(tmp_path, as_demo=True)
    try:
        started = time.monotonic()

        def contended():
            allocs = pipeline.watcher.since(0, "alloc")
            return any("contended" in a.body.mode for a in allocs)

        assert wait_for(contended, 60, 0.5), pipeline.logs()
        took = time.monotonic() - started
        alloc = next(a.body for a in pipeline.watcher.since(0, "alloc") if "contended" in a.body.mode)
        resource = alloc.mode.index("contended")
        print(f"first contended alloc {took:.0f} s after start: {alloc.mode}")
        assert alloc.coins[:, resource].max() > alloc.coins[:, resource].min()  # coins differ between VMs
        shares = alloc.shares[:, resource] / alloc.template[:, resource]
        assert shares.max() > shares.min() * 1.01  # and so do the shares against the templates
    finally:
        stop_pipeline(pipeline)


ROOT = Path(__file__).resolve().parents[2]
ROOT_ONLY = {"actuator", "monitor"}  # cgroup, libvirt and tc settings; root-only counters


def uid_of(pid: int) -> int:
    """The real uid of a running process (its Uid: line; the effective one is the same here)."""
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("Uid:"))
    return int(line.split()[1])


def test_readme_demo_runs_only_the_actuator_and_the_monitor_as_root():
    """README's first command, as it is: every program but the actuator and the monitor runs as `rescoin`."""
    if os.geteuid() != 0:
        missing("needs root: demo.sh makes the user rescoin and runs the actuator as root")
    pid_file = ROOT / "state" / "supervisord.pid"
    if pid_file.exists() and Path(f"/proc/{pid_file.read_text().strip()}").exists():
        machine_lacks("demo_running")
    if pwd_has("rescoin"):  # demo.sh's own check: can rescoin run this checkout's venv?
        runs = subprocess.run(["runuser", "-u", "rescoin", "--", str(ROOT / ".venv/bin/python"), "-c",
                               "import rescoin.services.cli"], capture_output=True)  # fmt: skip
        if runs.returncode != 0:
            machine_lacks("checkout_private", str(ROOT))
    ctl = [str(ROOT / ".venv/bin/supervisorctl"), "-c", str(ROOT / "deploy/supervisord.conf")]
    try:
        started = subprocess.run([str(ROOT / "deploy/demo.sh")], capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        assert "every program runs as root" not in started.stderr
        rescoin = pwd.getpwnam("rescoin").pw_uid
        uids = {}
        for line in subprocess.run(ctl + ["status"], capture_output=True, text=True).stdout.splitlines():
            name, state, _, pid = line.split()[:4]
            assert state == "RUNNING", line
            uids[name.split(":")[1]] = uid_of(int(pid.rstrip(",")))
        print("uid of each program:", uids)
        assert set(uids) == {"bus", "simhost", "monitor", "predictor", "scheduler", "actuator", "exporter"}
        for program, uid in uids.items():
            assert uid == (0 if program in ROOT_ONLY else rescoin), (program, uid)
        # the state the unprivileged scheduler keeps is its own
        assert wait_for(lambda: (ROOT / "state/scheduler-ledger.npz").exists(), 30, 0.5)
        assert (ROOT / "state/scheduler-ledger.npz").stat().st_uid == rescoin
    finally:  # stopped whatever happened above (demo.sh leaves supervisord running in the background)
        stopped = subprocess.run([str(ROOT / "deploy/stop-demo.sh")], capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def pwd_has(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True
