"""deploy/prometheus/: the rules load, their promtool unit tests pass, and every alert is tested both ways."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.need import missing

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = PROMETHEUS / "rescoin.rules.yml"
RULE_TESTS = PROMETHEUS / "rescoin.rules.test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool (Debian package prometheus) is not installed: deploy/install.sh --test installs it")
    return path


def run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    # promtool resolves rule_files relative to the file naming them; cwd keeps its messages short
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS)


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), re.MULTILINE)


def alert_cases() -> list[tuple[str, bool]]:
    """(alertname, expects it firing) for every alert_rule_test case in the test file.

    No YAML parser in the venv: a case runs from its `- alertname:` line to the
    next case or test group, and expects firing alerts iff it has `exp_alerts:`.
    """
    cases = []
    for chunk in re.split(r"^\s*- alertname: ", RULE_TESTS.read_text(), flags=re.MULTILINE)[1:]:
        name, _, rest = chunk.partition("\n")
        case = re.split(r"^  - name: ", rest, maxsplit=1, flags=re.MULTILINE)[0]
        cases.append((name.strip(), "exp_alerts:" in case))
    return cases


def test_the_rules_pass_promtool_check(promtool):
    check = run(promtool, "check", "rules", RULES.name)
    assert check.returncode == 0, check.stdout + check.stderr
    recordings = re.findall(r"^\s*- record: ", RULES.read_text(), re.MULTILINE)
    assert f"SUCCESS: {len(alert_names()) + len(recordings)} rules found" in check.stdout, check.stdout


def test_the_example_prometheus_config_is_valid_and_loads_the_rules(promtool):
    check = run(promtool, "check", "config", "prometheus.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1 rule files found" in check.stdout, check.stdout


def test_the_rules_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_fail_when_a_rule_is_broken(promtool, tmp_path):
    """The promtool tests can fail: an entitlement rule that forgets "not oversold" is caught."""
    broken = RULES.read_text().replace(
        "and on (job, instance, host, resource) (rescoin:host_entitlement:ratio <= 1)",
        "and on (job, instance, host, resource) (rescoin:host_entitlement:ratio <= 100)",
    )
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "RescoinVMAllocatedBelowEntitlement" in result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing():
    names = alert_names()
    assert len(names) == len(set(names)) >= 11, names
    cases = alert_cases()
    for name in names:
        assert (name, True) in cases, f"{name} has no case where it fires"
        assert (name, False) in cases, f"{name} has no case where it stays quiet"
    assert {n for n, _ in cases} <= set(names), "a test names an alert the rules do not have"


def test_every_counter_an_alert_names_is_in_its_services_first_heartbeat():
    """A counter that appears only at its first increment starts its series at 1: increase() then
    sees no event and the alert misses a one-off (a lone floors_over_capacity, one backend failure)."""
    from rescoin.services.actuator.core import COUNTERS as ACTUATOR
    from rescoin.services.ingress.core import COUNTERS as INGRESS
    from rescoin.services.runtime.support import BASE_COUNTERS, Counters
    from rescoin.services.scheduler.core import COUNTERS as SCHEDULER

    declared = {"scheduler": SCHEDULER, "actuator": ACTUATOR, "ingress": INGRESS}
    named = re.findall(r'service="(\w+)", counter="([\w.]+)"', RULES.read_text())
    assert named, "no alert names a service's counter any more: this test checks nothing"
    for service, counter in named:
        first_beat = Counters(declared=declared.get(service, ())).snapshot()
        assert first_beat.get(counter) == 0, f"{service} does not declare {counter!r}"
    # the ingress alert matches rejected\..+: every cause it can count is there from the start
    assert set(INGRESS) >= {"rejected.wrong_vm", "rejected.rate_limited", "rejected.malformed"}
    assert set(BASE_COUNTERS) <= set(Counters(declared=INGRESS).snapshot())
