"""A fleet of 21 hosts on this machine, watched through one fleet file (issue #26).

Each host is a real rescoin-bus process with its own CURVE server key on its
own loopback ports (ZAP against an allow-list that holds the operators' key),
plus one small publisher process sending every host's monitor, predictor,
scheduler and actuator heartbeats onto that host's bus (each host's publisher
socket holds that bus's own key, as a host's services do). A real
rescoin-exporter watches the fleet from a plain bus of its own.

* `rescoin status --fleet` hears all 21 and exits 0;
* the same fleet with a client key no bus allows hears nothing and exits 1, and
  every bus counts the refusals (`rejected.unknown_key` in its hb);
* stopping one host's bus makes it SILENT in status (exit 1) and
  `rescoin_host_up{host=…}` 0 in the exporter, the others staying 1;
* a second machine that calls itself h03 (heard through h04's bus) is a NAME
  COLLISION in status and `rescoin_host_name_collision{host="h03"}` 1.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import zmq.auth

from tests.support.bus import wait_for
from tests.support.net import free_ports

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
HOSTS = [f"h{i:02d}" for i in range(1, 22)]
PERIOD_S = 0.5
STOPPED = "h07"
TWIN, TWIN_BUS = "h03", "h04"  # a second machine named h03, heard through h04's bus

# Sends every host's monitor/predictor/scheduler/actuator heartbeats onto its bus, each period.
# argv[1]: JSON list of [host name, bus publish endpoint, secret cert file (the bus's own key pair)].
PUBLISHER = """
import json, sys, time
import zmq
from rescoin.proto import KIND_HB, Heartbeat
from rescoin.services.runtime.service import Publisher, current_period
from rescoin.services.runtime.support import StopFlag, load_curve_keypair

period_s = float(sys.argv[2])
stop = StopFlag().install()
ctx = zmq.Context()
pubs = []
for host, endpoint, secret in json.loads(sys.argv[1]):
    sock = ctx.socket(zmq.PUB)
    public, private = load_curve_keypair(secret)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, private, public
    sock.connect(endpoint)
    pubs += [Publisher(sock, host, s) for s in ("monitor", "predictor", "scheduler", "actuator")]
while not stop.stopping:
    now = time.time()
    for pub in pubs:
        pub.send(KIND_HB, current_period(now, period_s) - 1, Heartbeat(pub.src, "ok", period_s, {"sent": 1}, {}, []))
    time.sleep(period_s - now % period_s)
ctx.destroy(linger=0)
"""


def rescoin(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "rescoin.services.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def write_fleet(path: Path, buses: dict[str, tuple[str, str, Path]], client: Path) -> Path:
    lines = [f'client_key = "{client}"', ""]
    for name, (_pub, sub, keys) in buses.items():
        lines += ["[[host]]", f'name = "{name}"', f'bus = "{sub}"', f'server_key = "{keys / "server.key"}"', ""]
    path.write_text("\n".join(lines))
    return path


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(r'^(rescoin_host_(?:up|name_collision))\{host="([^"]+)"\} (\S+)$', line)
        if m:
            out[f"{m[1]}/{m[2]}"] = float(m[3])
    return out


class Fleet:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        proc = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.procs[name].terminate()
        for name in list(self.procs):
            self.stop(name)
        for log in self.logs:
            log.close()


def bus_args(host: str, pub: str, sub: str, keys: Path | None) -> list[str]:
    args = [sys.executable, "-m", "rescoin.services.bus.main", "--host", host, "--period", str(PERIOD_S)]
    sets = [f"bus.pub_endpoint='{pub}'", f"bus.sub_endpoint='{sub}'"]
    if keys is not None:
        secret = keys / "server.key_secret"
        sets += [
            f"bus.curve_server_key='{secret}'",
            f"bus.curve_client_key='{secret}'",
            f"bus.curve_server_public='{keys / 'server.key'}'",
        ]
    for item in sets:
        args += ["--set", item]
    return args


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    ops, stranger = tmp / "ops", tmp / "stranger"
    ops.mkdir()
    stranger.mkdir()
    zmq.auth.create_certificates(str(ops), "ops")
    zmq.auth.create_certificates(str(stranger), "stranger")
    buses: dict[str, tuple[str, str, Path]] = {}
    ports = iter(free_ports(2 * len(HOSTS) + 3))
    for host in HOSTS:
        keys = tmp / host
        (keys / "clients").mkdir(parents=True)
        zmq.auth.create_certificates(str(keys), "server")
        shutil.copy(ops / "ops.key", keys / "clients" / "ops.key")  # the allow-list: the operators' key only
        buses[host] = (f"tcp://127.0.0.1:{next(ports)}", f"tcp://127.0.0.1:{next(ports)}", keys)
    good = write_fleet(tmp / "fleet.toml", buses, ops / "ops.key_secret")
    bad = write_fleet(tmp / "stranger.toml", buses, stranger / "stranger.key_secret")
    procs = Fleet(tmp)
    try:
        for host, (pub, sub, keys) in buses.items():
            procs.spawn(f"bus-{host}", bus_args(host, pub, sub, keys))
        spec = [[h, pub, str(keys / "server.key_secret")] for h, (pub, _sub, keys) in buses.items()]
        procs.spawn("publisher", [sys.executable, "-c", PUBLISHER, json.dumps(spec), str(PERIOD_S)])
        ops_pub, ops_sub, http_port = f"tcp://127.0.0.1:{next(ports)}", f"tcp://127.0.0.1:{next(ports)}", next(ports)
        procs.spawn("bus-ops", bus_args("ops", ops_pub, ops_sub, None))
        config = tmp / "exporter.toml"
        config.write_text(
            f'[host]\nname = "ops"\nperiod_s = {PERIOD_S}\n'
            f'[bus]\npub_endpoint = "{ops_pub}"\nsub_endpoint = "{ops_sub}"\n'
            f'[exporter]\nlisten_port = {http_port}\nfleet = "{good}"\nnice = 0\n'
        )
        procs.spawn("exporter", [sys.executable, "-m", "rescoin.services.exporter.main", "--config", str(config)])
        yield {"good": good, "bad": bad, "buses": buses, "procs": procs, "port": http_port, "tmp": tmp}
    finally:
        procs.stop_all()


def status(fleet_file: Path, *extra: str) -> subprocess.CompletedProcess:
    return rescoin("status", "--fleet", str(fleet_file), *extra)


def host_lines(out: str) -> dict[str, str]:
    return {line.split()[0]: line for line in out.splitlines() if line[:1] == "h" and line.split()[0] in HOSTS}


def test_a_fleet_of_21_hosts_through_one_fleet_file(fleet):
    t0 = time.monotonic()
    result: dict[str, subprocess.CompletedProcess] = {}

    def all_up() -> bool:
        result["s"] = status(fleet["good"])
        return result["s"].returncode == 0

    assert wait_for(all_up, 45, 0.5), result["s"].stdout + result["s"].stderr
    lines = host_lines(result["s"].stdout)
    assert sorted(lines) == HOSTS
    assert all(line.split()[1] == "up" and "5/5" in line for line in lines.values()), result["s"].stdout
    print(f"all {len(HOSTS)} hosts up after {time.monotonic() - t0:.1f} s; status:\n{result['s'].stdout}")

    # the exporter: every fleet host up
    assert wait_for(lambda: all(metrics(fleet["port"]).get(f"rescoin_host_up/{h}") == 1.0 for h in HOSTS), 20, 0.5)

    # a client key that no bus allows: nothing heard, and the buses count the refusals
    refused = status(fleet["bad"], "--wait", "2")
    assert refused.returncode == 1, refused.stdout
    assert all("SILENT (never heard" in line for line in host_lines(refused.stdout).values()), refused.stdout

    def counted() -> bool:
        tap = rescoin("tap", "hb/h01/", "--fleet", str(fleet["good"]), "--json", "--count", "5", "--timeout", "5")
        beats = [json.loads(line) for line in tap.stdout.splitlines()]
        return any(b["src"] == "bus" and b["body"]["counters"].get("rejected.unknown_key", 0) > 0 for b in beats)

    assert wait_for(counted, 15, 0.2)

    # one host's bus stops: SILENT in status, rescoin_host_up 0 in the exporter, the others stay up
    fleet["procs"].stop(f"bus-{STOPPED}")
    time.sleep(3 * PERIOD_S + 0.5)
    silent = status(fleet["good"], "--wait", "2")
    assert silent.returncode == 1, silent.stdout
    lines = host_lines(silent.stdout)
    assert "SILENT" in lines[STOPPED], silent.stdout
    assert all(line.split()[1] == "up" for host, line in lines.items() if host != STOPPED), silent.stdout
    assert "1 silent" in silent.stdout
    assert wait_for(lambda: metrics(fleet["port"]).get(f"rescoin_host_up/{STOPPED}") == 0.0, 10, 0.5)
    up = metrics(fleet["port"])
    assert all(up[f"rescoin_host_up/{h}"] == 1.0 for h in HOSTS if h != STOPPED), up

    # a second machine calling itself h03: a name collision, in status and in the exporter
    twin_pub, _sub, twin_keys = fleet["buses"][TWIN_BUS]
    spec = json.dumps([[TWIN, twin_pub, str(twin_keys / "server.key_secret")]])
    fleet["procs"].spawn("twin", [sys.executable, "-c", PUBLISHER, spec, str(PERIOD_S)])

    def collision() -> bool:
        result["c"] = status(fleet["good"], "--wait", "3")
        return "NAME COLLISION" in host_lines(result["c"].stdout).get(TWIN, "")

    assert wait_for(collision, 30, 0.5), result["c"].stdout
    assert result["c"].returncode == 1
    assert "1 name collisions" in result["c"].stdout
    assert wait_for(lambda: metrics(fleet["port"]).get(f"rescoin_host_name_collision/{TWIN}") == 1.0, 10, 0.5)
    assert metrics(fleet["port"]).get(f"rescoin_host_name_collision/{TWIN_BUS}") == 0.0
    print(f"done in {time.monotonic() - t0:.1f} s")
