"""The whole pipeline under supervisord on the sim host: runs, survives kill -9, stops clean.

Real processes from deploy/supervisord.conf (rewritten to a temporary state
directory and free loopback ports), the real sim host, period 0.5 s, 4 VMs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time

import numpy as np
import pytest
from rescoin.services.runtime.config import load_config
from rescoin.services.scheduler.ledger import CoinLedger

from tests.e2e.conftest import PERIOD_S, Pipeline, leftover_pids, wait_running
from tests.support.bus import wait_for

pytestmark = pytest.mark.e2e


def current_period() -> int:
    return math.floor(time.time() / PERIOD_S)


def assert_guarantees_kept(pipeline: Pipeline) -> None:
    """The template is a guarantee: the sim host never saw a ceiling below it, on any resource."""
    below = pipeline.sim.stats().below_template
    assert not below.any(), f"periods with a ceiling below the template (cpu, mem, disk, net):\n{below}"


def applied_matches_sim(pipeline: Pipeline) -> bool:
    latest = pipeline.applied_for_all(time.monotonic() - 60)[-1].body
    sim = pipeline.sim.tunables()
    order = [sim.vms.index(vm) for vm in latest.vms]
    return np.allclose(sim.ceiling[order], latest.set)


def test_every_program_runs_and_applied_arrives_for_every_vm(pipeline):
    assert wait_running(pipeline), pipeline.ctl("status").stdout + pipeline.logs()
    info = pipeline.sim.describe()
    assert len(info.vms) == 4
    applied = pipeline.wait_applied(time.monotonic())
    assert applied.body.backend == "sim"
    assert applied.body.mode == "normal", applied.body
    assert not applied.body.errors, applied.body.errors
    # what the actuator says it set is what the sim host has (once no newer apply is in flight)
    assert wait_for(lambda: applied_matches_sim(pipeline), 10, 0.05)
    assert_guarantees_kept(pipeline)
    # no stage refused to send its own output (an encoder validates as a receiver would)
    beats = pipeline.watcher.since(0, "hb")
    refused = {(e.src, name) for e in beats for name in e.body.counters if "send_failed" in name}
    assert not refused, refused


@pytest.mark.parametrize("program", ["monitor", "predictor", "scheduler", "actuator", "bus"])
def test_a_program_killed_with_sigkill_is_restarted_and_applied_flows_again(pipeline, program):
    assert wait_running(pipeline), pipeline.ctl("status").stdout + pipeline.logs()
    pipeline.wait_applied(time.monotonic())
    old_pid = pipeline.pid(program)
    killed_at = time.monotonic()
    os.kill(old_pid, signal.SIGKILL)
    assert wait_for(lambda: pipeline.pid(program) not in (0, old_pid), 30, 0.05), pipeline.logs()
    running_period = current_period()
    applied = pipeline.wait_applied(killed_at)
    first_after = min(
        (e for e in pipeline.applied_for_all(time.monotonic() - 60) if e.period > running_period),
        key=lambda e: e.period,
        default=applied,
    )
    # applied carries period p+1 when made at the end of p: flowing again within 2 periods
    # of the restart means one made by the end of period running_period + 2
    assert first_after.period <= running_period + 3, (first_after.period, running_period)
    assert wait_running(pipeline), pipeline.ctl("status").stdout
    assert_guarantees_kept(pipeline)


def ledger_history(ledger: CoinLedger) -> np.ndarray:
    """The ledger's savings per period, oldest first: (window, n, 4)."""
    return np.roll(ledger.ring, -ledger.slot, axis=0)


def test_the_scheduler_restarts_with_the_coin_ledger_it_saved(pipeline, tmp_path):
    assert wait_running(pipeline), pipeline.logs()
    pipeline.wait_applied(time.monotonic())
    settings = load_config(pipeline.config).scheduler
    path = pipeline.state / settings.ledger_file
    old_pid = pipeline.pid("scheduler")
    os.kill(old_pid, signal.SIGKILL)
    (tmp_path / "before.npz").write_bytes(path.read_bytes())  # what the restart will find
    before = CoinLedger.load(tmp_path / "before.npz", settings.coin_window)
    assert np.abs(before.ring).sum() > 0, "the ledger had no coins to lose"
    assert wait_for(lambda: pipeline.pid("scheduler") not in (0, old_pid), 30, 0.05)
    assert wait_for(lambda: CoinLedger.load(path, settings.coin_window).period > before.period, 10, 0.05), (
        pipeline.logs()
    )
    after = CoinLedger.load(path, settings.coin_window)
    assert after.vms == before.vms
    shift = after.period - before.period
    assert 0 < shift < settings.coin_window
    # every period saved before the kill is still in the ledger, unchanged
    np.testing.assert_array_equal(ledger_history(after)[:-shift], ledger_history(before)[shift:])
    pipeline.wait_applied(time.monotonic())
    assert_guarantees_kept(pipeline)


def test_stop_all_leaves_no_process_and_the_actuator_restored_the_tunables(fresh_pipeline):
    pipeline = fresh_pipeline
    assert wait_running(pipeline), pipeline.logs()
    info = pipeline.sim.describe()

    def changed() -> bool:  # weights from the first alloc (ceilings only where a balloon or a mode asks)
        now = pipeline.sim.tunables()
        return not np.array_equal(now.shares, info.initial_shares)

    assert wait_for(changed, 30, 0.05), pipeline.logs()
    pids = [pid for _, pid in pipeline.status().values()]
    result = pipeline.ctl("stop", "all")
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(state != "RUNNING" for state, _ in pipeline.status().values())
    assert wait_for(lambda: not leftover_pids(pipeline.state), 10), leftover_pids(pipeline.state)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), pid
    saved = json.loads((pipeline.state / "simhost.json").read_text())
    assert saved["vms"] == info.vms
    assert np.array_equal(saved["ceiling"], info.initial_ceiling), saved["ceiling"]
    assert np.array_equal(saved["shares"], info.initial_shares), saved["shares"]
