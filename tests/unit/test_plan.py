"""The actuator's plan, property-tested: what it writes and what it says is in force, for any alloc,
anything in force and any mix of what the host can hold (plan.py)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rescoin.proto.messages import ENFORCED_LETTERS
from rescoin.services.actuator.backend import NO_LIMIT
from rescoin.services.actuator.plan import Targets, letters, plan

HYSTERESIS = np.array([0.02, 8 * 2**20, 256 * 1024, 128 * 1024])


@st.composite
def cases(draw):
    m = draw(st.integers(0, 6))
    values = st.floats(0, 1e9, allow_nan=False)
    ceiling_or_none = st.one_of(st.just(NO_LIMIT), values)
    ceiling = draw(arrays(float, (m, 4), elements=ceiling_or_none))
    weight = draw(arrays(float, (m, 4), elements=values))
    throttle = draw(arrays(float, (m, 4), elements=ceiling_or_none))
    now_ceiling = draw(arrays(float, (m, 4), elements=ceiling_or_none))
    now_weight = draw(arrays(float, (m, 4), elements=values))
    can_weight = draw(arrays(bool, (m, 4)))
    can_ceiling = draw(arrays(bool, (m, 4)))
    size = draw(arrays(float, (m,), elements=st.floats(1e6, 2e9)))
    template = draw(arrays(float, (m, 4), elements=st.one_of(st.just(np.nan), values)))
    return Targets(ceiling, weight, throttle, 1e9), now_ceiling, now_weight, can_weight, can_ceiling, size, template


def run(case):
    targets, now_ceiling, now_weight, can_weight, can_ceiling, size, template = case
    return plan(targets, now_ceiling, now_weight, can_weight, can_ceiling, size, template, 0.05, HYSTERESIS)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_nothing_is_written_where_the_host_cannot_hold_it_and_no_weight_is_claimed_where_ignored(case):
    _targets, _c, _w, can_weight, can_ceiling, _size, _template = case
    todo = run(case)
    assert not (todo.write & ~(can_weight | can_ceiling)).any()
    assert (todo.weight[~can_weight] == 0).all()
    assert (todo.ceiling[~can_ceiling] == NO_LIMIT).all()


@settings(max_examples=300, deadline=None)
@given(cases())
def test_no_ceiling_below_the_stated_template_and_no_balloon_at_the_vms_size(case):
    _targets, _c, _w, _cw, _cc, size, template = case
    todo = run(case)
    set_ = todo.ceiling != NO_LIMIT
    assert not (set_ & (todo.ceiling < template)).any()
    stated = ~np.isnan(template[:, 1])
    assert ((todo.ceiling[:, 1] < size) | ~set_[:, 1] | stated).all()


@settings(max_examples=300, deadline=None)
@given(cases())
def test_a_weight_the_kernel_ignores_becomes_the_allocs_own_ceiling_as_a_throttle(case):
    targets, _c, _w, can_weight, can_ceiling, _size, template = case
    todo = run(case)
    rate = np.array([True, False, True, True])
    expected = rate & (targets.weight > 0) & ~can_weight & can_ceiling
    assert (todo.throttled == expected).all()
    use_throttle = expected & (targets.ceiling == NO_LIMIT)
    shown = np.where(todo.below_template, template, targets.throttle)
    assert (todo.ceiling[use_throttle] == shown[use_throttle]).all()


@settings(max_examples=300, deadline=None)
@given(cases())
def test_the_plan_is_idempotent_once_written(case):
    targets, _c, _w, can_weight, can_ceiling, size, template = case
    todo = run(case)
    again = plan(targets, todo.ceiling, todo.weight, can_weight, can_ceiling, size, template, 0.05, HYSTERESIS)
    assert not again.write.any()


def test_letters_name_what_holds_each_cell():
    ceiling = np.array([[1.0, 5.0, 3.0, NO_LIMIT], [NO_LIMIT, NO_LIMIT, 2.0, NO_LIMIT]])
    weight = np.array([[1.0, 0.0, 0.0, 4.0], [2.0, 0.0, 0.0, 0.0]])
    throttled = np.array([[False, False, True, False], [False] * 4])
    unenforced = np.array([[False] * 4, [False, False, False, True]])
    assert letters(ceiling, weight, throttled, unenforced) == ["bctw", "w-cx"]
    assert set("".join(letters(ceiling, weight, throttled, unenforced))) <= ENFORCED_LETTERS.keys()
