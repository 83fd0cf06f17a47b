"""rescoin-bus against hostile subscriptions, with real sockets and processes (docs/SECURITY.md "Subscriptions").

A subscriber needs no publish rights, yet every subscription it sends used to
reach the bus's trie and, forwarded upstream, every publisher's: 100
subscriptions of 60 KB grew the bus by 730 MiB and each publisher by ~280 MiB.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq
from rescoin.proto import Heartbeat
from rescoin.proto.codec import decode
from rescoin.services.bus.main import MAX_SUBSCRIPTIONS

from tests.support.bus import running_bus, wait_for

# docs/SECURITY.md "Subscriptions": what 300 large subscriptions (and more than MAX_SUBSCRIPTIONS
# legal-looking ones) may cost, at most
BUS_GROWTH_MIB = 32
PUBLISHER_GROWTH_MIB = 8

PUBLISHER = """
import sys, time, zmq
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB)
pub.connect(sys.argv[1])
while True:
    pub.send_multipart([b"estimate/h9/", b"x"])
    time.sleep(0.01)
"""


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def hostile(ctx: zmq.Context, endpoint: str, prefixes: list[bytes]) -> zmq.Socket:
    sub = ctx.socket(zmq.SUB)
    sub.sndhwm = 0  # queue every subscription, however many
    sub.connect(endpoint)
    for prefix in prefixes:
        sub.subscribe(prefix)
    return sub


def bus_counters(sub: zmq.Socket, timeout_s: float = 5.0) -> Heartbeat | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sub.poll(200):
            env = decode(sub.recv_multipart())
            if env.kind == "hb" and env.body.service == "bus":
                return env.body
    return None


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_large_and_surplus_subscriptions_cost_the_bus_and_publishers_little_and_legal_ones_still_work(ctx):
    with running_bus() as bus:
        assert bus.proc is not None
        publisher = subprocess.Popen([sys.executable, "-c", PUBLISHER, bus.pub_endpoint])
        try:
            watcher = ctx.socket(zmq.SUB)
            watcher.connect(bus.sub_endpoint)
            watcher.subscribe(b"hb/h1/")
            assert bus_counters(watcher) is not None  # the bus is up and legal subscriptions work
            time.sleep(0.5)
            before = rss_mib(bus.proc.pid), rss_mib(publisher.pid)

            # 300 subscriptions of 60 KB, 300 just over a topic's 256 bytes, and legal-looking ones
            # beyond the bus's cap, each from its own connection (a read-only subscriber)
            large = hostile(
                ctx,
                bus.sub_endpoint,
                [b"estimate/" + bytes([65 + i % 26]) * 60_000 + str(i).encode() for i in range(300)],
            )
            long = hostile(ctx, bus.sub_endpoint, [b"estimate/h1/" + b"%04d" % i + b"x" * 250 for i in range(300)])
            many = hostile(ctx, bus.sub_endpoint, [f"sample/vm{i}/".encode() for i in range(MAX_SUBSCRIPTIONS + 300)])
            junk = hostile(ctx, bus.sub_endpoint, [b"\xff\x00junk", b"nokind/h1/", b"sample/-h1/"])

            def refused() -> bool:
                hb = bus_counters(watcher, 1.0)
                return hb is not None and all(
                    hb.counters[f"rejected.subscription_{cause}"] > 0 for cause in ("length", "prefix", "limit")
                )

            assert wait_for(refused, timeout_s=20)
            time.sleep(1.0)  # the large subscriber keeps reconnecting and being disconnected
            hb = bus_counters(watcher)
            assert hb is not None
            assert hb.counters["rejected.subscription_limit"] >= 300
            assert hb.counters["rejected.subscription_length"] >= 300
            assert hb.counters["subscribers_disconnected"] >= 1  # the 60 KB subscriber, by libzmq
            assert hb.info["subscriptions"] <= MAX_SUBSCRIPTIONS
            growth = rss_mib(bus.proc.pid) - before[0], rss_mib(publisher.pid) - before[1]
            assert growth[0] < BUS_GROWTH_MIB, growth
            assert growth[1] < PUBLISHER_GROWTH_MIB, growth

            print(f"RSS growth: bus {growth[0]:.1f} MiB, publisher {growth[1]:.1f} MiB")

            # its subscriptions leave with a subscriber: room under the cap again, and legal ones work
            many.close(linger=0)
            assert wait_for(lambda: (hb := bus_counters(watcher, 1.0)) is not None and hb.info["subscriptions"] < 10)
            fresh = ctx.socket(zmq.SUB)
            fresh.connect(bus.sub_endpoint)
            fresh.subscribe(b"estimate/h9/")
            assert wait_for(lambda: fresh.poll(100) != 0, timeout_s=10)
            assert fresh.recv_multipart() == [b"estimate/h9/", b"x"]
            for sock in (large, long, junk, fresh, watcher):
                sock.close(linger=0)
        finally:
            publisher.terminate()
            publisher.wait(timeout=10)
