"""`rescoin evaluate` on a small slice of the real traces: its JSON keys stay stable."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from rescoin.services.model.scenario import build_scenario
from rescoin.services.model.traces import default_traces_dir
from rescoin.services.scheduler.settings import SchedulerSettings
from rescoin.services.tools.evaluate import add_arguments, variants
from rescoin.services.tools.evaluate_oracle import savers
from rescoin.services.tools.evaluate_synthetic import load_synthetic, parse

from tests.support.need import missing

KEYS = {
    "entitlement_violations",
    "entitlement_violation_rate",
    "jain",
    "utilization",
    "min_satisfaction",
    "saver_burst_service",
    "hog_burst_service",
    "unmet_p95",
}


@pytest.fixture(scope="module")
def report():
    if not default_traces_dir().is_dir():
        missing(f"the Bitbrains traces are not at {default_traces_dir()} (a broken install)")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rescoin.services.cli",
            "evaluate",
            "--vms",
            "6",
            "--periods",
            "300",
            "--predictors",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_policy_reports_the_stable_keys(report):
    assert set(report["policies"]) == {"rescoin", "static", "shares", "maxmin", "credits", "karma"}
    for metrics in report["policies"].values():
        assert KEYS <= set(metrics)
        assert 0 < metrics["jain"] <= 1 and 0 < metrics["utilization"] <= 1


def test_the_guarantee_holds_on_a_host_that_is_not_oversold(report):
    assert report["policies"]["rescoin"]["entitlement_violations"] == 0


def test_static_caps_serve_less_than_work_conserving_shares(report):
    assert report["policies"]["static"]["utilization"] < report["policies"]["shares"]["utilization"]


def test_predictors_report_error_rates_per_resource(report):
    for per_resource in report["predictors"].values():
        assert set(per_resource) == {"cpu", "mem", "disk", "net"}
        assert all(0 <= v["under_rate"] <= 1 for v in per_resource.values())


@pytest.mark.parametrize("n_savers, n_hogs", [(30, 10), (10, 30), (0, 5)])
def test_a_synthetic_mix_has_the_savers_it_was_asked_for(n_savers, n_hogs):
    sc = build_scenario(load_synthetic(f"synthetic:{n_savers}:{n_hogs}:3"), None, 0.3, 0.25)
    assert sc.demand.shape[1] == n_savers + n_hogs
    assert savers(sc).tolist() == [True] * n_savers + [False] * n_hogs  # as the metrics classify them
    assert sc.capacity[1] == 0  # no memory: the column plays no part


def test_a_synthetic_mix_is_seeded():
    one, again, other = (load_synthetic(f"synthetic:4:2{seed}") for seed in (":7", ":7", ":8"))
    assert all(np.array_equal(a.demand, b.demand) for a, b in zip(one, again, strict=True))
    assert not all(np.array_equal(a.demand, b.demand) for a, b in zip(one, other, strict=True))


@pytest.mark.parametrize("bad", ["synthetic:3", "synthetic:a:2", "synthetic:0:0", "synthetic:1:2:3:4"])
def test_a_malformed_synthetic_mix_is_refused(bad):
    with pytest.raises(ValueError):
        parse(bad)


def test_variant_rows_name_what_differs_from_the_defaults():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        "--policies rescoin shares --share-formula unsold seed --coin-norm l2 resource "
        "--starved-guard off below --coin-window 72 288".split()
    )
    rows = variants(args, SchedulerSettings())
    assert len(rows) == 2 * 2 * 2 * 2 + 1
    assert rows["rescoin"][1] == SchedulerSettings()  # the defaults, exactly
    policy, settings = rows["rescoin[shares,seed,resource,guard:below,k=72]"]
    assert (settings.share_formula, settings.coin_norm, settings.starved_guard, settings.coin_window) == (
        "seed",
        "resource",
        "below",
        72,
    )
    single = parser.parse_args(["--coin-window", "10"])
    assert set(variants(single, SchedulerSettings())) >= {"rescoin", "karma"}  # one window: labels as before
