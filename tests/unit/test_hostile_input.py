"""Hostile input (issue 14): no frame crashes a stage, every table and frame is bounded, periods keep
ticking whatever the wall clock does, and a stage never publishes what its peers would reject."""

from __future__ import annotations

import dataclasses
import math
import uuid

import msgpack
import numpy as np
import pytest
import zmq
from rescoin.proto import Envelope, GuestMem, Heartbeat, ProtocolError, decode_guest_mem, encode_guest_mem
from rescoin.proto import envelope as envelope_mod
from rescoin.proto.arrays import EXT_NDARRAY
from rescoin.proto.codec import decode, encode
from rescoin.proto.messages import Alloc, Applied, Estimate, Sample
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.owners import OWNERS
from rescoin.services.runtime.service import (
    Health,
    InputFilter,
    Outgoing,
    PeriodPacer,
    Publisher,
    ServiceLoop,
    bus_sockets,
)
from rescoin.services.runtime.support import Counters

VMS = [str(uuid.UUID(int=i + 1)) for i in range(3)]
CAPACITY = np.array([64.0, 2e11, 1e9, 1e9])


def make_alloc(vms: list[str]) -> Alloc:
    """An Alloc of whatever fields the class has today (its wire form is being extended)."""
    n = len(vms)
    known = {
        "vms": list(vms),
        "capacity": CAPACITY.copy(),
        "alloc": np.tile(CAPACITY / (2 * n), (n, 1)),  # sum <= C
        "coins": np.linspace(-1, 1, 4 * n).reshape(n, 4),
        "mode": ["fit", "contended", "fit", "fit"],
        "policy": "rescoin",
        "estimate_source": "estimate",
        "enforcement": "both",
    }
    fields = [f.name for f in dataclasses.fields(Alloc)]
    return Alloc(**{name: known[name] if name in known else np.ones((n, 4)) for name in fields})


def make_body(kind: str, n: int = 3):
    vms = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    if kind == "guest.mem":
        return GuestMem(VMS[0], 2_000_000, 500_000, 1_500_000, 100, 50, "0.1.0")
    if kind == "sample":
        return Sample(
            CAPACITY.copy(),
            vms,
            [f"vm{i}" for i in range(n)],
            np.ones((n, 4)),
            np.full((n, 4), 0.5),
            (["guest", "balloon", "none"] * n)[:n],
            1.0,
        )
    if kind == "estimate":
        return Estimate(vms, np.ones((n, 4)), ["ewma_dev", "ewma_dev", "ewma", "last"], {"alpha": 0.7})
    if kind == "alloc":
        return make_alloc(vms)
    if kind == "applied":
        known = {
            "vms": vms,
            "set": np.ones((n, 4)),
            "before": -np.ones((n, 4)),
            "errors": [{"vm": vms[0], "resource": "disk", "error": "gone"}],
            "latency_s": 0.004,
            "mode": "normal",
            "backend": "libvirt",
            "writes": 7,
            "enforced": ["wctx"] * n,
            "unenforced": [{"vm": vm, "resource": "net", "reason": "no_device", "detail": "no tap"} for vm in vms],
        }
        return Applied(**{f.name: known.get(f.name, np.ones((n, 4))) for f in dataclasses.fields(Applied)})
    assert kind == "hb"
    return Heartbeat("monitor", "ok", 1.0, {"received": 3}, {"backend": "libvirt", "pid": 42}, ["12:00:00 body: bad"])


BODIES = {kind: make_body(kind) for kind in ("guest.mem", "sample", "estimate", "alloc", "applied", "hb")}


def envelope(kind: str, body, host: str = "h1", period: int = 100) -> Envelope:
    """As the kind's own service sends it (stages accept a kind only from its owner)."""
    src = OWNERS.get(kind, "test")
    return Envelope(kind, host, src, 1_700_000_000_000_000_000, 5, 1_700_000_000_500_000_000, period, body)


def repack(frames, mutate):
    payload = msgpack.unpackb(frames[1], raw=False, ext_hook=msgpack.ExtType)
    mutate(payload)
    return [frames[0], msgpack.packb(payload, use_bin_type=True)]


def arr_ext(a) -> msgpack.ExtType:
    a = np.asarray(a, dtype="<f8")
    return msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", list(a.shape), a.tobytes()]))


ARRAY = arr_ext(np.ones((2, 4)))


def set_path(payload, path, value):
    target = payload
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value


# (kind, path in the payload, the field the ProtocolError must name)
SCALAR_SLOTS = [
    ("sample", ("v",), "v"),
    ("sample", ("kind",), "kind"),
    ("hb", ("v",), "v"),
    ("hb", ("kind",), "kind"),
    ("hb", ("body", "state"), "body.state"),
    ("hb", ("body", "service"), "body.service"),
    ("alloc", ("body", "est_src"), "body.est_src"),
    ("alloc", ("body", "policy"), "body.policy"),
    ("applied", ("body", "mode"), "body.mode"),
    ("applied", ("body", "errors", 0, "resource"), "body.errors[0].resource"),
    ("applied", ("body", "backend"), "body.backend"),
    ("sample", ("body", "mem_src", 1), "body.mem_src[1]"),
    ("sample", ("body", "names", 0), "body.names[0]"),
    ("estimate", ("body", "predictor", 0), "body.predictor[0]"),
    ("guest.mem", ("body", "agent"), "body.agent"),
]


@pytest.mark.parametrize("value", [ARRAY, [1, 2], ["ok"], {"a": 1}], ids=["array", "list", "list1", "map"])
@pytest.mark.parametrize(("kind", "path", "field"), SCALAR_SLOTS, ids=[".".join(map(str, s[1])) for s in SCALAR_SLOTS])
def test_a_structure_where_a_scalar_belongs_is_a_protocol_error_naming_the_field(kind, path, field, value):
    frames = repack(encode(envelope(kind, BODIES[kind])), lambda p: set_path(p, path, value))
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert err.value.field == field, str(err.value)


def test_any_unexpected_decoder_exception_becomes_an_internal_protocol_error(monkeypatch):
    from rescoin.proto import messages

    class Boom:
        @classmethod
        def from_wire(cls, body):
            raise KeyError("surprise")

    frames = encode(envelope("estimate", BODIES["estimate"]))
    monkeypatch.setitem(messages.BATCH_BODIES, "estimate", Boom)
    with pytest.raises(ProtocolError, match="internal decoder error") as err:
        decode(frames)
    assert err.value.field == "decoder"


def test_msgpack_lengths_are_limited_before_objects_are_built():
    hb = envelope("hb", BODIES["hb"])
    frames = repack(encode(hb), lambda p: p["body"]["info"].update(uri="x" * (envelope_mod.MAX_STR_BYTES + 1)))
    with pytest.raises(ProtocolError, match="max_str_len") as err:
        decode(frames)
    assert err.value.field == "payload"
    frames = repack(encode(hb), lambda p: p["body"].update(errors=[0] * (envelope_mod.MAX_ARRAY_LEN + 1)))
    with pytest.raises(ProtocolError, match="max_array_len"):
        decode(frames)
    frames = repack(encode(hb), lambda p: p["body"].update(counters={f"c{i}": 1 for i in range(300)}))
    with pytest.raises(ProtocolError, match="max_map_len"):
        decode(frames)


def test_a_guest_report_larger_than_a_few_kib_is_not_parsed():
    frames = encode_guest_mem(envelope("guest.mem", BODIES["guest.mem"]))
    big = [frames[0], frames[1] + b"\x00" * 5000]
    for dec in (decode_guest_mem, decode):
        with pytest.raises(ProtocolError, match="exceeds") as err:
            dec(big)
        assert err.value.field == "payload"


# --- producers never publish what their peers would reject ---------------------------------------


class FakeSock:
    def __init__(self) -> None:
        self.sent: list[list[bytes]] = []

    def send_multipart(self, frames, copy=True):
        self.sent.append(list(frames))


def test_encode_refuses_non_finite_arrays_and_the_publisher_sends_nothing():
    bad = Estimate(VMS, np.full((3, 4), math.nan), ["last"] * 4, {})
    with pytest.raises(ProtocolError, match="NaN"):
        encode(envelope("estimate", bad))
    pub = Publisher(FakeSock(), "h1", "predictor")
    with pytest.raises(ProtocolError):
        pub.send("estimate", 3, bad)
    assert pub.sock.sent == []
    pub.send("estimate", 3, BODIES["estimate"])
    assert decode(pub.sock.sent[0]).seq == 0  # the refused message used no sequence number: no false gap


# --- the loop survives anything one message or one tick can do ------------------------------------


class FragileStage:
    name = "fragile"

    def __init__(self) -> None:
        self.calls = 0

    def subscriptions(self):
        return [b""]

    def on_message(self, env: Envelope):
        self.calls += 1
        if self.calls == 1:
            raise ZeroDivisionError("bad math")
        if self.calls == 2:
            return [Outgoing("estimate", env.period + 1, Estimate(VMS, np.full((3, 4), math.inf), ["x"] * 4, {}))]
        return [Outgoing("estimate", env.period + 1, BODIES["estimate"])]

    def on_period(self, ended_period):
        raise RuntimeError("tick failed")

    def flush(self):
        raise OSError(28, "No space left on device")

    def health(self):
        return Health()

    def close(self):
        return []


def loop_for(stage, **kw) -> ServiceLoop:
    cfg = load_config(None, ["host.name='h1'", "host.period_s=1.0"])
    loop = ServiceLoop(stage, cfg, Counters(), **kw)
    loop.publisher = Publisher(FakeSock(), "h1", stage.name)
    return loop


def test_exceptions_in_handlers_ticks_and_flush_are_counted_and_survived():
    stage = FragileStage()
    loop = loop_for(stage, clock=lambda: 100.5)
    frames = encode(envelope("sample", BODIES["sample"], period=100))
    for _ in range(3):
        loop.handle_frames(frames)
    loop.handle_frames([b"hb/h1/", encode(envelope("hb", BODIES["hb"]))[1][:-3]])  # truncated
    loop._tick(100)
    loop._flush()
    c = loop.counters.values
    assert c["rejected.handler.ZeroDivisionError"] == 1
    assert c["send_failed.estimate"] == 1  # the stage computed inf: counted, not published
    assert c["rejected.period.RuntimeError"] == 1
    assert c["rejected.flush.OSError"] == 1
    assert c["rejected.payload"] == 1
    sent = [decode(f) for f in loop.publisher.sock.sent]
    assert [e.kind for e in sent] == ["estimate", "hb"]  # the good answer and the heartbeat still went out
    assert any("ZeroDivisionError" in text for text in loop.counters.recent_errors)


# --- bounded tables, far-future periods -----------------------------------------------------------


def est_env(src: str, period: int, host: str = "h1", seq: int = 0) -> Envelope:
    return Envelope("estimate", host, src, 1, seq, 0, period, BODIES["estimate"])


def test_the_input_filter_keeps_a_bounded_number_of_streams():
    counters = Counters()
    filt = InputFilter(counters, own_period=lambda: 100, host="h1", max_entries=64)
    for i in range(10_000):
        assert filt.accept(est_env(f"forged{i}", 100))
    assert len(filt.streams) <= 64
    assert counters.values["filter_evicted"] == 10_000 - 64


def test_a_far_future_period_is_rejected_and_cannot_lock_a_stream():
    counters = Counters()
    filt = InputFilter(counters, own_period=lambda: 100, host="h1", max_future_periods=2)
    assert not filt.accept(est_env("scheduler", 2**62))
    assert counters.values["rejected.period"] == 1
    assert filt.accept(est_env("scheduler", 101))  # the real scheduler is not locked out
    assert filt.accept(est_env("scheduler", 102))
    assert not filt.accept(est_env("scheduler", 101))  # stale is still stale
    assert counters.values["dropped_stale"] == 1


def test_after_the_wall_clock_steps_back_streams_recover():
    now = [100]
    filt = InputFilter(Counters(), own_period=lambda: now[0], host="h1")
    assert filt.accept(est_env("scheduler", 100))
    now[0] = 100 - 3600  # the clock stepped back an hour
    assert filt.accept(est_env("scheduler", now[0]))  # not dropped as stale forever


def test_other_hosts_keep_their_own_period_numbers_guest_reports_are_this_hosts():
    filt = InputFilter(Counters(), own_period=lambda: 100, host="h1")
    assert filt.accept(est_env("predictor", 10_000, host="h2"))  # another host may use a shorter period
    guest = Envelope("guest.mem", "h1", "ingress", 1, 0, 0, 10_000, BODIES["guest.mem"])
    assert not filt.accept(guest)  # the ingress numbers a report with this host's period


# --- time: monotonic pacing, wall-clock numbering -------------------------------------------------


class Clocks:
    def __init__(self, wall: float, mono: float = 1000.0) -> None:
        self.wall_t, self.mono_t = wall, mono

    def wall(self) -> float:
        return self.wall_t

    def mono(self) -> float:
        return self.mono_t

    def sleep(self, s: float) -> None:
        self.wall_t += s
        self.mono_t += s


def run_pacer(pacer: PeriodPacer, clocks: Clocks, seconds: float, step_back_at: float | None = None):
    ticks, end = [], clocks.mono_t + seconds
    while clocks.mono_t < end:
        timeout = pacer.timeout_s()
        assert 0 <= timeout <= pacer.period_s * 2 + 1e-9
        clocks.sleep(max(timeout, 1e-3))
        if clocks.mono_t > end:
            break
        if step_back_at is not None and clocks.mono_t >= step_back_at:
            clocks.wall_t -= 3600
            step_back_at = None
        ended = pacer.due()
        if ended is not None:
            ticks.append((clocks.mono_t, ended))
    return ticks


def test_periods_are_paced_by_the_monotonic_clock_and_numbered_by_the_wall_clock():
    clocks = Clocks(wall=100.25)
    pacer = PeriodPacer(1.0, clocks.wall, clocks.mono)
    ticks = run_pacer(pacer, clocks, 5.0)
    assert [p for _, p in ticks] == [100, 101, 102, 103, 104]
    assert all(abs(t - 1000.75 - i) < 0.01 for i, (t, _) in enumerate(ticks))


def test_after_the_wall_clock_steps_back_an_hour_the_periods_keep_ticking():
    clocks = Clocks(wall=100.25)
    pacer = PeriodPacer(1.0, clocks.wall, clocks.mono)
    ticks = run_pacer(pacer, clocks, 10.0, step_back_at=1003.0)
    gaps = [b[0] - a[0] for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) >= 9 and max(gaps) <= 2.0 + 1e-6
    assert ticks[-1][1] < 0  # numbered by the wall clock, which now says an hour earlier


def test_the_loop_wakes_at_least_once_a_period_whatever_the_wall_clock_says():
    wall = [1e9]
    loop = loop_for(FragileStage(), clock=lambda: wall[0], monotonic=lambda: 5.0)
    pacer = loop.make_pacer()
    wall[0] -= 3600
    assert pacer.timeout_s() <= loop.cfg.host.period_s


def test_runtime_and_bus_sockets_have_a_maximum_message_size():
    from rescoin.services.bus.main import Bus

    from tests.support.net import free_port

    ctx = zmq.Context()
    try:
        cfg = load_config(
            None,
            [f"bus.pub_endpoint='tcp://127.0.0.1:{free_port()}'", f"bus.sub_endpoint='tcp://127.0.0.1:{free_port()}'"],
        )
        pub, sub = bus_sockets(ctx, cfg, [b""])
        assert 0 < sub.getsockopt(zmq.MAXMSGSIZE) <= envelope_mod.MAX_PAYLOAD_BYTES + envelope_mod.MAX_TOPIC_BYTES
        assert 0 < pub.getsockopt(zmq.MAXMSGSIZE)
        bus = Bus(ctx, cfg)
        assert 0 < bus.xsub.getsockopt(zmq.MAXMSGSIZE) <= envelope_mod.MAX_PAYLOAD_BYTES + envelope_mod.MAX_TOPIC_BYTES
        assert 0 < bus.xpub.getsockopt(zmq.MAXMSGSIZE) <= 64 * 1024
        for sock in (pub, sub, bus.xsub, bus.xpub, bus.control):
            sock.close(linger=0)
    finally:
        ctx.destroy(linger=0)
