"""The exporter's bounded HTTP server (services/exporter/http.py) on real loopback and Unix sockets."""

from __future__ import annotations

import http.client
import os
import socket
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from rescoin.services.exporter.http import MAX_HEAD_BYTES, MetricsServer

from tests.support.bus import wait_for

BODY = b"".join(b'rescoin_test_gauge{i="%d"} 1.0\n' % i for i in range(20000))  # ~0.6 MB


def render(accept: str) -> tuple[bytes, str]:
    return BODY, "text/plain; version=0.0.4; charset=utf-8"


@contextmanager
def serving(**kwargs) -> Iterator[MetricsServer]:
    server = MetricsServer(render, port=0, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def url(server: MetricsServer, path: str = "/metrics") -> str:
    host, port = server.address
    return f"http://{host}:{port}{path}"


def scrape_s(server: MetricsServer, timeout: float = 10.0) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url(server), timeout=timeout) as resp:
        assert resp.read() == BODY
    return time.perf_counter() - t0


def idle_connections(server: MetricsServer, n: int, first_bytes: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.create_connection(server.address, timeout=5)
        if first_bytes:
            sock.sendall(first_bytes)
        socks.append(sock)
    return socks


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_a_slowloris_does_not_delay_a_scrape_and_costs_no_thread():
    threads_before = threading.active_count()
    with serving(max_connections=1000, request_timeout_s=5.0) as server:
        idle = idle_connections(server, 400, first_bytes=b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never ends
        try:
            assert wait_for(lambda: server.open_connections() == 400, 5)
            times = [scrape_s(server) for _ in range(5)]
            assert threading.active_count() == threads_before + 1  # the server's one thread
            assert sorted(times)[2] < 0.5, times
            assert server.stats["served"] == 5
        finally:
            for sock in idle:
                sock.close()


def test_past_the_cap_the_longest_idle_connection_makes_room_and_the_scrape_is_answered():
    with serving(max_connections=50, request_timeout_s=30.0) as server:
        idle = idle_connections(server, 300)
        try:
            assert wait_for(lambda: server.stats["accepted"] == 300, 5)
            assert server.open_connections() <= 50
            assert server.stats["evicted_idle"] == 250
            assert closed_by_server(idle[0]) and not closed_by_server(idle[-1])  # oldest first
            assert scrape_s(server) < 2.0
        finally:
            for sock in idle:
                sock.close()


def test_a_client_that_does_not_finish_its_request_in_time_is_closed_however_it_trickles():
    with serving(request_timeout_s=0.5) as server:
        silent, trickler = idle_connections(server, 2)
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 3.0 and not closed:
            try:
                trickler.send(b"G")  # a byte every 50 ms: each read is in time, the whole request never
            except OSError:
                closed = True
            time.sleep(0.05)
            closed = closed or closed_by_server(trickler)
        assert closed and time.monotonic() - t0 < 1.5
        assert closed_by_server(silent)
        assert server.stats["timed_out"] == 2 and server.open_connections() == 0


def test_a_client_that_does_not_read_its_response_is_closed():
    big = BODY * 64  # 40 MB: more than loopback's socket buffers take
    server = MetricsServer(lambda accept: (big, "text/plain"), port=0, response_timeout_s=0.5).start()
    with server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(server.address)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: server.stats["timed_out"] == 1, 5)
        assert server.open_connections() == 0
        sock.close()


def test_only_get_and_head_of_metrics_and_bad_requests_are_answered_and_closed():
    with serving() as server:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url(server, "/nope"), timeout=5)
        assert err.value.code == 404
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url(server), data=b"x", method="POST"), timeout=5)
        assert err.value.code == 405
        host, port = server.address
        conn = http.client.HTTPConnection(host, port, timeout=5)
        conn.request("HEAD", "/metrics?name[]=x")
        resp = conn.getresponse()
        assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(BODY) and resp.read() == b""
        assert resp.headers["Connection"] == "close"
        conn.close()
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(b"X" * (MAX_HEAD_BYTES + 10))
            assert sock.recv(100).startswith(b"HTTP/1.1 431")
        with socket.create_connection(server.address, timeout=5) as sock:
            sock.sendall(b"hello\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 400")
        assert server.stats["bad_request"] == 3 and server.stats["not_found"] == 1


def test_concurrent_scrapes_share_one_rendering():
    renders = []

    def slow_render(accept: str) -> tuple[bytes, str]:
        renders.append(accept)
        time.sleep(0.05)
        return BODY, "text/plain"

    server = MetricsServer(slow_render, port=0, max_connections=400).start()
    try:
        results: list[float] = []
        threads = [threading.Thread(target=lambda: results.append(scrape_s(server, 20))) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 200 and server.stats["served"] == 200
        assert len(renders) < 50, len(renders)
    finally:
        server.stop()


def test_the_unix_socket_is_group_only(tmp_path):
    path = tmp_path / "metrics.sock"
    path.touch()  # a file that is not a socket is not ours to remove
    with pytest.raises(OSError):
        MetricsServer(render, port=None, unix_path=str(path))
    path.unlink()
    server = MetricsServer(render, port=None, unix_path=str(path)).start()
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660 and server.address is None
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(path))
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := sock.recv(1 << 16):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(BODY)
    finally:
        server.stop()
    assert not path.exists()
