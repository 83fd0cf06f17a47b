"""Streams recorded from the real services: the code and a decoder written from the spec alone
accept every frame and read the same values from it, and the streams keep the spec's rules
across messages (seq, periods, Σ alloc ≤ C, shapes, monotone counters)."""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from typing import Any

import numpy as np
import pytest

from tests.conformance.spec_decoder import judge
from tests.conformance.streams import STREAMS, code_verdict, recorded_frames

REQUIRED_COUNTERS = ("received", "sent", "dropped_stale", "gaps", "rejected")
FORWARDER_COUNTERS = ("received", "sent")  # §6: the bus forwards frames unread, so it drops and rejects none
MATRICES = {"sample": ("tc", "au"), "estimate": ("est",), "alloc": ("alloc", "coins", "tc", "au", "shares", "ceil")}
MATRICES["applied"] = ("set", "before", "weight")


@functools.cache
def checked_stream(stem: str) -> list[dict[str, Any]]:
    """Every recorded message as the spec decoder reads it, after checking both decoders agree on it."""
    payloads = []
    for i, frames in enumerate(recorded_frames(stem)):
        spec = judge(frames)
        code_ok, env, reason = code_verdict(frames)
        assert spec.ok and code_ok, f"{stem}[{i}] {frames[0]!r}: spec {spec.reason!r}, code {reason!r}"
        assert_same_reading(spec.payload["body"], env.body.to_wire())
        assert (env.v, env.kind, env.host, env.src, env.epoch, env.seq, env.ts, env.period) == tuple(
            spec.payload[k] for k in ("v", "kind", "host", "src", "epoch", "seq", "ts", "period")
        )
        payloads.append({**spec.payload, "topic": frames[0]})
    return payloads


@pytest.fixture(params=STREAMS)
def stream(request) -> list[dict[str, Any]]:
    return checked_stream(request.param)


def assert_same_reading(spec_body: dict[str, Any], code_body: dict[str, Any]) -> None:
    assert set(spec_body) == set(code_body)
    for key, value in spec_body.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(code_body[key], value)
        else:
            assert code_body[key] == value and type(code_body[key]) is type(value), key


def test_the_conformance_stream_has_every_kind_and_the_last_words():
    payloads = checked_stream("conformance_stream")
    kinds = Counter(p["kind"] for p in payloads)
    assert set(kinds) == {"guest.mem", "sample", "estimate", "alloc", "applied", "hb"}, kinds
    assert any(p["kind"] == "applied" and p["body"]["mode"] == "restore" for p in payloads)
    stopping = {p["src"] for p in payloads if p["kind"] == "hb" and p["body"]["state"] == "stopping"}
    assert {"actuator", "monitor", "scheduler", "predictor"} <= stopping, stopping
    assert len({p["body"]["vm"] for p in payloads if p["kind"] == "guest.mem"}) == 2  # two agents


def test_seq_increases_per_publisher_topic_and_epoch(stream):
    last: dict[tuple, int] = {}
    for p in stream:
        key = (p["src"], p["host"], p["topic"], p["epoch"])
        assert p["seq"] > last.get(key, -1), f"{key}: seq {p['seq']} after {last.get(key)}"
        last[key] = p["seq"]
    assert len(last) >= 3


def test_every_matrix_has_a_row_per_vm(stream):
    batches = [p for p in stream if p["kind"] in MATRICES]
    assert batches
    for p in batches:
        n = len(p["body"]["vms"])
        assert all(p["body"][m].shape == (n, 4) for m in MATRICES[p["kind"]]), p["kind"]


def test_allocations_never_exceed_capacity(stream):
    allocs = [p["body"] for p in stream if p["kind"] == "alloc"]
    assert allocs
    for body in allocs:
        assert (body["alloc"].sum(axis=0) <= body["C"]).all()


def test_each_alloc_answers_its_period_and_each_apply_its_alloc(stream):
    """§3: the estimate an alloc used and the alloc an apply enforced carry the same period."""
    periods = defaultdict(set)
    for p in stream:
        periods[p["kind"]].add(p["period"])
    used_estimate = [p["period"] for p in stream if p["kind"] == "alloc" and p["body"]["est_src"] == "estimate"]
    assert used_estimate and all(q in periods["estimate"] for q in used_estimate)
    applies = [p for p in stream if p["kind"] == "applied" and p["body"]["mode"] == "normal" and p["body"]["vms"]]
    # the first apply may answer an alloc sent before the recording began
    assert all(p["period"] in periods["alloc"] for p in applies[1:])


def test_heartbeat_counters_are_complete_and_monotone_within_an_epoch():
    beats = [p for p in checked_stream("conformance_stream") if p["kind"] == "hb"]
    assert len({p["src"] for p in beats}) >= 8  # every service of the pipeline, the ingress too
    last: dict[tuple, dict[str, int]] = {}
    for p in beats:
        counters = p["body"]["counters"]
        required = FORWARDER_COUNTERS if p["body"]["service"] == "bus" else REQUIRED_COUNTERS
        assert set(required) <= set(counters), (p["src"], sorted(counters))
        key = (p["src"], p["host"], p["epoch"])
        before = last.get(key, {})
        assert all(counters.get(name, 0) >= value for name, value in before.items()), p["src"]
        last[key] = counters
