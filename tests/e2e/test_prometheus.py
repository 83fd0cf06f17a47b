"""A real Prometheus scraping the sim-host pipeline's exporter, with deploy/prometheus's rules loaded.

Every query of the Grafana dashboards (deploy/grafana/rescoin.json, per host,
and rescoin-fleet.json, across hosts) returns data, every rule evaluates
without error, and a stage taken down shows up as a firing RescoinServiceDown
in ALERTS.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import conftest as e2e
from tests.e2e.conftest import HOST, Pipeline, wait_running
from tests.support.bus import wait_for
from tests.support.need import missing
from tests.support.net import free_port

pytestmark = pytest.mark.e2e

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARDS = (DEPLOY / "grafana" / "rescoin.json", DEPLOY / "grafana" / "rescoin-fleet.json")
RULES = DEPLOY / "prometheus" / "rescoin.rules.yml"
# The rules' `for:` (30 s to 5 min) keep a supervisord restart from paging anyone; here they
# would only make the test wait. The promtool unit tests check the real durations; this test
# checks that the rules work on real data, so every `for:` becomes 2 evaluations.
TEST_FOR = "2s"
# Grafana's own variables, as Grafana would expand them at a 1 s scrape interval
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$host": HOST}


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("query", query=expr)["result"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False


def both_enforcement_config(state: Path, sim_endpoint: str, as_demo: bool = False) -> str:
    # `shares` (the demo's default) sets no rate ceilings, so the ceiling panels would rightly be
    # empty: `both` sets coin-weighted shares and ceilings, and every panel has something to show
    return ORIGINAL_CONFIG(state, sim_endpoint) + '\n[scheduler]\nenforcement = "both"\n'


ORIGINAL_CONFIG = e2e.demo_like_config


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Iterator[Pipeline]:
    """The e2e pipeline (conftest.py), with enforcement "both"."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(e2e, "demo_like_config", both_enforcement_config)
        running = e2e.start_pipeline(tmp_path_factory.mktemp("pipeline"))
    try:
        yield running
    finally:
        e2e.stop_pipeline(running)
        shutil.rmtree(running.state.parent, ignore_errors=True)


def exporter_port(pipeline: Pipeline) -> int:
    return int(re.search(r"^listen_port = (\d+)$", pipeline.config.read_text(), re.MULTILINE).group(1))


@pytest.fixture(scope="module")
def prometheus(pipeline, tmp_path_factory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        missing("prometheus (Debian package prometheus) is not installed: deploy/install.sh --test installs it")
    tmp = tmp_path_factory.mktemp("prometheus")
    rules = re.sub(r"^(\s*)for: \S+$", rf"\g<1>for: {TEST_FOR}", RULES.read_text(), flags=re.MULTILINE)
    assert rules != RULES.read_text()
    (tmp / RULES.name).write_text(rules)
    (tmp / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {tmp / RULES.name}\n"
        "scrape_configs:\n  - job_name: rescoin\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter_port(pipeline)}']\n"
    )
    port = free_port()
    log = tmp / "prometheus.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        assert wait_for(server.ready, 30, 0.1), log.read_text()[-3000:]
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expr with Grafana's variables expanded) for every target of every panel."""
    queries = []
    for panel in (p for path in DASHBOARDS for p in json.loads(path.read_text())["panels"]):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, f"{panel['title']}: a variable this test does not expand: {expr}"
            queries.append((panel["title"], expr))
    return queries


def firing(prometheus: Prometheus, alertname: str) -> list[dict[str, str]]:
    return [r["metric"] for r in prometheus.query(f'ALERTS{{alertstate="firing", alertname="{alertname}"}}')]


def test_every_dashboard_query_returns_series(pipeline, prometheus):
    assert wait_running(pipeline), pipeline.ctl("status").stdout + pipeline.logs()
    queries = dashboard_queries()
    assert len(queries) >= 20
    answered: set[int] = set()

    def all_answered() -> bool:
        for i, (_, expr) in enumerate(queries):
            if i not in answered and prometheus.query(expr):
                answered.add(i)  # cpu ceilings come and go with contention: once is enough
        return len(answered) == len(queries)

    assert wait_for(all_answered, 120, 1.0), (
        [queries[i] for i in range(len(queries)) if i not in answered],
        pipeline.logs(),
    )
    # the rules behind the recording-rule panels and the alerts evaluate on real data without error
    groups = prometheus.api("rules")["groups"]
    broken = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not broken, broken
    assert {g["name"] for g in groups} == {"rescoin.recording", "rescoin.alerts"}


def test_a_stopped_predictor_fires_service_down_and_it_resolves_when_it_is_back(pipeline, prometheus):
    assert wait_running(pipeline), pipeline.ctl("status").stdout + pipeline.logs()
    assert wait_for(lambda: prometheus.query(f'rescoin_service_up{{host="{HOST}", service="predictor"}} == 1'), 30, 0.5)
    assert not [a for a in firing(prometheus, "RescoinServiceDown") if a.get("service") == "predictor"]
    # stopped, not kill -9: supervisord restarts a killed stage within a second or two, which is
    # exactly what the alert's `for:` is there to ignore
    stopped = pipeline.ctl("stop", "rescoin:predictor")
    assert "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    try:

        def predictor_down_firing() -> list[dict[str, str]]:
            return [
                a
                for a in firing(prometheus, "RescoinServiceDown")
                if a.get("service") == "predictor" and a.get("host") == HOST
            ]

        assert wait_for(predictor_down_firing, 30, 0.5), prometheus.query("ALERTS")
        alert = predictor_down_firing()[0]
        assert alert["severity"] == "critical" and alert["job"] == "rescoin"
        # the other stages are still up: only the one taken down is reported
        assert {a["service"] for a in firing(prometheus, "RescoinServiceDown") if a.get("host") == HOST} == {
            "predictor"
        }
    finally:
        pipeline.ctl("start", "rescoin:predictor")
    assert wait_for(lambda: not predictor_down_firing(), 60, 0.5), prometheus.query("ALERTS")
