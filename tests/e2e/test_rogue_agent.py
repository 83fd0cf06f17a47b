"""A rogue guest floods the ingress while the demo pipeline runs (issue "Hostile input").

The demo pipeline runs under supervisord (tests/e2e/conftest.py) with the
real host's ingress added to it. The host's key pair is made first (`rescoin
keys init`: the ingress will not start without it); once the sim host names
its VMs, three get keys (`rescoin keys add`) and the ingress is restarted to
read them. Two honest
`rescoin-guest-agent` processes report once a period, and a rogue holding the
third VM's valid key sends as fast as its socket takes them for ``FLOOD_S``:
its own valid reports, with every tenth frame malformed and every tenth
claiming an honest VM. The honest reports keep arriving, the rogue's are held
to the rate limit and the rest are counted, and the ingress's and monitor's
memory stays bounded (a memory bound, not a timing one). bench/bench_rogue_agent.py
runs the same for a minute and records the numbers in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rescoin.services.ingress.settings import IngressSettings
from rescoin.services.runtime.service import current_period
from rescoin.services.runtime.simclient import SimhostClient

from tests.e2e.conftest import (
    DEPLOY,
    PERIOD_S,
    VENV_BIN,
    BusWatcher,
    Pipeline,
    demo_like_config,
    stop_pipeline,
    supervisord_config,
    wait_running,
)
from tests.support.agents import agent_command
from tests.support.bus import wait_for
from tests.support.need import missing
from tests.support.net import free_port

pytestmark = pytest.mark.e2e

FLOOD_S = 12.0
RSS_GROWTH_BOUND_MIB = 50.0
AGENT = VENV_BIN / "rescoin-guest-agent"  # the installed script, as a guest runs it
LIMITS = IngressSettings()  # the pipeline's ingress runs with the default rate limit
TOOLS = (
    "supervisord",
    "supervisorctl",
    "rescoin",
    "rescoin-bus",
    "rescoin-simhost",
    "rescoin-ingress",
    "rescoin-guest-agent",
)

# The rogue, a separate process: argv = endpoint, its secret cert, the server's public cert, its VM,
# the honest VM it claims to be, MemTotal, seconds. Prints "ready" once the ingress has subscribed
# (the CURVE handshake is done), floods when a line comes on stdin, then prints what it sent as JSON.
# XPUB_NODROP: at the high-water mark a send waits instead of dropping, so every frame it counts
# reaches the ingress.
ROGUE = r"""
import json, sys, time
import zmq, zmq.auth
from rescoin.proto import GUEST_FORMAT_VERSION, Envelope, GuestMem, encode_guest_report
endpoint, key, server_key, vm, victim, mem_total, seconds = sys.argv[1:]
mem_total, seconds = int(mem_total), float(seconds)

def report(who):
    body = GuestMem(who, mem_total, mem_total // 2, mem_total - mem_total // 2, 0, 0, "rogue")
    env = Envelope("guest.mem", "rogue", "agent", time.time_ns(), 0, time.time_ns(), 0, body, v=GUEST_FORMAT_VERSION)
    return encode_guest_report(env)

frames = {"valid": report(vm), "malformed": [f"guest.mem/{vm}/".encode(), b"\xc1 not msgpack"],
          "wrong_vm": report(victim)}
ctx = zmq.Context()
sock = ctx.socket(zmq.XPUB)
sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(key)
sock.curve_serverkey, _ = zmq.auth.load_certificate(server_key)
sock.xpub_nodrop = True
sock.sndtimeo = 100
sock.connect(endpoint)
if not sock.poll(30_000):
    sys.exit("the ingress never subscribed")
sock.recv()
print("ready", flush=True)
sys.stdin.readline()
sent = {"valid": 0, "malformed": 0, "wrong_vm": 0}
i, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    what = "malformed" if i % 10 == 3 else "wrong_vm" if i % 10 == 7 else "valid"
    try:
        sock.send_multipart(frames[what])
    except zmq.Again:
        continue
    sent[what] += 1
    i += 1
sock.close(linger=10_000)
ctx.term()
print(json.dumps(sent), flush=True)
"""


def _tool_or_missing(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        missing(f"{path} is missing (deploy/install.sh installs it)")
    return str(path)


def start_pipeline_with_ingress(tmp: Path) -> tuple[Pipeline, Path, str]:
    """The demo pipeline plus deploy/supervisor.d/host/ingress.conf, a key store with the server's key pair;
    returns the pipeline, the key store and the guests' endpoint."""
    for tool in TOOLS:
        _tool_or_missing(tool)
    state, keys = tmp / "state", tmp / "keys"
    (state / "logs").mkdir(parents=True)
    sim_endpoint, ingress_endpoint = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    config = tmp / "rescoin.toml"
    config.write_text(
        demo_like_config(state, sim_endpoint)
        + f'\n[ingress]\nkeys_dir = "{keys}"\nbind_endpoint = "{ingress_endpoint}"\n'
    )
    demo_files = f"{DEPLOY}/supervisor.d/demo/*.conf"
    conf_text = supervisord_config(state, config)
    assert demo_files in conf_text and "programs=bus,simhost," in conf_text
    conf_text = conf_text.replace(demo_files, f"{demo_files} {DEPLOY}/supervisor.d/host/ingress.conf")
    conf_text = conf_text.replace("programs=bus,simhost,", "programs=bus,ingress,simhost,")
    conf = tmp / "supervisord.conf"
    conf.write_text(conf_text)
    # the ingress refuses to start without a server key; the guests' keys follow once the sim host names its VMs
    subprocess.run([str(VENV_BIN / "rescoin"), "keys", "init", "--dir", str(keys)], check=True, capture_output=True)
    group = [ln for ln in conf_text.splitlines() if ln.startswith("programs=")][0]
    pipeline = Pipeline(
        state=state,
        config=config,
        conf=conf,
        sim_endpoint=sim_endpoint,
        bus_sub=f"ipc://{state}/bus/sub.sock",
        programs=group.split("=", 1)[1].split(","),
    )
    pipeline.watcher = BusWatcher(pipeline.bus_sub)
    pipeline.watcher.start()
    pipeline.sim = SimhostClient(sim_endpoint, timeout_s=2.0)
    pipeline.proc = subprocess.Popen(
        [str(VENV_BIN / "supervisord"), "--nodaemon", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return pipeline, keys, ingress_endpoint


def rss_mib(pid: int) -> float:
    """VmRSS in MiB; 0 once the process is gone (a zombie has no VmRSS)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssWatch:
    """The highest VmRSS of some PIDs, read every half second from a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before = {name: rss_mib(pid) for name, pid in pids.items()}
        self.peak = dict(self.before)
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            for name, pid in self.pids.items():  # one gone reads 0: the PID check after the flood says so
                self.peak[name] = max(self.peak[name], rss_mib(pid))
            time.sleep(0.5)

    def stop(self) -> dict[str, float]:
        self.stopping = True
        self.thread.join(timeout=5)
        return {name: self.peak[name] - self.before[name] for name in self.pids}


def ingress_beats(pipeline: Pipeline, since: float) -> list:
    return [e.body for e in pipeline.watcher.since(since, "hb", "ingress")]


def reports_of(pipeline: Pipeline, vm: str, since: float) -> list:
    return [e for e in pipeline.watcher.since(since, "guest.mem") if e.body.vm == vm]


@pytest.fixture
def rogue_pipeline(tmp_path):
    pipeline, keys, endpoint = start_pipeline_with_ingress(tmp_path)
    agents: list[subprocess.Popen] = []
    try:
        yield pipeline, keys, endpoint, agents
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.terminate()
            agent.wait(timeout=10)
        stop_pipeline(pipeline)


def test_a_flooding_guest_is_held_to_its_rate_and_honest_guests_still_get_through(rogue_pipeline, tmp_path):
    pipeline, keys, endpoint, agents = rogue_pipeline
    assert wait_running(pipeline, 60), pipeline.logs()
    info = pipeline.sim.describe()
    honest, rogue_vm = info.vms[:2], info.vms[2]
    mem = {vm: int(0.9 * info.provisioned[i, 1]) for i, vm in enumerate(info.vms)}  # the monitor believes these

    rescoin = str(VENV_BIN / "rescoin")
    for vm in (*honest, rogue_vm):
        subprocess.run([rescoin, "keys", "add", vm, "--dir", str(keys)], check=True, capture_output=True, timeout=60)
    restarted = time.monotonic()
    pipeline.ctl("restart", "rescoin:ingress", check=True)  # it reads the trusted keys at start
    assert wait_for(lambda: any(b.info.get("guest_keys") == 3 for b in ingress_beats(pipeline, restarted)), 30, 0.1), (
        pipeline.logs()
    )

    for vm in honest:
        meminfo = tmp_path / f"meminfo-{vm}"
        kb = mem[vm] // 1024
        meminfo.write_text(
            f"MemTotal: {kb} kB\nMemFree: {kb // 4} kB\nMemAvailable: {kb // 2} kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n"
        )
        agents.append(
            subprocess.Popen(
                agent_command(endpoint, keys, vm, meminfo, "--period", str(PERIOD_S), program=[str(AGENT)]),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    started = time.monotonic()
    assert wait_for(lambda: all(len(reports_of(pipeline, vm, started)) >= 2 for vm in honest), 30, 0.1), pipeline.logs()

    pids = {name: pipeline.pid(name) for name in ("ingress", "monitor")}
    rss = RssWatch(pids)
    rogue = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ROGUE,
            endpoint,
            str(keys / "guests" / f"{rogue_vm}.key_secret"),
            str(keys / "server.key"),
            rogue_vm,
            honest[0],
            str(mem[rogue_vm]),
            str(FLOOD_S),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert rogue.stdout.readline().strip() == "ready"
        before = ingress_beats(pipeline, started)[-1].counters  # the rogue has sent nothing yet
        flood_started, wall_started = time.monotonic(), time.time()
        rogue.stdin.write("go\n")
        rogue.stdin.flush()
        sent = json.loads(rogue.stdout.readline())
        assert rogue.wait(timeout=30) == 0
    finally:
        if rogue.poll() is None:
            rogue.kill()
            rogue.wait()
    flood_ended, wall_ended = time.monotonic(), time.time()

    def settled() -> bool:  # the ingress has taken every frame the rogue sent: two beats count as many rejects
        beats = ingress_beats(pipeline, flood_ended)  # (the honest agents' reports go on arriving)
        return len(beats) >= 2 and beats[-1].counters["rejected"] == beats[-2].counters["rejected"]

    assert wait_for(settled, 20, 0.1), pipeline.logs()
    after = ingress_beats(pipeline, flood_ended)[-1].counters
    counted = time.monotonic()
    growth = rss.stop()

    # honest VMs: a report every period of the flood, one missed period at most
    first, last = current_period(wall_started, PERIOD_S) + 1, current_period(wall_ended, PERIOD_S) - 1
    for vm in honest:
        periods = {e.period for e in reports_of(pipeline, vm, flood_started)}
        missed = [p for p in range(first, last + 1) if p not in periods]
        assert len(missed) <= 1, f"{vm}: no report in {len(missed)} of {last - first + 1} flood periods: {missed}"

    # the rogue: through at most at its rate, the rest counted
    from_rogue = len(reports_of(pipeline, rogue_vm, flood_started))
    allowed = LIMITS.report_burst + LIMITS.reports_per_period * math.ceil((counted - flood_started) / PERIOD_S)
    print(f"rogue sent {sent}, {from_rogue} on the bus (allowed {allowed:.0f}); growth {growth}; counters {after}")
    assert 0 < from_rogue <= allowed
    assert sent["valid"] > 10 * allowed  # it did flood
    grew = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    assert grew["rejected.rate_limited"] == sent["valid"] - from_rogue, grew
    assert grew.get("rejected.wrong_vm", 0) == sent["wrong_vm"], grew
    assert grew.get("rejected.malformed", 0) == sent["malformed"], grew

    # memory: bounded, and nothing restarted
    assert {name: pipeline.pid(name) for name in pids} == pids, pipeline.logs()
    for name, mib in growth.items():
        assert mib < RSS_GROWTH_BOUND_MIB, f"{name} grew {mib:.1f} MiB during the flood"
