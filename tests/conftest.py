"""Shared fixtures. Tests that need something this machine lacks skip with the
reason printed (-ra); `deploy/install.sh --test` (run by CI) installs it all."""

from __future__ import annotations

import pytest

from tests.support import libvirtd as libvirtd_support


@pytest.fixture(scope="session")
def libvirtd():
    """A running libvirtd (qemu:///system, test+unix:///default); stopped if we started it."""
    reason = libvirtd_support.missing_reason()
    if reason:
        pytest.skip(reason)
    daemons = libvirtd_support.start()
    try:
        yield daemons
    finally:
        libvirtd_support.stop(daemons)
