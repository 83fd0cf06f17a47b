"""The ResCoin policy (docs/DESIGN.md §6) as properties, and against the loop reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rescoin.services.model import waterfill as waterfill_module
from rescoin.services.model.waterfill import waterfill, waterfill_loop
from rescoin.services.scheduler import POLICIES, PolicyInputError, allocate, allocate_loop

TOL = 1e-7


@st.composite
def host(draw, max_vms=8):
    n = draw(st.integers(1, max_vms))
    values = st.floats(0, 100, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    demand = draw(arrays(float, (n, 4), elements=values))
    template = draw(arrays(float, (n, 4), elements=values))
    capacity = draw(arrays(float, (4,), elements=st.floats(0, 400, allow_nan=False)))
    coins = draw(arrays(float, (n, 4), elements=st.floats(-5, 5, allow_nan=False)))
    return demand, template, capacity, coins


@settings(max_examples=400, deadline=None)
@given(host())
def test_never_more_than_capacity_never_negative_never_above_demand(h):
    demand, template, capacity, coins = h
    alloc = allocate(demand, template, capacity, coins)
    assert (alloc.sum(axis=0) <= capacity * (1 + 1e-9) + TOL).all()
    assert (alloc >= -TOL).all()
    assert (alloc <= demand + TOL).all()


@settings(max_examples=400, deadline=None)
@given(host())
def test_entitlement_is_guaranteed_when_the_host_is_not_oversold(h):
    demand, template, capacity, coins = h
    entitled = np.minimum(demand, template)
    alloc = allocate(demand, template, capacity, coins)
    fits = entitled.sum(axis=0) <= capacity
    assert (alloc[:, fits] >= entitled[:, fits] - TOL).all()


@settings(max_examples=400, deadline=None)
@given(host())
def test_demand_that_fits_is_served_exactly(h):
    demand, template, capacity, coins = h
    capacity = np.maximum(capacity, demand.sum(axis=0))
    assert np.allclose(allocate(demand, template, capacity, coins), demand, atol=TOL)


@settings(max_examples=400, deadline=None)
@given(host(), st.data())
def test_more_coins_never_means_less_extra_for_the_same_burst(h, data):
    demand, template, capacity, coins = h
    n = demand.shape[0]
    if n < 2:
        return
    i, j = data.draw(st.sampled_from([(a, b) for a in range(n) for b in range(n) if a != b]))
    demand[j] = template[j] + (demand[i] - template[i])  # the same burst demand
    demand = np.maximum(demand, 0)
    burst = np.maximum(demand - template, 0)
    if not np.allclose(burst[i], burst[j]):
        return
    coins[i] = np.abs(coins[j]) + data.draw(st.floats(0.01, 5))  # i holds strictly more coins
    alloc = allocate(demand, template, capacity, coins)
    extra = alloc - np.minimum(demand, template)
    base_ok = np.minimum(demand, template).sum(axis=0) <= capacity
    assert (extra[i, base_ok] >= extra[j, base_ok] - 1e-6).all()


@settings(max_examples=200, deadline=None)
@given(host())
def test_deterministic(h):
    assert np.array_equal(allocate(*h), allocate(*h))


@settings(max_examples=300, deadline=None)
@given(host(max_vms=6), st.booleans())
def test_vectorized_equals_the_loop_reference(h, leftover):
    assert np.allclose(allocate(*h, share_leftover=leftover), allocate_loop(*h, share_leftover=leftover), atol=1e-6)


@settings(max_examples=300, deadline=None)
@given(host())
def test_leftover_sharing_fills_the_host_but_never_overfills(h):
    demand, template, capacity, coins = h
    alloc = allocate(demand, template, capacity, coins, share_leftover=True)
    assert np.allclose(alloc.sum(axis=0), np.maximum(capacity, 0), rtol=1e-9, atol=1e-6)


def test_coins_decide_who_bursts_under_contention():
    demand = np.array([[3.0, 1, 1, 1], [3.0, 1, 1, 1]])
    template = np.ones((2, 4))
    capacity = np.array([3.0, 4, 4, 4])
    coins = np.array([[0.5, 0, 0, 0], [0.0, 0, 0, 0]])
    alloc = allocate(demand, template, capacity, coins)
    assert alloc[0, 0] == pytest.approx(2.0) and alloc[1, 0] == pytest.approx(1.0)


def test_oversold_host_shares_entitlements_by_template():
    alloc = allocate(
        np.array([[4.0, 0, 0, 0], [4.0, 0, 0, 0]]),
        np.array([[3.0, 1, 1, 1], [1.0, 1, 1, 1]]),
        np.array([2.0, 4, 4, 4]),
        np.zeros((2, 4)),
    )
    assert alloc[:, 0] == pytest.approx([1.5, 0.5])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_baseline_stays_within_capacity(name):
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(1, 10))
        demand, template = rng.random((n, 4)) * 4, rng.random((n, 4))
        capacity, coins = rng.random(4) * n, rng.normal(size=(n, 4))
        alloc = POLICIES[name](demand, template, capacity, coins)
        assert (alloc.sum(axis=0) <= capacity + 1e-7).all() and (alloc >= -1e-9).all()


@pytest.mark.parametrize(
    ("demand", "template", "capacity", "coins"),
    [
        (np.full((2, 4), np.nan), np.ones((2, 4)), np.ones(4), np.zeros((2, 4))),
        (-np.ones((2, 4)), np.ones((2, 4)), np.ones(4), np.zeros((2, 4))),
        (np.ones((2, 3)), np.ones((2, 3)), np.ones(3), np.zeros((2, 3))),
        (np.ones((2, 4)), np.ones((3, 4)), np.ones(4), np.zeros((2, 4))),
        (np.ones((2, 4)), np.ones((2, 4)), np.array([1, np.inf, 1, 1.0]), np.zeros((2, 4))),
    ],
)
def test_invalid_input_raises_a_clear_error(demand, template, capacity, coins):
    with pytest.raises(PolicyInputError):
        allocate(demand, template, capacity, coins)


@settings(max_examples=300, deadline=None)
@given(host())
def test_waterfill_matches_its_loop_reference(h):
    demand, template, capacity, _coins = h
    assert np.allclose(waterfill(capacity, demand, template), waterfill_loop(capacity, demand, template), atol=1e-6)


@pytest.mark.parametrize("newton_steps", [0, 1, 2])
@settings(max_examples=150, deadline=None)
@given(h=host(max_vms=12))
def test_waterfill_is_exact_whichever_path_finishes_it(h, newton_steps):
    """0 steps: every column sorted; 1–2: some converge by Newton and the rest are sorted."""
    demand, template, capacity, _coins = h
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(waterfill_module, "NEWTON_STEPS", newton_steps)
        result = waterfill(capacity, demand, template)
    assert np.allclose(result, waterfill_loop(capacity, demand, template), atol=1e-6)


def test_waterfill_on_heavy_tailed_weights_falls_back_to_sorting_and_agrees(monkeypatch):
    """Weights spread over many orders of magnitude saturate a few VMs per Newton step, so the
    columns run out of steps and are sorted; the answer is the same as the all-sorted one."""
    rng = np.random.default_rng(7)
    caps = rng.uniform(0, 3, (5_000, 4))
    weights = np.exp(rng.normal(0, 8, (5_000, 4)))
    amount = caps.sum(axis=0) * np.array([0.2, 0.5, 0.8, 0.95])
    calls = []
    sorted_rows = waterfill_module._fill_sorted

    def counting(*args):
        calls.append(len(args[0]))
        return sorted_rows(*args)

    monkeypatch.setattr(waterfill_module, "_fill_sorted", counting)
    newton_first = waterfill(amount, caps, weights)
    monkeypatch.setattr(waterfill_module, "NEWTON_STEPS", 0)
    all_sorted = waterfill(amount, caps, weights)
    assert calls[0] >= 1, "no column needed the fallback: the test no longer covers it"
    assert np.allclose(newton_first, all_sorted, rtol=1e-12, atol=1e-12)
    assert (newton_first.sum(axis=0) <= amount * (1 + 1e-12)).all()


def test_waterfill_with_the_tiniest_weights_still_hands_out_only_the_amount():
    """Found by hypothesis in CI: weights of 2.2e-308 overflowed λ to inf and every cap was granted."""
    caps = np.array([[1.0], [5.0], [5.0], [5.0]])
    weights = np.full((4, 1), np.finfo(float).tiny)
    assert waterfill(np.array([13.0]), caps, weights)[:, 0] == pytest.approx([1.0, 4.0, 4.0, 4.0])


def test_the_loop_reference_with_the_tiniest_weights_hands_out_only_the_amount():
    """Found by hypothesis in CI too: the reference itself granted 15 of 12."""
    caps = np.full((3, 1), 5.0)
    weights = np.full((3, 1), np.finfo(float).tiny)
    assert waterfill_loop(np.array([12.0]), caps, weights)[:, 0] == pytest.approx([4.0, 4.0, 4.0])
