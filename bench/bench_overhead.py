"""CPU and memory of every ResCoin process over 60 s at period_s = 1 on the sim host
with 100 VMs (the 31 Bitbrains traces, reused shifted in time), read from /proc.
Target: all processes together ≤ 2 % of one core."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from common import SIM_PIPELINE, start_sim_pipeline, stop, write_section

DURATION_S = 60


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        procs, _sub = start_sim_pipeline(tmp, "bench", 1.0, 100)
        try:
            time.sleep(10)  # start-up (imports, trace loading) is not steady state
            start = {s: cpu_seconds(p.pid) for s, p in procs.items()}
            t0 = time.monotonic()
            time.sleep(DURATION_S)
            wall = time.monotonic() - t0
            used = {s: (cpu_seconds(p.pid) - start[s]) / wall for s, p in procs.items()}
            rss = {s: rss_mib(p.pid) for s, p in procs.items()}
        finally:
            stop(procs)
    rows = ["| process | CPU (% of one core) | RSS |", "| --- | ---: | ---: |"]
    rows += [f"| rescoin-{s} | {used[s] * 100:.2f} % | {rss[s]:.0f} MiB |" for s in SIM_PIPELINE]
    total = sum(used.values())
    without_sim = total - used["simhost"]
    rows.append(f"| **all** | **{total * 100:.2f} %** | {sum(rss.values()):.0f} MiB |")
    body = "\n".join(rows) + (
        f"\n\nOver {DURATION_S} s of steady state (100 VMs, period 1 s). Without the sim host, which stands in for the "
        f"VMs and would not run on a real host: {without_sim * 100:.2f} % of one core. Target ≤ 2 %: "
        f"**{'met' if without_sim <= 0.02 else 'missed'}**. Each Python process carries numpy and pyzmq (~30–60 MiB "
        "RSS); the bus is libzmq plus a thread."
    )
    write_section("Overhead of the running pipeline", body)


if __name__ == "__main__":
    main()
