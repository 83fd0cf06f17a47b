"""ResCoin's own tc shaping on a real veth pair in namespaces the test creates (root)."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from rescoin.services.actuator.netshape import DOWN_IFB, UP_IFB, SharedLinkShaper

from tests.support.need import missing

pytestmark = pytest.mark.root

A_ADDR, B_ADDR = "10.250.0.1", "10.250.0.2"
TIMED_RECEIVER = """
import socket, sys, time
start, stop = float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5902)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); c.settimeout(1.0); total = 0
while time.time() < stop:
    try:
        b = c.recv(65536)
    except socket.timeout:
        continue
    if not b: break
    if time.time() >= start: total += len(b)
print(total / (stop - start), flush=True)
"""
TIMED_SENDER = """
import socket, sys, time
at, end = float(sys.argv[2]), float(sys.argv[3])
time.sleep(max(at - time.time(), 0))
c = socket.create_connection((sys.argv[1], 5902)); chunk = b"x" * 65536
try:
    while time.time() < end: c.sendall(chunk)
except OSError: pass
"""


def timed_rates(*flows: tuple[str, str, str], secs: float = 6.0, settle: float = 2.0) -> list[float]:
    """(sender ns, receiver ns, receiver address) flows sending at once for ``secs``; bytes/s each received
    in a window common to all, after ``settle`` seconds (TCP slow start, htb's initial burst)."""
    t0 = time.time() + 1.0
    start, stop = t0 + settle, t0 + secs - 0.5
    receivers = []
    for _, dst, address in flows:
        cmd = [sys.executable, "-c", TIMED_RECEIVER, address, str(start), str(stop)]
        receivers.append(subprocess.Popen(["ip", "netns", "exec", dst, *cmd], stdout=subprocess.PIPE, text=True))
        assert receivers[-1].stdout.readline().strip() == "ready"
    senders = [
        subprocess.Popen(
            ["ip", "netns", "exec", src, sys.executable, "-c", TIMED_SENDER, address, str(t0), str(t0 + secs)]
        )
        for src, _, address in flows
    ]
    try:
        return [float(r.stdout.readline()) for r in receivers]
    finally:
        for proc in receivers + senders:
            proc.kill()
            proc.wait()


# -- SharedLinkShaper: one htb tree per direction shared by all VMs -------------------------------------------------

LINK = 2_000_000  # bytes/s
GUEST_MACS = ("52:54:00:00:00:01", "52:54:00:00:00:02")


def ip(netns: str, *cmd: str) -> None:
    subprocess.run(["ip", "-n", netns, *cmd], check=True)


@contextmanager
def namespaces(prefix: str) -> Iterator[dict[str, str]]:
    """Three fresh network namespaces, ``host``, ``g1`` and ``g2``, deleted afterwards."""
    if os.geteuid() != 0 or shutil.which("tc") is None:
        missing("needs root and iproute2's tc")
    tag = uuid.uuid4().hex[:6]
    ns = {"host": f"{prefix}{tag}", "g1": f"{prefix}1{tag}", "g2": f"{prefix}2{tag}"}
    for name in ns.values():
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield ns
    finally:
        for name in ns.values():
            subprocess.run(["ip", "netns", "del", name])


@pytest.fixture
def host_and_guests():
    """Namespace ``host`` with taps tap1, tap2; their peers eth0 (GUEST_MACS) in namespaces ``g1``, ``g2``.

    host has 10.250.N.1 on tapN, guest N has 10.250.N.2: traffic stays on these veth pairs."""
    with namespaces("rcH") as ns:
        for n, mac in ((1, GUEST_MACS[0]), (2, GUEST_MACS[1])):
            guest = ns[f"g{n}"]
            ip(ns["host"], "link", "add", f"tap{n}", "type", "veth", "peer", "name", "eth0", "netns", guest)
            ip(guest, "link", "set", "eth0", "address", mac)
            ip(ns["host"], "addr", "add", f"10.250.{n}.1/24", "dev", f"tap{n}")
            ip(guest, "addr", "add", f"10.250.{n}.2/24", "dev", "eth0")
            ip(ns["host"], "link", "set", f"tap{n}", "up")
            ip(guest, "link", "set", "eth0", "up")
        yield ns


def shape_both(ns: dict[str, str], rates: tuple[float, float], ceils: tuple[float, float] = (math.inf, math.inf)):
    """Two VMs on one link; ceil inf = the link (shares mode)."""
    shaper = SharedLinkShaper(netns=ns["host"])
    for n in (1, 2):
        taps = [(f"tap{n}", GUEST_MACS[n - 1])]
        shaper.set_vm(f"vm{n}", taps, rate_bps=rates[n - 1], ceil_bps=ceils[n - 1], link_bps=LINK)
    return shaper


def tc_state(netns: str) -> str:
    out = []
    for dev in ("tap1", "tap2", UP_IFB, DOWN_IFB):
        for what in (["qdisc"], ["class"], ["filter", "parent", "1:"], ["filter", "parent", "ffff:"]):
            shown = subprocess.run(["tc", "-n", netns, *what[:1], "show", "dev", dev, *what[1:]], capture_output=True)
            out.append(f"{dev} {' '.join(what)}: {shown.stdout.decode()}{shown.stderr.decode()}")
    # not state: `filter replace` makes a new mirred instance; the taps' htb counts what the ifb hands back
    return re.sub(r"(index|direct_packets_stat) \d+", r"\1 N", "\n".join(out))


@pytest.mark.parametrize("direction", ["up", "down"])
def test_shares_split_a_contended_link(host_and_guests, direction):
    """Two VMs at once through one tree, shares 3:1 of a 2 MB/s link: the rates follow the shares."""
    ns = host_and_guests
    shape_both(ns, rates=(0.75 * LINK, 0.25 * LINK))
    if direction == "up":  # guests send to the host
        flows = [(ns["g1"], ns["host"], "10.250.1.1"), (ns["g2"], ns["host"], "10.250.2.1")]
    else:
        flows = [(ns["host"], ns["g1"], "10.250.1.2"), (ns["host"], ns["g2"], "10.250.2.2")]
    big, small = timed_rates(*flows)
    print(f"\n{direction}: shares 3:1 of {LINK / 1e6:.1f} MB/s -> {big / 1e6:.3f} + {small / 1e6:.3f} MB/s, "
          f"ratio {big / small:.2f}, total {(big + small) / LINK:.1%} of the link")  # fmt: skip
    assert 2.0 <= big / small <= 4.0
    assert 0.8 * LINK <= big + small <= 1.05 * LINK


@pytest.mark.parametrize("direction", ["up", "down"])
def test_an_idle_neighbour_leaves_the_link_to_the_busy_vm(host_and_guests, direction):
    """Work-conserving: the VM with the small share gets (nearly) the whole link while the other is idle."""
    ns = host_and_guests
    shape_both(ns, rates=(0.75 * LINK, 0.25 * LINK))
    flow = (ns["g2"], ns["host"], "10.250.2.1") if direction == "up" else (ns["host"], ns["g2"], "10.250.2.2")
    (rate,) = timed_rates(flow)
    print(f"\n{direction}: share 1/4 of {LINK / 1e6:.1f} MB/s, neighbour idle -> {rate / 1e6:.3f} MB/s "
          f"({rate / LINK:.1%} of the link)")  # fmt: skip
    assert 0.8 * LINK <= rate <= 1.05 * LINK


def test_ceilings_mode_holds_a_vm_to_its_ceiling_on_an_idle_link(host_and_guests):
    ns = host_and_guests
    shape_both(ns, rates=(0.75 * LINK, 0.25 * LINK), ceils=(LINK, 0.5 * LINK))
    (rate,) = timed_rates((ns["g2"], ns["host"], "10.250.2.1"))
    print(f"\nceiling {0.5 * LINK / 1e6:.1f} MB/s, link idle -> {rate / 1e6:.3f} MB/s")
    assert 0.35 * LINK <= rate <= 0.53 * LINK


def test_shared_shaping_is_idempotent_and_survives_a_restart(host_and_guests):
    ns = host_and_guests
    shape_both(ns, rates=(0.75 * LINK, 0.25 * LINK))
    first = tc_state(ns["host"])
    assert "flowid 1:10" in first and "flowid 1:11" in first
    shape_both(ns, rates=(0.75 * LINK, 0.25 * LINK))  # a new object: recovers the classes from tc
    assert tc_state(ns["host"]) == first
    again = SharedLinkShaper(netns=ns["host"])
    again.set_vm(
        "vm2", [("tap2", GUEST_MACS[1])], rate_bps=0.25 * LINK, ceil_bps=LINK, link_bps=LINK
    )  # vm2 first this time
    again.set_vm("vm1", [("tap1", GUEST_MACS[0])], rate_bps=0.75 * LINK, ceil_bps=LINK, link_bps=LINK)
    again.set_vm("vm1", [("tap1", GUEST_MACS[0])], rate_bps=0.75 * LINK, ceil_bps=LINK, link_bps=LINK)
    assert tc_state(ns["host"]) == first
    for hook in ("parent 1:", "parent ffff:"):
        shown = subprocess.run(f"tc -n {ns['host']} filter show dev tap1 {hook}".split(), capture_output=True)
        assert shown.stdout.decode().count("mirred") == 1
    room = LINK * 0.99  # the unclassified class keeps 1 %: Σ rates = the link is scaled to fit beside it
    assert again.rate_bps("vm1") == pytest.approx(0.75 * room, rel=1e-3)
    assert again.ceiling_bps("vm2") == pytest.approx(LINK, rel=1e-3)
    assert again.ceiling_bps("vm3") is None
    again.set_vm(
        "vm2", [("tap2", GUEST_MACS[1])], rate_bps=0.75 * LINK, ceil_bps=LINK, link_bps=LINK
    )  # Σ 1.5 links: scaled
    assert again.rate_bps("vm1") == pytest.approx(room / 2, rel=1e-3)
    assert again.rate_bps("vm2") == pytest.approx(room / 2, rel=1e-3)
    again.remove_vm("vm2")
    again.remove_vm("vm2")
    assert again.rate_bps("vm2") is None
    assert again.rate_bps("vm1") == pytest.approx(0.75 * LINK, rel=1e-3)  # fits alone: what was asked
    assert "1:11" not in tc_state(ns["host"])
    assert "ingress" not in subprocess.run(f"tc -n {ns['host']} qdisc show dev tap2".split(), capture_output=True,
                                           text=True).stdout  # fmt: skip


def test_after_a_restart_what_no_vm_claims_is_removed_as_stale(host_and_guests):
    ns = host_and_guests
    shape_both(ns, rates=(0.75 * LINK, 0.25 * LINK))
    again = SharedLinkShaper(netns=ns["host"])
    again.set_vm(
        "vm1", [("tap1", GUEST_MACS[0])], rate_bps=0.75 * LINK, ceil_bps=LINK, link_bps=LINK
    )  # vm2 went meanwhile
    again.remove_stale()
    state = tc_state(ns["host"])
    assert "1:10" in state and "1:11" not in state
    assert "mirred" not in state.split("tap2 filter parent ffff:")[1].split("tap2 filter", 1)[0]
    assert again.rate_bps("vm1") == pytest.approx(0.75 * LINK, rel=1e-3)


def test_clear_leaves_nothing_behind(host_and_guests):
    ns = host_and_guests
    before = {n: subprocess.run(f"tc -n {ns['host']} qdisc show dev tap{n}".split(), capture_output=True).stdout
              for n in (1, 2)}  # fmt: skip
    shape_both(ns, rates=(0.75 * LINK, 0.25 * LINK))
    SharedLinkShaper(netns=ns["host"]).clear()  # a fresh object finds what an earlier one left
    for n in (1, 2):
        after = subprocess.run(f"tc -n {ns['host']} qdisc show dev tap{n}".split(), capture_output=True).stdout
        assert after == before[n]
    links = subprocess.run(["ip", "-n", ns["host"], "link"], capture_output=True, text=True).stdout
    assert UP_IFB not in links and DOWN_IFB not in links
    (rate,) = timed_rates((ns["g1"], ns["host"], "10.250.1.1"), secs=3.0, settle=1.0)
    assert rate > 2 * LINK  # unshaped again


def test_the_last_vm_removed_takes_the_trees_with_it(host_and_guests):
    """What restore does: every VM out of the tree, and no ifb left on the host."""
    ns = host_and_guests
    shaper = shape_both(ns, rates=(0.75 * LINK, 0.25 * LINK))
    shaper.remove_vm("vm1")
    assert UP_IFB in subprocess.run(["ip", "-n", ns["host"], "link"], capture_output=True, text=True).stdout
    shaper.remove_vm("vm2")
    links = subprocess.run(["ip", "-n", ns["host"], "link"], capture_output=True, text=True).stdout
    assert UP_IFB not in links and DOWN_IFB not in links


def test_a_tap_with_libvirts_noqueue_root_is_taken_over(host_and_guests):
    ns = host_and_guests
    subprocess.run(
        ["tc", "-n", ns["host"], "qdisc", "add", "dev", "tap1", "root", "handle", "0:", "noqueue"], check=True
    )
    shape_both(ns, rates=(0.75 * LINK, 0.25 * LINK))
    shown = subprocess.run(
        ["tc", "-n", ns["host"], "filter", "show", "dev", "tap1", "parent", "1:"], capture_output=True
    )
    assert b"rcb-down" in shown.stdout


def test_any_process_reads_a_guests_class_by_its_mac_and_a_new_link_rescales(host_and_guests):
    ns = host_and_guests
    shaper = shape_both(ns, rates=(0.5 * LINK, 0.25 * LINK), ceils=(math.inf, 0.5 * LINK))
    reader = SharedLinkShaper(netns=ns["host"])  # knows no VM: finds the class through the MAC filters
    assert reader.class_of_mac(GUEST_MACS[1].upper()) == (
        pytest.approx(0.25 * LINK, rel=1e-3),
        pytest.approx(0.5 * LINK, rel=1e-3),
    )
    assert reader.class_of_mac("52:54:00:00:00:99") is None
    shaper.set_vm("vm1", [("tap1", GUEST_MACS[0])], rate_bps=0.5 * LINK, ceil_bps=math.inf, link_bps=LINK / 2)
    rate, ceil = reader.class_of_mac(GUEST_MACS[0])
    assert ceil == pytest.approx(LINK / 2, rel=1e-3)  # the link shrank: ceil inf = the new link
    assert rate + reader.class_of_mac(GUEST_MACS[1])[0] <= LINK / 2  # Σ rates scaled into the new link


def test_a_qdisc_rescoin_did_not_create_is_found_and_never_touched(host_and_guests):
    """Someone's QoS on a tap (libvirt's <bandwidth>, Neutron: a shaping root, a policing ingress) is
    reported, and a tap ResCoin shapes itself, or a kernel default, is not."""
    ns = host_and_guests
    shaper = SharedLinkShaper(netns=ns["host"])
    assert shaper.foreign_qdisc("tap1") == shaper.foreign_qdisc("tap2") == ""  # the veth's own default
    subprocess.run(["tc", "-n", ns["host"], "qdisc", "add", "dev", "tap2", "root", "tbf", "rate", "1mbit",
                    "burst", "32k", "latency", "50ms"], check=True)  # fmt: skip
    shaper.set_vm("vm1", [("tap1", GUEST_MACS[0])], rate_bps=LINK / 2, ceil_bps=math.inf, link_bps=LINK)
    assert shaper.foreign_qdisc("tap1") == ""  # our own class-less htb and redirect
    assert "tbf" in shaper.foreign_qdisc("tap2")
    shaper.remove_vm("vm1")
    shown = subprocess.run(["tc", "-n", ns["host"], "qdisc", "show", "dev", "tap2"], capture_output=True, text=True)
    assert "tbf" in shown.stdout  # what ResCoin did not create survives it


# -- a Linux bridge: guest-to-guest traffic, a VM with two NICs, the bridge's own QoS ----------------------------------

TWO_NIC_MACS = ("52:54:00:00:00:03", "52:54:00:00:00:04")


@pytest.fixture
def bridged():
    """Namespace ``host`` with bridge br0 (10.251.0.254 and .253, its own tbf root: someone's QoS) and on it tap1
    (guest g1, GUEST_MACS[0], 10.251.0.1) and tap2 (guest g2's first NIC, 10.251.0.2); g2's second NIC is
    routed, not bridged: tap3 (10.252.0.1) to g2's eth1 (10.252.0.2)."""
    with namespaces("rcB") as ns:
        ip(ns["host"], "link", "add", "br0", "type", "bridge")
        ip(ns["host"], "addr", "add", "10.251.0.254/24", "dev", "br0")
        ip(ns["host"], "addr", "add", "10.251.0.253/24", "dev", "br0")  # a second host address: a receiver each
        ip(ns["host"], "link", "set", "br0", "up")
        nics = (("tap1", "g1", "eth0", GUEST_MACS[0], "10.251.0.1", True),
                ("tap2", "g2", "eth0", TWO_NIC_MACS[0], "10.251.0.2", True),
                ("tap3", "g2", "eth1", TWO_NIC_MACS[1], "10.252.0.2", False))  # fmt: skip
        for tap, guest, dev, mac, address, bridged_nic in nics:
            ip(ns["host"], "link", "add", tap, "type", "veth", "peer", "name", dev, "netns", ns[guest])
            ip(ns[guest], "link", "set", dev, "address", mac)
            ip(ns[guest], "addr", "add", f"{address}/24", "dev", dev)
            if bridged_nic:
                ip(ns["host"], "link", "set", tap, "master", "br0")
            else:
                ip(ns["host"], "addr", "add", "10.252.0.1/24", "dev", tap)
            ip(ns["host"], "link", "set", tap, "up")
            ip(ns[guest], "link", "set", dev, "up")
        subprocess.run(["tc", "-n", ns["host"], "qdisc", "add", "dev", "br0", "root", "tbf", "rate", "1gbit",
                        "burst", "256k", "latency", "50ms"], check=True)  # fmt: skip
        yield ns


def shape_bridged(ns: dict[str, str], rates: tuple[float, float]) -> SharedLinkShaper:
    shaper = SharedLinkShaper(netns=ns["host"])
    shaper.set_vms([("vm1", [("tap1", GUEST_MACS[0])], rates[0], math.inf),
                    ("vm2", [("tap2", TWO_NIC_MACS[0]), ("tap3", TWO_NIC_MACS[1])], rates[1], math.inf)],
                   LINK)  # fmt: skip
    return shaper


def classes(netns: str) -> dict[str, tuple[str, float]]:
    """classid -> (parent, rate in bytes/s) on rcb-up."""
    shown = subprocess.run(["tc", "-n", netns, "class", "show", "dev", UP_IFB], capture_output=True, text=True)
    si = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}
    found = re.findall(r"class htb (1:[0-9a-f]+) (root|parent (1:[0-9a-f]+)).*? rate (\d+)([KMG]?)bit", shown.stdout)
    return {cid: (parent or "root", float(n) * si[unit] / 8) for cid, _, parent, n, unit in found}


def test_guest_to_guest_traffic_on_a_bridge_is_not_capped_by_the_link(bridged):
    ns = bridged
    shape_bridged(ns, rates=(0.25 * LINK, 0.75 * LINK))
    (between_guests,) = timed_rates((ns["g1"], ns["g2"], "10.251.0.2"), secs=4.0, settle=1.0)
    (to_the_link,) = timed_rates((ns["g1"], ns["host"], "10.251.0.254"), secs=4.0, settle=1.0)
    print(f"\nlink {LINK / 1e6:.1f} MB/s: guest to guest over br0 {between_guests / 1e6:.1f} MB/s, "
          f"guest to the host {to_the_link / 1e6:.2f} MB/s")  # fmt: skip
    assert 0.8 * LINK <= to_the_link <= 1.05 * LINK  # what leaves through the link is held to it
    assert between_guests > 5 * LINK  # what stays on the bridge is not


def test_a_vm_with_two_nics_has_a_class_per_nic_and_its_share_over_both(bridged):
    ns = bridged
    shape_bridged(ns, rates=(0.25 * LINK, 0.75 * LINK))
    tree = classes(ns["host"])
    nic_classes = [cid for cid, (parent, _) in tree.items() if parent not in ("root", "1:1")]
    assert len(nic_classes) == 2 and len({tree[c][0] for c in nic_classes}) == 1  # two NICs under one VM class
    vm2_class = tree[nic_classes[0]][0]
    assert tree[vm2_class][1] == pytest.approx(0.75 * LINK * 0.99, rel=0.02)  # the VM's share, beside 1:2's 1 %
    assert all(tree[c][1] == pytest.approx(tree[vm2_class][1] / 2, rel=0.02) for c in nic_classes)
    vm1, nic_a, nic_b = timed_rates((ns["g1"], ns["host"], "10.251.0.254"), (ns["g2"], ns["host"], "10.251.0.253"),
                                    (ns["g2"], ns["host"], "10.252.0.1"))  # fmt: skip
    print(f"\nshares 1:3, VM2 on two NICs: vm1 {vm1 / 1e6:.3f}, vm2 {nic_a / 1e6:.3f} + {nic_b / 1e6:.3f} MB/s")
    assert 2.0 <= (nic_a + nic_b) / vm1 <= 4.0  # the VM's share, whichever NIC carries it
    assert 0.6 <= nic_a / nic_b <= 1.6  # its NICs share it evenly
    assert 0.8 * LINK <= vm1 + nic_a + nic_b <= 1.05 * LINK


def test_a_restart_recovers_the_nic_classes_and_a_nic_unplugged_takes_its_class_with_it(bridged):
    ns = bridged
    shape_bridged(ns, rates=(0.25 * LINK, 0.75 * LINK))
    before = tc_state(ns["host"])
    shape_bridged(ns, rates=(0.25 * LINK, 0.75 * LINK))  # a new object: the same tree, nothing moved
    assert tc_state(ns["host"]) == before
    again = SharedLinkShaper(netns=ns["host"])
    again.set_vm("vm2", [("tap2", TWO_NIC_MACS[0])], rate_bps=0.75 * LINK, ceil_bps=math.inf, link_bps=LINK)
    again.remove_stale()  # vm1 is gone; vm2 has one NIC left
    tree = classes(ns["host"])
    assert [parent for parent, _ in tree.values()].count("1:1") == 2  # 1:2 and vm2's, a leaf again
    assert not [cid for cid, (parent, _) in tree.items() if parent not in ("root", "1:1")]
    assert again.class_of_mac(TWO_NIC_MACS[0]) == (pytest.approx(0.75 * LINK, rel=1e-3), pytest.approx(LINK))
    assert again.class_of_mac(TWO_NIC_MACS[1]) is None and again.class_of_mac(GUEST_MACS[0]) is None
    again.remove_vm("vm2")
    shown = subprocess.run(["tc", "-n", ns["host"], "qdisc", "show", "dev", "br0"], capture_output=True, text=True)
    assert "tbf" in shown.stdout  # the bridge's own QoS was never touched


def test_a_tree_an_earlier_version_left_is_taken_over_without_moving_its_classes(host_and_guests):
    """0.2's filters sat at u32 nodes from 1, where guest-to-guest filters go now: they move up, the VM
    keeps its class."""
    ns = host_and_guests
    run = lambda *cmd: subprocess.run(["tc", "-n", ns["host"], *cmd], check=True)  # noqa: E731
    for ifb, match in ((UP_IFB, "src"), (DOWN_IFB, "dst")):
        subprocess.run(["ip", "-n", ns["host"], "link", "add", ifb, "type", "ifb"], check=True)
        subprocess.run(["ip", "-n", ns["host"], "link", "set", ifb, "up"], check=True)
        run("qdisc", "add", "dev", ifb, "root", "handle", "1:", "htb", "default", "2")
        run("class", "add", "dev", ifb, "parent", "1:", "classid", "1:1", "htb", "rate", "16mbit")
        run("class", "add", "dev", ifb, "parent", "1:1", "classid", "1:17", "htb", "rate", "4mbit")
        run("filter", "add", "dev", ifb, "parent", "1:", "protocol", "all", "prio", "1", "handle", "800::1", "u32",
            "match", "ether", match, GUEST_MACS[0], "flowid", "1:17")  # fmt: skip
    shaper = SharedLinkShaper(netns=ns["host"])
    shaper.set_vm("vm1", [("tap1", GUEST_MACS[0])], rate_bps=0.5 * LINK, ceil_bps=math.inf, link_bps=LINK)
    shown = subprocess.run(["tc", "-n", ns["host"], "filter", "show", "dev", UP_IFB, "parent", "1:"],
                           capture_output=True, text=True).stdout  # fmt: skip
    assert re.search(r"fh 800::1 .*flowid 1:3", shown) and re.search(r"fh 800::800 .*flowid 1:17", shown), shown
    assert shaper.rate_bps("vm1") == pytest.approx(0.5 * LINK, rel=1e-3)
