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
from rescoin.proto.codec import decode, encode
from rescoin.proto.messages import Sample
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


def test_a_stage_that_hears_another_period_length_counts_it_and_says_so(echo_stage):
    """Two stages of one host on different configs: their periods do not line up. Counted and named in hb."""
    _proc, pub, sub = echo_stage
    collect(sub, lambda s: len(echo_beats(s)) >= 1)
    wrong = sample()
    object.__setattr__(wrong, "period_s", 1.0)  # this stage runs 0.2 s periods
    beats = echo_beats(
        collect(
            sub,
            lambda s: (
                any(b.counters.get("period_mismatch") for b in echo_beats(s)) or not pub.send("sample", 60, wrong)
            ),
        )  # fmt: skip
    )
    assert beats[-1].info["period_mismatch"] == "monitor runs 1 s periods"


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


# --- issue 14: hostile frames and a wall clock that steps back ---------------------------------------


def test_a_structure_where_a_scalar_belongs_is_counted_and_the_stage_lives_on(echo_stage):
    import msgpack

    proc, pub, sub = echo_stage
    collect(sub, lambda s: len(echo_beats(s)) >= 1)
    # the path to the stage is up (the bus has our publisher's subscription): the bad frames are sent once
    collect(sub, lambda s: any(e.kind == "estimate" for e in s) or not pub.send("sample", 59, sample()))
    frames = encode(pub.envelope("sample", 60, sample()))
    payload = msgpack.unpackb(frames[1], raw=False, ext_hook=msgpack.ExtType)
    for field in ("v", "kind"):  # an array extension where an int / a string belongs
        bad = dict(payload, **{field: payload["body"]["tc"]})
        pub.sock.send_multipart([frames[0], msgpack.packb(bad, use_bin_type=True)])
    beats = echo_beats(collect(sub, lambda s: any(b.counters.get("rejected", 0) >= 2 for b in echo_beats(s))))
    assert beats[-1].counters["rejected.v"] == 1 and beats[-1].counters["rejected.kind"] == 1
    collect(sub, lambda s: any(e.kind == "estimate" for e in s) or not pub.send("sample", 61, sample()))
    assert proc.poll() is None


def clock_step_main() -> int:
    """The echo stage, with a wall clock that steps back an hour 0.6 s after start (run in a subprocess)."""
    import time

    from rescoin.services.runtime.service import ServiceLoop, common_arguments, config_from_args
    from rescoin.services.runtime.support import Counters
    from rescoin.services.schema import service_schema

    from tests.support.echo_stage import EchoStage

    parser = __import__("argparse").ArgumentParser()
    common_arguments(parser)
    cfg = config_from_args(parser.parse_args(), service_schema())
    step_at = time.monotonic() + 0.6

    def wall() -> float:
        return time.time() - (3600 if time.monotonic() >= step_at else 0)

    return ServiceLoop(EchoStage(cfg.host.name), cfg, Counters(), clock=wall).run()


def test_after_the_wall_clock_steps_back_an_hour_the_loop_beats_and_stops_on_sigterm():
    import time

    with running_bus(period_s=0.2) as bus:
        code = "from tests.integration.test_service_loop import clock_step_main; raise SystemExit(clock_step_main())"
        args = [sys.executable, "-c", code, "--host", "h1", "--period", "0.2"]
        for item in bus.overrides():
            args += ["--set", item]
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.connect(bus.sub_endpoint)
        sub.subscribe(b"hb/h1/")
        proc = subprocess.Popen(args, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            now_period = int(time.time() / 0.2)
            beats = collect(
                sub, lambda s: len([e for e in s if e.src == "echo" and e.period < now_period - 17_000]) >= 3
            )
            stepped = [e for e in beats if e.src == "echo" and e.period < now_period - 17_000]
            assert stepped[-1].body.info["periods"] >= 3  # on_period keeps running after the step
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            assert proc.wait(timeout=5) == 0
            assert time.monotonic() - t0 < 1.0  # within a period or so, not an hour later
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            ctx.destroy(linger=0)
