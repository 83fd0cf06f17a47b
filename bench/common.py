"""What every benchmark shares: repeated timing, the machine, writing its section of docs/BENCHMARKS.md,
and the whole pipeline on the sim host as separate processes."""

from __future__ import annotations

import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
HEADER = """# Benchmarks

Measured on demand with one command each (`.venv/bin/python bench/NAME.py`); every
section says the machine, the date and the command. Times are medians with the
min–max of repeated runs in one process; ratios are between runs of the same
invocation, since these machines are shared and noisy. Nothing here is a test
assertion. Each script in `bench/` rewrites only its own section; loopback TCP on
free ports only.
"""


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def timed(
    fn: Callable[[], object], repeat: int = 20, warmup: int = 2, gap_s: float = 0.0
) -> tuple[float, float, float]:
    """(median, min, max) seconds of ``fn`` over ``repeat`` runs, each ``gap_s`` after the last one ended
    (the warm-up runs too)."""
    runs = []
    for _ in range(warmup + repeat):
        if gap_s:
            time.sleep(gap_s)
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    runs = runs[warmup:]
    return statistics.median(runs), min(runs), max(runs)


def ms(t: tuple[float, float, float]) -> str:
    return f"{t[0] * 1e3:.3f} ms ({t[1] * 1e3:.3f}–{t[2] * 1e3:.3f})"


def write_section(title: str, body: str) -> None:
    """Replace (or add) the ``## title`` section of docs/BENCHMARKS.md."""
    text = DOC.read_text() if DOC.exists() else HEADER
    command = " ".join([".venv/bin/python", *sys.argv])
    section = f"## {title}\n\n`{command}` — {time.strftime('%Y-%m-%d')}, {machine()}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.write_text(text)
    print(section)


SIM_PIPELINE = ("bus", "simhost", "monitor", "predictor", "scheduler", "actuator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sim_pipeline(tmp: str, host: str, period_s: float, n_vms: int) -> tuple[dict[str, subprocess.Popen], str]:
    """Every stage of SIM_PIPELINE its own process on a sim host of ``n_vms``, on fresh loopback ports.
    Returns the processes and the bus's subscriber endpoint; ``stop`` them."""
    sub_endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = Path(tmp) / "rescoin.toml"
    config.write_text(f"""
[host]
name = "{host}"
period_s = {period_s}
state_dir = "{tmp}/state"
[bus]
pub_endpoint = "tcp://127.0.0.1:{free_port()}"
sub_endpoint = "{sub_endpoint}"
[simhost]
endpoint = "tcp://127.0.0.1:{free_port()}"
n_vms = {n_vms}
[monitor]
backend = "sim"
reserve_cores = 0.0
reserve_mem_bytes = 0.0
[actuator]
backend = "sim"
""")
    procs = {
        s: subprocess.Popen(
            [sys.executable, "-m", f"rescoin.services.{s}.main", "--config", str(config)], stderr=subprocess.DEVNULL
        )
        for s in SIM_PIPELINE
    }
    return procs, sub_endpoint


def stop(procs: dict[str, subprocess.Popen]) -> None:
    for p in procs.values():
        p.terminate()
    for p in procs.values():
        p.wait()


def old_service_loader(service: str) -> str:
    """A python -c script that runs an earlier copy of a service's package (its folder: argv[1]; the
    service's own arguments follow), imported under another name beside today's rescoin: "before"
    numbers from the same machine in the same run."""
    return rf"""
import importlib, importlib.util, sys
import rescoin.services
spec = importlib.util.spec_from_file_location(
    "rescoin.services.{service}_old", sys.argv[1] + "/__init__.py", submodule_search_locations=[sys.argv[1]])
mod = importlib.util.module_from_spec(spec); sys.modules[spec.name] = mod; spec.loader.exec_module(mod)
main = importlib.import_module("rescoin.services.{service}_old.main")
raise SystemExit(main.main(sys.argv[2:]))
"""
