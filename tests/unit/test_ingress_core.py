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


def test_the_stage_forwards_a_guests_own_report_once_its_rate_allows_and_counts_the_rest():
    from rescoin.proto import KIND_GUEST_MEM, Envelope
    from rescoin.proto.guest import GUEST_FORMAT_VERSION, GuestMem, encode_guest_report
    from rescoin.services.ingress.core import COUNTERS, IngressStage
    from rescoin.services.runtime.support import Counters

    def report(vm: str) -> list[bytes]:
        body = GuestMem(vm, 2 << 30, 1 << 30, 1 << 30, 0, 0, "test")
        return encode_guest_report(Envelope(KIND_GUEST_MEM, "guest", "agent", 1, 0, 0, 7, body, GUEST_FORMAT_VERSION))

    counters = Counters(declared=COUNTERS)
    limit = GuestRateLimit(per_period=1, burst=1, period_s=1.0, clock=lambda: 0.0)
    stage = IngressStage(counters, limit, lambda: ({"rejected.zap_denied": 3, "connections.open": 2}, {"x": 1}))
    (out,) = stage.on_guest(report(VM_A), VM_A, period=42)
    assert (out.kind, out.period, out.body.vm) == (KIND_GUEST_MEM, 42, VM_A)  # this host's period, not the guest's
    assert stage.on_guest(report(VM_A), VM_A, 42) == []  # past its rate
    assert stage.on_guest(report(VM_B), VM_A, 42) == []  # a report for another VM than its key's
    assert stage.on_guest([b"garbage"], VM_A, 42) == []
    assert stage.health().info == {"x": 1} and stage.subscriptions() == ()
    c = counters.snapshot()
    assert (c["received"], c["forwarded"], c["rejected.rate_limited"], c["rejected.wrong_vm"]) == (4, 1, 1, 1)
    assert c["rejected.malformed"] == 1 and c["rejected.zap_denied"] == 3 and c["connections.open"] == 2
