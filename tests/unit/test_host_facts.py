"""The host's uplinks and the network capacity they give, on a fake /sys/class/net."""

from __future__ import annotations

import pytest
from rescoin.services.runtime.host import UNKNOWN_LINK_BPS, network_capacity_bps, uplinks


def test_the_uplinks_are_the_physical_nics_and_bonds_on_a_bridge_or_the_default_route(tmp_path):
    net = tmp_path / "net"

    def dev(name: str, speed: int | None = None, state: str = "up", physical: bool = True, master: str = "",
            kind: str = "") -> None:  # fmt: skip
        d = net / name
        d.mkdir(parents=True)
        (d / "operstate").write_text(f"{state}\n")
        if speed is not None:
            (d / "speed").write_text(f"{speed}\n")
        if physical:
            (d / "device").mkdir()
        if kind:
            (d / kind).mkdir()
        if master:
            (d / "master").symlink_to(net / master)

    dev("br0", physical=False, kind="bridge")
    dev("bond0", 20000, physical=False, kind="bonding", master="br0")  # two 10G ports: the bond counts
    dev("eno1", 10000, master="bond0")
    dev("eno2", 10000, master="bond0")
    dev("eno3", 1000)  # the default route's: the host's own traffic leaves there
    dev("eno4", 1000)  # up, but on no bridge and no default route: not an uplink
    dev("eno5", 25000, state="down", master="br0")
    dev("ens6", -1, master="br0")  # virtio: no speed
    dev("tap0", 10, physical=False, master="br0")  # a VM's tap
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway\nbond0\t0002000A\t0\neno3\t00000000\t0102000A\n")
    found = uplinks(str(net), str(route))
    assert found == {"bond0": 20000e6 / 8, "eno3": 1000e6 / 8}
    assert network_capacity_bps(0.0, lambda: found) == (21000e6 / 8, "bond0 20 Gbit/s, eno3 1 Gbit/s")
    assert network_capacity_bps(5e6, lambda: pytest.fail("sysfs read"))[0] == 5e6  # configured wins, unread
    assert network_capacity_bps(0.0, dict)[0] == UNKNOWN_LINK_BPS
