"""rescoin-simhost as a real process: serves its socket, survives bad input, beats, keeps state."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq
from rescoin.proto.codec import decode
from rescoin.services.actuator.backend import Change, Setting
from rescoin.services.actuator.backend_sim import SimActuatorBackend
from rescoin.services.monitor.backend_sim import SimMonitorBackend
from rescoin.services.runtime.simclient import SimhostClient, SimhostError

from tests.support.bus import running_bus, wait_for
from tests.support.net import free_port

PERIOD_S = 0.2


@contextmanager
def simhost(state: Path, bus_overrides: list[str], endpoint: str) -> Iterator[subprocess.Popen]:
    args = [sys.executable, "-m", "rescoin.services.simhost.main", "--host", "h1"]
    args += ["--period", str(PERIOD_S), "--state-dir", str(state)]
    for item in [*bus_overrides, f"simhost.endpoint='{endpoint}'", "simhost.n_vms=3"]:
        args += ["--set", item]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()


@pytest.fixture
def sim(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with (
        running_bus(period_s=PERIOD_S) as bus,
        simhost(tmp_path, bus.overrides(), endpoint) as proc,
    ):
        client = SimhostClient(endpoint, timeout_s=10.0)  # the first reply waits for the traces
        try:
            yield client, proc, bus
        finally:
            client.close()


def test_it_describes_a_contended_host_of_burstable_vms(sim):
    client, _, _ = sim
    info = client.describe()
    assert len(info.vms) == 3 and len(set(info.names)) == 3
    assert np.all(info.template <= info.provisioned)
    assert np.all(info.template.sum(axis=0) <= info.capacity + 1e-6)
    assert np.all(info.capacity <= info.provisioned.sum(axis=0) + 1e-6)  # not oversized
    assert np.all(info.initial_ceiling == -1)


def test_its_counters_grow_between_two_reads(sim):
    client, _, _ = sim
    first = client.stats()
    assert wait_for(lambda: client.stats().now_ns > first.now_ns + 0.1e9, 5)
    second = client.stats()
    assert np.all(second.counters >= first.counters)
    assert second.counters[:, 0].sum() > first.counters[:, 0].sum()  # cpu time advanced
    assert np.all(second.achieved <= second.demand + 1e-9)


def test_a_bad_request_gets_an_error_and_the_server_goes_on(sim):
    client, proc, bus = sim
    client.describe()
    raw = zmq.Context.instance().socket(zmq.REQ)
    raw.linger = 0
    raw.connect(client.endpoint)
    try:
        raw.send(b"\x93garbage")
        assert raw.poll(5000)
        assert b"not valid msgpack" in raw.recv()
    finally:
        raw.close()
    with pytest.raises(SimhostError, match="sets neither shares nor ceiling"):
        client.set_tunables([{"vm": "00000000-0000-0000-0000-000000000009", "resource": "cpu"}])
    assert proc.poll() is None
    assert client.stats().vms


def test_it_beats_on_the_bus_counting_rejections(sim):
    client, _, bus = sim
    client.describe()
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(bus.sub_endpoint)
    sub.subscribe(b"hb/h1/")
    try:
        bad = client.set_tunables([{"vm": "00000000-0000-0000-0000-000000000009", "resource": "cpu", "ceiling": 1.0}])
        assert bad.errors
        beats = []

        def rejected_seen() -> bool:
            while sub.poll(50):
                env = decode(sub.recv_multipart())
                if env.body.service == "simhost":
                    beats.append(env.body)
            return any(b.counters.get("rejected.write", 0) >= 1 for b in beats)

        assert wait_for(rejected_seen, 10)
        assert beats[-1].info["backend"] == "sim"
    finally:
        ctx.destroy(linger=0)


def test_tunables_survive_a_restart(tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    client = SimhostClient(endpoint, timeout_s=10.0)
    try:
        with running_bus(period_s=PERIOD_S) as bus:
            with simhost(tmp_path, bus.overrides(), endpoint) as proc:
                vm = client.describe().vms[1]
                client.set_tunables([{"vm": vm, "resource": "cpu", "ceiling": 0.75}])
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=10) == 0
            saved = json.loads((tmp_path / "simhost.json").read_text())
            assert saved["ceiling"][1][0] == 0.75
            with simhost(tmp_path, bus.overrides(), endpoint):
                client.close()
                assert client.tunables().ceiling[1, 0] == 0.75
    finally:
        client.close()


def test_the_monitor_backend_reads_counters_sizes_and_templates(sim):
    client, _, _ = sim
    info = client.describe()
    backend = SimMonitorBackend(client.endpoint, timeout_s=10.0)
    try:
        first = backend.read()
        assert wait_for(lambda: backend.read().ts_ns > first.ts_ns + 0.1e9, 5)
        second = backend.read()
        assert [d.uuid for d in second.domains] == info.vms
        for before, after, template in zip(first.domains, second.domains, info.template, strict=True):
            assert after.cpu_time_ns >= before.cpu_time_ns
            assert after.template == tuple(template)
            assert after.balloon_used_bytes <= after.mem_max_bytes
        assert backend.capacity().cores == info.capacity[0]
    finally:
        backend.close()


def test_the_actuator_backend_writes_and_reads_back_settings(sim):
    client, _, _ = sim
    backend = SimActuatorBackend(client.endpoint, timeout_s=10.0)
    try:
        vm = next(iter(backend.domains()))
        errors = backend.write(
            [
                Change(vm, 0, Setting(ceiling=1.5, weight=0.5)),
                Change(vm, 1, Setting(ceiling=2.0**30, weight=0.0)),  # memory: no weight
                Change(vm, 3, Setting(ceiling=1e6, weight=0.0)),  # weight 0 = leave as it is
                Change("00000000-0000-0000-0000-000000000009", 2, Setting(ceiling=1e6)),
            ]
        )
        assert [(e.vm[:8], e.resource) for e in errors] == [("00000000", "disk")]
        cpu, mem, _, net = (backend.read(vm, r) for r in range(4))
        assert cpu == Setting(1.5, 0.5) and mem.ceiling == 2.0**30
        assert net == Setting(1e6, 1.0)  # the boot share kept
    finally:
        backend.close()
