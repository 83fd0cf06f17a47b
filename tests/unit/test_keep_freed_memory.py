"""keep_freed_memory: the services' numpy temporaries reuse freed memory instead of faulting pages in
every period (each (10k, 4) array is 320 KiB; docs/BENCHMARKS.md has what it cost)."""

from __future__ import annotations

import subprocess
import sys

from rescoin.services.runtime.support import keep_freed_memory

from tests.support.machine import machine_lacks

PERIODS = 10
TEMPORARIES = 40  # about what one scheduler period allocates at 10k VMs
PAGES = PERIODS * TEMPORARIES * (10_000 * 4 * 8 // 4096)

CHILD = f"""
import resource, sys
import numpy as np
from rescoin.services.runtime.support import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    raise SystemExit("no mallopt")

def period():
    temporaries = [np.ones((10_000, 4)) for _ in range({TEMPORARIES})]
    del temporaries

period()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range({PERIODS}):
    period()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_freed_temporaries_are_reused_instead_of_faulted_in_again():
    if not keep_freed_memory():
        machine_lacks("no_mallopt")
    kept, default = page_faults("keep"), page_faults("default")
    print(f"minor page faults over {PERIODS} periods of {TEMPORARIES} temporaries: kept {kept}, default {default}")
    assert kept < 0.02 * PAGES
    assert default > 0.5 * PAGES, "glibc's default no longer refaults these: keep_freed_memory may be unneeded"
