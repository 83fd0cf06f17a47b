"""The real rescoin-exporter process under a connection flood (issue #29): scrapes are still answered
promptly, its thread count does not move, every thread runs niced, and what it dropped is in its hb."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rescoin.proto import Envelope

from tests.support.bus import BusListener, decoded, running_bus, wait_for
from tests.support.net import free_port

FLOOD = 500
MAX_CONNECTIONS = 100


def threads(pid: int) -> list[int]:
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def nice_of(pid: int, tid: int) -> int:
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19, counted after "pid (comm)"


def scrape_s(port: int) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert b"rescoin_service_up" in resp.read()
    return time.perf_counter() - t0


def test_a_flood_of_idle_connections_neither_delays_scrapes_nor_adds_threads(tmp_path):
    port = free_port()
    beats: list[Envelope] = []
    with running_bus(period_s=0.2) as bus:
        listener = BusListener(
            bus.sub_endpoint,
            decoded(lambda _f, env: env.src == "exporter" and beats.append(env)),
            prefixes=(b"hb/h1/",),
        ).start()
        args = [sys.executable, "-m", "rescoin.services.exporter.main", "--host", "h1", "--period", "0.2"]
        args += ["--port", str(port), "--set", f"exporter.max_connections={MAX_CONNECTIONS}"]
        args += ["--set", "exporter.request_timeout_s=1.0"]
        for item in bus.overrides():
            args += ["--set", item]
        log = tmp_path / "exporter.log"
        proc = subprocess.Popen(args, stderr=log.open("w"))
        flood: list[socket.socket] = []
        try:
            assert wait_for(lambda: any(b.body.service == "exporter" for b in beats), 30), log.read_text()
            assert wait_for(lambda: _answers(port), 10), log.read_text()
            before = threads(proc.pid)
            for _ in range(FLOOD):
                flood.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            during = [scrape_s(port) for _ in range(5)]
            assert statistics.median(during) < 1.0, during
            assert len(threads(proc.pid)) == len(before) <= 8, (before, threads(proc.pid))
            want = min(os.nice(0) + 10, 19)
            assert {nice_of(proc.pid, t) for t in threads(proc.pid)} == {want}

            def counted() -> dict[str, int]:
                return beats[-1].body.counters

            def dropped() -> int:  # idle ones closed for newer ones past the cap, or after request_timeout_s
                return counted()["http.evicted_idle"] + counted()["http.timed_out"]

            assert wait_for(lambda: dropped() == FLOOD, 10), str(counted())
            assert counted()["http.evicted_idle"] > 0 and counted()["http.refused"] == 0
            assert counted()["http.served"] >= 5 and counted()["series_capped"] == 0
            assert wait_for(lambda: beats[-1].body.info["connections"] == 0, 5)
        finally:
            for sock in flood:
                sock.close()
            proc.terminate()
            proc.wait(timeout=10)
            listener.stop()


def _answers(port: int) -> bool:
    try:
        scrape_s(port)
    except OSError:
        return False
    return True
