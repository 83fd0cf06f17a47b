"""The runtime every stage runs in, as a real process on a real bus."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import zmq
from rescoin.proto import ProtocolError
from rescoin.proto.messages import Sample, decode
from rescoin.services.runtime.service import Publisher

from tests.support.bus import running_bus, wait_for

ROOT = Path(__file__).resolve().parents[2]
VMS = [str(uuid.UUID(int=i + 1)) for i in range(2)]


def sample() -> Sample:
    return Sample(np.ones(4), VMS, ["a", "b"], np.ones((2, 4)), np.full((2, 4), 0.5), ["none", "none"], 0.2)


@pytest.fixture
def echo_stage():
    with running_bus(period_s=0.2) as bus:
        args = [sys.executable, "-m", "tests.support.echo_stage", "--host", "h1", "--period", "0.2"]
        for item in bus.overrides():
            args += ["--set", item]
        proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.connect(bus.sub_endpoint)
        sub.subscribe(b"")
        pub_sock = ctx.socket(zmq.PUB)
        pub_sock.connect(bus.pub_endpoint)
        try:
            yield proc, Publisher(pub_sock, "h1", "monitor"), sub
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            ctx.destroy(linger=0)


def collect(sub, until, timeout_s=10.0):
    seen = []

    def check():
        while sub.poll(10):
            try:
                seen.append(decode(sub.recv_multipart()))
            except ProtocolError:
                pass  # the bad frames the test itself sends
        return until(seen)

    assert wait_for(check, timeout_s), [(e.kind, e.src) for e in seen][-10:]
    return seen


def echo_beats(seen):
    return [e.body for e in seen if e.kind == "hb" and e.src == "echo"]


def test_stage_answers_messages_and_beats_every_period(echo_stage):
    _proc, pub, sub = echo_stage
    seen = collect(sub, lambda s: len(echo_beats(s)) >= 1)  # the stage is up and subscribed
    seen = collect(sub, lambda s: any(e.kind == "estimate" for e in s) or not pub.send("sample", 10, sample()))
    est = next(e for e in seen if e.kind == "estimate")
    assert est.period == 11 and est.src == "echo" and np.array_equal(est.body.estimate, np.full((2, 4), 0.5))
    beats = echo_beats(collect(sub, lambda s: len(echo_beats(s)) >= 2))
    assert beats[-1].counters["received"] >= 1 and beats[-1].counters["sent"] >= 1
    assert beats[-1].info["periods"] >= 1


def test_bad_frames_and_stale_periods_are_counted_not_fatal(echo_stage):
    proc, pub, sub = echo_stage
    collect(sub, lambda s: len(echo_beats(s)) >= 1)
    collect(sub, lambda s: any(e.kind == "estimate" for e in s) or not pub.send("sample", 50, sample()))
    pub.sock.send_multipart([b"sample/h1/", b"\xc1 not msgpack"])
    pub.send("sample", 40, sample())  # older than period 50: stale
    beats = echo_beats(
        collect(
            sub,
            lambda s: any(b.counters.get("dropped_stale") and b.counters.get("rejected") for b in echo_beats(s)),
        )
    )
    last = beats[-1]
    assert last.counters["rejected.payload"] == 1
    assert any("not valid msgpack" in text for text in last.errors)  # kept for the operator
    assert proc.poll() is None


def test_sigterm_finishes_with_close_messages_and_exit_zero(echo_stage):
    proc, _pub, sub = echo_stage
    collect(sub, lambda s: len(echo_beats(s)) >= 1)
    proc.send_signal(signal.SIGTERM)
    seen = collect(
        sub,
        lambda s: any(e.kind == "hb" and e.src == "echo" and e.body.state == "stopping" for e in s),
    )
    assert any(e.kind == "estimate" and e.body.predictor == ["bye"] * 4 for e in seen)
    assert proc.wait(timeout=10) == 0


def test_bad_config_refuses_to_start_and_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[host]\nperiod_s = -1\n")
    out = subprocess.run(
        [sys.executable, "-m", "tests.support.echo_stage", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "host.period_s" in out.stderr
