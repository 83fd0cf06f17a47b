"""The sim host's model: trace demand per period, enforcement, counters linear in time."""

from __future__ import annotations

import numpy as np
import pytest
from rescoin.proto import NO_LIMIT
from rescoin.services.simhost.core import SimHost, Workload

PERIOD_S = 1.0
T0 = 1_000_000 * 1_000_000_000  # period 1_000_000 starts here (ns)
GIB = 2.0**30


def workload(demand: np.ndarray, capacity=(2.0, 8 * GIB, 2e8, 2e8)) -> Workload:
    """Two VMs of 2 vcpus, 4 GiB, 100 MB/s disk and net; templates a quarter (mem a half)."""
    provisioned = np.array([[2.0, 4 * GIB, 1e8, 1e8]] * 2)
    steps = demand.shape[0]
    return Workload(
        names=["a", "b"],
        traces=["a.csv.gz", "b.csv.gz"],
        demand=demand,
        read_share=np.full((steps, 2), 0.75),
        rx_share=np.full((steps, 2), 0.5),
        provisioned=provisioned,
        template=provisioned * np.array([0.25, 0.5, 0.25, 0.25]),
        capacity=np.asarray(capacity),
    )


def steady(row: list[list[float]], steps: int = 3) -> np.ndarray:
    return np.repeat(np.array(row, dtype=float)[None], steps, axis=0)


def at(seconds: float) -> int:
    return T0 + round(seconds * 1e9)


def test_uncontended_vms_get_their_demand_and_counters_grow_at_that_rate():
    sim = SimHost("h1", PERIOD_S, workload(steady([[0.5, GIB, 1e6, 2e6], [1.0, GIB, 0, 0]])), at(0))
    stats = sim.stats(at(0.4))
    assert np.allclose(stats.achieved, stats.demand)
    # 0.4 s at 0.5 cores = 0.2 s of cpu; disk 1 MB/s, 3/4 reads; net 2 MB/s, half received
    assert stats.counters[0] == pytest.approx([0.2e9, 0.3e6, 0.1e6, 0.4e6, 0.4e6])
    assert stats.counters[1, 0] == pytest.approx(0.4e9)
    assert np.allclose(stats.mem_used, [GIB, GIB])


def test_each_period_replays_the_next_trace_sample_and_wraps_around():
    demand = np.zeros((2, 2, 4))
    demand[0, :, 0], demand[1, :, 0] = 0.2, 0.6
    sim = SimHost("h1", PERIOD_S, workload(demand), at(0))
    seen = [sim.stats(at(0.5 + k)).demand[0, 0] for k in range(4)]
    assert seen == pytest.approx([0.2, 0.6, 0.2, 0.6])  # the first period replays row 0


def test_a_cpu_ceiling_caps_achieved_use_and_the_counters():
    sim = SimHost("h1", PERIOD_S, workload(steady([[1.5, GIB, 0, 0], [0.1, GIB, 0, 0]])), at(0))
    vm = sim.vms[0]
    result = sim.set_tunables([{"vm": vm, "resource": "cpu", "ceiling": 0.5}], at(0.5))
    assert result.writes == 1 and not result.errors
    stats = sim.stats(at(1.0))
    assert stats.achieved[0, 0] == pytest.approx(0.5)
    assert stats.counters[0, 0] == pytest.approx(1.5e9 * 0.5 + 0.5e9 * 0.5)  # half before, half after


def test_under_contention_cpu_is_shared_by_the_shares():
    sim = SimHost("h1", PERIOD_S, workload(steady([[2.0, GIB, 0, 0], [2.0, GIB, 0, 0]])), at(0))
    a, b = sim.vms
    sim.set_tunables(
        [
            {"vm": a, "resource": "cpu", "shares": 3072.0},
            {"vm": b, "resource": "cpu", "shares": 1024.0},
        ],
        at(0.1),
    )
    achieved = sim.stats(at(0.2)).achieved[:, 0]
    assert achieved.sum() == pytest.approx(2.0)
    assert achieved[0] == pytest.approx(3 * achieved[1])


def test_memory_use_is_demand_capped_by_the_balloon_target():
    sim = SimHost("h1", PERIOD_S, workload(steady([[0, 3 * GIB, 0, 0], [0, GIB, 0, 0]])), at(0))
    sim.set_tunables([{"vm": sim.vms[0], "resource": "mem", "ceiling": 2 * GIB}], at(0.1))
    stats = sim.stats(at(0.2))
    assert stats.mem_used == pytest.approx([2 * GIB, GIB])
    assert stats.mem_target == pytest.approx([2 * GIB, 4 * GIB])


def test_a_ceiling_below_the_template_is_counted_per_period():
    sim = SimHost("h1", PERIOD_S, workload(steady([[1.0, GIB, 0, 0], [0, GIB, 0, 0]])), at(0))
    vm = sim.vms[0]
    sim.set_tunables([{"vm": vm, "resource": "cpu", "ceiling": 0.25}], at(0.1))  # template 0.5
    sim.set_tunables([{"vm": vm, "resource": "cpu", "ceiling": NO_LIMIT}], at(0.2))
    assert sim.stats(at(2.5)).below_template[0, 0] == 1  # only the period it happened in
    assert sim.stats(at(2.5)).below_template.sum() == 1


def test_bad_writes_are_reported_and_the_good_ones_applied():
    sim = SimHost("h1", PERIOD_S, workload(steady([[0, 0, 0, 0], [0, 0, 0, 0]])), at(0))
    a = sim.vms[0]
    result = sim.set_tunables(
        [
            {"vm": "00000000-0000-0000-0000-000000000009", "resource": "cpu", "ceiling": 1.0},
            {"vm": a, "resource": "mem", "ceiling": 64 * GIB},
            {"vm": a, "resource": "cpu", "ceiling": -0.5},
            {"vm": a, "resource": "net", "shares": 5e7, "ceiling": 8e7},
        ],
        at(0.1),
    )
    assert result.writes == 1
    assert [e["error"][:10] for e in result.errors] == ["no such VM", "balloon ta", "ceiling mu"]
    assert sim.tunables().ceiling[0, 3] == 8e7 and sim.tunables().shares[0, 3] == 5e7


def test_saved_tunables_come_back_only_for_the_same_vms():
    sim = SimHost("h1", PERIOD_S, workload(steady([[0, 0, 0, 0], [0, 0, 0, 0]])), at(0))
    sim.set_tunables([{"vm": sim.vms[1], "resource": "disk", "ceiling": 5e7}], at(0.1))
    assert sim.changed
    saved = sim.saved_state()
    assert not sim.changed
    again = SimHost("h1", PERIOD_S, workload(steady([[0, 0, 0, 0], [0, 0, 0, 0]])), at(5))
    assert again.load_state(saved)
    assert again.tunables().ceiling[1, 2] == 5e7
    assert again.origin == sim.origin  # the trace goes on where it was, not from the start
    other = SimHost("h2", PERIOD_S, workload(steady([[0, 0, 0, 0], [0, 0, 0, 0]])), at(5))
    assert not other.load_state(saved)  # other host name, other VM UUIDs
    assert not other.load_state({"vms": saved["vms"], "shares": "x"})


def test_the_clock_going_backwards_does_not_unwind_counters():
    sim = SimHost("h1", PERIOD_S, workload(steady([[1.0, 0, 0, 0], [0, 0, 0, 0]])), at(0))
    first = sim.stats(at(0.5)).counters[0, 0]
    assert sim.stats(at(0.2)).counters[0, 0] == first


def test_a_wall_clock_step_back_is_followed_and_the_trace_and_the_counters_go_on():
    """The host's clock stepped back an hour: the sim host's periods follow it (every other stage numbers
    periods by that clock), the trace goes on from where it was, and its counters' clock never runs back."""
    demand = np.zeros((4, 2, 4))
    demand[:, 0, 0] = [0.1, 0.2, 0.3, 0.4]
    sim = SimHost("h1", PERIOD_S, workload(demand), at(0))
    before = sim.stats(at(1.5))
    stepped = sim.stats(at(1.5 - 3600))
    assert stepped.period == before.period - 3600 and stepped.now_ns >= before.now_ns
    assert stepped.counters[0, 0] == before.counters[0, 0]
    after = sim.stats(at(2.5 - 3600))  # the next period, by the stepped clock: the next trace row
    assert after.period == stepped.period + 1 and after.demand[0, 0] == pytest.approx(0.3)
    assert after.counters[0, 0] > before.counters[0, 0] and after.now_ns > stepped.now_ns


def test_the_stage_moves_the_host_on_at_each_tick_and_keeps_its_state_file(tmp_path):
    import json

    from rescoin.proto.simhost import OP_DESCRIBE, encode_request
    from rescoin.services.runtime.support import Counters
    from rescoin.services.simhost.main import SimhostStage

    sim = SimHost("h1", PERIOD_S, workload(steady([[0.5, GIB, 1e6, 2e6], [1.0, GIB, 0, 0]])), at(0))
    counters = Counters()
    stage = SimhostStage(sim, tmp_path / "simhost.json", counters, "ipc://x")
    stage.load()
    assert json.loads((tmp_path / "simhost.json").read_text()) == sim.saved_state()
    start = sim.period
    stage.on_period(start)  # the boundary after the first period passed: the next trace sample
    stage.on_period(start + 2)  # a tick late by one period: both periods are counted
    assert sim.period == start + 3 and counters.snapshot()["periods"] == 3
    assert stage.on_request(encode_request(OP_DESCRIBE, {}), at(3.5)) and counters.snapshot()["requests"] == 1
    assert stage.health().info["vms"] == 2 and stage.subscriptions() == ()
