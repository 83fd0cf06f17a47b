"""What every benchmark shares: repeated timing, the machine, and writing its section of docs/BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
import re
import statistics
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


def timed(fn: Callable[[], object], repeat: int = 20, warmup: int = 2) -> tuple[float, float, float]:
    """(median, min, max) seconds of ``fn`` over ``repeat`` runs."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
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
