"""The policy regression test: a recorded sim-host stream, replayed through the predictor
and scheduler logic, gives the recorded estimates and allocations.

The stream (tests/fixtures/simhost_stream.rec, `rescoin record`'s format) was captured from the live
pipeline by tests/e2e/capture.py, with the config it ran under; regenerate it
only when a change of policy is intended.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rescoin.proto import Envelope
from rescoin.services.predictor.core import PredictorCore
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.support import Counters
from rescoin.services.scheduler.core import SchedulerCore

from tests.e2e.capture import load_stream

pytestmark = pytest.mark.e2e

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "simhost_stream"  # .rec + .toml


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    config_text, messages = load_stream(FIXTURE)
    config = tmp_path_factory.mktemp("replay") / "rescoin.toml"
    config.write_text(config_text)
    cfg = load_config(config, [f"host.state_dir='{config.parent}'"])
    return cfg, messages


def by_period(messages: list[Envelope], kind: str) -> dict[int, Envelope]:
    return {e.period: e for e in messages if e.kind == kind}


def test_the_stream_covers_a_contended_host_for_many_periods(recorded):
    _, messages = recorded
    allocs = by_period(messages, "alloc")
    assert len(allocs) >= 30
    assert sum("contended" in e.body.mode for e in allocs.values()) >= 10


def test_replaying_samples_gives_the_recorded_estimates_and_allocations(recorded):
    cfg, messages = recorded
    estimates, allocs = by_period(messages, "estimate"), by_period(messages, "alloc")
    predictor = PredictorCore(cfg.host.name, cfg.predictor)
    scheduler = SchedulerCore(cfg.host.name, cfg.scheduler, Counters(), None)
    compared = 0
    for sample in (e for e in messages if e.kind == "sample"):
        (estimate,) = predictor.on_sample(sample)
        recorded_estimate = estimates.get(sample.period + 1)
        if recorded_estimate is not None:
            np.testing.assert_allclose(estimate.body.estimate, recorded_estimate.body.estimate, rtol=1e-12)
        out = scheduler.on_message(sample)
        recorded_alloc = allocs.get(sample.period + 1)
        if recorded_alloc is None:
            continue  # the recording ended (or began) between sample and alloc
        if recorded_alloc.body.estimate_source == "estimate":
            out += scheduler.on_message(
                Envelope("estimate", sample.host, "predictor", 0, 0, 0, estimate.period, estimate.body)
            )
        else:
            out += scheduler.on_period(sample.period + 1)
        (alloc,) = out
        assert alloc.period == recorded_alloc.period
        assert alloc.body.vms == recorded_alloc.body.vms
        np.testing.assert_allclose(alloc.body.alloc, recorded_alloc.body.alloc, rtol=1e-12)
        np.testing.assert_allclose(alloc.body.coins, recorded_alloc.body.coins, rtol=1e-12)
        assert alloc.body.mode == recorded_alloc.body.mode
        compared += 1
    assert compared >= 30
