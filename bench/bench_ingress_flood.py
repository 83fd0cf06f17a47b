"""The guest ingress under a flood of idle TCP connections (issue #29 item 5): do honest agents still get
their reports onto the bus, how soon, and what does the ingress spend?

A real rescoin-bus and a real rescoin-ingress (period 1 s), the ingress started with RLIMIT_NOFILE soft =
hard = 1,024 (systemd's default soft limit; hard as well, since the ingress now raises soft to hard).
A separate flooder process opens N plain TCP connections to the ingress's port that send nothing
(`hold`: each is kept until the ingress closes it; `replace`: each one the ingress closes is replaced at
once). Once the flood is established (every connect completed, or none more for 3 s: the rest wait in
the kernel's SYN retries), 10 real `rescoin-guest-agent` processes (one per VM, each with its own key,
reporting once a second) start and the flood goes on for FLOOD_S; a bus subscriber notes each VM's first forwarded
`guest.mem`. The ingress's CPU (utime + stime from /proc/PID/stat over the flood, % of one core) and its
open descriptors (/proc/PID/fd, sampled every 0.5 s) are recorded, and its last hb's connection counters.

`--ingress-dir DIR` also runs, first, the ingress package found in DIR (e.g. the previous version:
`git show HEAD:services/ingress/main.py > DIR/main.py`, same for __init__, core, keys, settings), loaded as
rescoin.services.ingress_old on today's runtime."""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, as bench_rogue_agent.py
from common import free_port, old_service_loader, write_section
from rescoin.services.ingress.keys import add_guest, init_server

from tests.support.agents import agent_command
from tests.support.bus import BusListener, decoded, running_bus
from tests.support.proc import cpu_seconds as cpu_s
from tests.support.proc import open_fds as fds

PERIOD_S = 1.0
NOFILE = 1024
AGENTS = 10
FLOOD_S = 30.0
MEMINFO = "MemTotal: 2048000 kB\nMemFree: 100000 kB\nMemAvailable: 1024000 kB\nSwapTotal: 0 kB\nSwapFree: 0 kB\n"

FLOODER = r"""
import resource, selectors, socket, sys, time
port, n, duration, replace = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "replace"
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
sel = selectors.DefaultSelector()
opened = closed = failed = completed = 0
def connect():
    global opened
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    sel.register(s, selectors.EVENT_WRITE)
    opened += 1
def gone(s):
    global closed
    closed += 1
    sel.unregister(s); s.close()
    if replace:
        connect()
def step(timeout):
    global completed, failed
    for key, ev in sel.select(timeout):
        s = key.fileobj
        if ev & selectors.EVENT_WRITE:  # the connect completed (or failed)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                failed += 1; gone(s); continue
            completed += 1
            sel.modify(s, selectors.EVENT_READ)
            continue
        try:
            data = s.recv(4096)  # the ingress's greeting, or the end when it closes us
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            gone(s)
for i in range(n):  # paced: a burst past the listen queue is partly lost to SYN cookies, not a flood
    connect()
    if i % 20 == 19:
        step(0.02)
# established: every connect completed, or none more for 3 s (the rest wait in SYN retries: the ingress's
# accept queue is full); at most 40 s
start = last = time.monotonic()
seen = -1
while time.monotonic() - start < 40 and completed < n and time.monotonic() - last < 3:
    step(0.2)
    if completed != seen:
        seen, last = completed, time.monotonic()
print("ready", completed, round(time.monotonic() - start, 1), flush=True)
end = time.monotonic() + duration
while time.monotonic() < end:
    step(0.2)
print(opened, closed, failed, completed, flush=True)
"""

OLD_LOADER = old_service_loader("ingress")


def limit_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def run(label: str, ingress_dir: str | None, n: int, mode: str) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingress-"))
    keys = tmp / "keys"
    init_server(keys)
    vms = [str(uuid.UUID(int=i + 1)) for i in range(AGENTS)]
    for vm in vms:
        add_guest(keys, vm)
    meminfo = tmp / "meminfo"
    meminfo.write_text(MEMINFO)
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    first: dict[str, float] = {}
    beats: list = []
    with running_bus(period_s=PERIOD_S) as bus:

        def seen(_frames, env):
            if env.kind == "guest.mem":
                first.setdefault(env.body.vm, time.monotonic())
            elif env.kind == "hb" and env.src == "ingress":
                beats.append(env.body)

        listener = BusListener(bus.sub_endpoint, decoded(seen), prefixes=(b"guest.mem/", b"hb/")).start()
        args = ["--host", "h1", "--period", str(PERIOD_S), "--set", f"ingress.keys_dir='{keys}'",
                "--set", f"ingress.bind_endpoint='{endpoint}'"]  # fmt: skip
        for item in bus.overrides():
            args += ["--set", item]
        cmd = [sys.executable, "-c", OLD_LOADER, ingress_dir, *args] if ingress_dir else [
            sys.executable, "-m", "rescoin.services.ingress.main", *args]  # fmt: skip
        log = tmp / "ingress.log"
        ingress = subprocess.Popen(cmd, stderr=log.open("w"), preexec_fn=limit_nofile)
        agents: list[subprocess.Popen] = []
        flooder = None
        try:
            deadline = time.monotonic() + 30
            while not beats and time.monotonic() < deadline:
                time.sleep(0.1)
            if not beats:
                raise SystemExit(f"bench_ingress_flood: the ingress never reported: {log.read_text()[-2000:]}")
            base_fds = fds(ingress.pid)
            t0, cpu0 = time.monotonic(), cpu_s(ingress.pid)
            peak_fds = [base_fds]
            stop_sampling = threading.Event()

            def sample():
                while not stop_sampling.wait(0.5):
                    peak_fds.append(fds(ingress.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            flooder = subprocess.Popen(
                [sys.executable, "-c", FLOODER, str(port), str(n), str(FLOOD_S), mode],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert flooder.stdout
            ready = flooder.stdout.readline().split()
            assert ready and ready[0] == "ready", ready
            established, establish_s = int(ready[1]), float(ready[2])
            started = time.monotonic()
            for vm in vms:
                agents.append(subprocess.Popen(agent_command(endpoint, keys, vm, meminfo, "--period", str(PERIOD_S)),
                                               stderr=subprocess.DEVNULL))  # fmt: skip
            time.sleep(max(0.0, started + FLOOD_S - time.monotonic()))
            cpu = (cpu_s(ingress.pid) - cpu0) / (time.monotonic() - t0)
            stop_sampling.set()
            sampler.join()
            out = flooder.communicate(timeout=30)[0].split()
            time.sleep(2 * PERIOD_S)  # the hb of the flood's last period
        finally:
            for p in [*agents, *([flooder] if flooder else [])]:
                p.terminate()
            for p in agents:
                p.wait(timeout=10)
            ingress.terminate()
            ingress.wait(timeout=10)
            listener.stop()
    window = FLOOD_S
    waits = sorted(first[vm] - started for vm in vms if vm in first and first[vm] - started <= window)
    counters = beats[-1].counters if beats else {}
    return {
        "label": label, "n": n, "mode": mode, "connected": len(waits), "window": window,
        "first": waits[0] if waits else None, "last": waits[-1] if waits else None, "cpu": cpu,
        "fds": max(peak_fds), "base_fds": base_fds, "established": established, "establish_s": establish_s,
        "flooder": out, "counters": counters, "info": beats[-1].info if beats else {},
    }  # fmt: skip


def secs(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f} s"


def table(results: list[dict]) -> str:
    rows = [
        "| ingress | idle connections | agents connected (of 10) | first report | last agent's first report "
        "| ingress CPU | its open fds, peak |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        rows.append(
            f"| {r['label']} | {r['n']:,} {r['mode'] if r['n'] else '(none)'} | {r['connected']} | "
            f"{secs(r['first'])} | "
            f"{secs(r['last']) if r['connected'] == AGENTS else '—'} | {r['cpu'] * 100:.0f} % | {r['fds']:,} |"
        )
    notes = []
    for r in results:
        if not r["n"]:
            continue
        opened, closed, failed = (int(x) for x in r["flooder"][:3]) if len(r["flooder"]) >= 3 else (0, 0, 0)
        est = f"{r['established']:,} established in {r['establish_s']:.1f} s, "
        c = r["counters"]
        extra = ""
        if "connections.accepted" in c:
            extra = (
                f"; ingress counted {c['connections.accepted']:,} accepted, {c['connections.evicted']:,} evicted, "
                f"{c['rejected.handshake_incomplete']:,} handshakes incomplete, "
                f"{c['connections.authenticated']:,} authenticated, cap {r['info'].get('max_connections')}"
            )
        notes.append(
            f"- {r['label']}, {r['n']:,} {r['mode']}: {est}the flooder opened {opened:,} connections in all, "
            f"{closed:,} were closed by the ingress ({failed:,} of them reset or refused){extra}."
        )
    return "\n".join(rows) + "\n\n" + "\n".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ingress-dir", help="also run (first) the ingress package in this directory")
    parser.add_argument("--label", default="given (--ingress-dir)", help="its name in the table")
    parser.add_argument("--flood", default="0:hold,1100:hold,2000:hold,2000:replace", help="N:mode, comma-separated")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    floods = [(int(n), mode) for n, mode in (item.split(":") for item in args.flood.split(","))]
    results = []
    variants: list[tuple[str, str | None]] = []
    if args.ingress_dir:
        variants.append((args.label, str(Path(args.ingress_dir).resolve())))
    variants.append(("this tree", None))
    for label, directory in variants:
        for n, mode in floods:
            r = run(label, directory, n, mode)
            print(r, flush=True)
            results.append(r)
    body = f"""A real bus and a real `rescoin-ingress` (period 1 s) whose process has RLIMIT_NOFILE soft = hard =
{NOFILE:,}; a separate process opens N idle TCP connections to the ingress's port (plain sockets that send
nothing; `hold`: kept until the ingress closes them, `replace`: each one closed is opened again at once,
opened 1,000 a second at first). Once the flood is established (every connect completed, or none more
for 3 s: the rest wait in the kernel's SYN retries), {AGENTS} real `rescoin-guest-agent` processes (each
its own VM key, a report a second) start and the flood goes on for {FLOOD_S:.0f} s. Connected = its first
report forwarded onto the bus within those {FLOOD_S:.0f} s; times from the agents' start. CPU = the ingress's
utime + stime from the flood's start to its end, % of one core; open fds sampled every 0.5 s.

{table(results)}

Default `[ingress]` settings: `handshake_timeout_s` 5 s (ZMQ_HANDSHAKE_IVL; libzmq's default is 30 s),
heartbeats every 10 s, 30 s timeout, `max_connections` 0 (the open-file limit less what the process has
open and a reserve of max(64, limit / 16) plus the listen queue of 128: {NOFILE:,} gives about 810); the
open-file soft limit raised to the hard limit at start (here both {NOFILE:,}). Before, libzmq's defaults: a
30 s handshake timeout, no heartbeats, no cap, the limit as given. `hold` before: the ingress takes about
1,000 connections, then `accept()` fails with EMFILE in a loop (the CPU) until the first idle ones time out
30 s later; the rest of the flood waits in the listen queue and SYN retries ahead of the agents. `replace`
now: a flood holding more connections than the descriptor limit and reopening each one closed refills every
descriptor the ingress frees, so the ingress sits at its limit (the peak above) and spends its CPU on
accepting and evicting; the agents' connections, which send their handshake at once, are never the ones
evicted."""
    write_section("Ingress under a connection flood", body)


if __name__ == "__main__":
    main()
