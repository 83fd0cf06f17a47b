"""The actuator's logic over a real backend: cgroup v2 files in a tmp dir, no sockets."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from rescoin.services.actuator.backend_cgroup import CgroupBackend, group_uuid
from rescoin.services.actuator.core import ActuatorCore
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.support import Counters

from tests.support.cgroupfs import fake_v2_root, v2_files
from tests.support.messages import alloc_envelope, make_alloc

GROUPS = ["web", "batch"]
VMS = [group_uuid(g) for g in GROUPS]
C = np.array([2.0, 8e9, 1e8, 1e8])
TC = np.array([[0.5, 1e9, 1e7, 1e7], [0.5, 1e9, 1e7, 1e7]])
AU = np.array([[0.2, 2e8, 0, 0], [0.9, 5e8, 0, 0]])


def alloc_env(period, alloc, vms=VMS, template=TC, usage=AU, enforcement="ceilings", shares=None, fit=(False,) * 4):
    return alloc_envelope(period, make_alloc(vms, alloc, template, usage, C, enforcement, shares, fit))


@pytest.fixture
def actuator(tmp_path):
    root = fake_v2_root(tmp_path / "cg", GROUPS)

    def make(*overrides, backend=CgroupBackend):
        cfg = load_config(
            None,
            [
                "actuator.backend='cgroup'",
                f"actuator.cgroup_root='{tmp_path / 'none'}'",
                f"actuator.cgroup_v2_root='{root}'",
                "actuator.cgroups={web='web', batch='batch'}",
                "actuator.cgroup_block_device='8:0'",
                *overrides,
            ],
        )
        return ActuatorCore("h1", cfg.actuator, backend(cfg.actuator), Counters(), tmp_path / "state")

    return make, root


def test_ceilings_mode_sets_the_allocs_ceilings_and_its_shares_as_weights(actuator):
    make, root = actuator
    core = make()
    applied = core.on_alloc(alloc_env(5, np.array([[0.2, 3e8, 5e6, 1e6], [1.5, 6e8, 4e7, 1e6]])))
    files = v2_files(root, "batch")
    assert files["cpu.max"] == "150000 100000" and files["cpu.weight"] == "100"  # share 1 core of 2
    assert v2_files(root, "web")["cpu.max"] == "50000 100000"  # alloc 0.2 < template 0.5
    assert files["io.max"] == "8:0 rbps=40000000 wbps=40000000"
    assert int(files["memory.high"]) == int(1e9)  # alloc 6e8 is below the template
    assert applied.mode == "normal" and applied.set[1, 0] == pytest.approx(1.5)
    # cpu weight + quota, a memory ceiling, a disk throttle (8:0 here is no BFQ disk), no network control
    assert applied.enforced == ["bctx", "bctx"] and applied.errors == []
    assert {(u["vm"], u["resource"], u["reason"]) for u in applied.unenforced} == {
        (vm, "net", "unsupported") for vm in VMS
    }


def test_shares_mode_sets_weights_and_no_cpu_quota_not_even_one_set_before(actuator):
    make, root = actuator
    core = make()
    alloc = np.array([[0.2, 3e8, 5e6, 1e6], [1.5, 6e8, 4e7, 1e6]])
    core.on_alloc(alloc_env(5, alloc))  # ceilings mode first: quotas in force
    assert v2_files(root, "batch")["cpu.max"] == "150000 100000"
    shares = np.array([[0.5, 0, 2e7, 5e7], [1.5, 0, 8e7, 5e7]])
    applied = core.on_alloc(alloc_env(6, alloc, enforcement="shares", shares=shares))
    web, batch = v2_files(root, "web"), v2_files(root, "batch")
    assert web["cpu.max"] == batch["cpu.max"] == "max 100000"  # the quota ResCoin set is gone
    assert (web["cpu.weight"], batch["cpu.weight"]) == ("50", "150")  # 1:3, as the shares
    assert int(batch["memory.high"]) == int(1e9)  # memory is still a balloon (its ceiling)
    assert (applied.set[:, 0] == -1).all()


def test_disk_weights_fall_back_to_a_throttle_where_the_scheduler_ignores_them(actuator):
    make, root = actuator
    core = make()  # device 8:0 of the fake root is not a BFQ disk on this machine
    alloc = np.array([[0.2, 3e8, 5e6, 1e6], [1.5, 6e8, 4e7, 1e6]])
    shares = np.array([[0.5, 0, 2e7, 5e7], [1.5, 0, 8e7, 5e7]])
    applied = core.on_alloc(alloc_env(5, alloc, enforcement="shares", shares=shares))
    assert v2_files(root, "batch")["io.max"] == "8:0 rbps=40000000 wbps=40000000"  # max(alloc, template)
    assert applied.set[1, 2] == 4e7 and (applied.weight[:, 2] == 0).all()  # what is in force, no weight claimed
    assert [letters[2] for letters in applied.enforced] == ["t", "t"]  # and `applied` says it is a throttle
    assert applied.weight[1, 0] == 1.5  # cpu weights are honoured everywhere


def test_what_nothing_can_hold_is_reported_every_period_never_attempted_and_counted(actuator):
    make, _root = actuator
    core = make()
    first = core.on_alloc(alloc_env(5, np.array([[0.2, 3e8, 5e6, 1e6], [1.5, 6e8, 4e7, 1e6]])))
    again = core.on_alloc(alloc_env(6, np.array([[0.2, 3e8, 5e6, 5e7], [1.5, 6e8, 4e7, 5e7]])))  # net moved a lot
    for applied in (first, again):
        assert [letters[3] for letters in applied.enforced] == ["x", "x"] and (applied.set[:, 3] == -1).all()
        assert all("no network bandwidth control" in u["detail"] for u in applied.unenforced)
    assert core.counters.values["write_errors"] == 0  # never tried
    assert core.counters.values["unenforced.unsupported"] == 4  # 2 VMs x 2 periods
    assert core.health().info["enforced.x"] == 2


def test_cpu_weights_past_the_kernels_range_are_scaled_together_keeping_their_ratio(actuator):
    """cgroup v2 cpu.weight stops at 10000 (100 cores here): a 160-core share must not be cut to 100
    cores while a 40-core one keeps its 40, which would turn 4:1 into 2.5:1."""
    make, root = actuator
    core = make()
    alloc = np.array([[0.6, 3e8, 0, 0], [0.6, 3e8, 0, 0]])
    shares = np.array([[40.0, 0, 0, 0], [160.0, 0, 0, 0]])
    core.on_alloc(alloc_env(5, alloc, enforcement="shares", shares=shares))
    web, batch = int(v2_files(root, "web")["cpu.weight"]), int(v2_files(root, "batch")["cpu.weight"])
    assert (web, batch) == (2500, 10000)


def test_memory_ceiling_is_the_allocs_own_floor_included(actuator):
    make, root = actuator
    core = make()
    usage = np.array([[0.2, 1.5e9, 0, 0], [0.2, 2e8, 0, 0]])
    core.on_alloc(alloc_env(5, np.array([[0.5, 1e6, 0, 0], [0.5, 1e6, 0, 0]]), usage=usage))
    assert int(v2_files(root, "web")["memory.high"]) == int(1.5e9 + 64 * 2**20)  # the scheduler's floor


def test_a_balloon_goes_where_the_alloc_says_the_backend_is_not_asked_for_a_floor(actuator):
    """The floor (what the guest cannot give back + reserve) is the scheduler's, from the sample:
    the alloc's memory ceiling is written as it is, below use + the actuator's own reserve too."""
    make, root = actuator
    core = make("actuator.mem_reserve_bytes=1e9")
    body = make_alloc(VMS, np.array([[0.5, 3e8, 0, 0], [0.5, 4e8, 0, 0]]), TC, AU, C)
    body.ceiling[:, 1] = [2.5e8, 1.2e9]  # as a scheduler with its own floors may send them
    core.on_alloc(alloc_envelope(5, body))
    assert int(v2_files(root, "web")["memory.high"]) == int(2.5e8)
    assert int(v2_files(root, "batch")["memory.high"]) == int(1.2e9)


def test_no_balloon_at_or_above_the_vms_size(actuator):
    make, root = actuator
    core = make()
    body = make_alloc(VMS, np.array([[0.5, 3e8, 0, 0], [0.5, 4e8, 0, 0]]), TC, AU, C)
    size = core.backend.domains()[VMS[0]].mem_max_bytes
    body.ceiling[:, 1] = [size, 1.2e9]
    applied = core.on_alloc(alloc_envelope(5, body))
    assert v2_files(root, "web")["memory.high"].strip() == "max" and applied.set[0, 1] == -1
    assert applied.set[1, 1] == 1.2e9


def test_failsafe_never_shrinks_a_balloon_below_the_last_allocs(actuator):
    """Silence must not squeeze a guest: the last alloc's balloon counted what it cannot give back,
    which the fail-safe's template-and-last-use rule would not know."""
    make, root = actuator
    core = make("actuator.stale_periods=1")
    body = make_alloc(VMS, np.array([[0.5, 3e8, 0, 0], [0.5, 4e8, 0, 0]]), TC, AU, C)
    body.ceiling[:, 1] = [1.6e9, -1.0]  # batch: no balloon (its memory fit)
    core.on_alloc(alloc_envelope(5, body))
    core.on_period(5)
    (out,) = core.on_period(6)
    assert out.body.mode == "failsafe"
    assert int(v2_files(root, "web")["memory.high"]) == int(1.6e9)  # not max(template 1e9, use + reserve)
    assert v2_files(root, "batch")["memory.high"].strip() == "max"  # and none where it had none


def test_a_resource_that_fits_the_host_gets_no_ceiling(actuator):
    make, root = actuator
    core = make()
    alloc = np.array([[0.2, 3e8, 5e6, 1e6], [1.5, 6e8, 4e7, 1e6]])
    core.on_alloc(alloc_env(5, alloc, fit=(True, False, False, False)))
    assert v2_files(root, "batch")["cpu.max"] == "max 100000" and v2_files(root, "batch")["cpu.weight"] == "100"


def test_hysteresis_makes_a_stable_allocation_cost_no_writes(actuator):
    make, _root = actuator
    core = make()
    alloc = np.array([[0.6, 3e8, 2e7, 1e7], [0.7, 6e8, 2e7, 1e7]])
    first = core.on_alloc(alloc_env(5, alloc))
    second = core.on_alloc(alloc_env(6, alloc * 1.01))  # within 5 %
    assert first.writes > 0 and second.writes == 0


def test_silence_moves_to_failsafe_then_a_valid_alloc_resumes(actuator):
    make, root = actuator
    core = make("actuator.stale_periods=2")
    core.on_alloc(alloc_env(5, np.array([[1.5, 3e8, 5e7, 1e7], [0.4, 6e8, 2e7, 1e7]])))
    assert core.on_period(5) == [] and core.on_period(6) == []
    (out,) = core.on_period(7)
    assert out.body.mode == "failsafe" and core.health().state == "failsafe"
    assert v2_files(root, "web")["cpu.max"] == "50000 100000"  # back to the template
    (again,) = core.on_period(8)  # held every period (a VM started anew gets it too), at no cost
    assert again.body.writes == 0 and core.counters.values["failsafe_entries"] == 1
    assert core.on_alloc(alloc_env(9, np.array([[1.5, 3e8, 5e7, 1e7], [0.4, 6e8, 2e7, 1e7]]))).mode == "normal"


def test_bad_allocs_are_rejected_and_counted(actuator):
    make, root = actuator
    core = make()
    before = v2_files(root, "web")
    core.on_alloc(alloc_env(6, np.array([[0.6, 3e8, 0, 0], [0.6, 3e8, 0, 0]])))
    assert core.on_alloc(alloc_env(6, np.array([[0.6, 3e8, 0, 0], [0.6, 3e8, 0, 0]]))) is None  # old period
    stranger = str(uuid.UUID(int=7))
    applied = core.on_alloc(alloc_env(7, np.array([[0.6, 3e8, 0, 0], [0.6, 3e8, 0, 0]]), vms=[VMS[0], stranger]))
    assert applied.enforced[1] == "xxxx" and {u["reason"] for u in applied.unenforced if u["vm"] == stranger} == {
        "unknown_vm"
    }
    assert core.counters.values["rejected.alloc"] == 1 and core.counters.values["rejected.unknown_vm"] == 1
    assert before != v2_files(root, "web")


def test_dry_run_touches_nothing(actuator):
    make, root = actuator
    core = make("actuator.dry_run=true")
    before = {g: v2_files(root, g) for g in GROUPS}
    applied = core.on_alloc(alloc_env(5, np.array([[1.5, 3e8, 5e7, 1e7], [0.4, 6e8, 2e7, 1e7]])))
    assert applied.mode == "dry-run" and applied.writes > 0
    assert {g: v2_files(root, g) for g in GROUPS} == before


def test_restore_puts_back_the_originals_even_from_a_new_process(actuator):
    make, root = actuator
    before = {g: v2_files(root, g) for g in GROUPS}
    make().on_alloc(alloc_env(5, np.array([[1.5, 3e8, 5e7, 1e7], [0.4, 6e8, 2e7, 1e7]])))
    assert {g: v2_files(root, g) for g in GROUPS} != before
    fresh = make()  # as after kill -9: only the persisted originals remain
    applied = fresh.restore()
    assert applied.mode == "restore"
    restored = {g: v2_files(root, g) for g in GROUPS}
    assert {g: {k: v for k, v in f.items() if k != "io.max"} for g, f in restored.items()} == {
        g: {k: v for k, v in f.items() if k != "io.max"} for g, f in before.items()
    }
    assert all(f["io.max"] in ("", "8:0 rbps=max wbps=max") for f in restored.values())


@pytest.mark.parametrize(
    "damage",
    [b"", b"{not json", b'{"vm": [[1, 0], [2, 0]]}', b'{"vm": [[1, 0], [2, 0], [3, 0], ["NaN", 0]]}', b"[1, 2]"],
)
def test_a_damaged_originals_file_is_moved_aside_counted_and_never_overwritten(actuator, damage):
    make, _root = actuator
    path = make().originals_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(damage)
    core = make()
    assert core.originals == {} and core.counters.values["rejected.originals"] == 1
    (kept,) = path.parent.glob(f"{path.name}.damaged-*")
    assert kept.read_bytes() == damage
    core.on_alloc(alloc_env(5, np.array([[1.5, 3e8, 5e7, 1e7], [0.4, 6e8, 2e7, 1e7]])))
    assert kept.read_bytes() == damage and path.exists()  # the new originals went to a new file


def test_no_write_whose_originals_could_not_be_saved(actuator):
    make, root = actuator
    core = make()
    before = {g: v2_files(root, g) for g in GROUPS}
    core.originals_path.mkdir(parents=True)  # os.replace onto a directory fails, as ENOSPC or EIO would
    applied = core.on_alloc(alloc_env(5, np.array([[1.5, 3e8, 5e7, 1e7], [0.4, 6e8, 2e7, 1e7]])))
    assert {g: v2_files(root, g) for g in GROUPS} == before  # nothing ResCoin could not undo
    assert applied.writes == 0 and any("cannot save the original" in e["error"] for e in applied.errors)
    assert (applied.set == applied.before).all()
    assert core.counters.values["rejected.originals"] == 1
    core.originals_path.rmdir()  # space again: the next alloc writes, originals first
    applied = core.on_alloc(alloc_env(6, np.array([[1.5, 3e8, 5e7, 1e7], [0.4, 6e8, 2e7, 1e7]])))
    assert applied.writes > 0 and core.originals_path.is_file()


def test_an_alloc_far_behind_this_hosts_clock_is_refused(actuator):
    """A replayed or long-delayed alloc divided a host that is gone: refused and counted, not applied."""
    make, root = actuator
    now = [1000]
    core = make()
    core.own_period = lambda: now[0]
    before = {g: v2_files(root, g) for g in GROUPS}
    assert core.on_alloc(alloc_env(1000 - 4, np.array([[1.5, 3e8, 5e7, 1e7], [0.4, 6e8, 2e7, 1e7]]))) is None
    assert {g: v2_files(root, g) for g in GROUPS} == before
    assert core.counters.values["rejected.alloc"] == 1
    assert core.on_alloc(alloc_env(1000 - 3, np.array([[1.5, 3e8, 5e7, 1e7], [0.4, 6e8, 2e7, 1e7]]))) is not None


@pytest.mark.parametrize("step", [-3600, 3600])
def test_a_wall_clock_step_is_followed_no_alloc_refused_no_failsafe(actuator, step):
    """The host's clock stepped an hour back (or ahead): allocs numbered by the new clock are applied at
    once, not refused as "not newer" for an hour, and the silence check never fires."""
    make, _root = actuator
    now = [1000]
    core = make("actuator.stale_periods=3")
    core.own_period = lambda: now[0]
    alloc = np.array([[1.5, 3e8, 5e7, 1e7], [0.4, 6e8, 2e7, 1e7]])
    for p in range(1000, 1005):
        now[0] = p
        assert core.on_alloc(alloc_env(p, alloc)) is not None
    for p in range(1005 + step, 1010 + step):
        now[0] = p
        assert core.on_alloc(alloc_env(p, alloc)) is not None and core.on_period(p) == []
    assert core.mode == "normal" and core.counters.values["failsafe_entries"] == 0
    assert core.counters.values.get("rejected.alloc", 0) == 0
    assert core.counters.values["clock_steps"] == (1 if step < 0 else 0)
