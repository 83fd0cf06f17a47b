"""ResCoin managing real QEMU/TCG guests: every assertion is on measured values.

The module's VMs: "rc-saver" idles for SAVER_IDLE_S (earning coins) and then
burns one vCPU; "rc-hog" burns from boot and reads its disk in a loop;
"rc-liar"'s agent claims to be rc-saver; "rc-streamer" streams over a tap to a
sink in libvirtd's network namespace. The host is made small by configuration
(1 core, 80 MiB for guests, 3 MiB/s of disk, 250 kB/s of network), so they
contend. Tests run in order on one pipeline; the last one stops it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest
from rescoin.services.actuator.netshape import DOWN_IFB, UP_IFB

from tests.e2e.vm.conftest import HONEST, MEM_RESERVE, PERIOD_S, SAVER_IDLE_S
from tests.e2e.vm.timings import TIMINGS
from tests.support.bus import wait_for
from tests.support.machine import machine_lacks

pytestmark = [pytest.mark.e2e, pytest.mark.vm, pytest.mark.root, pytest.mark.libvirtd]
CPU, MEM, DISK, NET = 0, 1, 2, 3
MIB = 2**20


def samples(pipe, since=0.0):
    return pipe.watcher.since(since, "sample")


def rows(env, vm):
    return env.body.vms.index(vm) if vm in env.body.vms else None


def test_every_vm_appears_with_its_template_and_the_agent_reports_its_memory(lab, host_pipeline):
    t0 = time.monotonic()
    vms = {s.uuid: s for s in lab.specs}
    honest = [s.uuid for s in lab.specs[:HONEST]]

    def agent_reports_in_sample():
        got = samples(host_pipeline)
        if not got or not set(vms) <= set(got[-1].body.vms):
            return False
        return all(got[-1].body.mem_source[got[-1].body.vms.index(vm)] == "guest" for vm in honest)

    assert wait_for(agent_reports_in_sample, 120, 0.5), host_pipeline.logs()
    TIMINGS.append(("pipeline up until guest-agent memory in samples", time.monotonic() - t0))
    last = samples(host_pipeline)[-1].body
    for vm, spec in vms.items():
        i = last.vms.index(vm)
        assert last.template[i].tolist() == [
            spec.template_cpu,
            spec.template_mem_mib * MIB,
            spec.template_disk_bps,
            spec.template_net_bps,
        ]
        assert 0 < last.usage[i, MEM] < spec.mem_mib * MIB  # the guest's own MemTotal − MemAvailable


def test_cpu_the_vm_with_coins_gets_more_and_measured_use_follows_the_quota(lab, host_pipeline):
    saver, hog = (s.uuid for s in lab.specs[:HONEST])
    # wait until the saver has burned for a while: both now want a full core of the 1-core host
    deadline = SAVER_IDLE_S + 60

    def saver_burning_long_enough():  # the last 12 periods, not boot-time spikes
        recent = [e for e in samples(host_pipeline) if rows(e, saver) is not None][-12:]
        return len(recent) == 12 and all(e.body.usage[rows(e, saver), CPU] > 0.2 for e in recent)

    assert wait_for(saver_burning_long_enough, deadline, 1.0), host_pipeline.logs()
    window = [e for e in samples(host_pipeline) if rows(e, saver) is not None and rows(e, hog) is not None][-8:]
    use = np.array([[e.body.usage[rows(e, saver), CPU], e.body.usage[rows(e, hog), CPU]] for e in window])
    allocs = [e for e in host_pipeline.watcher.since(0, "alloc")][-8:]
    coins = allocs[-1].body.coins
    saver_row, hog_row = allocs[-1].body.vms.index(saver), allocs[-1].body.vms.index(hog)
    assert np.linalg.norm(np.maximum(coins[saver_row], 0)) > np.linalg.norm(np.maximum(coins[hog_row], 0))
    in_force = {e.period: e.body for e in host_pipeline.watcher.since(0, "applied")}  # applied p: set for p
    quotas = np.array(
        [
            [in_force[e.period].set[in_force[e.period].vms.index(vm), CPU] for vm in (saver, hog)]
            for e in window
            if e.period in in_force
        ]
    )
    mean, quota = use.mean(axis=0), quotas.mean(axis=0)
    print(f"cpu: saver {mean[0]:.3f} (quota {quota[0]:.3f}), hog {mean[1]:.3f} (quota {quota[1]:.3f})")
    last = window[-1].body
    print("cpu use of every VM:", {v.name: round(float(last.usage[last.vms.index(v.uuid), CPU]), 3) for v in lab.specs})
    assert mean[0] > mean[1] + 0.1  # coins bought the saver most of the spare (0.60 vs 0.31 measured)
    assert (mean >= 0.3 - 0.05).all()  # nobody below its template (0.3 core)
    assert (np.abs(mean - quota) < 0.15).all()  # TCG's measured use follows the quota in force
    applied = host_pipeline.watcher.latest("applied").body
    for spec in lab.specs:  # and libvirt holds what the actuator reported
        params = lab.dom(spec.name).schedulerParameters()
        assert params["global_quota"] == pytest.approx(
            applied.set[applied.vms.index(spec.uuid), CPU] * params["global_period"], rel=0.02
        )


def test_memory_balloon_target_is_set_visible_in_the_guest_and_above_use_plus_reserve(lab, host_pipeline):
    def ballooned():
        applied = host_pipeline.watcher.since(0, "applied")
        if not applied:
            return False
        body = applied[-1].body
        return all(0 < body.set[body.vms.index(s.uuid), MEM] < s.mem_mib * MIB for s in lab.specs[:HONEST])

    assert wait_for(ballooned, 60, 1.0), host_pipeline.logs()
    time.sleep(3 * PERIOD_S)  # the balloon driver needs a moment; the agent reports every period
    body = host_pipeline.watcher.latest("applied").body
    last = samples(host_pipeline)[-1].body
    for spec in lab.specs[:HONEST]:
        target = body.set[body.vms.index(spec.uuid), MEM]
        current = lab.dom(spec.name).info()[2] * 1024
        assert current == pytest.approx(target, abs=2 * MIB)  # virsh dominfo: the balloon is there
        assert target >= spec.template_mem_mib * MIB - 1  # never below the template
        i = last.vms.index(spec.uuid)
        # nor below use + reserve (within the actuator's 8 MiB memory hysteresis: use moves a little)
        assert target >= last.usage[i, MEM] + MEM_RESERVE - 8 * MIB
    latest = {e.body.vm: e.body for e in host_pipeline.watcher.since(0, "guest.mem")}  # the last report wins
    for spec in lab.specs[:HONEST]:  # the guest itself sees what the balloon left it (less its kernel's own)
        target = body.set[body.vms.index(spec.uuid), MEM]
        report = latest[spec.uuid]
        print(
            f"mem {spec.name}: balloon {target / MIB:.0f} MiB, guest MemTotal {report.mem_total / MIB:.0f} MiB, "
            f"used {report.mem_used / MIB:.0f} MiB, MemAvailable {report.mem_available / MIB:.0f} MiB"
        )
        assert target - 64 * MIB < report.mem_total <= target
        # the reserve is there from inside the guest: its kernel's own memory was not taken out of it
        assert report.mem_available >= MEM_RESERVE - 16 * MIB
    for spec in lab.specs[:HONEST]:  # the floor counts what the guest cannot give back (balloon stats, in sample)
        i = last.vms.index(spec.uuid)
        assert last.mem_unreclaimable[i] > 0
        assert body.set[body.vms.index(spec.uuid), MEM] >= last.mem_unreclaimable[i] + MEM_RESERVE - 8 * MIB


def test_a_guest_claiming_another_vms_uuid_is_refused(lab, host_pipeline):
    saver, liar = lab.specs[0], lab.specs[2]

    def refused():
        beats = [e.body for e in host_pipeline.watcher.since(0, "hb") if e.body.service == "ingress"]
        return beats and beats[-1].counters.get("rejected.wrong_vm", 0) >= 3

    assert wait_for(refused, 30, 0.5), host_pipeline.logs()
    reports = host_pipeline.watcher.since(0, "guest.mem")
    assert all(e.body.vm != liar.uuid for e in reports)  # it never reported as itself either
    assert any(e.body.vm == saver.uuid for e in reports)  # the saver's own reports still arrive
    assert {(e.host, e.src) for e in reports} == {("vmhost", "ingress")}  # each under the ingress's envelope


def test_disk_reads_are_held_to_the_throttle_the_actuator_set(lab, host_pipeline):
    hog = lab.specs[1]
    dom = lab.dom(hog.name)

    def throttled():
        return dom.blockIoTune("vda", 0).get("total_bytes_sec", 0) > 0

    assert wait_for(throttled, 60, 1.0), host_pipeline.logs()
    time.sleep(6 * PERIOD_S)
    limit = dom.blockIoTune("vda", 0)["total_bytes_sec"]
    applied = host_pipeline.watcher.latest("applied").body
    assert applied.set[applied.vms.index(hog.uuid), DISK] == pytest.approx(limit, rel=0.05)
    window = [e for e in samples(host_pipeline) if rows(e, hog.uuid) is not None][-5:]
    measured = np.mean([e.body.usage[rows(e, hog.uuid), DISK] for e in window])
    print(f"disk: throttle {limit / MIB:.2f} MiB/s, measured {measured / MIB:.2f} MiB/s")
    assert 0.3 * limit < measured <= 1.3 * limit


def test_network_the_tc_ceiling_holds_the_rate_a_streaming_vm_delivers(lab, host_pipeline):
    if lab.netns is None:
        machine_lacks("libvirtd_not_ours")
    streamer = lab.spec("rc-streamer")
    assert wait_for(lambda: lab.net_class(streamer) is not None, 60, 1.0), host_pipeline.logs()
    time.sleep(6 * PERIOD_S)  # TCP settles under the new ceiling
    _, ceiling = lab.net_class(streamer)
    t_measure = time.monotonic()
    delivered = lab.sink_rate(8.0)  # long enough to average out TCP's bursts through the ifb queue
    meanwhile = host_pipeline.watcher.since(t_measure, "applied")
    in_force = [e.body.set[e.body.vms.index(streamer.uuid), NET] for e in meanwhile]
    assert in_force and all(s == pytest.approx(ceiling, rel=0.02) for s in in_force)  # never lifted meanwhile
    applied = host_pipeline.watcher.latest("applied").body
    assert applied.set[applied.vms.index(streamer.uuid), NET] == pytest.approx(ceiling, rel=0.02)  # tc rounds
    no_tap = sorted(s.uuid for s in lab.specs if not s.tap)  # user networking only: nothing libvirt can shape
    assert all(applied.set[applied.vms.index(vm), NET] == -1 for vm in no_tap)  # shown as not limited
    # each said why in every applied, as unenforced for want of a host device, and never written
    why = {(u["vm"], u["resource"]): u["reason"] for u in applied.unenforced}
    assert all(why[(vm, "net")] == "no_device" for vm in no_tap)
    assert not any(e["resource"] == "net" for a in host_pipeline.watcher.since(0, "applied") for e in a.body.errors)
    window = [e for e in samples(host_pipeline) if rows(e, streamer.uuid) is not None][-8:]
    measured = np.mean([e.body.usage[rows(e, streamer.uuid), NET] for e in window])
    print(
        f"net: unshaped {lab.unshaped_net_bps / 1e3:.0f} kB/s, ceiling {ceiling / 1e3:.0f} kB/s, "
        f"delivered to the sink {delivered / 1e3:.0f} kB/s, libvirt's counters {measured / 1e3:.0f} kB/s"
    )
    assert lab.unshaped_net_bps > 1.5 * ceiling  # the ceiling binds: without it the VM sends more
    assert ceiling >= streamer.template_net_bps  # never below the template
    # on veth the same shaping delivers 0.97x; through a TCG tap, 0.9-1.2x in this suite's runs (cause not found:
    # not token resets by re-shaping, tried) — the claim is the ceiling, not a tight rate: unshaped is 30-180x
    assert 0.6 * ceiling < delivered <= 1.3 * ceiling
    assert 0.6 * ceiling < measured <= 1.3 * ceiling  # the tap counts retransmits and what the ifb drops


def test_a_vm_started_anew_is_limited_again(lab, host_pipeline):
    """Destroyed and started again: a new QEMU, cgroup and tap, with none of the caps; the actuator sets them again."""
    spec = lab.spec("rc-streamer" if lab.netns else "rc-hog")
    old = lab.dom(spec.name)
    old_id = old.ID()
    old.destroy()
    t0 = time.monotonic()
    dom = lab.start(spec)
    assert dom.ID() != old_id  # a fresh instance: it starts uncapped, from its XML

    def capped_again():
        capped = dom.schedulerParameters()["global_quota"] > 0
        return capped and (not spec.tap or lab.net_class(spec) is not None)

    assert wait_for(capped_again, 60, 0.5), host_pipeline.logs()
    TIMINGS.append(("a restarted VM capped again", time.monotonic() - t0))


def test_killed_actuator_and_scheduler_leave_caps_in_place_and_come_back(lab, host_pipeline):
    def quotas():
        return {s.name: lab.dom(s.name).schedulerParameters()["global_quota"] for s in lab.specs}

    before = quotas()
    old = host_pipeline.pid("actuator")
    os.kill(old, signal.SIGKILL)
    assert quotas() == before  # nobody touches the caps while the actuator is dead
    assert wait_for(lambda: host_pipeline.pid("actuator") not in (0, old), 20, 0.2)
    old = host_pipeline.pid("scheduler")
    os.kill(old, signal.SIGKILL)
    t_kill = time.monotonic()
    while time.monotonic() - t_kill < 3 * PERIOD_S:  # the scheduler is down: caps never below template
        for spec in lab.specs:
            q = lab.dom(spec.name).schedulerParameters()
            assert q["global_quota"] == -1 or q["global_quota"] >= spec.template_cpu * q["global_period"] * 0.99
        time.sleep(0.2)
    assert wait_for(lambda: host_pipeline.pid("scheduler") not in (0, old), 20, 0.2)
    t = time.monotonic()
    assert wait_for(lambda: host_pipeline.watcher.since(t, "applied"), 30, 0.5), host_pipeline.logs()


def test_stopping_everything_restores_the_original_settings(lab, host_pipeline):
    host_pipeline.ctl("stop", "all")
    for spec in lab.specs:
        dom = lab.dom(spec.name)
        params = dom.schedulerParameters()
        assert (
            params["global_quota"] in (-1, 0) or params["global_quota"] >= 2**63 - 1 or params["global_quota"] > 10**15
        )
        assert dom.blockIoTune("vda", 0)["total_bytes_sec"] == 0
        assert dom.info()[2] == spec.mem_mib * 1024
        if spec.tap:  # ResCoin's tc shaping is gone, ifbs and all
            assert lab.net_class(spec) is None
            for ifb in (UP_IFB, DOWN_IFB):
                shown = subprocess.run(["ip", "-n", lab.netns, "link", "show", ifb], capture_output=True)
                assert shown.returncode != 0
