"""A real rescoin-actuator process on a real bus: apply, kill -9 or SIGTERM, restore."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from contextlib import contextmanager

import numpy as np
import zmq
from rescoin.proto.codec import decode
from rescoin.services.actuator.backend_cgroup import group_uuid
from rescoin.services.runtime.service import Publisher, current_period

from tests.support.bus import running_bus, wait_for
from tests.support.cgroupfs import fake_v2_root, v2_files
from tests.support.messages import make_alloc

GROUPS = ["web", "batch"]
ALLOC = make_alloc(
    [group_uuid(g) for g in GROUPS],
    np.array([[1.0, 3e8, 0, 0], [0.7, 6e8, 0, 0]]),
    np.array([[0.5, 1e9, 1e7, 1e7]] * 2),
    np.zeros((2, 4)),
    np.array([2.0, 8e9, 1e8, 1e8]),
)


def actuator_args(tmp_path, root, bus, *extra):
    args = [
        sys.executable,
        "-m",
        "rescoin.services.actuator.main",
        "--host",
        "h1",
        "--period",
        "0.2",
        "--state-dir",
        str(tmp_path / "state"),
    ]
    for item in [
        *bus.overrides(),
        "actuator.backend='cgroup'",
        f"actuator.cgroup_root='{tmp_path / 'none'}'",
        f"actuator.cgroup_v2_root='{root}'",
        "actuator.cgroups={web='web', batch='batch'}",
    ]:
        args += ["--set", item]
    return args + list(extra)


@contextmanager
def applied_actuator(tmp_path, root, bus):
    """A running actuator that has applied ALLOC (published until `applied` came back)."""
    proc = subprocess.Popen(actuator_args(tmp_path, root, bus), stderr=subprocess.DEVNULL)
    ctx = zmq.Context()
    try:
        sub = ctx.socket(zmq.SUB)
        sub.connect(bus.sub_endpoint)
        sub.subscribe(b"applied/h1/")
        pub_sock = ctx.socket(zmq.PUB)
        pub_sock.connect(bus.pub_endpoint)
        pub = Publisher(pub_sock, "h1", "scheduler")

        def applied() -> bool:
            # numbered as the scheduler does, by this host's clock: the actuator refuses old and far-future
            # periods; attempts 250 ms apart never share one of these 0.2 s periods
            pub.send("alloc", current_period(time.time(), 0.2), ALLOC)
            return sub.poll(250) != 0

        assert wait_for(applied, 15)
        assert decode(sub.recv_multipart()).body.mode == "normal"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ctx.destroy(linger=0)


def test_originals_survive_kill_9_and_restore_puts_them_back(tmp_path):
    root = fake_v2_root(tmp_path / "cg", GROUPS)
    before = {g: v2_files(root, g) for g in GROUPS}
    with running_bus() as bus:
        with applied_actuator(tmp_path, root, bus) as proc:
            assert v2_files(root, "web")["cpu.max"] == "100000 100000"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        assert (tmp_path / "state" / "actuator-originals.json").exists()
        restore = subprocess.run(
            actuator_args(tmp_path, root, bus, "--restore"), capture_output=True, text=True, timeout=30
        )
    assert restore.returncode == 0, restore.stderr
    after = {g: v2_files(root, g) for g in GROUPS}
    assert {g: (f["cpu.max"], f["memory.high"]) for g, f in after.items()} == {
        g: (f["cpu.max"], f["memory.high"]) for g, f in before.items()
    }
    assert not (tmp_path / "state" / "actuator-originals.json").exists()


def test_sigterm_restores_before_exiting(tmp_path):
    root = fake_v2_root(tmp_path / "cg", GROUPS)
    with running_bus() as bus, applied_actuator(tmp_path, root, bus) as proc:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    assert v2_files(root, "web")["cpu.max"] == "max 100000"
