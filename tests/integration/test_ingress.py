"""Guest agents through real CURVE sockets into a real rescoin-ingress, onto a real bus."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import zmq
import zmq.auth
from rescoin.guest_agent.agent import wait_subscribed
from rescoin.proto import GUEST_FORMAT_VERSION, PROTOCOL_VERSION, Envelope, GuestMem, encode_guest_mem
from rescoin.proto.codec import decode
from rescoin.services.ingress.keys import add_guest, init_server

from tests.support.agents import agent_command
from tests.support.bus import running_bus, wait_for
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
VM_A, VM_B = str(uuid.UUID(int=0xA)), str(uuid.UUID(int=0xB))
MEMINFO = (
    "MemTotal:        2048000 kB\nMemFree:          100000 kB\nMemAvailable:    1024000 kB\n"
    "SwapTotal:             0 kB\nSwapFree:              0 kB\n"
)


@pytest.fixture
def ingress(tmp_path):
    keys = tmp_path / "keys"
    init_server(keys)
    add_guest(keys, VM_A)
    add_guest(keys, VM_B)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with running_bus(period_s=0.2) as bus:
        args = [
            sys.executable,
            "-m",
            "rescoin.services.ingress.main",
            "--host",
            "h1",
            "--period",
            "0.2",
            "--set",
            f"ingress.keys_dir='{keys}'",
            "--set",
            f"ingress.bind_endpoint='{endpoint}'",
        ]
        for item in bus.overrides():
            args += ["--set", item]
        proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.connect(bus.sub_endpoint)
        sub.subscribe(b"")
        try:
            # the ingress's heartbeat reaching us proves its path to the bus is up: what it forwards from now is seen
            assert collect(sub, lambda s: any(e.kind == "hb" and e.src == "ingress" for e in s), 20)
            yield {"keys": keys, "endpoint": endpoint, "sub": sub, "ctx": ctx}
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            ctx.destroy(linger=0)


def agent(ctx, keys: Path, endpoint: str, key_name: str, server_key: Path | None = None) -> zmq.Socket:
    sock = ctx.socket(zmq.XPUB)  # as the real agent: hears the ingress subscribe
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(
        str(keys / "guests" / f"{key_name}.key_secret")
    )
    sock.curve_serverkey, _ = zmq.auth.load_certificate(str(server_key or keys / "server.key"))
    sock.connect(endpoint)
    return sock


def guest_frames(vm: str, topic_kind: str = "guest.mem") -> list[bytes]:
    frames = encode_guest_mem(
        Envelope("guest.mem", "guest", "agent", 1, 0, 0, 0, GuestMem(vm, 2**30, 2**29, 2**29, 0, 0, "t"), v=2)
    )
    if topic_kind != "guest.mem":
        frames[0] = f"{topic_kind}/h1/".encode()
    return frames


def collect(sub, until, timeout=10.0):
    seen = []

    def check():
        while sub.poll(20):
            seen.append(decode(sub.recv_multipart()))
        return until(seen)

    wait_for(check, timeout)
    return seen


def ingress_counters(seen):
    beats = [e.body for e in seen if e.kind == "hb" and e.src == "ingress"]
    return beats[-1].counters if beats else {}


def test_own_uuid_is_forwarded_everything_else_is_dropped_and_counted(ingress):
    ctx, keys, sub = ingress["ctx"], ingress["keys"], ingress["sub"]
    good = agent(ctx, keys, ingress["endpoint"], VM_A)
    liar = agent(ctx, keys, ingress["endpoint"], VM_B)
    (keys / "stranger").mkdir()
    zmq.auth.create_certificates(str(keys / "stranger"), "x")
    stranger = ctx.socket(zmq.PUB)
    stranger.curve_publickey, stranger.curve_secretkey = zmq.auth.load_certificate(
        str(keys / "stranger" / "x.key_secret")
    )
    stranger.curve_serverkey, _ = zmq.auth.load_certificate(str(keys / "server.key"))
    stranger.connect(ingress["endpoint"])

    def everyone_sends(seen):
        good.send_multipart(guest_frames(VM_A))
        liar.send_multipart(guest_frames(VM_A))  # B claims to be A
        liar.send_multipart(guest_frames(VM_B, "alloc"))  # B tries to publish an alloc
        liar.send_multipart([b"guest.mem/" + VM_B.encode() + b"/", b"\xc1junk"])
        stranger.send_multipart(guest_frames(VM_A))
        c = ingress_counters(seen)
        # a report itself too: one forwarded before our subscription reached the ingress is counted, not seen
        return any(e.kind == "guest.mem" for e in seen) and all(
            c.get(k, 0) > 0
            for k in (
                "forwarded",
                "rejected.wrong_vm",
                "rejected.forbidden_topic",
                "rejected.malformed",
                "rejected.zap_denied",
            )
        )

    seen = collect(sub, everyone_sends, 20)
    c = ingress_counters(seen)
    assert (
        c.get("rejected.wrong_vm")
        and c.get("rejected.forbidden_topic")
        and c.get("rejected.malformed")
        and c.get("rejected.zap_denied")
    ), c
    forwarded = [e for e in seen if e.kind == "guest.mem"]
    assert forwarded and all(e.body.vm == VM_A for e in forwarded)
    assert not any(e.kind == "alloc" for e in seen)
    # under the ingress's own envelope: the guest said host "guest", src "agent", period 0
    assert {(e.host, e.src) for e in forwarded} == {("h1", "ingress")}
    assert min(e.period for e in forwarded) > 10**6  # this host's period number, not the guest's 0


def test_a_flooding_guest_is_rate_limited_and_an_honest_one_still_gets_through(ingress):
    ctx, keys, sub = ingress["ctx"], ingress["keys"], ingress["sub"]
    flood, honest = agent(ctx, keys, ingress["endpoint"], VM_A), agent(ctx, keys, ingress["endpoint"], VM_B)
    assert wait_subscribed(flood, 10) and wait_subscribed(honest, 10)
    frames = guest_frames(VM_A)
    for _ in range(2000):  # as fast as the socket takes them
        flood.send_multipart(frames)
    honest.send_multipart(guest_frames(VM_B))
    seen = collect(sub, lambda s: ingress_counters(s).get("rejected.rate_limited", 0) > 0 and any(
        e.kind == "guest.mem" and e.body.vm == VM_B for e in s))  # fmt: skip
    c = ingress_counters(seen)
    from_flood = [e for e in seen if e.kind == "guest.mem" and e.body.vm == VM_A]
    print(f"flood of 2000: {len(from_flood)} forwarded, counters {c}")
    # the default: 4 back to back, then 2 a period (0.2 s here); the flood lasts a few periods at most
    assert len(from_flood) <= 4 + 2 * 20
    assert c["rejected.rate_limited"] > 0 and c.get("rejected.malformed", 0) == 0


def test_agent_process_once_reaches_the_bus(ingress, tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    out = subprocess.run(
        agent_command(ingress["endpoint"], ingress["keys"], VM_A, meminfo, "--once"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    seen = collect(ingress["sub"], lambda s: any(e.kind == "guest.mem" for e in s))
    report = next(e for e in seen if e.kind == "guest.mem").body
    assert report.vm == VM_A and report.mem_total == 2048000 * 1024 and report.mem_used == (2048000 - 1024000) * 1024


PSI = "some avg10=2.50 avg60=1.00 avg300=0.50 total=777\nfull avg10=0.75 avg60=0.25 avg300=0.00 total=55\n"


def agent_with_pressure(ingress, vm: str, tmp_path: Path, *extra: str) -> list[str]:
    """The agent reporting fixed meminfo, PSI and vmstat files."""
    files = {}
    for name, text in (("meminfo", MEMINFO), ("pressure", PSI), ("vmstat", "pgmajfault 1000\npswpin 20\n")):
        files[name] = tmp_path / f"{vm}.{name}"
        files[name].write_text(text)
    return agent_command(
        ingress["endpoint"], ingress["keys"], vm, files["meminfo"],
        "--pressure", str(files["pressure"]), "--vmstat", str(files["vmstat"]), *extra,
    )  # fmt: skip


def test_agents_of_the_previous_and_the_current_guest_format_reach_the_bus_side_by_side(ingress, tmp_path):
    """A: today's guest format (2, no pressure); B: the current one (3) every 0.2 s. Same ingress, same time."""
    old_agent = agent_with_pressure(ingress, VM_A, tmp_path, "--format", "2", "--once")
    old = subprocess.Popen(old_agent, stderr=subprocess.PIPE)
    new = subprocess.Popen(agent_with_pressure(ingress, VM_B, tmp_path, "--period", "0.2"), stderr=subprocess.PIPE)
    try:

        def both_arrived(seen):
            reports = [e.body for e in seen if e.kind == "guest.mem"]
            counters = ingress_counters(seen)
            return (
                any(r.vm == VM_A for r in reports)
                and any(r.vm == VM_B and r.pgmajfault_per_s is not None for r in reports)
                and counters.get("guest_format.2", 0) > 0
                and counters.get("guest_format.3", 0) > 0
            )

        seen = collect(ingress["sub"], both_arrived, 30)
        assert old.wait(timeout=30) == 0, old.stderr.read() if old.stderr else ""
    finally:
        for proc in (old, new):
            proc.terminate()
            proc.wait(timeout=10)
    reports = [e for e in seen if e.kind == "guest.mem"]
    from_old = [e.body for e in reports if e.body.vm == VM_A]
    from_new = [e.body for e in reports if e.body.vm == VM_B]
    # the previous format converted: the same meminfo, no pressure at all (unknown, not zero)
    assert from_old and all(r.mem_used == (2048000 - 1024000) * 1024 and not r.has_pressure for r in from_old)
    assert all(set(r.to_wire()) == {"vm", "mem_total", "mem_available", "mem_used", "swap_total", "swap_free", "agent"}
               for r in from_old)  # fmt: skip
    # the current format: PSI from the file in every report, the fault rates from the second report on
    assert all((r.psi_some_avg10, r.psi_full_avg10, r.psi_some_total) == (2.5, 0.75, 777) for r in from_new)
    assert any(r.pgmajfault_per_s == 0.0 and r.pswpin_per_s == 0.0 for r in from_new)  # counters standing still
    # both under the ingress's envelope, at the bus's protocol version, whatever format they came in
    assert {(e.host, e.src, e.v) for e in reports} == {("h1", "ingress", PROTOCOL_VERSION)}
    counters = ingress_counters(seen)
    assert counters.get("rejected", 0) == 0, counters


def test_a_guest_format_the_ingress_does_not_speak_is_counted_apart(ingress):
    ctx, keys, sub = ingress["ctx"], ingress["keys"], ingress["sub"]
    future = agent(ctx, keys, ingress["endpoint"], VM_A)
    assert wait_subscribed(future, 10)
    body = GuestMem(VM_A, 2**30, 2**29, 2**29, 0, 0, "t")
    frames = encode_guest_mem(Envelope("guest.mem", "guest", "agent", 1, 0, 0, 0, body, v=GUEST_FORMAT_VERSION + 1))

    def counted(seen):
        future.send_multipart(frames)
        return ingress_counters(seen).get("rejected.guest_format", 0) > 0

    seen = collect(sub, counted, 20)
    assert not any(e.kind == "guest.mem" for e in seen)
    beat = [e.body for e in seen if e.kind == "hb" and e.src == "ingress"][-1]
    assert "unsupported guest format version 4 (this side speaks 2, 3)" in beat.errors[-1]
    assert beat.info["guest_formats"] == "2,3"


def test_agent_with_a_wrong_server_key_never_gets_through(ingress, tmp_path):
    zmq.auth.create_certificates(str(tmp_path), "fake_server")
    keys = ingress["keys"]
    sock = agent(ingress["ctx"], keys, ingress["endpoint"], VM_A, server_key=tmp_path / "fake_server.key")
    assert not wait_subscribed(sock, 2)  # the CURVE handshake fails: the ingress never subscribes
    assert wait_subscribed(agent(ingress["ctx"], keys, ingress["endpoint"], VM_A), 10)  # the right key: at once


def test_agent_installs_alone_without_numpy_or_libvirt(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(ROOT / "guest_agent")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    check = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.util as u, rescoin.guest_agent.agent; "
            "print(u.find_spec('numpy'), u.find_spec('libvirt'))",
        ],
        capture_output=True,
        text=True,
    )
    assert check.stdout.strip() == "None None", check.stderr
    assert (venv / "bin" / "rescoin-guest-agent").exists()


def test_agent_host_names_are_always_valid():
    from rescoin.guest_agent.agent import guest_name
    from rescoin.proto.envelope import check_name

    for raw in ("(none)", "", "web-1.example.com", "ünïcode", "---"):
        check_name(guest_name(raw), "host")
