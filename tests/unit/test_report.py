"""`rescoin evaluate --report DIR`: one self-contained HTML page with the metrics, per-VM satisfaction and a week."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import numpy as np
import pytest
from rescoin.services.model.scenario import Scenario
from rescoin.services.model.traces import default_traces_dir
from rescoin.services.tools.evaluate import metrics
from rescoin.services.tools.evaluate_report import WEEK, contended_week, vm_satisfaction

from tests.support.need import missing

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> str:
    if not default_traces_dir().is_dir():
        missing(f"the Bitbrains traces are not at {default_traces_dir()} (a broken install)")
    folder = tmp_path_factory.mktemp("report")
    args = ["evaluate", "--vms", "5", "--periods", "300", "--policies", "rescoin", "static", "--report", str(folder)]
    out = subprocess.run(
        [sys.executable, "-m", "rescoin.services.cli", *args], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert f"report: {folder / 'index.html'}" in out.stderr
    assert "rescoin" in out.stdout  # the table is still printed
    return (folder / "index.html").read_text()


def test_the_page_has_the_metrics_the_satisfaction_and_the_week(page):
    for section in ("id='metrics'", "id='satisfaction'", "id='week'", "id='coins'"):
        assert section in page
    metrics_table = page.split("id='metrics'")[1].split("</table>")[0]
    assert "<td>rescoin</td>" in metrics_table and "<td>static</td>" in metrics_table
    assert "min_satisfaction" in metrics_table and "jain" in metrics_table


def test_every_image_is_an_inline_png_and_nothing_is_loaded_from_elsewhere(page):
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 5  # metrics, satisfaction, the week stacked, three VMs, coins
    assert all(base64.b64decode(data).startswith(PNG) for data in images)
    assert not re.search(r"(src|href)=['\"]?(https?:|//|file:)", page)


def scenario(demand: np.ndarray, capacity: np.ndarray) -> Scenario:
    return Scenario(demand, np.ones((demand.shape[1], 4)), capacity, [str(i) for i in range(demand.shape[1])])


def test_per_vm_satisfaction_has_the_minimum_that_metrics_reports():
    rng = np.random.default_rng(1)
    demand = rng.uniform(0, 2, (50, 3, 4))
    sc = scenario(demand, np.full(4, 3.0))
    run = {"achieved": np.minimum(demand, rng.uniform(0, 2, demand.shape))}
    assert vm_satisfaction(sc, run).min() == pytest.approx(metrics(sc, run)["min_satisfaction"])


def test_the_contended_week_is_where_demand_exceeds_capacity_most_on_the_most_contended_resource():
    demand = np.zeros((3 * WEEK, 2, 4))
    demand[WEEK + 100 : WEEK + 600, :, 2] = 5.0  # disk over capacity for 500 periods, from WEEK + 100
    demand[10:20, :, 0] = 5.0  # a short cpu burst elsewhere
    window, resource = contended_week(scenario(demand, np.full(4, 4.0)))
    assert resource == 2
    assert window.stop - window.start == WEEK and window.start <= WEEK + 100 and window.stop >= WEEK + 600
