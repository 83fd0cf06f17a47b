"""The demo shows what ResCoin is for: within a minute of starting, its own scenario (deploy/demo.toml:
8 VMs, 1 s periods) puts a contended resource on the bus, and coins and shares differ between VMs."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import start_pipeline, stop_pipeline
from tests.support.bus import wait_for

pytestmark = pytest.mark.e2e


def test_the_demo_is_contended_within_a_minute(tmp_path):
    pipeline = start_pipeline(tmp_path, as_demo=True)
    try:
        started = time.monotonic()

        def contended():
            allocs = pipeline.watcher.since(0, "alloc")
            return any("contended" in a.body.mode for a in allocs)

        assert wait_for(contended, 60, 0.5), pipeline.logs()
        took = time.monotonic() - started
        alloc = next(a.body for a in pipeline.watcher.since(0, "alloc") if "contended" in a.body.mode)
        resource = alloc.mode.index("contended")
        print(f"first contended alloc {took:.0f} s after start: {alloc.mode}")
        assert alloc.coins[:, resource].max() > alloc.coins[:, resource].min()  # coins differ between VMs
        shares = alloc.shares[:, resource] / alloc.template[:, resource]
        assert shares.max() > shares.min() * 1.01  # and so do the shares against the templates
    finally:
        stop_pipeline(pipeline)
