"""Coins and original settings travel with a migrating VM, in its domain's metadata.

Two libvirt hosts (two test-driver connections: each has its own state), each
with its own actuator, monitor and scheduler logic. On the source the VM saves
coins for a while and ResCoin changes its settings; the domain's XML, as a
live migration carries it (metadata included), is then defined on the
destination. There the VM starts from the source's balance (within one
period's credit), not from 0, and its originals are the ones found before
ResCoin touched it on the source, not the source's ResCoin-set values.
"""

from __future__ import annotations

import libvirt
import numpy as np
import pytest
from rescoin.proto import Envelope
from rescoin.proto.messages import Estimate
from rescoin.services.actuator.backend_libvirt import LIVE, LibvirtActuatorBackend
from rescoin.services.actuator.core import ActuatorCore
from rescoin.services.monitor.backend_libvirt import LibvirtMonitorBackend
from rescoin.services.monitor.core import MonitorCore
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.domxml import STATE_NS
from rescoin.services.runtime.support import Counters
from rescoin.services.scheduler.core import SchedulerCore

from tests.integration.test_enforcement_per_vm import ODD
from tests.support.bus import wait_for

VM = "a0000000-0000-0000-0000-000000000001"  # odd-fine
CAPACITY = np.array([8.0, 1.5 * 2**30, 1e9, 1e9])  # memory contended: balloons are set


class Host:
    """One host's pipeline logic on its own libvirt connection, fed by hand period by period."""

    def __init__(self, uri: str, tmp_path, name: str) -> None:
        cfg = load_config(None, [f"actuator.uri='{uri}'", "actuator.net_shaping='libvirt'",
                                 "actuator.carry_every_periods=1", "scheduler.coin_window=20"])  # fmt: skip
        self.actuator = ActuatorCore(name, cfg.actuator, LibvirtActuatorBackend(cfg.actuator), Counters(),
                                     tmp_path / name)  # fmt: skip
        self.monitor_backend = LibvirtMonitorBackend(uri, 1)
        self.monitor = MonitorCore(cfg.monitor, Counters())
        self.scheduler = SchedulerCore(name, cfg.scheduler, Counters(), tmp_path / name, monotonic=lambda: self.now)
        self.now = 0.0

    def period(self, p: int):
        """One period: sample (the VM idle: it saves), estimate, alloc, apply."""
        sample = self.monitor.observe(self.monitor_backend.read(), p, 1.0, CAPACITY)
        sample.usage[:, :] = 0.0  # the test driver's counters do not move: the VMs idle, and save
        self.now += 1.0
        self.scheduler.on_sample(Envelope("sample", "h", "monitor", 1, p, 0, p, sample))
        est = Estimate(sample.vms, np.zeros((len(sample.vms), 4)), ["last"] * 4, {})
        (alloc,) = self.scheduler.on_estimate(Envelope("estimate", "h", "predictor", 1, p + 1, 0, p + 1, est))
        env = Envelope("alloc", "h", "scheduler", 1, p + 1, 0, p + 1, alloc.body)
        self.actuator.on_alloc(env)
        self.carried()
        return sample, alloc.body

    def coins(self, vm: str) -> np.ndarray:
        return self.scheduler.ledger.balances([vm])[0]

    def carried(self) -> None:
        """Wait until the coins this period handed to the domains' metadata have landed (the actuator does
        not wait for them; a period apart they always have)."""
        calls = self.actuator.backend.in_flight
        assert wait_for(lambda: all(call.done() for call, _busy_from in list(calls.values()))), "a write hangs"

    def saves(self, vm: str) -> tuple[np.ndarray, list]:
        """12 periods with ``vm`` idle: its balance (it saved cpu) and the originals ResCoin found, which
        it then changed."""
        for p in range(1000, 1012):
            self.period(p)
        dom = self.actuator.backend.libvirt.get().lookupByUUIDString(vm)
        assert 'period="1012"' in dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, STATE_NS, LIVE)  # the last
        coins = self.coins(vm)
        assert coins[0] > 0  # it saved cpu
        found = self.actuator.originals[vm]  # what was set before ResCoin's first write
        set_here = self.actuator.in_force.settings(vm)
        assert any(f is not None and s != f for f, s in zip(found, set_here, strict=True))  # ResCoin changed some
        print(f"on the source: coins {coins}, originals {found}, set by ResCoin {set_here}")
        return coins, found

    def takes_in(self, vm: str, on_source: np.ndarray, found: list) -> None:
        """Two periods here after ``vm`` arrived: its balance is the source's within one period's credit
        (not 0), and its originals are those found on the source, not what ResCoin had set there."""
        self.period(2000)  # this host's monitor sees it for the first time
        sample, _ = self.period(2001)
        assert vm in sample.carried_vms
        arrived = self.coins(vm)
        one_period = sample.template[sample.vms.index(vm)] / CAPACITY  # what one idle period credits
        assert arrived == pytest.approx(on_source, abs=float(one_period.max()) + 1e-9)  # not 0
        assert self.scheduler.counters.values["coins_carried_in"] == 1
        assert self.actuator.originals[vm] == found
        print(f"on the destination: coins {arrived}, originals {found}")
        assert self.actuator.restore().errors == []  # this host can put them back


def test_a_migrated_vm_keeps_its_coins_and_its_true_originals(tmp_path):
    source = Host(f"test://{ODD}", tmp_path, "src")
    dom = source.actuator.backend.libvirt.get().lookupByUUIDString(VM)
    on_source, found = source.saves(VM)
    xml = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)  # what a live migration sends, metadata included
    assert "https://rescoin.dev/xmlns/state/1" in xml

    destination_conn = libvirt.open("test:///default")  # another host: its own libvirt state
    for other in destination_conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        other.destroy()
    destination_conn.createXML(xml, 0)
    destination = Host("test:///default", tmp_path, "dst")
    destination.actuator.backend.libvirt.conn = destination_conn  # the host the VM now runs on
    destination.monitor_backend.libvirt.conn = destination_conn
    destination.takes_in(VM, on_source, found)


def test_a_forged_balance_is_bounded_by_what_the_window_could_earn(tmp_path):
    """Metadata is writable by whoever can define domains: a balance of 10^6 is cut and counted."""
    conn = libvirt.open("test:///default")
    for other in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        other.destroy()
    xml = (
        libvirt.open(f"test://{ODD}").lookupByUUIDString(VM).XMLDesc(0).replace("<metadata>", "", 1)
    )  # the fixture has none for this VM; add ours
    xml = xml.replace(
        "</name>",
        "</name><metadata><rescoin:state xmlns:rescoin='https://rescoin.dev/xmlns/state/1'>"
        "<rescoin:coins cpu='1e6' mem='0' disk='0' net='0' period='1'/></rescoin:state></metadata>",
        1,
    )
    conn.createXML(xml, 0)
    host = Host("test:///default", tmp_path, "h")
    host.actuator.backend.libvirt.conn = conn
    host.monitor_backend.libvirt.conn = conn
    host.period(10)
    sample, _ = host.period(11)
    template = sample.template[sample.vms.index(VM)]
    assert host.coins(VM)[0] == pytest.approx(20 * template[0] / CAPACITY[0])  # k periods of a full template
    assert host.scheduler.counters.values["rejected.carried_coins"] == 1
