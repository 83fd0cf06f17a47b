"""`rescoin tap` on a real bus: other kinds' tables borrow VM names from samples it does not print."""

from __future__ import annotations

import pytest

from tests.integration.test_tools import Chatter, rescoin
from tests.support.bus import running_bus


@pytest.fixture
def bus():
    with running_bus(period_s=0.2) as running:
        chatter = Chatter(running.pub_endpoint)
        try:
            yield running
        finally:
            chatter.stop()


def test_an_alloc_table_names_vms_from_samples_and_prints_only_what_was_asked(bus):
    out = rescoin("tap", "alloc/", "--bus", bus.sub_endpoint, "--count", "2", "--columns", "cpu").stdout
    assert "sample/h1/" not in out and out.count("── alloc/h1/") == 2
    last = out.split("── alloc/h1/")[-1].splitlines()
    assert [line.split()[0] for line in last[3:]] == ["web", "db"]
    assert last[2].split() == ["vm", "cpu", "cores", "cpu"]  # alloc and coins of cpu only
