"""A CURVE bus lets in only the keys it knows (ZAP): subscribers on its allow-list, publishers holding its
own key; the refused are counted in its hb, and SIGHUP reads the allow-list again. Real processes, loopback."""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest
import zmq
import zmq.auth
from rescoin.proto import KIND_HB, Heartbeat
from rescoin.proto.codec import decode
from rescoin.services.runtime.service import Publisher
from rescoin.services.runtime.support import secure_client

from tests.support.bus import wait_for
from tests.support.net import curve_bus_command


@pytest.fixture
def curve_bus(tmp_path):
    keys, clients = tmp_path / "bus-keys", tmp_path / "bus-keys" / "clients"
    clients.mkdir(parents=True)
    zmq.auth.create_certificates(str(keys), "server")
    zmq.auth.create_certificates(str(tmp_path), "ops")
    zmq.auth.create_certificates(str(tmp_path), "stranger")
    shutil.copy(tmp_path / "ops.key", clients / "ops.key")
    (clients / "broken.key").write_text("not a certificate")  # skipped, logged: locks nobody out
    secret, public = keys / "server.key_secret", keys / "server.key"
    args, pub_ep, sub_ep = curve_bus_command(str(secret), str(public))
    log = open(tmp_path / "bus.log", "w")  # noqa: SIM115 - closed below
    bus = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    ctx = zmq.Context()
    try:
        yield {"proc": bus, "pub": pub_ep, "sub": sub_ep, "tmp": tmp_path, "public": str(public), "ctx": ctx}
    finally:
        ctx.destroy(linger=0)
        bus.terminate()
        bus.wait(timeout=10)
        log.close()
        print((tmp_path / "bus.log").read_text())


def subscriber(bus, who: str, prefix: bytes = b"hb/") -> zmq.Socket:
    sock = bus["ctx"].socket(zmq.SUB)
    sock.reconnect_ivl = 50
    secure_client(sock, str(bus["tmp"] / f"{who}.key_secret"), bus["public"])
    sock.connect(bus["sub"])
    sock.subscribe(prefix)
    return sock


def bus_counters(sock: zmq.Socket, timeout_ms: int = 3000) -> dict[str, int]:
    while sock.poll(timeout_ms):
        env = decode(sock.recv_multipart())
        if env.src == "bus":
            return env.body.counters
    return {}


def test_known_subscribers_get_in_strangers_are_refused_and_counted(curve_bus):
    ops, stranger = subscriber(curve_bus, "ops"), subscriber(curve_bus, "stranger")
    assert ops.poll(5000), "an allowed key hears the bus"
    assert stranger.poll(1000) == 0, "an unknown key hears nothing"
    assert wait_for(lambda: bus_counters(ops).get("rejected.unknown_key", 0) > 0, 5, 0.05)
    counters = bus_counters(ops)
    assert counters["rejected"] >= counters["rejected.unknown_key"]
    assert counters.get("rejected.unknown_publisher") == 0


def test_sighup_reads_the_allow_list_again(curve_bus):
    clients = curve_bus["tmp"] / "bus-keys" / "clients"
    assert subscriber(curve_bus, "stranger").poll(800) == 0
    shutil.copy(curve_bus["tmp"] / "stranger.key", clients / "stranger.key")
    curve_bus["proc"].send_signal(signal.SIGHUP)
    # libzmq does not retry a connection whose handshake was refused: the client connects again
    assert wait_for(lambda: subscriber(curve_bus, "stranger").poll(500) > 0, 8, 0), "let in after SIGHUP"
    (clients / "stranger.key").unlink()
    curve_bus["proc"].send_signal(signal.SIGHUP)
    wait_for(lambda: False, 0.6)
    assert subscriber(curve_bus, "stranger").poll(1000) == 0, "a new connection with a removed key is refused"
    assert curve_bus["proc"].poll() is None  # SIGHUP does not stop the bus


def test_a_subscriber_key_cannot_publish(curve_bus):
    ops = subscriber(curve_bus, "ops", b"hb/h1/")
    rogue = curve_bus["ctx"].socket(zmq.PUB)
    secure_client(rogue, str(curve_bus["tmp"] / "ops.key_secret"), curve_bus["public"])  # allowed to read, only
    rogue.connect(curve_bus["pub"])
    fake = Publisher(rogue, "h1", "scheduler")
    seen = []
    for _ in range(20):
        fake.send(KIND_HB, 1, Heartbeat("scheduler", "ok", 0.2, {}))
        while ops.poll(100):
            seen.append(decode(ops.recv_multipart()))
    assert seen and all(env.src == "bus" for env in seen)  # the bus's own beats, never the rogue's
    assert wait_for(lambda: bus_counters(ops).get("rejected.unknown_publisher", 0) > 0, 5, 0.05)
