"""Predictors and the predictor stage's logic."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from rescoin.proto import Envelope
from rescoin.proto.messages import Sample
from rescoin.services.predictor.core import PredictorCore
from rescoin.services.predictor.models import PREDICTORS, make_predictor
from rescoin.services.runtime.config import load_config

VMS = [str(uuid.UUID(int=i + 1)) for i in range(3)]


def sample(period, usage, vms=VMS):
    n = len(vms)
    return Envelope(
        "sample",
        "h1",
        "m",
        1,
        period,
        0,
        period,
        Sample(np.ones(4), vms, ["x"] * n, np.ones((n, 4)), usage, ["none"] * n, 1.0),
    )


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_every_predictor_follows_a_constant_exactly(name):
    model = make_predictor(name)
    for _ in range(50):
        out = model.update(np.full(3, 2.0))
    assert np.allclose(out, 2.0, atol=1e-6)


def test_ewma_uses_the_seed_alpha():
    model = make_predictor("ewma", {"alpha": 0.7})
    model.update(np.array([0.0]))
    assert model.update(np.array([10.0]))[0] == pytest.approx(7.0)


def test_ewma_dev_is_an_upper_bound_of_a_noisy_signal():
    rng = np.random.default_rng(0)
    model = make_predictor("ewma_dev", {"alpha": 0.7, "beta": 2.0, "gamma": 0.25})
    under = 0
    values = 5 + rng.normal(0, 1, size=(500, 1))
    est = model.update(values[0])
    for v in values[1:]:
        under += int(v[0] > est[0])
        est = model.update(v)
    plain_under = np.mean(values[1:, 0] > values[:-1, 0])
    assert under / 499 < plain_under  # fewer under-estimates than "last value"


def test_fastslow_rises_at_once_and_falls_slowly():
    model = make_predictor("fastslow", {"fast": 0.9, "slow": 0.05})
    model.update(np.array([1.0]))
    up = model.update(np.array([10.0]))[0]
    down = model.update(np.array([1.0]))[0]
    assert up > 9 and down > 1.4


def test_stage_keeps_rows_of_vms_that_stay_and_seeds_new_ones():
    cfg = load_config(None, ["predictor.predictors=['last','last','last','last']"])
    core = PredictorCore("h1", cfg.predictor)
    core.on_message(sample(1, np.array([[1.0] * 4, [2.0] * 4, [3.0] * 4])))
    new_vm = str(uuid.UUID(int=99))
    (out,) = core.on_message(sample(2, np.array([[3.5] * 4, [9.0] * 4]), [VMS[2], new_vm]))
    assert out.period == 3 and out.body.vms == [VMS[2], new_vm]
    assert np.allclose(out.body.estimate[:, 0], [3.5, 9.0])
    assert core.history.recent().shape == (2, 2, 4)


def test_ewma_state_follows_its_vm_across_reordering():
    cfg = load_config(None, ["predictor.predictors=['ewma','ewma','ewma','ewma']"])
    core = PredictorCore("h1", cfg.predictor)
    core.on_message(sample(1, np.array([[1.0] * 4, [100.0] * 4, [0.0] * 4])))
    (out,) = core.on_message(sample(2, np.array([[100.0] * 4, [1.0] * 4, [0.0] * 4]), [VMS[1], VMS[0], VMS[2]]))
    assert np.allclose(out.body.estimate[:, 0], [100.0, 1.0, 0.0])
