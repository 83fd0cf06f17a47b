"""ResCoin's own tc shaping on a real veth pair in namespaces the test creates (root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest
from rescoin.services.actuator.netshape import NetShaper

RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.250.0.2", 5901)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); total = 0; start = None
while True:
    b = c.recv(65536)
    if not b: break
    if start is None: start = time.monotonic()
    total += len(b)
    if time.monotonic() - start > 4: break
print(total / (time.monotonic() - start), flush=True)
"""
SENDER = """
import socket, time
c = socket.create_connection(("10.250.0.2", 5901)); end = time.monotonic() + 5; chunk = b"x" * 65536
try:
    while time.monotonic() < end: c.sendall(chunk)
except OSError: pass
"""


@pytest.fixture
def veth_pair():
    if os.geteuid() != 0 or shutil.which("tc") is None:
        pytest.skip("needs root and iproute2's tc")
    tag = uuid.uuid4().hex[:6]
    a, b = f"rcA{tag}", f"rcB{tag}"
    subprocess.run(["ip", "netns", "add", a], check=True)
    subprocess.run(["ip", "netns", "add", b], check=True)
    try:
        run = lambda ns, *cmd: subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)  # noqa: E731
        subprocess.run(
            ["ip", "-n", a, "link", "add", "vtap", "type", "veth", "peer", "name", "vsink", "netns", b], check=True
        )
        run(a, "ip", "addr", "add", "10.250.0.1/24", "dev", "vtap")
        run(b, "ip", "addr", "add", "10.250.0.2/24", "dev", "vsink")
        for ns, dev in ((a, "vtap"), (b, "vsink")):
            run(ns, "ip", "link", "set", dev, "up")
            run(ns, "ip", "link", "set", "lo", "up")
        yield a, b
    finally:
        subprocess.run(["ip", "netns", "del", a])
        subprocess.run(["ip", "netns", "del", b])


def transfer_rate(a: str, b: str) -> float:
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", b, sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True
    )
    try:
        assert receiver.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", SENDER], timeout=20)
        return float(receiver.stdout.readline())
    finally:
        receiver.kill()
        receiver.wait()


def test_shaping_holds_a_bulk_transfer_near_the_ceiling_and_clears(veth_pair):
    a, b = veth_pair
    shaper = NetShaper(netns=a)
    shaper.shape("vtap", rate_bps=250_000, ceil_bps=1_000_000)
    assert shaper.ceiling_bps("vtap") == pytest.approx(1_000_000)
    assert shaper.ceiling_bps(shaper.ifb_name("vtap")) == pytest.approx(1_000_000)
    rate = transfer_rate(a, b)
    assert 0.7e6 <= rate <= 1.15e6, f"ceiling 1 MB/s, measured {rate / 1e6:.2f} MB/s"
    shaper.clear("vtap")
    assert shaper.ceiling_bps("vtap") is None
    links = subprocess.run(["ip", "netns", "exec", a, "ip", "link"], capture_output=True, text=True).stdout
    assert shaper.ifb_name("vtap") not in links
    assert transfer_rate(a, b) > 3e6  # unshaped again


def test_shaping_takes_over_an_explicit_noqueue_root_as_libvirt_leaves_on_its_taps(veth_pair):
    a, _ = veth_pair
    subprocess.run(["tc", "-n", a, "qdisc", "add", "dev", "vtap", "root", "handle", "0:", "noqueue"], check=True)
    shaper = NetShaper(netns=a)
    shaper.shape("vtap", rate_bps=250_000, ceil_bps=1_000_000)
    assert shaper.ceiling_bps("vtap") == pytest.approx(1_000_000)
