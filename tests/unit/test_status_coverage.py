"""`rescoin status`'s enforcement line, from the actuator's hb info."""

from __future__ import annotations

from rescoin.services.tools.status import coverage


def test_coverage_counts_what_holds_and_shouts_what_does_not():
    info = {"enforced.w": 6, "enforced.c": 2, "enforced.t": 2, "enforced.-": 2, "enforced.x": 4, "mode": "normal"}
    line = coverage("h1", info)
    assert line.startswith("enforcement on h1: 12 of 16 VM x resource held")
    assert "weight 6" in line and "throttle 2" in line and "4 NOT ENFORCED" in line


def test_coverage_before_the_first_apply():
    assert coverage("h1", {}) == "enforcement on h1: nothing applied yet"
