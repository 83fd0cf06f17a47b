"""Shared fixtures. Tests that need something this machine lacks skip with the
reason printed (-ra); `deploy/install.sh --test` (run by CI) installs it all."""

from __future__ import annotations

import pytest

from tests.support import libvirtd as libvirtd_support
from tests.support.need import missing

LIBVIRTD_NETNS = "rescoin-vmlab"


@pytest.fixture(scope="session")
def libvirtd():
    """A running libvirtd (qemu:///system, test+unix:///default); stopped if we started it.

    One we start runs in network namespace LIBVIRTD_NETNS, so test VMs' taps live there."""
    reason = libvirtd_support.missing_reason()
    if reason:
        missing(reason)
    daemons = libvirtd_support.start(netns=LIBVIRTD_NETNS)
    try:
        yield daemons
    finally:
        libvirtd_support.stop(daemons)
