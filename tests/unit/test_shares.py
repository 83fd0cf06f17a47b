"""Shares (docs/DESIGN.md §6.6): how coins reach the kernel as weights, as properties over random hosts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rescoin.services.model.enforcement import enforce
from rescoin.services.scheduler.policy import SHARE_FORMULAS
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
