"""The fleet file, name collisions, and what the exporter and `rescoin status` make of a fleet (no sockets)."""

from __future__ import annotations

import argparse

import pytest
import zmq
import zmq.auth
from rescoin.proto import Envelope, Heartbeat
from rescoin.services.exporter.core import COLLISION_HOLD_PERIODS, ExporterCore
from rescoin.services.tools import status
from rescoin.services.tools.buses import (
    BusTarget,
    CollisionWatch,
    FleetError,
    add_bus_arguments,
    bus_targets,
    load_fleet,
)


def hb(host: str, service: str = "monitor", epoch: int = 1, period_s: float = 1.0) -> Envelope:
    return Envelope("hb", host, service, epoch, 0, 0, 9, Heartbeat(service, "ok", period_s, {"received": 1}))


@pytest.fixture
def keys(tmp_path):
    (tmp_path / "keys").mkdir()
    zmq.auth.create_certificates(str(tmp_path / "keys"), "a")
    zmq.auth.create_certificates(str(tmp_path / "keys"), "b")
    zmq.auth.create_certificates(str(tmp_path / "keys"), "ops")
    return tmp_path / "keys"


def write(tmp_path, text: str):
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_a_fleet_gives_each_host_its_own_server_key_and_one_client_pair(tmp_path, keys):
    path = write(
        tmp_path,
        'client_key = "keys/ops.key_secret"\n'  # relative to the fleet file
        '[[host]]\nname = "a"\nbus = "tcp://10.0.0.1:7711"\nserver_key = "keys/a.key"\n'
        '[[host]]\nname = "b"\nbus = "tcp://10.0.0.2:7711"\nserver_key = "keys/b.key"\n'
        '[[host]]\nname = "local"\nbus = "ipc:///run/rescoin/bus/sub.sock"\n',
    )
    fleet = load_fleet(path)
    assert fleet.names == ["a", "b", "local"]
    targets = {t.endpoint: t for t in fleet.targets()}
    a_public, _ = zmq.auth.load_certificate(str(keys / "a.key"))
    b_public, _ = zmq.auth.load_certificate(str(keys / "b.key"))
    ops = zmq.auth.load_certificate(str(keys / "ops.key_secret"))
    assert targets["tcp://10.0.0.1:7711"].server_public == a_public
    assert targets["tcp://10.0.0.2:7711"].server_public == b_public
    assert targets["tcp://10.0.0.1:7711"].client == ops
    assert targets["ipc:///run/rescoin/bus/sub.sock"] == BusTarget("ipc:///run/rescoin/bus/sub.sock")
    assert [t.endpoint for t in fleet.targets(skip=["tcp://10.0.0.2:7711"])] == [
        "tcp://10.0.0.1:7711",
        "ipc:///run/rescoin/bus/sub.sock",
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "no \\[\\[host\\]\\]"),
        ('[[host]]\nname = "a"\nbus = "tcp://x:1"\nserver_key = "keys/a.key"\n', "no client_key"),
        ('client_key = "keys/ops.key"\n[[host]]\nname = "a"\nbus = "tcp://x:1"\n', "no secret key"),
        ('[[host]]\nname = "a"\nbus = "tcp://x:1"\n[[host]]\nname = "a"\nbus = "tcp://y:1"\n', "listed twice"),
        ('[[host]]\nname = "a/b"\nbus = "tcp://x:1"\n', "not a host name"),
        ('[[host]]\nname = "a"\nbus = "x:1"\n', "not an endpoint"),
        ('[[host]]\nname = "a"\nbus = "tcp://x:1"\nport = 1\n', "unknown keys port"),
        ('client_key = "keys/ops.key_secret"\n[[host]]\nname = "a"\nbus = "tcp://x:1"\nserver_key = "nope.key"\n', "a"),
        ("[[host]\n", "fleet.toml"),
    ],
)
def test_a_bad_fleet_file_says_what_is_wrong(tmp_path, keys, text, error):
    with pytest.raises(FleetError, match=error):
        load_fleet(write(tmp_path, text))


def test_bus_arguments_without_a_fleet_keep_one_key_for_every_bus():
    parser = argparse.ArgumentParser()
    add_bus_arguments(parser)
    args = parser.parse_args(["--bus", "tcp://a:1", "--bus", "tcp://b:1"])
    assert bus_targets(args) == [BusTarget("tcp://a:1"), BusTarget("tcp://b:1")]


def test_one_socket_connects_each_bus_with_its_own_server_key():
    """libzmq takes a connection's CURVE keys from the socket's options when it connects (the fleet relies on it)."""
    ctx = zmq.Context()
    try:
        client = zmq.curve_keypair()
        servers, targets = [], []
        for _ in range(3):
            public, secret = zmq.curve_keypair()
            pub = ctx.socket(zmq.PUB)
            pub.curve_server, pub.curve_publickey, pub.curve_secretkey = True, public, secret
            port = pub.bind_to_random_port("tcp://127.0.0.1")
            servers.append(pub)
            targets.append(BusTarget(f"tcp://127.0.0.1:{port}", public, client))
        plain = ctx.socket(zmq.PUB)
        servers.append(plain)
        targets.append(BusTarget(f"tcp://127.0.0.1:{plain.bind_to_random_port('tcp://127.0.0.1')}"))
        from rescoin.services.tools.buses import subscribe

        sub = subscribe(ctx, targets, [""])
        got: set[bytes] = set()
        for _ in range(50):
            for i, pub in enumerate(servers):
                pub.send(b"%d" % i)
            while sub.poll(100):
                got.add(sub.recv())
            if len(got) == len(servers):
                break
        assert got == {b"0", b"1", b"2", b"3"}
    finally:
        ctx.destroy(linger=0)


def test_a_restart_is_not_a_collision_but_two_live_streams_are():
    watch = CollisionWatch()
    assert [watch.see("h1", "monitor", e) for e in (1, 1, 2, 2, 2)] == [False] * 5  # restarted once
    assert [watch.see("h2", "monitor", e) for e in (7, 8, 7, 8)] == [False, False, True, True]
    assert not watch.see("h2", "scheduler", 7)  # per service


def test_the_exporter_says_which_fleet_hosts_are_up_and_keeps_silent_ones_at_zero():
    core = ExporterCore(down_after_misses=3, forget_after_s=100.0, fleet=["a", "b", "c"])
    core.on_message(hb("a"), now=10.0)
    core.on_message(hb("b", period_s=2.0), now=9.0)
    core.on_message(hb("stranger"), now=10.0)
    got = {(s.name, s.labels.get("host")): s.value for f in core.collect(11.0) for s in f.samples}
    assert got[("rescoin_host_up", "a")] == 1.0
    assert got[("rescoin_host_up", "b")] == 1.0  # 5 s later still < 3 × its 2 s period
    assert got[("rescoin_host_up", "c")] == 0.0  # never heard
    assert got[("rescoin_host_up", "stranger")] == 1.0
    assert got[("rescoin_host_silent_seconds", "a")] == 1.0
    assert ("rescoin_host_silent_seconds", "c") not in got
    got = {(s.name, s.labels.get("host")): s.value for f in core.collect(14.0) for s in f.samples}
    assert got[("rescoin_host_up", "a")] == 0.0 and got[("rescoin_host_up", "b")] == 1.0
    core.forget(200.0)  # forget_after_s: the stranger goes, the fleet's hosts stay at 0
    got = {(s.name, s.labels.get("host")): s.value for f in core.collect(200.0) for s in f.samples}
    assert {h for (n, h) in got if n == "rescoin_host_up"} == {"a", "b", "c"}
    assert all(got[("rescoin_host_up", h)] == 0.0 for h in "abc")
    assert core.health().info["fleet_silent"] == 3


def test_the_exporter_counts_two_streams_under_one_name_and_lets_it_go_when_one_stops():
    core = ExporterCore(fleet=["a"])
    for t, epoch in enumerate((1, 2, 1, 2)):
        core.on_message(hb("a", epoch=epoch), now=float(t))
    got = {(s.name, s.labels.get("host")): s.value for f in core.collect(4.0) for s in f.samples}
    assert got[("rescoin_host_name_collision", "a")] == 1.0
    assert core.counters.snapshot()["name_collisions"] == 2
    for t in range(4, 20):
        core.on_message(hb("a", epoch=2), now=float(t))
    later = 3.0 + COLLISION_HOLD_PERIODS + 1  # the last flip was at 3
    got = {(s.name, s.labels.get("host")): s.value for f in core.collect(later) for s in f.samples}
    assert got[("rescoin_host_name_collision", "a")] == 0.0


def test_status_calls_a_host_silent_after_misses_of_its_periods_and_never_heard_silent_too():
    heard = status.Heard({}, {"a": 9.0, "b": 5.0}, {}, CollisionWatch(), started=0.0)
    beats = {("b", "monitor"): status.Beat("b", "monitor", 1, 5.0, Heartbeat("monitor", "ok", 1.0, {}))}
    assert status.host_verdict("a", heard, {}, 3, 10.0) == "up"
    assert status.host_verdict("b", heard, beats, 3, 10.0) == "SILENT (last heard 5.0 s ago)"
    assert status.host_verdict("c", heard, {}, 3, 10.0) == "SILENT (never heard in 10.0 s)"
    heard.collisions["a"] = {"monitor"}
    assert status.host_verdict("a", heard, {}, 3, 10.0).startswith("NAME COLLISION (monitor")
