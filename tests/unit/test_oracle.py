"""The oracle, the bound and the PlanetLab loader of `rescoin evaluate` (issue #28)."""

from __future__ import annotations

import gzip
from dataclasses import replace

import numpy as np
import pytest
from rescoin.services.model.scenario import Scenario
from rescoin.services.model.traces import PLANETLAB_SLOTS, load_planetlab, load_traces, read_planetlab_day
from rescoin.services.scheduler.policy import POLICIES, SHARE_FORMULAS
from rescoin.services.scheduler.settings import SchedulerSettings
from rescoin.services.tools.evaluate import Options, metrics, simulate
from rescoin.services.tools.evaluate_oracle import (
    RecentQuantile,
    bound_allocation,
    lowest_upper,
    saver_upper,
    slots,
)

RATE = [0, 2, 3]


def random_host(seed: int, periods: int = 40, n: int = 5, contention: float = 0.2, memory: bool = True) -> Scenario:
    """A small host of bursty VMs in the units evaluate uses (cores, bytes, bytes/s); ``memory=False``:
    none (as PlanetLab's), since the simulated balloons may serve more memory than the host has."""
    rng = np.random.default_rng(seed)
    size = rng.uniform(1, 4, (n, 4)) * np.array([1.0, 2**30, 1e6, 1e6])
    level = rng.uniform(0.05, 0.6, (1, n, 4))
    bursts = rng.random((periods, n, 4)) < rng.uniform(0.05, 0.5, (1, n, 1))
    if not memory:
        size[:, 1] = 0.0
    demand = size[None] * np.clip(level * rng.uniform(0.3, 1.5, (periods, n, 4)) + bursts * 0.7, 0, 1)
    template = 0.3 * size
    low, peak = template.sum(axis=0), demand.sum(axis=1).max(axis=0)
    capacity = low + contention * np.maximum(peak - low, 0.0)
    return Scenario(demand, template, capacity, [str(i) for i in range(n)])


def _settings(**kw) -> SchedulerSettings:
    return replace(SchedulerSettings(), coin_window=10, **kw)


@pytest.mark.parametrize("seed", range(6))
def test_the_bound_is_at_least_every_policys_lowest_satisfaction(seed):
    sc = random_host(seed, contention=[0.0, 0.3][seed % 2], memory=False)
    served, cert = bound_allocation(sc)
    bound = metrics(sc, {"achieved": served})
    assert bound["entitlement_violations"] == 0
    assert bound["min_satisfaction"] == pytest.approx(cert["lowest_upper"], abs=1e-6)  # exact, certified
    assert (served.sum(axis=1) <= sc.capacity * (1 + 1e-9)).all()
    rows = [(p, _settings()) for p in POLICIES if p != "rescoin"]
    rows += [("rescoin", _settings(share_formula=f)) for f in SHARE_FORMULAS]
    rows += [("rescoin", _settings(enforcement="ceilings"))]
    for policy, settings in rows:
        for estimate in ("ewma_dev", "oracle"):
            run = simulate(sc, policy, Options(scheduler=settings, predictors=[estimate] * 4))
            m = metrics(sc, run)
            if m["entitlement_violations"]:
                continue  # the bound honours entitlements; a policy that breaks one is outside it
            assert m["min_satisfaction"] <= cert["lowest_upper"] + 1e-9, (policy, settings.share_formula, estimate)
            assert m["saver_burst_service"] <= cert["saver_upper"] + 1e-9, (policy, settings.share_formula, estimate)
            assert m["utilization"] <= bound["utilization"] + 1e-9


def test_simulated_balloons_can_serve_more_memory_than_the_host_has():
    # why the bound's test hosts have no memory: a balloon shrinks 5 % a period and never below use +
    # reserve, so Σ served memory can exceed C, which no allocation (and so the bound) can
    sc = random_host(0, contention=0.0)
    run = simulate(sc, "rescoin", Options(scheduler=_settings()))
    assert run["achieved"][:, :, 1].sum(axis=1).max() > sc.capacity[1] * 1.05


def test_the_bound_on_one_slot_is_the_proportional_max_min():
    # one period, one resource: S_i = x_i / d_i, x_i ≥ min(d, tc); max-min gives x_i = max(e_i, λ d_i)
    d = np.array([4.0, 2.0, 1.0, 0.5])
    tc = np.array([1.0, 1.0, 1.0, 1.0])
    cap = 5.0
    demand = np.zeros((1, 4, 4))
    demand[0, :, 0] = d
    template = np.zeros((4, 4))
    template[:, 0] = tc
    sc = Scenario(demand, template, np.array([cap, 0, 0, 0]), list("abcd"))
    _, cert = bound_allocation(sc)
    e = np.minimum(d, tc)
    lam = np.linspace(0, 1, 200001)
    used = np.maximum(e[None], lam[:, None] * d[None]).sum(axis=1)
    best = lam[used <= cap].max()
    assert cert["lowest"] == pytest.approx(best, abs=1e-5)
    assert cert["lowest_upper"] == pytest.approx(best, abs=1e-5)


def test_the_bound_is_over_the_run_not_per_period():
    # period 1: only a bursts and gets all the spare; period 2: both burst alike. Per period, max-min
    # splits period 2 evenly (S_a = 3.5/6, S_b = 2.5/4: lowest 0.583); over the run a gets 0.6 of it (both 0.6)
    demand = np.zeros((2, 2, 4))
    demand[:, :, 0] = [[3.0, 1.0], [3.0, 3.0]]
    template = np.zeros((2, 4))
    template[:, 0] = 1.0
    sc = Scenario(demand, template, np.array([3.0, 0, 0, 0]), ["a", "b"])
    served, cert = bound_allocation(sc)
    assert cert["lowest"] == pytest.approx(0.6, abs=1e-9)
    assert served[:, :, 0].sum(axis=0) == pytest.approx([3.6, 2.4], abs=1e-9)


def test_upper_bounds_hold_for_a_random_feasible_allocation():
    sc = random_host(11)
    s = slots(sc)
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = s.burst * rng.random(s.burst.shape)
        x *= np.minimum(1.0, s.spare / np.maximum(x.sum(axis=0), 1e-12))[None]
        sat = (s.entitled + x).sum(axis=1) / s.demand
        assert sat.min() <= lowest_upper(s, sat) + 1e-12
        saver_served = x[s.saver].sum() / max(s.burst[s.saver].sum(), 1e-12)
        assert saver_served <= saver_upper(s) + 1e-12


@pytest.mark.parametrize("formula", list(SHARE_FORMULAS))
def test_the_oracle_feeds_the_policy_the_true_demand(formula):
    sc = random_host(5, periods=30)
    settings = _settings(share_formula=formula)
    run = simulate(sc, "rescoin", Options(scheduler=settings, predictors=["oracle"] * 4))
    # shares mode: no rate ceilings, so nothing is raised as "pinned": the step asks for exactly the demand
    assert np.allclose(run["asked"][:, :, RATE], sc.demand[:, :, RATE])
    for t in range(len(sc.demand)):
        fed = SHARE_FORMULAS[formula](sc.demand[t], sc.template, sc.capacity, run["coins"][t])
        assert np.allclose(run["shares"][t][:, RATE], fed[:, RATE])
    live = simulate(sc, "rescoin", Options(scheduler=settings))
    assert not np.allclose(live["asked"][:, :, RATE], sc.demand[:, :, RATE])


def test_recent_quantile_is_a_quantile_of_the_last_window():
    model = RecentQuantile(q=0.5, window=3)
    assert model.update(np.array([1.0, 10.0])) == pytest.approx([1.0, 10.0])
    model.update(np.array([3.0, 0.0]))
    assert model.update(np.array([2.0, 5.0])) == pytest.approx([2.0, 5.0])
    assert model.update(np.array([9.0, 0.0])) == pytest.approx([3.0, 0.0])  # 1 and 10 left the window


def _day(path, rows):
    header = "vm," + ",".join(f"t{i:03d}" for i in range(PLANETLAB_SLOTS))
    with gzip.open(path, "wt") as f:
        f.write(header + "\n" + "".join(f"{name}," + ",".join(map(str, v)) + "\n" for name, v in rows))


def test_the_planetlab_loader_parses_day_files(tmp_path):
    ramp = [i % 100 for i in range(PLANETLAB_SLOTS)]
    _day(tmp_path / "planetlab_20110303.csv.gz", [("a_vm", ramp), ("odd, name", [5] * 288), ("gone", [1] * 288)])
    _day(tmp_path / "planetlab_20110306.csv.gz", [("odd, name", [7] * 288), ("a_vm", [50] * 288)])
    names, pct = read_planetlab_day(tmp_path / "planetlab_20110303.csv.gz")
    assert names == ["a_vm", "odd, name", "gone"] and pct.shape == (3, PLANETLAB_SLOTS)
    traces = load_traces(tmp_path)  # detected by its file names
    assert [t.vm_id for t in traces] == ["a_vm", "odd, name"]  # present every day, sorted
    a = traces[0]
    assert a.demand.shape == (2 * PLANETLAB_SLOTS, 4)
    assert a.demand[:PLANETLAB_SLOTS, 0] == pytest.approx(np.array(ramp) / 100)
    assert a.demand[PLANETLAB_SLOTS:, 0] == pytest.approx(0.5)
    assert (a.demand[:, 1:] == 0).all() and a.provisioned.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert len(load_planetlab(tmp_path, 1)) == 1


def test_the_planetlab_loader_rejects_a_wrong_header(tmp_path):
    with gzip.open(tmp_path / "planetlab_20110303.csv.gz", "wt") as f:
        f.write("name,a,b\nx,1,2\n")
    with pytest.raises(ValueError, match="header"):
        load_traces(tmp_path)


def test_the_shipped_planetlab_subset():
    traces = load_traces("planetlab")
    assert len(traces) == 40 and all(t.demand.shape == (5 * PLANETLAB_SLOTS, 4) for t in traces)
    assert 0 <= min(t.demand[:, 0].min() for t in traces) and max(t.demand[:, 0].max() for t in traces) < 1
