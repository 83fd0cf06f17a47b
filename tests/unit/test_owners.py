"""The owner table: a stage accepts sample, estimate, alloc, applied, guest.mem only from the service making them."""

from __future__ import annotations

import pytest
from rescoin.proto import Envelope
from rescoin.proto.envelope import KINDS
from rescoin.services.runtime.owners import OWNERS, from_owner
from rescoin.services.runtime.support import Counters

SERVICES = ("monitor", "predictor", "scheduler", "actuator", "ingress", "bus", "simhost", "tap")


def envelope(kind: str, src: str) -> Envelope:
    return Envelope(kind=kind, host="h1", src=src, epoch=1, seq=0, ts=0, period=10, body=None)


def test_each_pipeline_kind_has_the_service_that_makes_it_as_owner():
    assert OWNERS == {
        "sample": "monitor",
        "estimate": "predictor",
        "alloc": "scheduler",
        "applied": "actuator",
        "guest.mem": "ingress",
    }
    assert set(OWNERS) <= set(KINDS)


@pytest.mark.parametrize("kind", sorted(OWNERS))
@pytest.mark.parametrize("src", SERVICES)
def test_a_kind_is_accepted_from_its_owner_only_and_the_rest_is_counted(kind, src):
    counters = Counters()
    accepted = from_owner(envelope(kind, src), counters)
    assert accepted == (src == OWNERS[kind])
    assert counters.values["rejected.owner"] == (0 if accepted else 1)
    assert counters.values["rejected"] == (0 if accepted else 1)
    if not accepted:
        assert f"only {OWNERS[kind]} publishes {kind}" in counters.recent_errors[-1]


def test_heartbeats_have_no_single_owner():
    counters = Counters()
    assert all(from_owner(envelope("hb", src), counters) for src in SERVICES)
    assert counters.values["rejected"] == counters.values["rejected.owner"] == 0
