"""ResCoin's own tc shaping on a real veth pair in namespaces the test creates (root)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest
from rescoin.services.actuator.netshape import NetShaper

A_ADDR, B_ADDR = "10.250.0.1", "10.250.0.2"
RECEIVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5901)); s.listen(1); print("ready", flush=True)
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
import socket, sys, time
c = socket.create_connection((sys.argv[1], 5901)); end = time.monotonic() + 5; chunk = b"x" * 65536
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


def start_receiver(ns: str, address: str) -> subprocess.Popen:
    receiver = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", RECEIVER, address], stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout.readline().strip() == "ready"
    return receiver


def start_sender(ns: str, address: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SENDER, address])


def transfer_rates(*flows: tuple[str, str, str]) -> list[float]:
    """Run (sender ns, receiver ns, receiver address) flows at the same time; bytes/s each received."""
    receivers = [start_receiver(dst, address) for _, dst, address in flows]
    senders = [start_sender(src, address) for src, _, address in flows]
    try:
        return [float(r.stdout.readline()) for r in receivers]
    finally:
        for proc in receivers + senders:
            proc.kill()
            proc.wait()


def test_shaping_holds_a_bulk_transfer_near_the_ceiling_and_clears(veth_pair):
    a, b = veth_pair
    shaper = NetShaper(netns=a)
    shaper.shape("vtap", rate_bps=250_000, ceil_bps=1_000_000)
    shaper.shape("vtap", rate_bps=250_000, ceil_bps=1_000_000)  # idempotent: no second filter
    assert shaper.ceiling_bps("vtap") == pytest.approx(1_000_000)
    for hook in ("ingress", "egress"):
        filters = subprocess.run(["tc", "-n", a, "filter", "show", "dev", "vtap", hook], capture_output=True, text=True)
        assert filters.stdout.count("mirred") == 1
    (rate,) = transfer_rates((a, b, B_ADDR))
    assert 0.7e6 <= rate <= 1.15e6, f"ceiling 1 MB/s, measured {rate / 1e6:.2f} MB/s"
    shaper.clear("vtap")
    assert shaper.ceiling_bps("vtap") is None
    links = subprocess.run(["ip", "netns", "exec", a, "ip", "link"], capture_output=True, text=True).stdout
    assert shaper.ifb_name("vtap") not in links
    assert transfer_rates((a, b, B_ADDR))[0] > 3e6  # unshaped again


def test_both_directions_share_one_ceiling(veth_pair):
    """A VM's network use is rx + tx: sending and receiving at once, it still gets the ceiling in all."""
    a, b = veth_pair
    NetShaper(netns=a).shape("vtap", rate_bps=250_000, ceil_bps=1_000_000)
    out, back = transfer_rates((a, b, B_ADDR), (b, a, A_ADDR))
    assert 0.7e6 <= out + back <= 1.15e6, f"ceiling 1 MB/s in all, measured {out / 1e6:.2f} + {back / 1e6:.2f} MB/s"


def test_shaping_takes_over_an_explicit_noqueue_root_as_libvirt_leaves_on_its_taps(veth_pair):
    a, _ = veth_pair
    subprocess.run(["tc", "-n", a, "qdisc", "add", "dev", "vtap", "root", "handle", "0:", "noqueue"], check=True)
    shaper = NetShaper(netns=a)
    shaper.shape("vtap", rate_bps=250_000, ceil_bps=1_000_000)
    assert shaper.ceiling_bps("vtap") == pytest.approx(1_000_000)
