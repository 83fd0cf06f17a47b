"""The shared libvirt connection against a real libvirtd: it comes back after a restart, and a hung
libvirtd fails a call (keepalive) instead of blocking the actuator or the monitor forever."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import libvirt
import pytest
from rescoin.services.actuator.backend import BackendError
from rescoin.services.actuator.backend_libvirt import LibvirtActuatorBackend
from rescoin.services.runtime.config import load_config
from rescoin.services.runtime.libvirt_conn import LibvirtConnection

from tests.support import libvirtd as libvirtd_support

pytestmark = [pytest.mark.root, pytest.mark.libvirtd]


def libvirtd_pid() -> int:
    return int(Path("/run/libvirtd.pid").read_text())


def test_the_actuator_backend_fails_while_libvirtd_is_down_and_works_again_once_it_is_back(libvirtd):
    cfg = load_config(None, ["actuator.uri='qemu:///system'"])
    backend = LibvirtActuatorBackend(cfg.actuator)
    try:
        backend.domains()
        pid = libvirtd_pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(BackendError):
            backend.domains()
        libvirtd_support.start(netns=libvirtd.netns)
        deadline = time.monotonic() + 30
        while True:
            try:
                backend.domains()
                break
            except BackendError:
                assert time.monotonic() < deadline, "the backend never reconnected"
                time.sleep(0.5)
        assert backend.libvirt.connects >= 2 and backend.libvirt.losses >= 1
    finally:
        backend.close()


def test_a_hung_libvirtd_fails_the_call_within_the_keepalive_instead_of_blocking(libvirtd):
    conn = LibvirtConnection("qemu:///system", keepalive_s=1, keepalive_count=2)
    conn.get().listAllDomains()
    pid = libvirtd_pid()
    outcome: list[str] = []

    def call() -> None:
        try:
            conn.get().listAllDomains()
            outcome.append("returned")
        except libvirt.libvirtError as exc:
            outcome.append(f"failed: {exc}")

    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(timeout=30)
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    print(f"call to a stopped libvirtd: {outcome or ['still blocked']} after {took:.1f} s")
    assert outcome and outcome[0].startswith("failed")  # not blocked for good
    assert conn.failed(libvirt.libvirtError("keepalive"))  # the connection is gone, not only that call
    deadline = time.monotonic() + 20
    while True:  # and the next get() opens a working one
        try:
            conn.get().listAllDomains()
            break
        except Exception:
            assert time.monotonic() < deadline, "no new connection after libvirtd resumed"
            time.sleep(0.5)
    assert conn.connects == 2
    conn.drop()
