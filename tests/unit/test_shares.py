"""Shares (docs/DESIGN.md §6.6): how coins reach the kernel as weights, as properties over random hosts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rescoin.services.model.enforcement import enforce
from rescoin.services.scheduler.policy import COIN_NORMS, SHARE_FORMULAS, STARVED_GUARDS, template_floor
from rescoin.services.scheduler.settings import SchedulerSettings
from rescoin.services.scheduler.step import decide

from tests.unit.test_allocate import host

TOL = 1e-7
FORMULAS = sorted(SHARE_FORMULAS)


def sold_within(h):
    """The host of ``h`` with capacity raised to at least Σ templates (not oversold)."""
    demand, template, capacity, coins = h
    return demand, template, np.maximum(capacity, template.sum(axis=0)), coins


def weighted(demand, shares, capacity):
    """What the kernel gives each VM with these weights and no ceilings (the enforcement model)."""
    return enforce(demand, shares, np.full_like(demand, np.inf), capacity)


@pytest.mark.parametrize("formula", ["unsold", "coins"])
@settings(max_examples=300, deadline=None)
@given(h=host())
def test_the_work_conserving_formulas_divide_the_capacity_and_guarantee_the_template(formula, h):
    demand, template, capacity, coins = sold_within(h)
    shares = SHARE_FORMULAS[formula](demand, template, capacity, coins)
    assert np.allclose(shares.sum(axis=0), capacity, rtol=1e-9, atol=TOL)
    assert (shares >= template - TOL).all()
    achieved = weighted(np.full_like(demand, 1e6), shares, capacity)  # every VM wants the whole host
    rate = [0, 2, 3]
    assert (achieved[:, rate] >= template[:, rate] * (1 - 1e-6) - TOL).all()


def test_the_seeds_form_leans_on_the_prediction():
    """Σ share > C: a VM predicted idle that bursts after all gets less than its template."""
    template = np.array([[1.0, 1, 1, 1], [1.0, 1, 1, 1]])
    capacity = np.array([2.0, 2, 2, 2])
    coins = np.array([[1.0, 0, 0, 0], [0.0, 0, 0, 0]])
    predicted = np.array([[0.0, 1, 1, 1], [0.0, 1, 1, 1]])  # both predicted idle on cpu
    shares = SHARE_FORMULAS["seed"](predicted, template, capacity, coins)
    achieved = weighted(np.full((2, 4), 2.0), shares, capacity)
    assert shares[:, 0].sum() > capacity[0] and achieved[1, 0] < template[1, 0]


@pytest.mark.parametrize("formula", FORMULAS)
@settings(max_examples=300, deadline=None)
@given(h=host(), data=st.data())
def test_more_coins_never_give_a_smaller_share_at_equal_burst(formula, h, data):
    demand, template, capacity, coins = sold_within(h)
    n = demand.shape[0]
    if n < 2:
        return
    i, j = data.draw(st.permutations(range(n)))[:2]
    demand[j], template[j] = demand[i], template[i]  # the same VM twice ...
    coins[j] = coins[i] + data.draw(st.floats(0, 5))  # ... but j saved more
    shares = SHARE_FORMULAS[formula](demand, template, capacity, coins)
    assert (shares[j] >= shares[i] - TOL * np.maximum(1.0, shares[i])).all()


@pytest.mark.parametrize("formula", FORMULAS)
@settings(max_examples=100, deadline=None)
@given(h=host())
def test_shares_are_deterministic(formula, h):
    demand, template, capacity, coins = h
    one = SHARE_FORMULAS[formula](demand, template, capacity, coins)
    two = SHARE_FORMULAS[formula](demand.copy(), template.copy(), capacity.copy(), coins.copy())
    assert np.array_equal(one, two)


def test_an_oversold_host_gets_shares_in_proportion_to_template():
    template = np.array([[2.0, 1, 1, 1], [6.0, 1, 1, 1]])
    capacity = np.array([4.0, 10, 10, 10])  # cpu sold twice over
    for formula in FORMULAS:
        shares = SHARE_FORMULAS[formula](template * 2, template, capacity, np.ones((2, 4)))
        assert shares[:, 0] == pytest.approx([1.0, 3.0])


def test_the_saver_gets_the_contended_burst_and_an_idle_neighbour_leaves_it_everything():
    template = np.array([[1.0, 1, 1, 1], [1.0, 1, 1, 1]])
    capacity = np.array([4.0, 4, 4, 4])
    coins = np.array([[0.5, 0, 0, 0], [0.0, 0, 0, 0]])  # VM 0 saved
    demand = np.array([[3.0, 1, 1, 1], [3.0, 1, 1, 1]])
    for formula in FORMULAS:
        shares = SHARE_FORMULAS[formula](demand, template, capacity, coins)
        both_burn = weighted(np.full((2, 4), 4.0), shares, capacity)
        assert both_burn[0, 0] > both_burn[1, 0] >= 1.0 - TOL  # coins buy the burst; the template holds
        alone = weighted(np.array([[4.0, 1, 1, 1], [0.0, 1, 1, 1]]), shares, capacity)
        assert alone[0, 0] == pytest.approx(4.0)  # work-conserving: the idle one's weight costs nothing


@pytest.mark.parametrize("mode", ["shares", "ceilings", "both"])
def test_the_period_step_enforces_per_mode(mode):
    settings_ = SchedulerSettings(enforcement=mode)
    template = np.array([[1.0, 1e9, 1e6, 1e6], [1.0, 1e9, 1e6, 1e6]])
    capacity = np.array([4.0, 4e9, 4e6, 4e6])
    demand = np.array([[3.0, 5e8, 3e6, 3e6], [3.0, 5e8, 3e6, 3e6]])
    step = decide(demand, demand, template, capacity, np.zeros((2, 4)), np.full((2, 4), np.inf), np.zeros(4), settings_)
    rate = step.ceiling_in_force[:, [0, 2, 3]]
    assert np.isinf(rate).all() if mode == "shares" else np.isfinite(rate).all()
    assert np.isfinite(step.ceiling_in_force[:, 1]).all()  # memory is always a balloon
    assert (step.alloc.sum(axis=0) <= capacity).all()  # exactly, not within a tolerance


def test_the_starved_guard_restores_the_template_weight_the_period_after():
    """The seed's form starves the hog that was predicted steady while the saver, predicted idle, bursts;
    with ``starved_guard`` the hog has its template's part of the weights the next period, not without."""
    template = np.array([[1.0, 1, 1, 1], [1.0, 1, 1, 1]])
    capacity = np.array([2.0, 2, 2, 2])  # fully sold
    coins = np.array([[1.0, 1, 1, 1], [0.0, 0, 0, 0]])  # VM 0 saved, VM 1 did not
    predicted = np.array([[0.2, 0.2, 0.2, 0.2], [1.0, 1, 1, 1]])
    wants = np.full((2, 4), 2.0)  # both burn everything they get
    rate = [0, 2, 3]
    served = {}
    for guard in STARVED_GUARDS:
        step_settings = SchedulerSettings(share_formula="seed", starved_guard=guard)
        usage, ceiling, streak = np.minimum(predicted, template), np.full((2, 4), np.inf), np.zeros(4)
        for _ in range(2):  # period t, then t + 1 (the same prediction: the predictor has not caught up)
            step = decide(predicted, usage, template, capacity, coins, ceiling, streak, step_settings)
            usage = weighted(wants, step.shares, capacity)
        served[guard] = usage
    assert (served["off"][1, rate] < 0.75).all()  # held at 1/2.8 of the host: below its template of 1
    for guard in ("below", "all"):
        assert served[guard][1, rate] == pytest.approx([1.0, 1.0, 1.0])  # its template, restored
        assert served[guard][0, rate] == pytest.approx([1.0, 1.0, 1.0])  # the saver keeps the rest


@settings(max_examples=300, deadline=None)
@given(h=host(), data=st.data())
def test_the_template_floor_is_exact(h, data):
    demand, template, capacity, coins = sold_within(h)
    shares = SHARE_FORMULAS["seed"](demand, template, capacity, coins)
    held = data.draw(st.lists(st.booleans(), min_size=demand.size, max_size=demand.size))
    held = np.array(held).reshape(demand.shape)
    floored = template_floor(shares, template, capacity, held)
    total = floored.sum(axis=0)
    part = capacity * floored / np.where(total > 0, total, 1.0)
    assert (np.where(held, part - template, 0.0) >= -1e-6 * np.maximum(template, 1.0)).all()
    moved = (floored != shares).any(axis=0)
    assert np.allclose(total[moved], capacity[moved], rtol=1e-9)  # a resource it had to move now sums to C
    assert np.array_equal(template_floor(shares, template, capacity, np.zeros_like(held)), shares)


def test_one_currency_lets_saved_disk_buy_cpu_and_per_resource_coins_do_not():
    template = np.array([[1.0, 1, 1, 1], [1.0, 1, 1, 1]])
    capacity = np.array([3.0, 3, 3, 3])
    coins = np.array([[0.0, 0, 2.0, 0], [0.5, 0, 0, 0]])  # VM 0 saved disk, VM 1 saved cpu
    demand = np.full((2, 4), 3.0)
    cpu = {norm: SHARE_FORMULAS["unsold"](demand, template, capacity, coins, norm)[:, 0] for norm in COIN_NORMS}
    for one_currency in ("l2", "l1", "max"):
        assert cpu[one_currency][0] > cpu[one_currency][1]  # the disk saver has the larger cpu weight
    assert cpu["resource"][0] == pytest.approx(1.0) and cpu["resource"][1] == pytest.approx(2.0)
    spread, focused = [1.0, 1, 1, 1], [1.9, 0, 0, 0]  # the same VM saving a little of everything, or cpu only
    coins = np.array([spread, focused])
    weight = {norm: SHARE_FORMULAS["coins"](demand, template, capacity, coins, norm)[:, 0] for norm in COIN_NORMS}
    assert weight["l1"][0] > weight["l1"][1] and weight["l2"][0] > weight["l2"][1]  # 4 and 2 against 1.9
    assert weight["max"][0] < weight["max"][1] and weight["resource"][0] < weight["resource"][1]  # 1 against 1.9


def test_only_the_guard_on_all_catches_a_starvation_without_warning():
    """The hog used more than its template while the saver idled; then the saver bursts. Nothing was held
    below its template, so only ``all`` (every VM of a busy resource) keeps the hog at its template."""
    template, capacity = np.ones((2, 4)), np.full(4, 2.0)
    coins = np.array([[1.0, 1, 1, 1], [0.0, 0, 0, 0]])
    predicted = np.array([[0.2, 0.2, 0.2, 0.2], [1.8, 1.8, 1.8, 1.8]])
    last_use = predicted.copy()  # busy: Σ use = C, the hog above its template
    rate = [0, 2, 3]
    for guard, starved in (("off", True), ("below", True), ("all", False)):
        step_settings = SchedulerSettings(share_formula="seed", starved_guard=guard)
        step = decide(
            predicted, last_use, template, capacity, coins, np.full((2, 4), np.inf), np.zeros(4), step_settings
        )
        hog = weighted(np.full((2, 4), 2.0), step.shares, capacity)[1, rate]
        assert (hog < 0.75).all() if starved else hog == pytest.approx([1.0, 1.0, 1.0])
