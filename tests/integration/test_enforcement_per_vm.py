"""Each VM and each resource on its own, against libvirt's test driver: what cannot be enforced is said
with its reason, one VM's trouble never reaches the others, and `rescoin doctor` tells an operator."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import libvirt
import numpy as np
import pytest
from rescoin.services.actuator.backend_libvirt import LIVE, LibvirtActuatorBackend
from rescoin.services.actuator.blockdev import kernel_offers_bfq
from rescoin.services.actuator.core import ActuatorCore
from rescoin.services.runtime.cgroups import cgroup_mounts
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.domxml import STATE_NS
from rescoin.services.runtime.support import Counters

from tests.e2e.conftest import VENV_BIN
from tests.support.bus import wait_for
from tests.support.messages import alloc_envelope, make_alloc

ODD = Path(__file__).resolve().parents[1] / "fixtures" / "libvirt" / "host_odd.xml"
URI = f"test://{ODD}"
FINE, NO_BALLOON, TYPO, HUGEPAGES = (f"a0000000-0000-0000-0000-00000000000{i}" for i in range(1, 5))
CAPACITY = np.array([8.0, 16 * 2**30, 1e9, 1e9])


def make_core(tmp_path, *overrides):
    cfg = load_config(None, [f"actuator.uri='{URI}'", "actuator.net_shaping='libvirt'", *overrides])
    backend = LibvirtActuatorBackend(cfg.actuator)
    return ActuatorCore("h1", cfg.actuator, backend, Counters(), tmp_path)


def apply(core, period, vms=(FINE, NO_BALLOON, TYPO, HUGEPAGES), scale=1.0):
    vms = list(vms)
    template = np.tile([0.5, 256 * 2**20, 1e6, 1e6], (len(vms), 1))
    body = make_alloc(vms, template * 2 * scale, template, template * 0.1, CAPACITY)
    return core.on_alloc(alloc_envelope(period, body))


def cells(applied):
    return {vm: letters for vm, letters in zip(applied.vms, applied.enforced, strict=True)}


def reasons(applied):
    return {(u["vm"], u["resource"]): u["reason"] for u in applied.unenforced}


def test_what_one_vm_lacks_is_unenforced_with_its_reason_and_everything_else_is_enforced(tmp_path):
    core = make_core(tmp_path)
    applied = apply(core, 1)
    held = cells(applied)
    # the test driver: a cpu weight and no quota; a balloon; disk weight and throttle; an interface average
    assert held[FINE] == "wcbt"
    assert held[NO_BALLOON][1] == "x" and held[NO_BALLOON][3] == "x" and held[NO_BALLOON][0] == "w"
    assert held[HUGEPAGES][1:3] == "xx"
    assert reasons(applied) == {
        (NO_BALLOON, "mem"): "no_balloon",
        (NO_BALLOON, "net"): "no_device",
        (HUGEPAGES, "mem"): "no_balloon",
        (HUGEPAGES, "disk"): "no_device",
    }
    # a typo in one VM's template costs only its template: it is enforced, and the typo is said
    assert held[TYPO] == "wcbt"
    assert any(e["vm"] == TYPO and "not a number" in e["error"] for e in applied.errors)
    assert core.counters.values["unenforced.no_balloon"] == 2 and core.counters.values["unenforced.no_device"] == 2
    info = core.health().info
    assert info["enforced.x"] == 4 and sum(info[f"enforced.{k}"] for k in "wbct-x") == 16
    core.backend.close()


def test_a_domain_that_does_not_answer_is_skipped_as_busy_and_does_not_hold_up_the_others(tmp_path, monkeypatch):
    """A migration holds a domain's job lock for up to 30 s; a stopped QEMU answers nothing: that domain is
    reported busy within busy_after_s, the others' writes land, and the next period does not wait again."""
    core = make_core(tmp_path, "actuator.busy_after_s=0.3")
    apply(core, 1)  # probed and read while everyone answers
    release = threading.Event()
    real = LibvirtActuatorBackend._write_mem

    def stuck_for_one(self, vm, dom, setting):
        if vm == TYPO:
            release.wait(30)
        return real(self, vm, dom, setting)

    monkeypatch.setattr(LibvirtActuatorBackend, "_write_mem", stuck_for_one)
    try:
        started = time.monotonic()
        applied = apply(core, 2, scale=1.5)  # every balloon moves
        took = time.monotonic() - started
        held, why = cells(applied), reasons(applied)
        assert why[(TYPO, "mem")] == "busy" and held[TYPO][1] == "x"
        assert held[FINE][1] == "c" and core.backend.libvirt.get().lookupByUUIDString(FINE).info()[2] == int(
            256 * 1024 * 2 * 1.5
        )
        assert took < 0.3 + 1.0, took  # one wait of busy_after_s, not the stuck call
        started = time.monotonic()
        again = apply(core, 3, scale=2.0)
        assert reasons(again)[(TYPO, "mem")] == "busy" and time.monotonic() - started < 0.3 + 1.0
        assert core.counters.values["unenforced.busy"] >= 2
    finally:
        release.set()
    time.sleep(0.2)  # the stuck call returns; the domain answers again
    assert (TYPO, "mem") not in reasons(apply(core, 4, scale=2.5))
    core.backend.close()


def test_the_coins_kept_in_a_domain_s_metadata_are_never_waited_for(tmp_path, monkeypatch):
    """Each apply hands the VMs' coins to their domains' metadata (what a migration takes along) and returns:
    a domain whose write hangs holds up no apply and no other domain's write, gets no second write while
    its first still runs, and once that has run past busy_after_s it is busy (its settings are not queued
    behind the write)."""
    core = make_core(tmp_path, "actuator.carry_every_periods=1", "actuator.busy_after_s=0.3")
    backend = core.backend
    apply(core, 1)
    release = threading.Event()
    writes: Counter[str] = Counter()
    hung: list[int] = []  # the period TYPO's hanging write carries
    real = libvirt.virDomain.setMetadata

    def period_of(state_xml: str) -> int:
        return int(state_xml.split('period="')[1].split('"')[0])

    def hangs_for_one(dom, kind, xml, *args):
        writes[dom.UUIDString()] += 1
        if dom.UUIDString() == TYPO:
            hung.append(period_of(xml))
            release.wait(30)
        return real(dom, kind, xml, *args)

    def carried(vm: str) -> int:
        """The period of the coins ``vm``'s domain carries."""
        dom = backend.libvirt.get().lookupByUUIDString(vm)
        return period_of(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, STATE_NS, LIVE))

    def written(vm: str) -> bool:
        return vm not in backend.in_flight or backend.in_flight[vm][0].done()

    monkeypatch.setattr(libvirt.virDomain, "setMetadata", hangs_for_one)
    try:
        period = 1
        while not hung:  # TYPO's write of period 1 may still be running: then it is skipped, not queued
            assert wait_for(lambda: written(FINE) and (bool(hung) or written(TYPO)))
            period += 1
            apply(core, period)
            assert wait_for(lambda: bool(hung) or written(TYPO))
        time.sleep(0.3)  # TYPO's write runs past busy_after_s
        assert wait_for(lambda: written(FINE))
        applied = apply(core, period + 1, scale=1.5)  # every balloon moves, TYPO's write still hanging
        assert reasons(applied)[(TYPO, "mem")] == "busy" and cells(applied)[FINE][1] == "c"
        # not tried and waited for busy_after_s: skipped at once
        assert any(e["vm"] == TYPO and "still answering" in e["error"] for e in applied.errors)
        assert writes[TYPO] == 1 and not release.is_set()
        assert wait_for(lambda: carried(FINE) == period + 1)  # the others' writes land meanwhile
    finally:
        release.set()
    assert wait_for(lambda: carried(TYPO) == hung[0] and written(TYPO))  # its write, let go
    apply(core, period + 2, scale=2.0)
    assert wait_for(lambda: carried(TYPO) == period + 2)
    assert writes[TYPO] == 2
    core.backend.close()


def doctor(*args):
    run = subprocess.run([str(VENV_BIN / "rescoin"), "doctor", *args], capture_output=True, text=True, timeout=60)
    return run.returncode, run.stdout, run.stderr


def test_doctor_says_what_holds_on_each_vm_and_on_this_host():
    status, out, err = doctor("--uri", URI, "--json")
    assert status == 0, err
    report = json.loads(out)
    by_name = {vm["name"]: vm for vm in report["vms"]}
    assert by_name["odd-noballoon"]["resources"]["mem"]["reason"] == "no_balloon"
    assert by_name["odd-noballoon"]["resources"]["net"]["reason"] == "no_device"
    assert by_name["odd-hugepages"]["resources"]["disk"]["reason"] == "no_device"
    assert "not a number" in by_name["odd-typo"]["problem"]
    assert by_name["odd-fine"]["resources"]["cpu"]["mechanism"] == "weight"
    assert report["host"]["bfq"] == kernel_offers_bfq()
    assert report["host"]["cgroups"] == cgroup_mounts().layout()
    assert report["summary"].startswith("12 of 16")
    status, text, _ = doctor("--uri", URI)
    assert "NOT: no_balloon" in text and ("the kernel has no BFQ" in text) != kernel_offers_bfq()


def test_doctor_fails_when_nothing_can_be_enforced(tmp_path):
    status, out, _ = doctor("--uri", f"test://{tmp_path / 'no-such-host.xml'}", "--json")
    assert status == 1 and json.loads(out)["ok"] is False


@pytest.mark.parametrize("layout", ["v1", "v2"])
def test_libvirt_cpu_weights_follow_the_domains_cgroup_layout(layout, tmp_path, monkeypatch):
    """libvirt writes cpu_shares unchanged into v2's cpu.weight (1-10000): on a v2 host a 16-core share
    must become a legal weight, the others scaled with it."""
    from rescoin.services.actuator import backend_libvirt
    from rescoin.services.runtime.cgroups import CgroupMounts

    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu io memory\n")
    mounts = CgroupMounts({}, v2) if layout == "v2" else CgroupMounts({"cpu": tmp_path}, None)
    monkeypatch.setattr(backend_libvirt, "cgroup_mounts", lambda: mounts)
    core = make_core(tmp_path)
    vms = [FINE, TYPO]
    template = np.tile([0.5, 256 * 2**20, 1e6, 1e6], (2, 1))
    shares = np.array([[16.0, 0, 1e6, 1e6], [4.0, 0, 1e6, 1e6]])
    core.on_alloc(alloc_envelope(1, make_alloc(vms, template, template, template * 0.1, CAPACITY, "shares", shares)))
    params = core.backend.libvirt.get().lookupByUUIDString(FINE).schedulerParameters()
    weights = [core.in_force.weight[core.in_force.rows[vm], 0] * core.backend.cpu_weight_range().per_core for vm in vms]
    if layout == "v2":
        assert weights == pytest.approx([10000, 2500])  # 16 : 4 kept, the largest at v2's maximum
    else:
        assert weights == pytest.approx([16384, 4096])
    assert "weight" in params  # the test driver took it
    core.backend.close()


@pytest.mark.parametrize("events", [True, False], ids=["balloon-events", "no-events"])
def test_a_balloon_that_does_not_follow_its_target_is_reported_unenforced_until_it_does(tmp_path, monkeypatch, events):
    """A guest without a balloon driver: libvirt takes the target, the balloon never moves. After
    balloon_grace_periods the VM's memory is `x` no_balloon; once it reaches its target it is held again.
    It is looked at again when libvirt says its balloon moved (BALLOON_CHANGE), and not before; on a
    connection without those events, every grace periods."""
    core = make_core(tmp_path, "actuator.balloon_grace_periods=2")
    real = LibvirtActuatorBackend.read
    frozen = {FINE: 1024 * 2**20}  # the size it booted with
    reads: list[str] = []

    def balloon_never_moves(self, vm, resource):
        setting = real(self, vm, resource)
        if resource == 1:
            reads.append(vm)
        return type(setting)(frozen[vm], setting.weight) if resource == 1 and vm in frozen else setting

    monkeypatch.setattr(LibvirtActuatorBackend, "read", balloon_never_moves)
    if not events:  # the test driver takes the registration but never fires: stand in for one that refuses it
        monkeypatch.setattr(LibvirtActuatorBackend, "balloons_moved", lambda self: None)
    seen = [reasons(apply(core, period, scale=1.0 + period / 10)) for period in range(1, 6)]
    assert (FINE, "mem") not in seen[1]  # within its grace
    assert seen[-1][(FINE, "mem")] == "no_balloon" and (TYPO, "mem") not in seen[-1]  # the others follow
    assert "no balloon driver" in next(u["detail"] for u in apply(core, 6, scale=1.6).unenforced if u["vm"] == FINE)
    if events:
        apply(core, 7, scale=1.6)  # the look for period 6's new target
        reads.clear()
        stuck = [(FINE, "mem") in reasons(apply(core, p, scale=1.6)) for p in range(8, 11)]
        assert stuck == [True] * 3 and FINE not in reads  # no event, no new target: not read, still reported
        dom = core.backend.libvirt.get().lookupByUUIDString(FINE)
        core.backend._balloon_moved(None, dom, 1000 * 1024, None)  # libvirt's event thread: it moved a little
        assert (FINE, "mem") in reasons(apply(core, 11, scale=1.6)) and reads.count(FINE) == 1  # looked: still far
        # contention gone: its target is its whole size, where the stuck balloon sits; no event will come
        apply(core, 12, scale=3.0)
        assert (FINE, "mem") not in reasons(apply(core, 13, scale=3.0))  # looked at for the new target: held
        assert reads.count(FINE) == 2
    else:  # seen at its next look, every grace periods
        del frozen[FINE]  # the driver loaded: the balloon follows
        reads.clear()
        after = [(FINE, "mem") in reasons(apply(core, p, scale=1.0 + p / 10)) for p in range(7, 11)]
        assert after[2:] == [False, False] and after.index(False) < 2, after
    core.backend.close()
