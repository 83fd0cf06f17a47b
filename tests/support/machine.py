"""What a machine of this kind simply is: the only reasons a test may skip even under CI=true.

Machines of the same kind differ from one session to the next (a kernel built
with or without BFQ, the cgroup layout). A test that needs such a feature
checks for it first and skips naming the fact from this list; anything else
missing is an install step that failed (``need.missing``: a failure in CI).
"""

from __future__ import annotations

from typing import NoReturn

import pytest

MACHINE_FACTS = {
    "no_bfq": "the kernel has no BFQ I/O scheduler (CONFIG_IOSCHED_BFQ not set: no device offers it)",
    "no_cgroup_v1": "cgroup v1 cpu, memory and blkio are not all mounted here",
    "one_cpu": "this host has one CPU: the burners need one each",
    "libvirtd_not_ours": "libvirtd was already running, not in a network namespace this suite owns: no tap VM",
    "bus_in_use": "a ResCoin bus already runs on this machine's host bus path: not touching it",
    "no_v2_controller": "the cgroup2 mount offers no such controller here (a hybrid host: v1 holds it)",
    "no_cgroup2": "no cgroup2 mount on this machine",
    "low_fd_limit": "the hard limit on open files is below what the test opens",
    "no_mallopt": "this C library has no mallopt (not glibc): the services run with its defaults",
    "checkout_private": "the checkout lies under a directory other users cannot enter (e.g. /root): "
    "the demo runs every program as root",
    "demo_running": "the demo already runs from this checkout: not stopping someone's demo",
}


def machine_lacks(fact: str, detail: str = "") -> NoReturn:
    pytest.skip(f"machine fact ({fact}): {MACHINE_FACTS[fact]}{': ' + detail if detail else ''}")
