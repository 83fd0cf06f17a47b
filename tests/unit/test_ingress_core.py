"""The ingress's rate limit, on a clock the test moves."""

from __future__ import annotations

import uuid

from rescoin.services.ingress.core import GuestRateLimit

VM_A, VM_B = str(uuid.UUID(int=0xA)), str(uuid.UUID(int=0xB))


def test_a_burst_then_the_average_per_vm():
    now = [0.0]
    limit = GuestRateLimit(per_period=2, burst=4, period_s=1.0, clock=lambda: now[0])
    assert [limit.allow(VM_A) for _ in range(6)] == [True] * 4 + [False] * 2
    assert limit.allow(VM_B)  # a bucket of its own
    now[0] = 1.0  # one period later: two more
    assert [limit.allow(VM_A) for _ in range(3)] == [True, True, False]
    now[0] = 100.0  # a long silence refills to the burst, no further
    assert sum(limit.allow(VM_A) for _ in range(10)) == 4


def test_an_agent_reporting_once_a_period_is_never_limited():
    now = [0.0]
    limit = GuestRateLimit(per_period=2, burst=4, period_s=0.5, clock=lambda: now[0])
    for i in range(1000):
        now[0] = i * 0.5
        assert limit.allow(VM_A)
