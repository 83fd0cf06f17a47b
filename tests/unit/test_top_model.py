"""`rescoin top`'s model: messages folded into VM rows and host totals, sorted and formatted."""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np
import pytest
from rescoin.proto import Envelope, Heartbeat
from rescoin.proto.messages import Applied, Sample
from rescoin.services.tools import top_model as tm

from tests.support.messages import alloc_envelope, make_alloc

VMS = [str(uuid.UUID(int=i + 1)) for i in range(3)]
CAPACITY = np.array([4.0, 8 * 2.0**30, 100e6, 100e6])
TEMPLATE = np.array([[1.0, 2**30, 10e6, 10e6]] * 3)
USE = np.array([[0.5, 2**29, 1e6, 1e6], [2.0, 2**30, 5e6, 5e6], [1.0, 2**28, 0.0, 0.0]])


def sample(period: int, vms=VMS, names=("web", "db", ""), use=USE, host: str = "h1") -> Envelope:
    n = len(vms)
    body = Sample(CAPACITY, list(vms), list(names)[:n], TEMPLATE[:n], use[:n], ["guest"] * n, 1.0)
    return Envelope("sample", host, "monitor", 1, period, 0, period, body)


def alloc(period: int, coins=None, host: str = "h1") -> Envelope:
    body = make_alloc(VMS, USE.copy(), TEMPLATE, USE, CAPACITY, enforcement="shares")
    return alloc_envelope(period, replace(body, coins=np.zeros((3, 4)) if coins is None else coins), host)


def applied(period: int, ceiling: np.ndarray) -> Envelope:
    body = Applied(VMS, ceiling, ceiling, np.zeros((3, 4)), [], 0.001, "normal", "sim", 1, ["-c--"] * 3, [])
    return Envelope("applied", "h1", "actuator", 1, period, 0, period, body)


def beat(service: str, period: int, host: str = "h1") -> Envelope:
    return Envelope("hb", host, service, 1, period, 0, period, Heartbeat(service, "ok", 1.0, {}, {}, []))


def model_with(*messages: Envelope, now: float = 0.0) -> tm.TopModel:
    model = tm.TopModel()
    for env in messages:
        model.on_message(env, now)
    return model


def test_a_row_per_vm_of_the_last_sample_named_by_domain_name_else_uuid_prefix():
    rows = model_with(sample(10)).rows()
    assert [r.name for r in rows] == ["web", "db", VMS[2][:8]]
    np.testing.assert_array_equal(rows[1].use, USE[1])


def test_a_vm_that_leaves_the_sample_leaves_the_rows():
    model = model_with(sample(10), sample(11, vms=VMS[:2]))
    assert [r.vm for r in model.rows()] == VMS[:2]


def test_before_any_sample_the_alloc_gives_the_rows_their_use_and_template():
    rows = model_with(alloc(11)).rows()
    assert [r.name for r in rows] == [vm[:8] for vm in VMS]
    np.testing.assert_array_equal(rows[0].template, TEMPLATE[0])
    np.testing.assert_array_equal(rows[0].use, USE[0])


def test_a_message_for_an_older_period_is_ignored():
    newer = USE * 2
    model = model_with(sample(11, use=newer), sample(10))
    np.testing.assert_array_equal(model.rows()[0].use, newer[0])


def test_ceiling_comes_from_applied_and_is_unknown_until_it_arrives():
    before = model_with(sample(10), alloc(11)).rows()[0]
    assert np.isnan(before.ceiling).all()
    ceiling = np.full((3, 4), -1.0)
    ceiling[:, 1] = 2**30
    row = model_with(sample(10), alloc(11), applied(11, ceiling)).rows()[0]
    cells = dict(zip(tm.columns(False), tm.cells(row, 0, False), strict=True))
    assert cells["ceiling"] == "none"  # shares mode: no cpu ceiling
    assert dict(zip(tm.columns(False), tm.cells(row, 1, False), strict=True))["ceiling"] == "1024"  # MiB


def test_memory_has_no_share_column_value():
    row = model_with(sample(10), alloc(11)).rows()[0]
    assert np.isnan(row.share[tm.MEM]) and not np.isnan(row.share[0])
    assert dict(zip(tm.columns(False), tm.cells(row, tm.MEM, False), strict=True))["share"] == "–"


def test_coins_come_from_the_alloc_signed():
    coins = np.zeros((3, 4))
    coins[1, 0] = -0.25
    row = model_with(sample(10), alloc(11, coins)).rows()[1]
    assert dict(zip(tm.columns(False), tm.cells(row, 0, False), strict=True))["coins"] == "-0.250"


def test_use_over_template_shows_a_full_bar_and_the_percentage_above_100():
    bursting = dict(zip(tm.columns(False), tm.cells(model_with(sample(10)).rows()[1], 0, False), strict=True))
    assert bursting["bar"] == "█" * tm.BAR + "  200%"


@pytest.mark.parametrize(
    ("fraction", "expected"), [(0.0, " " * 10), (0.5, "█████     "), (0.05, "▌         "), (3.0, "█" * 10)]
)
def test_a_bar_fills_in_eighths_and_is_clipped_to_its_width(fraction, expected):
    assert tm.bar(fraction) == expected


def test_rows_sort_by_use_biggest_first_and_reverse_flips_it():
    rows = model_with(sample(10)).rows()
    assert [r.name for r in tm.sort_rows(rows, "use", 0)] == ["db", VMS[2][:8], "web"]
    assert [r.name for r in tm.sort_rows(rows, "use", 0, reverse=True)] == ["web", VMS[2][:8], "db"]
    assert [r.name for r in tm.sort_rows(rows, "use", 1)] == ["db", "web", VMS[2][:8]]  # by the shown resource


def test_names_sort_a_to_z_and_unknown_values_sort_last_either_way():
    rows = model_with(sample(10), alloc(11)).rows()
    assert [r.name for r in tm.sort_rows(rows, "name", 0)] == sorted(r.name for r in rows)
    partly = [*rows[:2], replace(rows[2], alloc=np.full(4, np.nan))]
    assert tm.sort_rows(partly, "alloc", 0)[-1] is partly[2]
    assert tm.sort_rows(partly, "alloc", 0, reverse=True)[-1] is partly[2]


def test_headings_carry_units_and_mark_the_sort_column():
    heads = tm.headings(1, "name", False, several_hosts=False)
    assert heads[:2] == ["vm ▲", "use MiB"] and "ceiling MiB" in heads
    assert tm.headings(0, "coins", True, several_hosts=True)[0] == "host"
    assert "coins ▲" in tm.headings(0, "coins", True, several_hosts=True)


def test_several_hosts_share_one_table_and_host_filters_keep_one():
    messages = [sample(10, host="h1"), sample(10, host="h2")]
    assert {r.host for r in model_with(*messages).rows()} == {"h1", "h2"}
    only = tm.TopModel(hosts=["h2"])
    for env in messages:
        only.on_message(env, 0.0)
    assert {r.host for r in only.rows()} == {"h2"}


def test_totals_sum_the_vms_and_say_policy_and_apply_mode():
    ceiling = np.full((3, 4), -1.0)
    (totals,) = model_with(sample(10), alloc(11), applied(11, ceiling)).totals(0.5)
    np.testing.assert_allclose(totals.use, USE.sum(axis=0))
    assert (totals.vms, totals.policy, totals.enforcement, totals.applied_mode) == (3, "rescoin", "shares", "normal")
    assert not totals.stale
    lines = tm.host_summary(totals, 0)
    assert lines[0].startswith("h1  period 10  3 VMs  policy rescoin, enforce shares  applied normal")
    assert "▸cpu" in lines[1] and "88%" in lines[1]  # 3.5 of 4 cores
    assert lines[2].startswith("cpu: use 3.500 of 4.000 cores")


def test_a_host_is_stale_after_three_silent_periods_and_a_silent_service_is_down():
    model = model_with(sample(10), beat("monitor", 10), beat("scheduler", 10))
    model.on_message(beat("scheduler", 14), 3.5)
    (totals,) = model.totals(3.5)
    assert totals.stale
    assert totals.services == {"monitor": "down", "scheduler": "ok"}
    assert tm.host_summary(totals, 0)[0].endswith("STALE: no sample for 4 s")
