"""rescoin-bus with real sockets: fan-out, exact prefixes, late joiners, restarts, hb."""

from __future__ import annotations

import signal
import uuid

import numpy as np
import pytest
import zmq
from rescoin.proto import Heartbeat
from rescoin.proto.codec import decode
from rescoin.proto.messages import Estimate
from rescoin.services.runtime.service import Publisher

from tests.support.bus import running_bus, wait_for

VMS = [str(uuid.UUID(int=1))]


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def estimate() -> Estimate:
    return Estimate(VMS, np.ones((1, 4)), ["last"] * 4, {})


def connect_sub(ctx, endpoint: str, *prefixes: bytes) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.connect(endpoint)
    for prefix in prefixes:
        sub.subscribe(prefix)
    return sub


def publisher(ctx, endpoint: str, host: str, src: str = "test") -> Publisher:
    pub = ctx.socket(zmq.PUB)
    pub.connect(endpoint)
    return Publisher(pub, host, src)


def drain(sub: zmq.Socket, timeout_ms: int = 300) -> list[list[bytes]]:
    got = []
    while sub.poll(timeout_ms):
        got.append(sub.recv_multipart())
    return got


def publish_until_seen(pub: Publisher, sub: zmq.Socket, kind: str = "estimate", timeout_s: float = 10.0) -> bool:
    """PUB/SUB joins are asynchronous: publish until the subscriber sees one."""
    return wait_for(lambda: bool(pub.send(kind, 1, estimate())) and sub.poll(50) != 0, timeout_s)


def test_two_publishers_reach_subscribers_by_exact_host_prefix(ctx):
    with running_bus() as bus:
        h1_only = connect_sub(ctx, bus.sub_endpoint, b"estimate/h1/")
        everything = connect_sub(ctx, bus.sub_endpoint, b"estimate/")
        pub1 = publisher(ctx, bus.pub_endpoint, "h1")
        pub10 = publisher(ctx, bus.pub_endpoint, "h10")
        assert publish_until_seen(pub1, h1_only)
        assert publish_until_seen(pub10, everything)
        drain(h1_only), drain(everything)
        for _ in range(5):
            pub1.send("estimate", 2, estimate())
            pub10.send("estimate", 2, estimate())
        topics_h1 = {f[0] for f in drain(h1_only)}
        topics_all = [f[0] for f in drain(everything)]
        assert topics_h1 == {b"estimate/h1/"}  # sample/h1/ must never match sample/h10/
        assert topics_all.count(b"estimate/h1/") == 5 and topics_all.count(b"estimate/h10/") == 5


def test_late_subscriber_gets_messages_after_it_joins(ctx):
    with running_bus() as bus:
        pub = publisher(ctx, bus.pub_endpoint, "h1")
        early = connect_sub(ctx, bus.sub_endpoint, b"estimate/")
        assert publish_until_seen(pub, early)
        late = connect_sub(ctx, bus.sub_endpoint, b"estimate/")
        assert publish_until_seen(pub, late)


def test_bus_publishes_its_counters_as_hb(ctx):
    with running_bus(period_s=0.2) as bus:
        sub = connect_sub(ctx, bus.sub_endpoint, b"hb/h1/")
        pub = publisher(ctx, bus.pub_endpoint, "h1")
        beats: list[Heartbeat] = []

        def got_counting_beat() -> bool:
            pub.send("estimate", 1, estimate())
            while sub.poll(10):
                beats.append(decode(sub.recv_multipart()).body)
            return any(b.service == "bus" and b.counters["received"] > 0 for b in beats)

        assert wait_for(got_counting_beat, 10)
        assert beats[-1].state == "ok"


def test_publishers_and_subscribers_reconnect_after_bus_restart(ctx):
    with running_bus() as bus:
        sub = connect_sub(ctx, bus.sub_endpoint, b"estimate/")
        sub.reconnect_ivl = 50
        pub = publisher(ctx, bus.pub_endpoint, "h1")
        pub.sock.reconnect_ivl = 50
        assert publish_until_seen(pub, sub)
        assert bus.stop(signal.SIGKILL) == -signal.SIGKILL
        bus.start()
        drain(sub, 50)
        assert publish_until_seen(pub, sub, timeout_s=15)  # same sockets, no reconnect code of ours


def test_bus_exits_zero_on_sigterm():
    with running_bus() as bus:
        ctx = zmq.Context()
        sub = connect_sub(ctx, bus.sub_endpoint, b"hb/")
        assert sub.poll(5000)  # it is up and beating
        ctx.destroy(linger=0)
        assert bus.stop(signal.SIGTERM) == 0
        bus.start()  # running_bus stops it again


def test_a_curve_bus_serves_key_holders_and_nobody_else(ctx, tmp_path):
    import subprocess

    import zmq.auth
    from rescoin.services.runtime.support import secure_client

    from tests.support.net import curve_bus_command

    zmq.auth.create_certificates(str(tmp_path), "bus")
    secret, public = str(tmp_path / "bus.key_secret"), str(tmp_path / "bus.key")
    args, _pub_ep, sub_ep = curve_bus_command(secret, public)
    bus = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    try:
        trusted = ctx.socket(zmq.SUB)
        secure_client(trusted, secret, public)
        trusted.connect(sub_ep)
        trusted.subscribe(b"hb/")
        plain = connect_sub(ctx, sub_ep, b"hb/")
        assert trusted.poll(5000)  # the bus's own heartbeat, over CURVE
        assert decode(trusted.recv_multipart()).body.service == "bus"
        assert plain.poll(1000) == 0  # no handshake without keys: nothing arrives
    finally:
        bus.terminate()
        bus.wait(timeout=10)


def test_a_frame_larger_than_the_limit_is_not_forwarded_and_the_bus_carries_on(ctx):
    from rescoin.proto.envelope import MAX_PAYLOAD_BYTES as MAX_FRAME_BYTES  # the runtime's and bus's limit

    with running_bus() as bus:
        sub = connect_sub(ctx, bus.sub_endpoint, b"estimate/")
        honest = publisher(ctx, bus.pub_endpoint, "h1")
        assert publish_until_seen(honest, sub)
        rogue = ctx.socket(zmq.PUB)
        rogue.connect(bus.pub_endpoint)
        wait_for(lambda: False, 0.3)  # let it connect
        rogue.send_multipart([b"estimate/h1/", b"\0" * (MAX_FRAME_BYTES + 1)])
        wait_for(lambda: False, 0.5)
        seen = drain(sub, 300)
        assert all(len(f[1]) <= MAX_FRAME_BYTES for f in seen)  # never forwarded
        assert publish_until_seen(honest, sub)  # and everyone else still gets through
