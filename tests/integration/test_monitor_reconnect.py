"""The monitor's libvirt backend survives a libvirtd restart: an error while it is gone
(no sample, "disconnected"), and readings again once it is back, with no restart of ours."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from rescoin.services.monitor.backend import BackendError
from rescoin.services.monitor.backend_libvirt import LibvirtMonitorBackend

from tests.support import libvirtd as libvirtd_support

pytestmark = [pytest.mark.root, pytest.mark.libvirtd]


def test_reads_fail_while_libvirtd_is_down_and_resume_when_it_is_back(libvirtd):
    backend = LibvirtMonitorBackend("qemu:///system")
    try:
        backend.read()
        pid = int(Path("/run/libvirtd.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(BackendError):
            backend.read()
        libvirtd_support.start(netns=libvirtd.netns)  # back where it was
        deadline = time.monotonic() + 30
        while True:
            try:
                backend.read()
                break
            except BackendError:
                assert time.monotonic() < deadline, "the backend never reconnected"
                time.sleep(0.5)
        assert backend.info()["connects"] >= 2
    finally:
        backend.close()
