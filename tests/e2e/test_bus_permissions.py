"""Only the pipeline publishes (issue 14, finding 1): the demo's bus is ipc:// behind Unix permissions.

The whole demo pipeline runs under supervisord (tests/e2e/conftest.py) with its
state directory in a folder every user may traverse, so only the bus's own
layout (services/bus/ipc.py: bus/ 0750, pub.sock 0600, sub.sock 0660) stands
between a local user and the bus. A real alloc, re-stamped for a far-future
period, is then sent by the same small publisher twice: as ``nobody`` (no
group) it cannot connect to either socket, no subscriber sees it and nothing
is applied; as root it reaches every subscriber (so the test can fail). On
deploy/host.toml's layout (/run/rescoin/bus/, the bus alone) nobody can open
either socket, and a member of group ``rescoin`` only the subscribe one.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from rescoin.proto import KIND_ALLOC, KIND_APPLIED, Envelope
from rescoin.proto.codec import encode
from rescoin.services.bus.ipc import DIR_MODE, PUBLISH_MODE, SUBSCRIBE_MODE

from tests.e2e.conftest import DEPLOY, VENV_BIN, start_pipeline, stop_pipeline, wait_running
from tests.support.bus import wait_for
from tests.support.machine import machine_lacks
from tests.support.need import missing

pytestmark = [pytest.mark.e2e, pytest.mark.root]

NOBODY = 65534
FAR = 10**6  # periods ahead of now: the alloc would outlive every real one, as in the finding

# The publisher, run as a separate process. Reads [topic, payload] as JSON hex from stdin, drops to
# nobody first if asked (when setpriv cannot run the venv's Python as nobody), tries a raw connect
# to both sockets, then sends the alloc through a ZeroMQ PUB for a second. Prints what happened.
PUBLISHER = r"""
import json, os, socket, sys, time
import zmq
pub_path, sub_path, drop = sys.argv[1], sys.argv[2], sys.argv[3] == "drop"
keep_gids = [int(g) for g in sys.argv[4:]]  # supplementary groups to keep when dropping to nobody
frames = [bytes.fromhex(f) for f in json.load(sys.stdin)]
if drop:
    os.setgroups(keep_gids); os.setgid(65534); os.setuid(65534)
out = {"uid": os.getuid(), "groups": os.getgroups()}
for name, path in (("pub", pub_path), ("sub", sub_path)):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        out[name] = "connected"
    except OSError as exc:
        out[name] = type(exc).__name__
    finally:
        s.close()
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub.connect("ipc://" + pub_path)
deadline = time.monotonic() + 1.5
while time.monotonic() < deadline:
    pub.send_multipart(frames)
    time.sleep(0.05)
pub.close(linger=500)
ctx.term()
print(json.dumps(out))
"""


def _setpriv_runs_the_venv() -> bool:
    """Can nobody execute the venv's Python (a checkout and interpreter readable by others)?"""
    probe = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(VENV_BIN / "python"), "-c", ""]
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def publish(frames: list[bytes], bus_dir: Path, as_nobody: bool, groups: tuple[int, ...] = ()) -> dict:
    """Connect to both sockets and publish ``frames`` for 1.5 s, as root or as nobody (with ``groups``)."""
    args = [str(bus_dir / "pub.sock"), str(bus_dir / "sub.sock")]
    if not as_nobody:
        cmd = [str(VENV_BIN / "python"), "-c", PUBLISHER, *args, "keep"]
    elif _setpriv_runs_the_venv():
        keep = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
        cmd = ["setpriv", "--reuid=nobody", "--regid=nogroup", keep]
        cmd += [str(VENV_BIN / "python"), "-c", PUBLISHER, *args, "keep"]
    else:  # the interpreter lives where nobody cannot read (e.g. /root): drop right after start-up
        cmd = [str(VENV_BIN / "python"), "-c", PUBLISHER, *args, "drop", *map(str, groups)]
    done = subprocess.run(
        cmd, input=json.dumps([f.hex() for f in frames]), capture_output=True, text=True, timeout=30, cwd="/"
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture
def demo_pipeline():
    if os.geteuid() != 0:
        missing("needs root: drops to nobody")
    # /tmp/pytest-of-root is 0700: that alone would keep nobody out. A folder anyone may traverse
    # leaves only the bus's own permissions in the way.
    top = Path(tempfile.mkdtemp(prefix="rc-perm-", dir="/tmp"))
    os.chmod(top, 0o711)
    running = start_pipeline(top)
    try:
        os.chmod(running.state, 0o711)
        yield running
    finally:
        stop_pipeline(running)
        shutil.rmtree(top, ignore_errors=True)


def forged(real: Envelope, period: int, src: str) -> list[bytes]:
    """The scheduler's own alloc body, re-stamped: what a local user would record and resend."""
    env = Envelope(
        kind=KIND_ALLOC,
        host=real.host,
        src=src,
        epoch=time.time_ns(),
        seq=0,
        ts=time.time_ns(),
        period=period,
        body=real.body,
    )
    return encode(env)


def test_an_unprivileged_user_can_neither_publish_nor_subscribe_on_the_demo_bus(demo_pipeline):
    pipeline = demo_pipeline
    t0 = time.monotonic()
    assert wait_running(pipeline), pipeline.logs()
    pipeline.wait_applied(t0, timeout_s=30)

    bus_dir = pipeline.state / "bus"
    assert stat.S_IMODE(bus_dir.stat().st_mode) == DIR_MODE
    assert stat.S_IMODE((bus_dir / "pub.sock").stat().st_mode) == PUBLISH_MODE
    assert stat.S_IMODE((bus_dir / "sub.sock").stat().st_mode) == SUBSCRIBE_MODE

    real = [e for e in pipeline.watcher.since(t0, KIND_ALLOC) if e.src == "scheduler"][-1]
    hostile_period, control_period = real.period + FAR, real.period + FAR + 1

    outcome = publish(forged(real, hostile_period, "scheduler"), bus_dir, as_nobody=True)
    assert outcome["uid"] == NOBODY and outcome["groups"] == [], outcome
    assert outcome["pub"] == outcome["sub"] == "PermissionError", outcome

    outcome = publish(forged(real, control_period, "forger"), bus_dir, as_nobody=False)
    assert outcome["uid"] == 0 and outcome["pub"] == outcome["sub"] == "connected", outcome
    # root's copy reaches the subscribers: the bus was there to be reached
    assert wait_for(lambda: any(e.period == control_period for e in pipeline.watcher.since(t0)), 10, 0.05)

    time.sleep(2 * 0.5)  # two more periods for anything late
    heard = pipeline.watcher.since(t0)
    assert not [e for e in heard if e.period == hostile_period], "nobody's alloc reached a subscriber"
    applied = [e for e in heard if e.kind == KIND_APPLIED]
    assert applied and all(e.period < real.period + FAR for e in applied)
    assert pipeline.all_running(), pipeline.logs()
    print(f"nobody: {outcome}; {len(applied)} applied, none for the forged periods", file=sys.stderr)


HOST_BUS = Path("/run/rescoin/bus")  # deploy/host.toml's [bus]


@pytest.fixture
def host_layout_bus():
    """The bus alone, started as root from deploy/host.toml: its sockets where a real host has them."""
    if os.geteuid() != 0:
        missing("needs root: /run/rescoin and dropping to nobody")
    if (HOST_BUS / "pub.sock").exists():
        machine_lacks("bus_in_use", str(HOST_BUS))
    try:
        gid = grp.getgrnam("rescoin").gr_gid
    except KeyError:
        missing("no group rescoin (deploy/install.sh creates it)")
    made = not HOST_BUS.parent.exists()
    proc = subprocess.Popen([str(VENV_BIN / "rescoin-bus"), "--config", str(DEPLOY / "host.toml"), "--host", "t"])
    try:
        assert wait_for(lambda: (HOST_BUS / "sub.sock").exists(), 15, 0.1)
        yield gid
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(HOST_BUS, ignore_errors=True)
        if made:
            shutil.rmtree(HOST_BUS.parent, ignore_errors=True)


def test_on_a_hosts_layout_only_group_rescoin_subscribes_and_nobody_else_connects(host_layout_bus):
    """deploy/host.toml: /run/rescoin/bus/ 0750 root:rescoin, pub.sock 0600, sub.sock 0660 group rescoin."""
    gid = host_layout_bus
    info = HOST_BUS.stat()
    assert stat.S_IMODE(info.st_mode) == DIR_MODE and info.st_gid == gid
    assert stat.S_IMODE((HOST_BUS / "pub.sock").stat().st_mode) == PUBLISH_MODE
    assert stat.S_IMODE((HOST_BUS / "sub.sock").stat().st_mode) == SUBSCRIBE_MODE
    assert (HOST_BUS / "sub.sock").stat().st_gid == gid
    frames = [b"hb/t/", b"\x80"]  # what is sent does not matter here: who may connect does
    stranger = publish(frames, HOST_BUS, as_nobody=True)
    assert stranger["pub"] == stranger["sub"] == "PermissionError", stranger
    operator = publish(frames, HOST_BUS, as_nobody=True, groups=(gid,))  # a tool, the exporter, an operator
    assert operator["sub"] == "connected" and operator["pub"] == "PermissionError", operator
