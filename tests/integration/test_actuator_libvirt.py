"""The actuator's libvirt backend against libvirt's test driver: calls made and read back."""

from __future__ import annotations

import shutil
from pathlib import Path

import libvirt
import numpy as np
import pytest
from rescoin.services.actuator.backend import NO_LIMIT, Change, Setting
from rescoin.services.actuator.backend_libvirt import LibvirtActuatorBackend
from rescoin.services.actuator.core import ActuatorCore
from rescoin.services.runtime.cgroups import CgroupMounts
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.qemu import QemuPids
from rescoin.services.runtime.support import Counters

from tests.support.messages import alloc_envelope, make_alloc

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "libvirt" / "host4.xml"
VM1 = "11111111-1111-1111-1111-111111111111"
VM2 = "22222222-2222-2222-2222-222222222222"


@pytest.fixture
def backend():
    cfg = load_config(None, [f"actuator.uri='test://{FIXTURE}'", "actuator.net_shaping='libvirt'"])
    b = LibvirtActuatorBackend(cfg.actuator)
    yield b
    b.close()


def test_domains_are_the_running_ones_with_their_memory_size(backend):
    doms = backend.domains()
    assert set(doms) == {VM1, VM2, "44444444-4444-4444-4444-444444444444"}
    assert doms[VM1].mem_max_bytes == 1024 * 2**20


def test_shares_memory_disk_and_net_are_set_and_read_back(backend):
    errors = backend.write(
        [
            Change(VM1, 0, Setting(NO_LIMIT, 0.5)),  # the test driver: shares only, as 'weight'
            Change(VM1, 1, Setting(512 * 2**20, 0.0)),
            Change(VM2, 2, Setting(4 * 2**20, 0.0)),
            Change(VM1, 3, Setting(2 * 2**20, 1.0)),
        ]
    )
    assert errors == []
    dom1, dom2 = backend.libvirt.get().lookupByUUIDString(VM1), backend.libvirt.get().lookupByUUIDString(VM2)
    # libvirt 9.0's test driver accepts a weight but keeps reporting 50: no read-back possible
    assert set(dom1.schedulerParameters()) == {"weight"}
    assert dom1.info()[2] == 512 * 1024  # KiB
    assert dom2.blockIoTune("vda", 0)["total_bytes_sec"] == 4 * 2**20
    assert dom2.blockIoTune("vdb", 0)["total_bytes_sec"] == 4 * 2**20  # every disk
    assert dom1.interfaceParameters("testnet0", 0)["inbound.average"] == 2048  # KiB/s
    assert backend.read(VM1, 1).ceiling == 512 * 2**20 and backend.read(VM1, 3).ceiling == 2 * 2**20


def test_the_probe_says_what_can_hold_each_resource_of_each_domain(backend):
    cpu, mem, disk, net = backend.probe(VM1)
    assert cpu.weight and not cpu.ceiling and "no cpu quota" in cpu.how  # the test driver has only 'weight'
    assert mem.ceiling and not mem.weight
    assert disk.weight and disk.ceiling
    assert net.ceiling and not net.weight and "testnet0" in net.how  # interface averages: a throttle


def test_a_quota_the_driver_cannot_hold_is_never_attempted_and_the_weight_still_is(backend, tmp_path):
    core = ActuatorCore("h1", backend.settings, backend, Counters(), tmp_path)
    vms = sorted(backend.domains())
    n = len(vms)
    template = np.tile([0.5, 256 * 2**20, 0.0, 0.0], (n, 1))
    body = make_alloc(vms, template * 2, template, template * 0.1, np.array([8.0, 16 * 2**30, 1e9, 1e9]))
    applied = core.on_alloc(alloc_envelope(1, body))  # ceilings mode: cpu quotas asked
    assert applied.errors == [] and {letters[0] for letters in applied.enforced} == {"w"}


def test_unknown_vm_is_an_error_not_a_crash(backend):
    errors = backend.write([Change("99999999-9999-9999-9999-999999999999", 1, Setting(1e9, 0.0))])
    assert errors and errors[0].resource == "mem"


def test_a_shut_off_domain_is_not_offered(backend):
    assert "33333333-3333-3333-3333-333333333333" not in backend.domains()
    assert isinstance(libvirt.getVersion(), int) and np.isfinite(backend.read(VM2, 1).ceiling)


def test_a_domain_started_anew_gets_its_settings_again(backend, tmp_path):
    core = ActuatorCore("h1", backend.settings, backend, Counters(), tmp_path)
    vms = sorted(backend.domains())
    n = len(vms)
    template = np.tile([0.5, 256 * 2**20, 0.0, 0.0], (n, 1))
    alloc = np.tile([0.5, 768 * 2**20, 0.0, 0.0], (n, 1))
    capacity = np.array([8.0, 16 * 2**30, 1e9, 1e9])

    def apply(period):
        body = make_alloc(vms, alloc, template, template * 0.1, capacity)
        return core.on_alloc(alloc_envelope(period, body))

    apply(1)
    dom = backend.libvirt.get().lookupByUUIDString(VM1)
    assert dom.info()[2] == 768 * 1024
    dom.destroy()  # a new instance starts from its XML: 1 GiB, nothing of ours
    dom.create()
    assert dom.info()[2] == 1024 * 1024
    apply(2)  # the same alloc: only a fresh read can tell the setting is gone
    assert dom.info()[2] == 768 * 1024
    assert core.counters.values["vm_restarts"] == 1


def test_no_ceiling_below_the_template_the_domain_itself_states(backend, tmp_path):
    """vm1's XML states a disk template of 10 MiB/s and a net one of 1.25 MB/s: an alloc that caps it
    below either (a scheduler's bug, a forgery) is raised to the template and counted."""
    core = ActuatorCore("h1", backend.settings, backend, Counters(), tmp_path)
    assert backend.domains()[VM1].template[2:] == (10485760.0, 1250000.0)
    vms = sorted(backend.domains())
    n = len(vms)
    template = np.tile([0.5, 256 * 2**20, 1e5, 1e5], (n, 1))  # what the alloc claims: far below vm1's own
    body = make_alloc(vms, template, template, template * 0.1, np.array([8.0, 16 * 2**30, 1e9, 1e9]))
    applied = core.on_alloc(alloc_envelope(1, body))
    row = vms.index(VM1)
    assert applied.set[row, 2] == 10485760.0
    assert backend.libvirt.get().lookupByUUIDString(VM1).blockIoTune("vda", 0)["total_bytes_sec"] == 10485760
    assert core.counters.values["rejected.below_template"] == 1
    assert applied.set[vms.index(VM2), 2] == 1e5  # vm2 states no template: nothing to check against


class SchedDomain:
    """Stands in for a QEMU domain's scheduler calls (the test driver has no cpu_shares or quota)."""

    def __init__(self, shares: int, quota: int) -> None:
        self.params = {"cpu_shares": shares, "global_period": 100000, "global_quota": quota}

    def schedulerParameters(self) -> dict[str, int]:  # noqa: N802 - libvirt's name
        return dict(self.params)

    def ID(self) -> int:  # noqa: N802
        return 7


def domain_cgroup(tmp_path: Path, shares: int, quota: int) -> Path:
    group = tmp_path / "cpu" / "machine" / "qemu-7-vm1.libvirt-qemu"
    (group / "emulator").mkdir(parents=True)
    for name, value in (("cpu.shares", shares), ("cpu.cfs_quota_us", quota), ("cpu.cfs_period_us", 100000)):
        (group / name).write_text(f"{value}\n")
    return group


@pytest.mark.parametrize(("files_hold", "direct"), [((1024, -1), True), ((2048, -1), False), ((1024, 50000), False)])
def test_cpu_goes_straight_to_the_domains_cgroup_only_where_libvirt_reads_the_same_files(
    backend, tmp_path, files_hold, direct
):
    group = domain_cgroup(tmp_path, *files_hold)
    backend.mounts = CgroupMounts({"cpu": tmp_path / "cpu"}, None)
    qemu = tmp_path / "proc" / "4242"
    qemu.mkdir(parents=True)
    (qemu / "cmdline").write_bytes(b"qemu-system-x86_64\0-name\0guest=vm1,debug-threads=on\0")
    (qemu / "cgroup").write_text("1:cpu:/machine/qemu-7-vm1.libvirt-qemu/emulator\n0::/\n")
    backend.qemu_pids = QemuPids(str(tmp_path / "proc"), ())
    dom = SchedDomain(1024, -1)  # what libvirt reports for the domain
    facts = backend._facts(VM1, backend.libvirt.get().lookupByUUIDString(VM1))
    files = backend._direct_cpu_files(VM1, dom, facts, dom.schedulerParameters())
    assert (files is not None) == direct
    if not direct:  # another group, or files libvirt does not read: never written behind its back
        return
    backend.cpu_files[VM1] = files
    assert backend.write([Change(VM1, 0, Setting(0.5, 2.0))]) == []
    assert (group / "cpu.shares").read_text() == "2048" and (group / "cpu.cfs_quota_us").read_text() == "50000"
    assert (group / "emulator").is_dir() and not (group / "emulator" / "cpu.shares").exists()
    assert backend.read(VM1, 0) == Setting(0.5, 2.0)
    assert backend.write([Change(VM1, 0, Setting(NO_LIMIT, 0.0))]) == []  # no ceiling; the weight left as is
    assert (group / "cpu.cfs_quota_us").read_text() == "-1" and (group / "cpu.shares").read_text() == "2048"
    shutil.rmtree(group)  # the domain went away under us: an error for its cpu, no exception
    errors = backend.write([Change(VM1, 0, Setting(1.0, 1.0))])
    assert [e.resource for e in errors] == ["cpu"] and "qemu-7-vm1" in errors[0].error
