"""Operator tools as real processes on a real bus: tap, record/replay, status, exporter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import replace

import numpy as np
import pytest
import zmq
from rescoin.proto import Heartbeat
from rescoin.proto.messages import Sample
from rescoin.services.runtime.service import Publisher
from rescoin.services.tools.buses import MAGIC, read_records

from tests.support.bus import running_bus, wait_for
from tests.support.messages import make_alloc
from tests.support.need import missing
from tests.support.net import free_port

VMS = [str(uuid.UUID(int=i + 1)) for i in range(2)]
SAMPLE = Sample(
    np.array([2.0, 8e9, 1e8, 1e8]), VMS, ["web", "db"], np.ones((2, 4)), np.full((2, 4), 0.5), ["guest", "none"], 0.2
)
ALLOC = replace(
    make_alloc(
        VMS, np.ones((2, 4)), np.ones((2, 4)), np.full((2, 4), 0.5), np.array([2.0, 8e9, 1e8, 1e8]), fit=[True] * 4
    ),
    coins=np.full((2, 4), 0.1),
)


def rescoin(*args, timeout=30):
    return subprocess.run(
        [sys.executable, "-m", "rescoin.services.cli", *args], capture_output=True, text=True, timeout=timeout
    )


class Chatter:
    """Publishes a sample, an alloc and heartbeats of a few services every 0.1 s in a thread."""

    def __init__(self, endpoint: str, host: str = "h1", services=("monitor", "scheduler")) -> None:
        self.ctx = zmq.Context()
        sock = self.ctx.socket(zmq.PUB)
        sock.connect(endpoint)
        self.pubs = {s: Publisher(sock, host, s) for s in services}
        self.running = True
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        period = 1000
        while self.running:
            period += 1
            for service, pub in self.pubs.items():
                pub.send("hb", period, Heartbeat(service, "ok", 1.0, {"received": period}, {}, []))
            self.pubs["monitor"].send("sample", period, SAMPLE)
            if "scheduler" in self.pubs:
                self.pubs["scheduler"].send("alloc", period + 1, ALLOC)
            time.sleep(0.1)

    def stop(self) -> None:
        self.running = False
        self.thread.join()
        self.ctx.destroy(linger=0)


@pytest.fixture
def bus_with_chatter():
    with running_bus(period_s=0.2) as bus:
        chatter = Chatter(bus.pub_endpoint)
        try:
            yield bus
        finally:
            chatter.stop()


def test_tap_prints_json_lines_and_tables(bus_with_chatter):
    bus = bus_with_chatter
    out = rescoin("tap", "sample/h1/", "--bus", bus.sub_endpoint, "--json", "--count", "2")
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == 2 and all(m["kind"] == "sample" and m["body"]["vms"] == VMS for m in lines)
    assert lines[0]["body"]["au"] == [[0.5] * 4] * 2
    table = rescoin("tap", "alloc/", "--bus", bus.sub_endpoint, "--count", "1").stdout
    assert "alloc/h1/" in table and "policy rescoin" in table and "+0.100" in table


def test_record_then_replay_gives_back_the_same_bytes(bus_with_chatter, tmp_path):
    bus = bus_with_chatter
    path = tmp_path / "stream.rec"
    assert rescoin("record", str(path), "sample/", "--bus", bus.sub_endpoint, "--count", "5").returncode == 0
    records, truncated = read_records(path)
    assert len(records) == 5 and truncated == 0 and path.read_bytes().startswith(MAGIC)
    with path.open("ab") as f:  # a crash mid-write leaves half a record
        f.write(b"\x00\x00\x10\x00partial")
    again, truncated = read_records(path)
    assert len(again) == 5 and truncated == 11
    with running_bus() as other:
        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.connect(other.sub_endpoint)
        sub.subscribe(b"")
        time.sleep(0.3)
        rep = rescoin("replay", str(path), "--bus-pub", other.pub_endpoint, "--max")
        assert rep.returncode == 0 and "ignoring 11 bytes" in rep.stderr
        got = []
        wait_for(
            lambda: (
                (got.append(sub.recv_multipart()) if sub.poll(50) else None)
                or len([g for g in got if g[0].startswith(b"sample/")]) >= 5
            ),
            10,
        )
        ctx.destroy(linger=0)
    assert [g for g in got if g[0].startswith(b"sample/")][:5] == [[r.topic, r.payload] for r in records]


def test_status_says_up_for_beating_services_and_fails_for_missing_ones(bus_with_chatter):
    bus = bus_with_chatter
    ok = rescoin("status", "--bus", bus.sub_endpoint, "--expect", "monitor", "--expect", "scheduler", "--wait", "1")
    assert ok.returncode == 0, ok.stdout
    assert "h1" in ok.stdout and "monitor" in ok.stdout and "up" in ok.stdout
    missing = rescoin("status", "--bus", bus.sub_endpoint, "--expect", "monitor", "--expect", "actuator", "--wait", "1")
    assert missing.returncode == 1 and "DOWN (no heartbeat)" in missing.stdout


def test_exporter_serves_metrics_that_promtool_accepts(bus_with_chatter, tmp_path):
    bus = bus_with_chatter
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "rescoin.services.exporter.main",
        "--host",
        "h1",
        "--period",
        "0.2",
        "--port",
        str(port),
    ]
    for item in bus.overrides():
        args += ["--set", item]
    log = tmp_path / "exporter.log"
    proc = subprocess.Popen(args, stderr=log.open("w"))
    try:
        scraped = {}

        def scrape() -> bool:
            try:
                scraped["text"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                return False
            return "rescoin_vm_allocation_cpu_cores" in scraped["text"] and "rescoin_service_up" in scraped["text"]

        assert wait_for(scrape, 45), log.read_text()[-2000:] + scraped.get("text", "")[-1000:]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    text = scraped["text"]
    assert f'rescoin_vm_usage_cpu_cores{{host="h1",name="web",vm="{VMS[0]}"}} 0.5' in text
    assert 'rescoin_host_capacity_memory_bytes{host="h1"} 8e+09' in text
    assert 'rescoin_service_up{host="h1",service="monitor"} 1.0' in text
    if shutil.which("promtool") is None:
        missing("promtool (Debian package prometheus) is not installed: deploy/install.sh --test installs it")
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
