"""A rogue guest floods the ingress for 60 s while the demo pipeline runs: memory stays bounded,
honest guests still get through, the rogue is counted (issue "Hostile input").

The demo pipeline (deploy/supervisord.conf, deploy/demo.toml: 8 sim VMs, period 1 s) runs under a
real supervisord from a temporary state directory, with the ingress of deploy/supervisor.d/host/
added to it. `rescoin keys init` makes the host's key pair first; once the sim host names its VMs,
`rescoin keys add` makes keys for three of them and the ingress is restarted to trust them (what an
operator does). Two honest
guests are real `rescoin-guest-agent` processes reading a fake meminfo file at the host's period;
the rogue is a Python process with the third VM's valid key that sends as fast as its socket takes
them (XPUB_NODROP: a full queue makes it wait, it never drops) first valid `guest.mem` reports of
its own VM, then a mix of its own reports, malformed frames and reports claiming an honest VM.
Every pipeline process's VmRSS is read from /proc once a second (PIDs from `supervisorctl status`);
a subscriber on the bus counts each VM's `guest.mem` per period and keeps the ingress's and the
monitor's heartbeat counters."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, as bench_libvirt.py
from common import free_port, write_section
from rescoin.proto import GUEST_FORMAT_VERSION, Envelope, GuestMem, encode_guest_report
from rescoin.services.ingress.settings import IngressSettings
from rescoin.services.runtime.simclient import SimhostClient

from tests.support.agents import agent_command
from tests.support.bus import BusListener, decoded

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VENV_BIN = ROOT / ".venv" / "bin"
HOST = "rogue"
PERIOD_S = 1.0  # the demo's
BASELINE_S = 10  # honest agents alone, before the flood
VALID_S = 40  # phase 1: the rogue's own valid reports only
MIXED_S = 20  # phase 2: own reports, malformed frames and reports claiming an honest VM, in turn
AFTER_S = 5  # after the flood: does memory come back down
MIXED = ("valid", "malformed", "wrong_vm")
LIMITS = IngressSettings()  # the ingress runs with the default rate limit
SPAWN = mp.get_context("spawn")


# --- the pipeline under supervisord ------------------------------------------------------------


@dataclass
class Setup:
    state: Path
    config: Path
    conf: Path
    keys: Path
    bus_sub: str
    sim_endpoint: str
    ingress_endpoint: str


def write_configs(tmp: Path) -> Setup:
    """deploy/demo.toml and deploy/supervisord.conf pointed at ``tmp``, free ports, plus the ingress."""
    state, keys = tmp / "state", tmp / "keys"
    (state / "logs").mkdir(parents=True)
    sim_endpoint, ingress_endpoint = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    text = (DEPLOY / "demo.toml").read_text()
    text = text.replace('name = "demo"', f'name = "{HOST}"')
    text = text.replace('state_dir = "state"', f'state_dir = "{state}"')
    text = text.replace('"ipc://state/bus/', f'"ipc://{state}/bus/')
    text = text.replace("tcp://127.0.0.1:7720", sim_endpoint)
    text = text.replace("listen_port = 9810", f"listen_port = {free_port()}")
    text += f'\n[ingress]\nkeys_dir = "{keys}"\nbind_endpoint = "{ingress_endpoint}"\n'
    config = tmp / "rescoin.toml"
    config.write_text(text)
    conf_text = (DEPLOY / "supervisord.conf").read_text()
    conf_text = conf_text.replace("%(here)s/../state", str(state))
    conf_text = conf_text.replace("%(here)s/demo.toml", str(config))
    conf_text = conf_text.replace(
        "files = supervisor.d/*.conf supervisor.d/demo/*.conf",
        f"files = {DEPLOY}/supervisor.d/*.conf {DEPLOY}/supervisor.d/demo/*.conf "
        f"{DEPLOY}/supervisor.d/host/ingress.conf",
    )
    conf_text = conf_text.replace("programs=bus,simhost,", "programs=bus,ingress,simhost,")
    # every program as root: the checkout or its venv may not be readable by `rescoin` (as the e2e suite)
    conf_text = conf_text.replace('RESCOIN_USER="rescoin"', 'RESCOIN_USER="root"')
    conf = tmp / "supervisord.conf"
    conf.write_text(conf_text.replace("%(here)s", str(DEPLOY)))
    bus_sub = f"ipc://{state}/bus/sub.sock"
    return Setup(state, config, conf, keys, bus_sub, sim_endpoint, ingress_endpoint)


def ctl(setup: Setup, *args: str) -> str:
    out = subprocess.run(
        [str(VENV_BIN / "supervisorctl"), "-c", str(setup.conf), *args], capture_output=True, text=True, timeout=60
    )
    return out.stdout


def programs(setup: Setup) -> dict[str, int]:
    """program -> PID (0 unless RUNNING), from `supervisorctl status`."""
    out = {}
    for line in ctl(setup, "status").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].startswith("rescoin:"):
            out[parts[0].split(":", 1)[1]] = int(parts[3].rstrip(",")) if parts[1] == "RUNNING" else 0
    return out


def wait_until(check, timeout_s: float, what: str, step_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(step_s)
    raise SystemExit(f"bench_rogue_agent: {what} within {timeout_s:.0f} s")


def leftover_pids(state: Path) -> list[int]:
    """Processes whose environment names this state directory: supervisord's children."""
    marker = f"RESCOIN_STATE={state}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                continue
    return found


# --- watching the bus and /proc -----------------------------------------------------------------


@dataclass
class BusCounts:
    """guest.mem per (VM, period), the latest counters of each service, memory sources per period."""

    endpoint: str
    reports: Counter = field(default_factory=Counter)  # (vm, period) -> reports
    counters: dict[str, dict[str, int]] = field(default_factory=dict)  # service -> its latest hb counters
    info: dict[str, dict] = field(default_factory=dict)  # service -> its latest hb info
    mem_source: dict[int, dict[str, str]] = field(default_factory=dict)  # period -> vm -> guest|balloon|none
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        prefixes = (b"guest.mem/", b"hb/", b"sample/")
        self.listener = BusListener(self.endpoint, decoded(self._count), prefixes, hwm=0).start()  # count every one

    def stop(self) -> None:
        self.listener.stop()

    def _count(self, _frames: list[bytes], env: Envelope) -> None:
        with self.lock:
            if env.kind == "guest.mem":
                self.reports[(env.body.vm, env.period)] += 1
            elif env.kind == "hb":
                self.counters[env.src] = dict(env.body.counters)
                self.info[env.src] = dict(env.body.info)
            elif env.kind == "sample":
                self.mem_source[env.period] = dict(zip(env.body.vms, env.body.mem_source, strict=True))

    def hb(self, service: str) -> dict[str, int]:
        with self.lock:
            return dict(self.counters.get(service, {}))

    def per_period(self, vm: str, first: int, last: int) -> list[int]:
        with self.lock:
            return [self.reports[(vm, p)] for p in range(first, last + 1)]


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class RssSampler:
    """VmRSS of every program once a second: (monotonic time, program -> MiB); PIDs re-read if one vanishes."""

    setup: Setup
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    pids_seen: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    stopping: bool = False

    def start(self) -> None:
        self.pids = programs(self.setup)
        for name, pid in self.pids.items():
            self.pids_seen[name].add(pid)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping:
            t = time.monotonic()
            row = {name: rss_mib(pid) for name, pid in self.pids.items()}
            if any(v is None for v in row.values()):  # a process went away: ask supervisord again
                self.pids = programs(self.setup)
                for name, pid in self.pids.items():
                    self.pids_seen[name].add(pid)
                row = {name: rss_mib(pid) for name, pid in self.pids.items()}
            self.samples.append((t, {k: v for k, v in row.items() if v is not None}))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))

    def stop(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)

    def at(self, t: float) -> dict[str, float]:
        """The last sample taken at or before ``t``."""
        before = [row for when, row in self.samples if when <= t]
        return before[-1] if before else self.samples[0][1]

    def max_between(self, t0: float, t1: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for when, row in self.samples:
            if t0 <= when <= t1:
                for name, mib in row.items():
                    out[name] = max(out.get(name, 0.0), mib)
        return out


# --- the guests ---------------------------------------------------------------------------------


def report_frames(vm: str, mem_total: int) -> list[bytes]:
    """A valid report in the guest format the real agent speaks by default."""
    body = GuestMem(vm, mem_total, mem_total // 2, mem_total - mem_total // 2, 0, 0, "rogue")
    env = Envelope("guest.mem", "rogue", "agent", time.time_ns(), 0, time.time_ns(), 0, body, v=GUEST_FORMAT_VERSION)
    return encode_guest_report(env)


def rogue(
    endpoint: str,
    key: str,
    server_key: str,
    vm: str,
    victim: str,
    mem_total: int,
    valid_s: float,
    mixed_s: float,
    ready,
    go,
    out,
) -> None:
    """Sends as fast as the socket takes them: ``valid_s`` of its own reports, then ``mixed_s`` of MIXED in turn.
    Puts on ``out`` the frames sent in each second, by what they were."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)  # as the real agent: hears the ingress subscribe, i.e. the handshake is done
    sock.curve_publickey, sock.curve_secretkey = zmq.auth.load_certificate(key)
    sock.curve_serverkey, _ = zmq.auth.load_certificate(server_key)
    sock.xpub_nodrop = True  # at the high-water mark send waits instead of dropping: what the socket takes
    sock.sndtimeo = 100
    sock.connect(endpoint)
    if not sock.poll(30_000):
        out.put({"error": "the ingress never subscribed"})
        return
    sock.recv()
    ready.set()
    go.wait()
    frames = {
        "valid": report_frames(vm, mem_total),
        "malformed": [f"guest.mem/{vm}/".encode(), b"\xc1 not msgpack"],
        "wrong_vm": report_frames(victim, mem_total),
    }
    seconds: list[Counter] = []
    t0 = time.monotonic()
    i = 0
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= valid_s + mixed_s:
            break
        what = "valid" if elapsed < valid_s else MIXED[i % len(MIXED)]
        try:
            sock.send_multipart(frames[what])
        except zmq.Again:  # the queue stayed full for 100 ms: try again
            continue
        i += 1
        second = int(elapsed)
        while len(seconds) <= second:
            seconds.append(Counter())
        seconds[second][what] += 1
    sock.close(linger=2000)
    ctx.term()
    out.put({"seconds": [dict(c) for c in seconds]})


def start_agent(setup: Setup, vm: str, meminfo: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        agent_command(
            setup.ingress_endpoint,
            setup.keys,
            vm,
            meminfo,
            "--period",
            str(PERIOD_S),
            program=[str(VENV_BIN / "rescoin-guest-agent")],
        ),  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )


def meminfo_text(mem_total_bytes: float) -> str:
    total_kb = int(mem_total_bytes // 1024)
    return (
        f"MemTotal:       {total_kb} kB\nMemFree:        {total_kb // 4} kB\nMemAvailable:   {total_kb // 2} kB\n"
        "SwapTotal:             0 kB\nSwapFree:              0 kB\n"
    )


# --- the run ------------------------------------------------------------------------------------


def period_now() -> int:
    return int(time.time() // PERIOD_S)


def run(tmp: Path) -> dict:
    setup = write_configs(tmp)
    rescoin = str(VENV_BIN / "rescoin")
    # the ingress refuses to start without a server key; the guests' keys follow once the sim host names its VMs
    subprocess.run([rescoin, "keys", "init", "--dir", str(setup.keys)], check=True, capture_output=True)
    watcher = BusCounts(setup.bus_sub)
    sim = SimhostClient(setup.sim_endpoint, timeout_s=2.0)
    supervisord = subprocess.Popen(
        [str(VENV_BIN / "supervisord"), "--nodaemon", "-c", str(setup.conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agents: list[subprocess.Popen] = []
    sampler = RssSampler(setup)
    try:
        wait_until(lambda: (p := programs(setup)) and all(p.values()), 60, "every program RUNNING")
        watcher.start()
        info = wait_until(lambda: _describe(sim), 30, "the sim host describes its VMs")
        honest, rogue_vm = info.vms[:2], info.vms[2]
        mem = {vm: float(info.provisioned[i, 1]) for i, vm in enumerate(info.vms)}
        for vm in (*honest, rogue_vm):
            subprocess.run([rescoin, "keys", "add", vm, "--dir", str(setup.keys)], check=True, capture_output=True)
        ctl(setup, "restart", "rescoin:ingress")  # it reads the trusted keys at start
        wait_until(lambda: watcher.info.get("ingress", {}).get("guest_keys") == 3, 30, "the ingress trusts 3 keys")
        for vm in honest:
            meminfo = tmp / f"meminfo-{vm}"
            meminfo.write_text(meminfo_text(0.9 * mem[vm]))
            agents.append(start_agent(setup, vm, meminfo, tmp / f"agent-{vm}.log"))
        wait_until(
            lambda: all(watcher.per_period(vm, period_now() - 2, period_now()) != [0, 0, 0] for vm in honest),
            30,
            "the honest agents' reports on the bus",
        )
        ready, go, out = SPAWN.Event(), SPAWN.Event(), SPAWN.Queue()
        keys = setup.keys
        rogue_proc = SPAWN.Process(
            target=rogue,
            args=(
                setup.ingress_endpoint,
                str(keys / "guests" / f"{rogue_vm}.key_secret"),
                str(keys / "server.key"),
                rogue_vm,
                honest[0],
                int(0.9 * mem[rogue_vm]),
                VALID_S,
                MIXED_S,
                ready,
                go,
                out,
            ),
        )
        rogue_proc.start()
        assert ready.wait(60), "the rogue never got through the CURVE handshake"
        sampler.start()
        t_start = time.monotonic()
        time.sleep(BASELINE_S)
        hb_before = watcher.hb("ingress")
        mon_before = watcher.hb("monitor")
        p_flood0 = period_now() + 1  # the first whole period of the flood
        t_flood = time.monotonic()
        go.set()
        time.sleep(VALID_S)
        hb_valid = watcher.hb("ingress")
        time.sleep(MIXED_S)
        p_flood1 = period_now() - 1  # the last whole period of the flood
        result = out.get(timeout=60)
        rogue_proc.join(timeout=30)
        t_flood_end = time.monotonic()
        time.sleep(AFTER_S)
        t_end = time.monotonic()
        hb_after, mon_after = watcher.hb("ingress"), watcher.hb("monitor")
        sampler.stop()
        end_pids = programs(setup)
        p_base0, p_base1 = p_flood0 - BASELINE_S + 1, p_flood0 - 2
        honest_stats = {}
        for vm in honest:
            before, during = watcher.per_period(vm, p_base0, p_base1), watcher.per_period(vm, p_flood0, p_flood1)
            honest_stats[vm] = (before, during)
        guest_sourced = {
            vm: sum(watcher.mem_source.get(p, {}).get(vm) == "guest" for p in range(p_flood0, p_flood1 + 1))
            for vm in honest
        }
        rogue_on_bus = sum(watcher.per_period(rogue_vm, p_flood0 - 1, period_now()))
        return {
            "result": result,
            "honest": honest,
            "rogue_vm": rogue_vm,
            "honest_stats": honest_stats,
            "guest_sourced": guest_sourced,
            "flood_periods": p_flood1 - p_flood0 + 1,
            "rogue_on_bus": rogue_on_bus,
            "flood_s": t_flood_end - t_flood,
            "hb": (hb_before, hb_valid, hb_after),
            "mon": (mon_before, mon_after),
            "rss": (
                sampler.at(t_start),
                sampler.at(t_flood),
                sampler.max_between(t_flood, t_end),
                sampler.at(t_end),
            ),
            "restarts": {n: sorted(p) for n, p in sampler.pids_seen.items() if len(p) > 1},
            "gone": sorted(n for n, pid in end_pids.items() if pid not in sampler.pids_seen[n]),
        }
    finally:
        sampler.stopping = True
        for agent in agents:
            agent.terminate()
            agent.wait(timeout=10)
        sim.close()
        if supervisord.poll() is None:
            supervisord.send_signal(signal.SIGTERM)
            try:
                supervisord.wait(timeout=60)
            except subprocess.TimeoutExpired:
                supervisord.kill()
                supervisord.wait()
        for pid in leftover_pids(setup.state):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        watcher.stop()


def _describe(sim: SimhostClient):
    try:
        return sim.describe()
    except Exception:  # not up yet
        return None


# --- the section --------------------------------------------------------------------------------


def rate_row(seconds: list[dict], first: int, last: int) -> tuple[float, float, float, int]:
    totals = [sum(s.values()) for s in seconds[first:last]]
    return statistics.median(totals), min(totals), max(totals), sum(totals)


def per_period_cell(counts: list[int]) -> str:
    """mean reports a period, and how many periods had none or more than one."""
    mean = sum(counts) / len(counts) if counts else 0.0
    none, more = sum(c == 0 for c in counts), sum(c > 1 for c in counts)
    return f"{mean:.2f} over {len(counts)} periods ({none} with none, {more} with two or more)"


def main() -> None:
    t0, load = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="rogue-") as tmp:
        r = run(Path(tmp))
    wall = time.monotonic() - t0
    if "error" in r["result"]:
        raise SystemExit(r["result"]["error"])
    seconds = r["result"]["seconds"]
    sent = Counter()
    for s in seconds:
        sent.update(s)
    valid_rate = rate_row(seconds, 1, VALID_S)  # whole seconds only
    mixed_rate = rate_row(seconds, VALID_S + 1, VALID_S + MIXED_S)
    hb_before, hb_valid, hb_after = r["hb"]
    mon_before, mon_after = r["mon"]
    names = ["ingress", "bus", "simhost", "monitor", "predictor", "scheduler", "actuator", "exporter"]
    rss_start, rss_flood, rss_max, rss_end = r["rss"]

    def delta(after: dict, before: dict, key: str) -> int:
        return after.get(key, 0) - before.get(key, 0)

    lines = [
        "| rogue phase | seconds | frames sent a second, median (min–max) | frames sent |",
        "| --- | ---: | ---: | ---: |",
        f"| own valid reports | {VALID_S} | {valid_rate[0]:,.0f} ({valid_rate[1]:,.0f}–{valid_rate[2]:,.0f}) | "
        f"{sum(sum(s.values()) for s in seconds[:VALID_S]):,} |",
        f"| valid / malformed / claiming an honest VM, in turn | {MIXED_S} | {mixed_rate[0]:,.0f} "
        f"({mixed_rate[1]:,.0f}–{mixed_rate[2]:,.0f}) | {sum(sum(s.values()) for s in seconds[VALID_S:]):,} |",
        "",
        "| process | RSS at start | before the flood | max during flood + 5 s | end (5 s after) | end − before |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for n in names:
        if n in rss_flood:
            lines.append(
                f"| rescoin-{n} | {rss_start.get(n, 0):.1f} MiB | {rss_flood[n]:.1f} MiB | "
                f"{rss_max.get(n, 0):.1f} MiB | {rss_end.get(n, 0):.1f} MiB | {rss_end.get(n, 0) - rss_flood[n]:+.1f} MiB |"
            )
    lines += [
        "",
        "| honest VM | reports a period before the flood | during the flood | samples with memory from the guest |",
        "| --- | --- | --- | ---: |",
    ]
    for vm in r["honest"]:
        before, during = r["honest_stats"][vm]
        lines.append(
            f"| `{vm[:8]}…` | {per_period_cell(before)} | {per_period_cell(during)} | "
            f"{r['guest_sourced'][vm]} of {r['flood_periods']} |"
        )
    keys = ["received", "forwarded", "rejected.rate_limited", "rejected.wrong_vm", "rejected.malformed"]
    lines += [
        "",
        "| ingress counter | phase 1 (own reports) | phase 2 (mixed) | whole flood + 5 s |",
        "| --- | ---: | ---: | ---: |",
    ]
    for k in keys:
        lines.append(
            f"| `{k}` | {delta(hb_valid, hb_before, k):,} | {delta(hb_after, hb_valid, k):,} | "
            f"{delta(hb_after, hb_before, k):,} |"
        )
    bound = LIMITS.report_burst + LIMITS.reports_per_period * (r["flood_s"] / PERIOD_S + AFTER_S + 1)
    restarts = r["restarts"] or "none"
    if r["gone"]:
        restarts = f"{restarts}; changed or not RUNNING at the end: {', '.join(r['gone'])}"
    body = (
        "\n".join(lines)
        + f"\n\nThe demo pipeline (8 sim VMs, period {PERIOD_S:g} s) plus `rescoin-ingress` under supervisord, "
        f"every program as root; the ingress at its default limit ({LIMITS.reports_per_period:g} reports a period, "
        f"bursts of {LIMITS.report_burst:g}). Two honest `rescoin-guest-agent` processes (period {PERIOD_S:g} s, fake "
        "meminfo) and one rogue with a third VM's valid key, sending through an XPUB with `XPUB_NODROP` (at the "
        "high-water mark it waits, so *sent* is what the socket took, i.e. what the ingress kept up with; the counts a "
        "second come in steps of 500 because a sender blocked at the high-water mark of 1,000 gets its credit back in "
        "halves). "
        f"{BASELINE_S} s of honest agents alone, {VALID_S + MIXED_S} s of flood, {AFTER_S} s after; {wall:.0f} s in "
        f"all; load average {load:.1f} when it started. The rogue's reports on the bus during the flood: "
        f"{r['rogue_on_bus']} (the limit allows at most {bound:.0f}). Monitor, same window: `guest_reports` "
        f"+{delta(mon_after, mon_before, 'guest_reports'):,}, `rejected` +{delta(mon_after, mon_before, 'rejected')}. "
        f"Frames the rogue sent, whole flood: {sent['valid']:,} own reports, {sent['malformed']:,} malformed, "
        f"{sent['wrong_vm']:,} claiming an honest VM; its own reports = its reports on the bus + "
        "`rejected.rate_limited` when every frame has been taken. The counters' phases split at the heartbeat "
        "nearest each phase's end, so frames still queued in sockets then (about a second's worth) count in the "
        "next column. "
        f"Program restarts (PID changes seen by the sampler): {restarts}. *RSS at start* is when sampling began, "
        f"{BASELINE_S} s before the flood; RSS is VmRSS from /proc once a second."
    )
    write_section("A rogue guest agent", body)


if __name__ == "__main__":
    main()
