"""A fleet of 100 and 500 simulated hosts into one rescoin-exporter and `rescoin status --fleet` (issue #26).

Each simulated host is a PUB socket bound on its own loopback port with its own CURVE server key, as a
host's bus XPUB would be, publishing what a host's bus carries for the fleet's subscribers every 1 s
period, at the period boundary like real stages: the hb of bus, monitor, predictor, scheduler and
actuator and one `sample` of VMS VMs (a real Sample). SIM_PROCESSES simulator processes share the hosts.
One fleet file lists them all with their server keys; the exporter watches it ([exporter] fleet) and is
scraped every 5 s as Prometheus would. Measured over WINDOW_S: the exporter's CPU (utime+stime from
/proc) and memory (VmRSS, VmHWM), the messages it received per second (its own hb counter, from its
/metrics), every host's rescoin_host_up; then the wall time of `rescoin status --fleet` until it answers.

    .venv/bin/python bench/bench_fleet.py            # 100 and 500 hosts, rewrites "Fleet" in docs/BENCHMARKS.md
    .venv/bin/python bench/bench_fleet.py --hosts 50 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import zmq.auth

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import write_section  # noqa: E402

from tests.support.net import free_ports  # noqa: E402
from tests.support.proc import cpu_seconds  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PERIOD_S = 1.0
VMS = 16
SIM_PROCESSES = 4
WARMUP_S = float(os.environ.get("BENCH_WARMUP_S", 10.0))
WINDOW_S = float(os.environ.get("BENCH_WINDOW_S", 30.0))
STATUS_RUNS = 3
SERVICES = ("bus", "monitor", "predictor", "scheduler", "actuator")

SIMULATOR = """
import json, sys, time
import numpy as np
import zmq
from rescoin.proto import KIND_HB, Heartbeat
from rescoin.proto.messages import Sample
from rescoin.services.runtime.service import Publisher, current_period
from rescoin.services.runtime.support import StopFlag, load_curve_keypair

hosts, period_s, n_vms = json.loads(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
vms = [f"00000000-0000-0000-0000-{i:012x}" for i in range(n_vms)]
sample = Sample(np.array([64.0, 256e9, 2e9, 1.25e9]), vms, [f"vm-{i}" for i in range(n_vms)],
                np.ones((n_vms, 4)), np.full((n_vms, 4), 0.5), ["guest"] * n_vms, period_s)
stop = StopFlag().install()
ctx = zmq.Context()
pubs = []
for name, endpoint, secret in hosts:
    sock = ctx.socket(zmq.PUB)
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = load_curve_keypair(secret)
    sock.sndhwm = 1000
    sock.bind(endpoint)
    pubs.append({s: Publisher(sock, name, s) for s in ("bus", "monitor", "predictor", "scheduler", "actuator")})
while not stop.stopping:
    time.sleep(period_s - time.time() % period_s)
    period = current_period(time.time(), period_s) - 1
    for beats in pubs:
        for service, pub in beats.items():
            pub.send(KIND_HB, period, Heartbeat(service, "ok", period_s, {"received": period % 1000, "sent": 1}))
        beats["monitor"].send("sample", period, sample)
ctx.destroy(linger=0)
"""


def proc_usage(pid: int) -> tuple[float, float, float]:
    """(cpu seconds, VmRSS MiB, VmHWM MiB)."""
    cpu = cpu_seconds(pid)
    mem = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            mem[line.split(":")[0]] = int(line.split()[1]) / 1024
    return cpu, mem["VmRSS"], mem["VmHWM"]


def scrape(port: int) -> tuple[str, float]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return text, time.perf_counter() - t0


def exporter_received(text: str) -> float | None:
    """The exporter's own hb counter ``received`` (every message it took off the buses), from /metrics."""
    for line in text.splitlines():
        if line.startswith("rescoin_service_events_total{") and all(
            f'{k}="{v}"' in line for k, v in (("host", "ops"), ("service", "exporter"), ("counter", "received"))
        ):
            return float(line.rsplit(" ", 1)[1])
    return None


def hosts_up(text: str) -> int:
    return len(re.findall(r'^rescoin_host_up\{host="sim\d+"\} 1\.0$', text, re.M))


def run(n_hosts: int, tmp: Path) -> dict:
    keys = tmp / f"keys-{n_hosts}"
    keys.mkdir()
    hosts = []
    ports = iter(free_ports(n_hosts + 3))
    for i in range(n_hosts):
        name = f"sim{i:04d}"
        zmq.auth.create_certificates(str(keys), name)
        hosts.append((name, f"tcp://127.0.0.1:{next(ports)}", str(keys / f"{name}.key_secret")))
    zmq.auth.create_certificates(str(keys), "ops")
    fleet = tmp / f"fleet-{n_hosts}.toml"
    lines = [f'client_key = "{keys / "ops.key_secret"}"', ""]
    for name, endpoint, _secret in hosts:
        lines += ["[[host]]", f'name = "{name}"', f'bus = "{endpoint}"', f'server_key = "{keys / name}.key"', ""]
    fleet.write_text("\n".join(lines))
    procs: list[subprocess.Popen] = []
    try:
        for k in range(SIM_PROCESSES):
            share = json.dumps(hosts[k::SIM_PROCESSES])
            procs.append(subprocess.Popen([sys.executable, "-c", SIMULATOR, share, str(PERIOD_S), str(VMS)], cwd=ROOT))
        ops_pub, ops_sub, port = f"tcp://127.0.0.1:{next(ports)}", f"tcp://127.0.0.1:{next(ports)}", next(ports)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "rescoin.services.bus.main", "--host", "ops", "--period", str(PERIOD_S),
                 "--set", f"bus.pub_endpoint='{ops_pub}'", "--set", f"bus.sub_endpoint='{ops_sub}'"],
                cwd=ROOT, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
        config = tmp / f"exporter-{n_hosts}.toml"
        config.write_text(
            f'[host]\nname = "ops"\nperiod_s = {PERIOD_S}\n[bus]\npub_endpoint = "{ops_pub}"\n'
            f'sub_endpoint = "{ops_sub}"\n[exporter]\nlisten_port = {port}\nfleet = "{fleet}"\n'
        )
        exporter = subprocess.Popen(
            [sys.executable, "-m", "rescoin.services.exporter.main", "--config", str(config)],
            cwd=ROOT,
            stderr=subprocess.DEVNULL,
        )
        procs.append(exporter)
        time.sleep(WARMUP_S)
        text, _ = scrape(port)
        cpu0, _, _ = proc_usage(exporter.pid)
        received0, t0 = exporter_received(text), time.monotonic()
        scrapes, rss = [], []
        while time.monotonic() - t0 < WINDOW_S:
            time.sleep(5.0)
            text, took = scrape(port)
            scrapes.append(took)
            rss.append(proc_usage(exporter.pid)[1])
        cpu1, rss_now, hwm = proc_usage(exporter.pid)
        elapsed = time.monotonic() - t0
        received1 = exporter_received(text)
        rate = (received1 - received0) / elapsed if received0 is not None and received1 is not None else float("nan")
        up = hosts_up(text)
        status_times, status_rc, status_tail = [], [], ""
        for _ in range(STATUS_RUNS):
            t = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-m", "rescoin.services.cli", "status", "--fleet", str(fleet)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=60,
            )
            status_times.append(time.perf_counter() - t)
            status_rc.append(out.returncode)
            status_tail = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-200:]
        return {
            "hosts": n_hosts,
            "cpu": (cpu1 - cpu0) / elapsed,
            "rss": rss_now,
            "hwm": hwm,
            "rate": rate,
            "expected": n_hosts * (len(SERVICES) + 1) / PERIOD_S,
            "up": up,
            "scrape": statistics.median(scrapes),
            "bytes": len(text),
            "status": status_times,
            "status_rc": status_rc,
            "status_tail": status_tail,
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, action="append", help="fleet sizes (default: 100 and 500)")
    parser.add_argument("--no-write", action="store_true", help="print, do not rewrite docs/BENCHMARKS.md")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.hosts or [100, 500]:
            results.append(run(n, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    rows = [
        "| hosts | messages/s into the exporter (expected) | exporter CPU | RSS (peak) | hosts up | scrape "
        "| `status --fleet` answers in (runs) | its exit |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        times = ", ".join(f"{t:.2f}" for t in r["status"])
        rows.append(
            f"| {r['hosts']} | {r['rate']:,.0f} ({r['expected']:,.0f}) | {r['cpu']:.1%} of a core "
            f"| {r['rss']:.0f} MiB ({r['hwm']:.0f}) | {r['up']} of {r['hosts']} "
            f"| {r['scrape'] * 1e3:.0f} ms, {r['bytes'] / 1e6:.1f} MB | {times} s | {set(r['status_rc'])} |"
        )
    big = max(results, key=lambda r: r["hosts"])
    cpu_ok, status_ok = big["cpu"] <= 1.0, max(big["status"]) <= 3 * PERIOD_S
    body = "\n".join(rows) + (
        f"\n\nEach simulated host: a PUB bound on its own loopback port with its own CURVE server key "
        f"(what a host's bus XPUB is to a remote subscriber), {len(SERVICES)} heartbeats and one {VMS}-VM "
        f"`sample` every {PERIOD_S:.0f} s period, all at the period boundary as real stages send; "
        f"{SIM_PROCESSES} simulator processes. The exporter watches them through one fleet file "
        f"(`[exporter] fleet`, one CURVE connection per host, each with that host's server key), is scraped "
        f"every 5 s, and is measured over {WINDOW_S:.0f} s after {WARMUP_S:.0f} s of warm-up; `status --fleet` "
        f"is timed from process start to exit (it stops once every service of every host has beaten and two "
        f"periods have passed). Messages/s come from the exporter's own `received` counter, which its hb "
        f"publishes once a period, so a window's count is exact to within a period's messages (3 % at 30 s). "
        f"The scrape is the whole exposition, mostly the per-VM series ({VMS} VMs × each host), rendered at "
        f"nice 10 while the simulators share the cores. Last status line at {big['hosts']}: `{big['status_tail']}`.\n\n"
        f"Targets at {big['hosts']} hosts: the exporter within one core **{'met' if cpu_ok else 'missed'}** "
        f"({big['cpu']:.0%}); `status --fleet` within 3 periods **{'met' if status_ok else 'missed'}** "
        f"({max(big['status']):.2f} s at most)."
    )
    if args.no_write:
        print(body)
    else:
        write_section("Fleet", body)


if __name__ == "__main__":
    main()
