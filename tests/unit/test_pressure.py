"""Memory by pressure (services/scheduler/pressure.py): the rules ``step.decide`` applies to balloons."""

from __future__ import annotations

import uuid
from dataclasses import replace

import numpy as np
import pytest
from rescoin.proto.messages import Estimate, Sample
from rescoin.services.runtime.config import load_config
from rescoin.services.scheduler.pressure import MemoryPressure
from rescoin.services.scheduler.settings import SchedulerSettings
from rescoin.services.scheduler.step import decide

from tests.unit.test_scheduler_core import core, env

MIB = 2**20
MEM = 1
C = np.array([4.0, 1024 * MIB, 1e8, 1e8])
TC = np.array([[1.0, 256 * MIB, 2e7, 2e7]] * 2)
# contended memory whatever the guard does: ceilings stay in force
SETTINGS = replace(SchedulerSettings(), release_when_fit=False, share_leftover=False, mem_reserve_bytes=16 * MIB)
FIT = np.zeros(4)


def pressure(psi_some=(-1, -1), psi_full=(-1, -1), majflt=(-1, -1), unreclaimable=(-1, -1)) -> MemoryPressure:
    return MemoryPressure(*(np.array(v, dtype=float) for v in (psi_some, psi_full, majflt, unreclaimable)))


def usage(mem_mib=(100, 100)) -> np.ndarray:
    au = TC * 0.5
    au[:, MEM] = np.array(mem_mib) * MIB
    return au


def last(mem_mib=(np.inf, np.inf)) -> np.ndarray:
    ceiling = np.full((2, 4), np.inf)
    ceiling[:, MEM] = np.array(mem_mib, dtype=float) * MIB
    return ceiling


def step(mem_last, p=None, settings=SETTINGS, mem_use=(100, 100)):
    au = usage(mem_use)
    return decide(au, au, TC, C, np.zeros((2, 4)), last(mem_last), FIT, settings, p)


def test_the_floor_is_what_the_guest_cannot_give_back_plus_reserve_where_known():
    out = step((np.inf, np.inf), pressure(unreclaimable=(300 * MIB, -1)))
    assert out.alloc[0, MEM] >= 316 * MIB and out.ceiling[0, MEM] >= 316 * MIB  # not use (100) + reserve
    assert out.ceiling[1, MEM] == pytest.approx(256 * MIB)  # unknown: use + reserve, under the template here
    assert out.demand[0, MEM] >= 300 * MIB  # what it cannot give back it demands


def test_without_pressure_a_balloon_shrinks_by_the_shrink_step_not_to_use_plus_reserve():
    out = step((800, np.inf))
    assert out.ceiling[0, MEM] == pytest.approx(800 * MIB * (1 - SETTINGS.mem_shrink_step))
    assert out.ceiling[1, MEM] == pytest.approx(256 * MIB)  # no balloon before: the target at once
    ceilings = [800 * MIB]
    for _ in range(200):  # step by step down to the target (the template here), never below it
        ceilings.append(step((ceilings[-1] / MIB, np.inf)).ceiling[0, MEM])
    assert all(b <= a for a, b in zip(ceilings, ceilings[1:], strict=False))
    assert ceilings[-1] == pytest.approx(256 * MIB)


def test_the_shrink_step_of_one_jumps_as_before():
    out = step((800, np.inf), settings=replace(SETTINGS, mem_shrink_step=1.0))
    assert out.ceiling[0, MEM] == pytest.approx(256 * MIB)


@pytest.mark.parametrize(
    "signal",
    [
        {"psi_some": (SETTINGS.mem_pressure_some_pct, 0)},
        {"psi_full": (SETTINGS.mem_pressure_full_pct, 0)},
        {"majflt": (SETTINGS.mem_pressure_majflt_per_s, 0)},
    ],
)
def test_a_pressured_balloon_never_shrinks_and_grows_by_the_grow_step(signal):
    out = step((400, 400), pressure(**signal))
    assert out.mem_pressured.tolist() == [True, False]
    assert out.demand[0, MEM] == pytest.approx(400 * MIB * (1 + SETTINGS.mem_grow_step))
    assert out.ceiling[0, MEM] == pytest.approx(400 * MIB * (1 + SETTINGS.mem_grow_step))  # the host has room
    assert out.ceiling[1, MEM] == pytest.approx(400 * MIB * (1 - SETTINGS.mem_shrink_step))  # no pressure


def test_a_psi_average_without_faults_holds_the_balloon_but_does_not_grow_it():
    """PSI avg10 lingers ~10 s x ln(peak / threshold) after a stall: the fault rate, per second, says whether
    the guest stalls now."""
    out = step((400, 400), pressure(psi_some=(40, 0), psi_full=(20, 0), majflt=(0, 0)))
    assert out.mem_pressured.tolist() == [True, False]
    assert out.ceiling[0, MEM] == pytest.approx(400 * MIB)  # held, not shrunk ...
    assert out.demand[0, MEM] < 400 * MIB  # ... and not grown


def test_just_below_every_threshold_is_no_pressure():
    below = pressure(
        psi_some=(SETTINGS.mem_pressure_some_pct * 0.99, 0),
        psi_full=(SETTINGS.mem_pressure_full_pct * 0.99, 0),
        majflt=(SETTINGS.mem_pressure_majflt_per_s * 0.99, 0),
    )
    assert not step((400, 400), below).mem_pressured.any()


def test_unknown_pressure_is_no_pressure():
    out = step((400, 400), pressure())
    assert not out.mem_pressured.any()
    assert out.ceiling[0, MEM] == pytest.approx(400 * MIB * (1 - SETTINGS.mem_shrink_step))


def test_pressure_grows_a_balloon_back_within_a_few_periods():
    """From where it thrashes to 1.5x that: log(1.5)/log(1 + grow_step) periods, 5 at the default."""
    balloon, periods = 400 * MIB, 0
    while balloon < 600 * MIB:
        balloon = step((balloon / MIB, 300), pressure(psi_some=(50, 0), majflt=(1000, 0))).ceiling[0, MEM]
        periods += 1
    assert periods == int(np.ceil(np.log(1.5) / np.log(1 + SETTINGS.mem_grow_step)))


def test_coins_decide_who_gets_contended_memory_under_pressure():
    """Both pressured on a full host: the saver's balloon grows, the other's only holds."""
    au = usage((480, 480))  # floors 496 MiB: below the balloons
    coins = np.array([[0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    both = pressure(psi_some=(50, 50), majflt=(1000, 1000))
    out = decide(au, au, TC, C, coins, last((500, 500)), FIT, SETTINGS, both)
    assert out.ceiling[0, MEM] > 500 * MIB  # it had the coins: the host's last 24 MiB are its
    assert out.ceiling[1, MEM] == pytest.approx(500 * MIB)  # held, never shrunk
    assert out.alloc[:, MEM].sum() <= C[MEM]


def test_the_guard_off_is_the_floor_alone():
    off = replace(SETTINGS, mem_pressure_guard=False, mem_shrink_step=1.0)
    out = step((400, 400), pressure(psi_some=(90, 0), psi_full=(60, 0), majflt=(5000, 0)), settings=off)
    assert not out.mem_pressured.any()
    assert out.ceiling[:, MEM] == pytest.approx([256 * MIB, 256 * MIB])  # template ≥ use + reserve


def test_a_memory_that_fits_the_host_has_no_balloon_whatever_the_pressure():
    fits = replace(SETTINGS, release_when_fit=True)
    out = decide(usage(), usage(), TC, C, np.zeros((2, 4)), last((400, 400)), np.full(4, 5), fits, pressure())
    assert np.isinf(out.ceiling[:, MEM]).all()


def test_the_scheduler_service_reads_pressure_from_the_sample_and_keeps_its_balloons(tmp_path):
    """Sample → alloc: the service passes the sample's vectors and its own last ceilings to decide."""
    vms = [str(uuid.UUID(int=i + 1)) for i in range(2)]
    sched = core(tmp_path, release_when_fit="false", share_leftover="false", mem_reserve_bytes=16 * MIB)
    cfg = load_config(None, [])
    assert cfg.scheduler.mem_pressure_guard  # on by default

    def period(p, some):
        body = Sample(C, vms, ["a", "b"], TC, usage(), ["guest"] * 2, 1.0)
        body.mem_psi_some[:] = some
        body.mem_unreclaimable[:] = [700 * MIB, -1]
        sched.on_message(env("sample", p, body))
        (out,) = sched.on_message(env("estimate", p + 1, Estimate(vms, usage(), ["last"] * 4, {})))
        return out.body.ceiling[:, MEM]

    first = period(10, [0.0, 0.0])
    assert first[0] == pytest.approx(716 * MIB)  # unreclaimable + reserve, from no balloon at once
    assert period(11, [50.0, 0.0])[0] == pytest.approx(716 * MIB * (1 + SETTINGS.mem_grow_step))
    assert sched.counters.values["mem_pressured"] == 1
    held = period(12, [50.0, 0.0])[0]
    assert held > 716 * MIB * (1 + SETTINGS.mem_grow_step)  # grows on while pressured
    assert period(13, [0.0, 0.0])[0] == pytest.approx(max(held * (1 - SETTINGS.mem_shrink_step), 716 * MIB))
