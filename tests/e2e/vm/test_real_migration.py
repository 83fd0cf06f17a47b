"""A real live migration of a QEMU/TCG guest between two libvirtds on this machine: coins and originals travel.

tests/integration/test_migration.py moves a domain's XML between two test-driver
connections; here the same pipeline logic (its ``Host``: monitor, scheduler and
actuator cores fed by hand, period by period) runs against two real libvirtds
that tests/support/libvirtd_pair.py starts, each in mount and network namespaces
of its own with its own host UUID. The idle guest saves coins on host A while
ResCoin changes its settings, then live-migrates to host B (virDomainMigrate3,
VIR_MIGRATE_LIVE, over a unix socket; the disk file is the same file for both,
hence VIR_MIGRATE_UNSAFE). On B it keeps running (its console's uptime goes on),
its ResCoin metadata arrived, its balance is A's within one period's credit, and
the originals B's actuator records are those found on A before ResCoin touched it.
"""

from __future__ import annotations

import os
import re
import time
import uuid

import libvirt
import pytest

from tests.e2e.vm.domains import GuestSpec, domain_xml
from tests.e2e.vm.timings import TIMINGS
from tests.integration.test_migration import Host
from tests.support import libvirtd_pair
from tests.support.bus import wait_for
from tests.support.need import missing
from tests.support.net import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.vm, pytest.mark.root, pytest.mark.libvirtd]
STATE_NS = "https://rescoin.dev/xmlns/state/1"
UPTIME = re.compile(r"RESCOIN-TICK name=rc-migrant up=([\d.]+)")


@pytest.fixture
def hosts(tmp_path):
    """Two private libvirtds, A and B: {name: daemon}; stopped (by PID) and removed afterwards."""
    reason = libvirtd_pair.missing_reason()
    if reason:
        missing(reason)
    daemons = {}
    try:
        for name in ("a", "b"):
            daemons[name] = libvirtd_pair.start(tmp_path / f"libvirtd-{name}", f"rescoin-mig-{name}")
        yield daemons
    finally:
        for daemon in daemons.values():
            libvirtd_pair.stop(daemon)


def guest_uptimes(spec: GuestSpec) -> list[float]:
    """The guest's own uptime on each console tick (every 5 s), oldest first."""
    if not spec.console_log.exists():
        return []
    return [float(up) for up in UPTIME.findall(spec.console_log.read_text(errors="replace"))]


def runs_on(spec: GuestSpec, since_uptime: float) -> bool:
    """The guest ticks on past ``since_uptime`` and its uptime never went back (no new boot).

    B's QEMU truncates the console file it takes over: then only B's ticks are there."""
    uptimes = guest_uptimes(spec)
    return bool(uptimes) and uptimes[-1] > since_uptime and uptimes == sorted(uptimes)


def test_a_live_migrated_vm_keeps_its_coins_and_its_true_originals(hosts, guest_image, tmp_path):
    image = tmp_path / "rc-migrant.img"
    image.write_bytes(os.urandom(16 * 2**20))
    keys = tmp_path / "keys"  # an idle guest mounts no 9p share (a mounted one would block the migration)
    keys.mkdir()
    spec = GuestSpec("rc-migrant", str(uuid.uuid4()), "idle", 128, 0.3, 32, 2**20, 0, free_port(), image, keys,
                     tmp_path / "rc-migrant.console.log")  # fmt: skip
    vm = spec.uuid
    conn_a, conn_b = libvirt.open(hosts["a"].uri), libvirt.open(hosts["b"].uri)
    try:
        t0 = time.monotonic()
        dom = conn_a.createXML(domain_xml(spec, guest_image), 0)
        assert wait_for(lambda: len(guest_uptimes(spec)) > 0, 120, 0.5), spec.console_log.read_text()
        TIMINGS.append(("migrant booted on A", time.monotonic() - t0))

        source = Host(hosts["a"].uri, tmp_path, "src")
        on_source, found = source.saves(vm)

        source_id = dom.ID()
        libvirtd_pair.skip_domain_id(conn_b, source_id)  # not A's cgroup (see there)
        up_before = guest_uptimes(spec)[-1]
        t0 = time.monotonic()
        migrated = dom.migrate3(
            conn_b,
            {libvirt.VIR_MIGRATE_PARAM_URI: f"unix://{tmp_path}/migration.sock"},
            libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_UNSAFE,
        )
        migrate_s = time.monotonic() - t0
        job = migrated.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        TIMINGS.append(("live migration A -> B (migrate3 call)", migrate_s))
        print(
            f"migrate3 took {migrate_s:.2f} s; libvirt's job: {job.get('time_elapsed')} ms, "
            f"downtime {job.get('downtime')} ms, {job.get('memory_processed', 0) / 2**20:.0f} MiB sent "
            f"in {job.get('memory_iteration')} passes; domain id {source_id} on A, {migrated.ID()} on B"
        )
        assert [d.UUIDString() for d in conn_a.listAllDomains()] == []  # gone from A
        assert migrated.ID() != source_id  # so a cgroup of its own on B
        assert migrated.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert STATE_NS in migrated.XMLDesc(0)  # ResCoin's metadata arrived with it
        assert wait_for(lambda: runs_on(spec, up_before), 30, 0.5), guest_uptimes(spec)  # the same guest

        Host(hosts["b"].uri, tmp_path, "dst").takes_in(vm, on_source, found)
    finally:
        conn_a.close()
        conn_b.close()
