"""`rescoin evaluate` on a small slice of the real traces: its JSON keys stay stable."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rescoin.services.model.traces import default_traces_dir

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
        missing(f"the Bitbrains traces are not at {default_traces_dir()} (a broken install, or a wrong RESCOIN_TRACES)")
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
