"""The scheduler stage's logic, driven by messages, no sockets."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from rescoin.proto import Envelope
from rescoin.proto.messages import Estimate, Sample
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.support import Counters
from rescoin.services.scheduler.core import SchedulerCore
from rescoin.services.scheduler.ledger import CoinLedger
from rescoin.services.scheduler.settings import SchedulerSettings
from rescoin.services.scheduler.step import apply_floors, decide

VMS = [str(uuid.UUID(int=i + 1)) for i in range(3)]
C = np.array([4.0, 8e9, 1e8, 1e8])
TC = np.array([[1.0, 2e9, 2e7, 2e7]] * 3)


def env(kind, period, body):
    return Envelope(kind, "h1", "test", 1, period, 0, period, body)


def sample(period, usage, vms=VMS):
    n = len(vms)
    return env("sample", period, Sample(C, vms, [f"v{i}" for i in range(n)], TC[:n], usage, ["guest"] * n, 1.0))


def estimate(period, est, vms=VMS):
    return env("estimate", period, Estimate(vms, est, ["last"] * 4, {}))


def core(tmp_path, **overrides):
    cfg = load_config(None, [f"scheduler.{k}={v}" for k, v in overrides.items()])
    return SchedulerCore("h1", cfg.scheduler, Counters(), tmp_path)


def test_sample_then_estimate_gives_alloc_for_the_next_period(tmp_path):
    sched = core(tmp_path)
    usage = TC * 0.5
    assert sched.on_message(sample(10, usage)) == []
    (out,) = sched.on_message(estimate(11, usage))
    assert out.kind == "alloc" and out.period == 11
    assert out.body.estimate_source == "estimate" and out.body.vms == VMS
    assert (out.body.alloc.sum(axis=0) <= C * (1 + 1e-9)).all()


def test_missing_estimate_falls_back_to_last_use(tmp_path):
    sched = core(tmp_path)
    sched.on_message(sample(10, TC * 0.5))
    assert sched.on_period(10) == []  # the boundary that ended period 10: the estimate may still come
    (out,) = sched.on_period(11)
    assert out.body.estimate_source == "last_use" and out.period == 11
    assert sched.counters.values["estimate_missing"] == 1
    assert sched.health().state == "degraded"


def test_savers_earn_coins_and_hogs_lose_them(tmp_path):
    sched = core(tmp_path, coin_window=5)
    usage = TC.copy()
    usage[0] *= 0.1  # saves
    usage[1] *= 2.0  # hogs
    for p in range(10, 13):
        sched.on_message(sample(p, usage))
        (out,) = sched.on_message(estimate(p + 1, usage))
    coins = out.body.coins
    assert (coins[0] > 0).all() and (coins[1] < 0).all() and np.allclose(coins[2], 0)


def test_a_contended_resource_turns_fit_only_after_its_demand_fit_several_periods_in_a_row(tmp_path):
    sched = core(tmp_path, fit_after_periods=3)
    busy, quiet = TC.copy(), TC * 0.5
    busy[:, 0] = 2.0  # 6 of 4 cores wanted: cpu is contended
    modes = []
    for p, usage in enumerate([quiet, busy, quiet, quiet, busy, quiet, quiet, quiet, quiet], start=10):
        sched.on_message(sample(p, usage))
        (out,) = sched.on_message(estimate(p + 1, usage))
        modes.append(out.body.mode[0])
        assert out.body.mode[1:] == ["fit"] * 3  # the other resources always fit
    # fit from the start; contended at once; fit again only on the third quiet period in a row
    assert modes == ["fit", "contended", "contended", "contended", "contended"] + ["contended"] * 2 + ["fit"] * 2


def test_in_ceilings_mode_a_vm_held_at_its_ceiling_asks_for_more_and_coins_decide_who_gets_it(tmp_path):
    sched = core(tmp_path, throttled_probe=0.25, coin_window=50, enforcement="'ceilings'")
    saving = np.vstack([TC[0] * 0.05, TC[1] * 2.0, TC[2]])  # VM 0 saves; VM 1 burns; VM 2 uses its template
    for p in range(10, 30):
        sched.on_message(sample(p, saving))
        sched.on_message(estimate(p + 1, saving))
    grants = []
    use = np.vstack([TC[0], TC[1] * 2.0, TC[2]])
    for p in range(30, 40):  # now VM 0 wants all it can get too, but shows only what its ceiling let it use
        sched.on_message(sample(p, use))
        (out,) = sched.on_message(estimate(p + 1, use))  # the estimate: the censored use itself
        ceiling = np.maximum(out.body.alloc, TC)
        grants.append(out.body.alloc[:, 0].copy())
        use = np.vstack([ceiling[0], ceiling[1], TC[2]])  # both burn everything they are allowed
    first, last = grants[0], grants[-1]
    assert out.body.mode[0] == "contended"
    assert last[0] > first[0] * 1.5  # its ceiling rose period by period: it could show more demand
    assert last[0] > last[1]  # and its coins won it the spare over the VM that never saved


def test_only_rate_resources_pinned_at_a_ceiling_ask_for_more():
    from rescoin.services.scheduler.policy import unthrottled_demand

    demand = np.array([[1.0, 5.0, 2.0, 2.0], [1.0, 5.0, 2.0, 2.0]])
    usage = np.array([[1.0, 5.0, 2.0, 1.0], [0.5, 5.0, 2.0, 2.0]])
    ceiling = np.array([[1.0, 5.0, np.inf, 2.0], [1.0, 5.0, 2.0, 2.0]])
    raised = unthrottled_demand(demand, usage, ceiling, probe=0.25)
    assert raised[0].tolist() == [1.25, 5.0, 2.0, 2.0]  # cpu pinned; memory never; no ceiling on disk; net below
    assert raised[1].tolist() == [1.0, 5.0, 2.5, 2.5]
    assert (unthrottled_demand(demand, usage, ceiling, probe=0.0) == demand).all()


def test_ledger_window_slides(tmp_path):
    ledger = CoinLedger(window=2)
    vms = VMS[:1]
    for p, use in enumerate([0.0, 0.0, 1.0, 1.0]):
        ledger.credit(p, vms, np.ones((1, 4)), np.full((1, 4), use), np.ones(4))
    assert np.allclose(ledger.balances(vms), 0.0)  # the early savings slid out


@pytest.mark.parametrize("step", [-3600, 3600])
def test_a_wall_clock_step_neither_freezes_nor_wipes_the_coins(tmp_path, step):
    """Period numbers follow the wall clock; the scheduler's own monotonic clock says one period passed.
    An hour back must not freeze crediting for an hour, an hour ahead must not wipe the window."""
    now = [0.0]
    cfg = load_config(None, ["scheduler.coin_window=10"])
    sched = SchedulerCore("h1", cfg.scheduler, Counters(), tmp_path, monotonic=lambda: now[0])
    saver = np.zeros((len(VMS), 4))  # VM 0 saves its whole template (the others too)
    for p in range(1000, 1005):
        sched.on_sample(sample(p, saver))
        now[0] += 1.0
    before = sched.ledger.balances(VMS)[0, 0]
    for p in range(1005 + step, 1008 + step):
        sched.on_sample(sample(p, saver))
        now[0] += 1.0
    after = sched.ledger.balances(VMS)[0, 0]
    assert after == pytest.approx(before * 8 / 5) and sched.ledger.period == 1007 + step
    assert sched.counters.values["clock_steps"] == 1


def test_ledger_survives_restart_and_corruption(tmp_path):
    sched = core(tmp_path)
    usage = TC * 0.2
    for p in range(5):
        sched.on_message(sample(p, usage))
        sched.on_message(estimate(p + 1, usage))
        sched.flush()  # as the runtime does once the period's answers are published
    before = sched.ledger.balances(VMS)
    again = core(tmp_path)
    assert np.array_equal(again.ledger.balances(VMS), before)
    (tmp_path / "scheduler-ledger.npz").write_bytes(b"garbage")
    broken = core(tmp_path)
    assert np.allclose(broken.ledger.balances(VMS), 0) and broken.counters.values["rejected.ledger"] == 1
    (kept,) = tmp_path.glob("scheduler-ledger.npz.damaged-*")  # moved aside for a person, not overwritten
    assert kept.read_bytes() == b"garbage" and not (tmp_path / "scheduler-ledger.npz").exists()


def test_a_ledger_that_cannot_be_saved_is_counted_and_the_scheduler_goes_on(tmp_path):
    sched = core(tmp_path)
    (tmp_path / "scheduler-ledger.npz").mkdir()  # os.replace onto a directory fails, as a full disk would
    for p in range(3):
        sched.on_message(sample(p, TC * 0.2))
        assert sched.on_message(estimate(p + 1, TC * 0.2))  # still allocates
        sched.flush()
    assert sched.counters.values["rejected.ledger"] == 3


def test_vms_that_come_and_go_keep_their_own_coins(tmp_path):
    ledger = CoinLedger(window=10)
    ledger.credit(1, VMS, TC, TC * np.array([[0.0], [1.0], [1.0]]), C)
    saved = ledger.balances(VMS[:1])
    ledger.credit(2, VMS[1:], TC[1:], TC[1:], C)  # VM 0 left
    ledger.credit(3, VMS, TC, TC, C)  # and came back: a fresh start
    assert (saved > 0).all() and np.allclose(ledger.balances(VMS[:1]), 0)


def test_floors_hold_and_capacity_is_respected():
    alloc = np.array([[0.0, 1e9, 0, 0], [3.9, 7e9, 0, 0]])
    usage = np.array([[0.0, 2e9, 0, 0], [3.0, 5e9, 0, 0]])
    out, over = apply_floors(alloc, C, 0.05, usage[:, 1] + 64 * 2**20)
    assert out[0, 0] >= 0.05 and out[0, 1] >= 2e9 + 64 * 2**20
    assert (out.sum(axis=0) <= C + 1e-6).all() and not over


def test_every_allocation_meets_the_wires_sum_whatever_the_memory_layout():
    """The wire adds an alloc's rows in order (proto/README.md §4); numpy sums a Fortran-ordered column
    pairwise, which rounds differently. Found in the demo (8 VMs): 16 of 20 allocs refused on encode."""
    rng = np.random.default_rng(3)
    refused = 0
    for n in (8, 9, 31, 200, 1000):
        for _ in range(20):
            template = rng.uniform(0.5, 2, (n, 4))
            demand = template * rng.uniform(0, 2.5, (n, 4))
            capacity = template.sum(axis=0) / rng.uniform(0.8, 1.25)
            coins = rng.normal(0, 1, (n, 4))
            out = decide(demand, demand * 0.9, template, capacity, coins, np.full((n, 4), np.inf),
                         np.zeros(4, dtype=int), SchedulerSettings())  # fmt: skip
            in_order = np.zeros(4)
            for row in np.asarray(out.alloc):  # the rows added in order, as the spec's decoder does
                in_order = in_order + row
            refused += int((in_order > capacity).any())
    assert refused == 0
