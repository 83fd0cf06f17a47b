"""The exporter under a connection flood (issue #29): scrape latency, its threads and RSS, and the
pipeline's heartbeats while N idle connections are held open against /metrics.

The sim pipeline (bus, sim host, monitor, predictor, scheduler, actuator; period 1 s) runs as separate
processes (common.start_sim_pipeline) with a real rescoin-exporter watching its bus. Phases: BASELINE_S
quiet, FLOOD_S with the flood, AFTER_S after it. The flood is a separate process, run as user nobody
(`runuser -u nobody`, the system python3: it needs only the standard library) when we are root, else as
ourselves: it keeps N connections open, each having sent half a request line, and opens a new one for
each the server closes (a slowloris). Meanwhile a scrape every 0.5 s (timeout 10 s), and every 0.5 s the
exporter's thread count (/proc/PID/task) and VmRSS; a bus subscriber records every stage's heartbeats.

`--exporter-dir DIR` also runs, first, the exporter package found in DIR (e.g. an older version:
`git show REV:services/exporter/main.py > DIR/main.py`, same for __init__, core, settings), loaded as
rescoin.services.exporter_old on today's runtime."""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, as bench_rogue_agent.py
from common import free_port, old_service_loader, start_sim_pipeline, stop, write_section
from rescoin.services.exporter.settings import ExporterSettings

from tests.support.bus import BusListener, decoded
from tests.support.proc import cpu_seconds

HOST = "flood"
PERIOD_S = 1.0
N_VMS = 8
BASELINE_S, FLOOD_S, AFTER_S = 10.0, 30.0, 10.0
SCRAPE_EVERY_S = 0.5
SCRAPE_TIMEOUT_S = 10.0
D = ExporterSettings()  # the defaults the exporter runs with
STAGES = ("bus", "simhost", "monitor", "predictor", "scheduler", "actuator")

FLOODER = r"""
import errno, resource, selectors, socket, sys, time
port, n, duration = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
sel = selectors.DefaultSelector()
opened = closed_by_server = failed = 0
started = {}
def connect():
    global opened
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    started[s] = time.monotonic()
    sel.register(s, selectors.EVENT_WRITE)
    opened += 1
end = time.monotonic() + duration
for _ in range(n):
    connect()
while time.monotonic() < end:
    for key, ev in sel.select(0.2):
        s = key.fileobj
        if ev & selectors.EVENT_WRITE:
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                failed += 1; sel.unregister(s); s.close(); started.pop(s, None); connect(); continue
            started.pop(s, None)
            try:
                s.send(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
            except OSError:
                pass
            sel.modify(s, selectors.EVENT_READ)
        else:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed_by_server += 1; sel.unregister(s); s.close(); connect()
    now = time.monotonic()
    for s, t in list(started.items()):
        if now - t > 5.0:  # a connect the server never completed (its backlog was full)
            failed += 1; sel.unregister(s); s.close(); del started[s]; connect()
print(opened, closed_by_server, failed, flush=True)
"""

OLD_LOADER = old_service_loader("exporter")


def proc_status(pid: int) -> tuple[int, float, float]:
    """(threads, VmRSS MiB, CPU seconds used so far)."""
    threads = len(os.listdir(f"/proc/{pid}/task"))
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    cpu = cpu_seconds(pid)
    return threads, rss, cpu


def flood_command(port: int, n: int, duration: float) -> tuple[list[str], str]:
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    cmd = [python, "-c", FLOODER, str(port), str(n), str(duration)]
    if os.geteuid() == 0 and shutil.which("runuser"):
        check = subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", "pass"], capture_output=True)
        if check.returncode == 0:
            return ["runuser", "-u", "nobody", "--", *cmd], "nobody"
    return cmd, os.environ.get("USER", str(os.geteuid()))


def run(variant: str, exporter_dir: str | None, n: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="bench-exporter-")
    procs, sub_endpoint = start_sim_pipeline(tmp, HOST, PERIOD_S, N_VMS)
    port = free_port()
    args = ["--config", f"{tmp}/rescoin.toml", "--port", str(port)]
    cmd = [sys.executable, "-c", OLD_LOADER, exporter_dir, *args] if exporter_dir else [
        sys.executable, "-m", "rescoin.services.exporter.main", *args]  # fmt: skip
    exporter = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    procs["exporter"] = exporter
    beats: dict[str, list[float]] = defaultdict(list)
    alloc_at: dict[int, float] = {}  # period -> when its alloc was heard
    applied: list[tuple[float, int, str]] = []  # (when heard, period, mode)

    def hear(_frames: list[bytes], env) -> None:
        now = time.monotonic()
        if env.kind == "hb":
            beats[env.src].append(now)
        elif env.kind == "alloc":
            alloc_at[env.period] = now
        else:
            applied.append((now, env.period, env.body.mode))

    listener = BusListener(sub_endpoint, decoded(hear), prefixes=(b"hb/", b"alloc/", b"applied/")).start()
    phase = ["start"]
    phase_at: dict[str, float] = {}
    scrapes: dict[str, list[float | None]] = defaultdict(list)  # None: failed or timed out
    samples: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            t0 = time.perf_counter()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=SCRAPE_TIMEOUT_S) as resp:
                    ok = b"rescoin_vm_allocation_cpu_cores" in resp.read()
                took: float | None = time.perf_counter() - t0 if ok else None
            except OSError:
                took = None
            if phase[0] != "start":
                scrapes[phase[0]].append(took)
            done.wait(max(0.0, SCRAPE_EVERY_S - (time.perf_counter() - t0)))

    def sampler() -> None:
        while not done.is_set():
            if phase[0] != "start":
                samples[phase[0]].append(proc_status(exporter.pid))
            done.wait(0.5)

    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the pipeline's first alloc reached the exporter
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
                    if b"rescoin_vm_allocation_cpu_cores" in resp.read():
                        break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise SystemExit("the exporter never showed an allocation")
        workers = [threading.Thread(target=f, daemon=True) for f in (scraper, sampler)]
        for w in workers:
            w.start()
        for name, length in (("baseline", BASELINE_S), ("flood", FLOOD_S), ("after", AFTER_S)):
            phase[0] = name
            phase_at[name] = time.monotonic()
            if name == "flood":
                cmd, user = flood_command(port, n, FLOOD_S)
                flooder = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
                time.sleep(length)
                out, _ = flooder.communicate(timeout=60)
                opened, closed, failed = (int(x) for x in out.split())
                load = Path("/proc/loadavg").read_text().split()[0]
            else:
                time.sleep(length)
        phase_at["end"] = time.monotonic()
        done.set()
        for w in workers:
            w.join(timeout=SCRAPE_TIMEOUT_S + 2)
    finally:
        listener.stop()
        stop(procs)
        shutil.rmtree(tmp, ignore_errors=True)

    def max_gap(start: float, end: float) -> float:
        """The longest wait between two heartbeats of one pipeline stage that ended in [start, end)."""
        gaps = [b - a for src in STAGES for a, b in zip(beats[src], beats[src][1:], strict=False) if start <= b < end]
        return max(gaps, default=float("nan"))

    def applied_in(start: float, end: float) -> tuple[float, int]:
        """The longest wait from an alloc to its applied, and the entries into fail-safe, in [start, end)."""
        seen = [(t, period, mode) for t, period, mode in applied if start <= t < end]
        lags = [t - alloc_at[period] for t, period, mode in seen if mode == "normal" and period in alloc_at]
        modes = [mode for _t, _p, mode in applied if _t < end]
        first = len(modes) - len(seen)
        entries = sum(1 for i in range(max(first, 1), len(modes)) if modes[i] == "failsafe" != modes[i - 1])
        return max(lags, default=float("nan")), entries

    result: dict = {"variant": variant, "n": n, "user": user, "opened": opened, "closed": closed, "failed": failed}
    result["load"] = load
    bounds = {"baseline": ("baseline", "flood"), "flood": ("flood", "after"), "after": ("after", "end")}
    for name, (a, b) in bounds.items():
        ok = [t for t in scrapes[name] if t is not None]
        st = samples[name]
        cpu = (st[-1][2] - st[0][2]) / (len(st) - 1) / 0.5 if len(st) > 1 else float("nan")
        result[name] = {
            "scrapes": len(scrapes[name]),
            "failed": len(scrapes[name]) - len(ok),
            "median_ms": statistics.median(ok) * 1e3 if ok else float("nan"),
            "max_ms": max(ok) * 1e3 if ok else float("nan"),
            "threads": statistics.median(s[0] for s in st),
            "threads_max": max(s[0] for s in st),
            "rss": statistics.median(s[1] for s in st),
            "rss_max": max(s[1] for s in st),
            "cpu": cpu,
            "hb_gap": max_gap(phase_at[a], phase_at[b]),
        }
        result[name]["lag"], result[name]["failsafe"] = applied_in(phase_at[a], phase_at[b])
    print(result, flush=True)
    return result


def table(results: list[dict]) -> str:
    rows = [
        "| exporter | phase | scrapes (failed) | scrape median | scrape max | threads median (max) | RSS MiB median "
        "(max) | exporter CPU | longest hb gap of a stage | longest alloc → applied | fail-safe entries |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for name in ("baseline", "flood", "after"):
            p = r[name]
            rows.append(
                f"| {r['variant']} | {name} | {p['scrapes']} ({p['failed']}) | {p['median_ms']:.1f} ms | "
                f"{p['max_ms']:.1f} ms | {p['threads']:.0f} ({p['threads_max']}) | {p['rss']:.1f} "
                f"({p['rss_max']:.1f}) | {p['cpu'] * 100:.0f} % | {p['hb_gap']:.2f} s | {p['lag'] * 1e3:.0f} ms | "
                f"{p['failsafe']} |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000, help="idle connections held open (default 2000)")
    parser.add_argument("--exporter-dir", help="also run (first) the exporter package in this directory")
    parser.add_argument("--label", default="given (--exporter-dir)", help="its name in the table")
    args = parser.parse_args()
    results = []
    if args.exporter_dir:
        results.append(run(args.label, str(Path(args.exporter_dir).resolve()), args.connections))
    results.append(run("this tree", None, args.connections))
    flood_lines = "\n".join(
        f"- {r['variant']}: the flooder (as `{r['user']}`) opened {r['opened']:,} connections, the server closed "
        f"{r['closed']:,}, {r['failed']:,} were reset before it used them or did not complete in 5 s; load average "
        f"(1 min) at the end: {r['load']}." for r in results
    )  # fmt: skip
    body = f"""
The sim pipeline (8 VMs, period 1 s) as separate processes with a real `rescoin-exporter` on its bus; {BASELINE_S:.0f} s
quiet, {FLOOD_S:.0f} s with {args.connections:,} idle connections held open against `/metrics` by a separate process
(each sends half a request line and nothing more; each one the server closes is replaced at once), {AFTER_S:.0f} s
after. A scrape every {SCRAPE_EVERY_S} s (timeout {SCRAPE_TIMEOUT_S:.0f} s; failed = timed out or refused); the
exporter's threads, VmRSS and CPU (utime + stime, % of one core) sampled every 0.5 s; the longest wait between two
heartbeats of any pipeline stage, from a bus subscriber (1 s is on time); the longest time from an `alloc` to
the actuator's `applied` for it, both as heard by that subscriber; how often the actuator entered fail-safe.

{table(results)}

{flood_lines}

Default `[exporter]` settings: at most {D.max_connections:,} connections (past it the longest-idle one is closed), a
listen backlog of {D.listen_backlog:,}, {D.request_timeout_s:g} s to send a request, one server thread, nice +{D.nice}.
"""
    write_section("Exporter under a connection flood", body)


if __name__ == "__main__":
    main()
