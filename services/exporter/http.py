"""A bounded HTTP server for /metrics: one thread, a cap on connections, deadlines.

prometheus_client's own server (``start_http_server``) runs a thread per
connection with no timeout and a listen backlog of 5: 10,000 idle connections
made 10,005 threads and starved the control loop (issue #29). This one is a
selector loop in one daemon thread that never blocks on a client:

* at most ``max_connections`` connections are open; a new one past the cap
  closes the connection that has been waiting longest for its request (a
  scrape sends its request at once, so the one that has not is the likelier
  attacker), or, if every open connection is being answered, the new one;
* a client must send its whole request head (at most 8 KiB) within
  ``request_timeout_s`` of connecting, in total, however it trickles it, and
  read its whole response within ``response_timeout_s``; else it is closed;
* every response says ``Connection: close``; the body is rendered once for
  every request that is complete at the same time (and reused for
  ``REUSE_S``), so a burst of scrapes costs one rendering, and each client's
  response is a view of the same bytes (sent with the head by sendmsg).

It serves GET and HEAD of ``/metrics`` (and ``/``), nothing else, on TCP
and optionally on a Unix socket (mode 0660). What it did is counted in
``stats`` (monotone), which the exporter copies into its hb counters.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("rescoin.exporter.http")

MAX_HEAD_BYTES = 8192  # request line and headers
REUSE_S = 0.25  # a body rendered this recently answers the next request too
ACCEPT_BATCH = 64  # connections accepted before the open ones are read again
ACCEPT_PAUSE_S = 0.1  # after EMFILE/ENFILE: stop accepting for this long
WARN_EVERY_S = 60.0  # at most one warning this often about refused or timed-out clients
STATS = ("accepted", "served", "not_found", "bad_request", "timed_out", "evicted_idle", "refused", "render_failed")

# render(accept header) -> (body, content type)
Render = Callable[[str], tuple[bytes, str]]


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    deadline: float  # monotonic: the request head must be in by then (reading), the response out (writing)
    head: bytearray = field(default_factory=bytearray)
    out: list[memoryview] | None = None  # what is left to send: head, body (shared); None while reading
    accepted_at: float = 0.0


class MetricsServer:
    def __init__(
        self,
        render: Render,
        host: str = "127.0.0.1",
        port: int | None = 9810,
        unix_path: str = "",
        max_connections: int = 1024,
        request_timeout_s: float = 2.0,
        response_timeout_s: float = 10.0,
        backlog: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.render = render
        self.max_connections = max_connections
        self.request_timeout_s = request_timeout_s
        self.response_timeout_s = response_timeout_s
        self.clock = clock
        self.stats = dict.fromkeys(STATS, 0)
        self.listeners: list[socket.socket] = []
        # open connections by state, each in deadline order (one timeout per state): the first of
        # ``reading`` is the longest idle, expiry looks only at the fronts
        self.reading: dict[socket.socket, _Conn] = {}
        self.writing: dict[socket.socket, _Conn] = {}
        self.selector = selectors.DefaultSelector()
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._accept_paused_until = 0.0
        self._cached: dict[str, tuple[float, bytes, str]] = {}  # accept header -> (rendered at, body, type)
        self._warned_at = -WARN_EVERY_S
        self._warned_stats = dict(self.stats)
        try:
            if port is not None:  # 0: any free port (tests)
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                tcp = socket.socket(family, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((host, port))
                self.listeners.append(tcp)
            if unix_path:
                self.listeners.append(self._bind_unix(unix_path))
            for sock in self.listeners:
                sock.listen(backlog)
                sock.setblocking(False)
                self.selector.register(sock, selectors.EVENT_READ, None)
        except BaseException:
            self.close()
            raise
        self._wake_r.setblocking(False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)

    @staticmethod
    def _bind_unix(path: str) -> socket.socket:
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # a previous run's; anything else at that path is not ours to remove
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)  # created 0660: no window in which others may connect
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chmod(path, 0o660)
        return sock

    @property
    def address(self) -> tuple[str, int] | None:
        """The TCP address bound (port 0 asked: the one the kernel chose), None without TCP."""
        for sock in self.listeners:
            if sock.family != socket.AF_UNIX:
                return sock.getsockname()[:2]
        return None

    def open_connections(self) -> int:
        return len(self.reading) + len(self.writing)

    def _open(self, sock: socket.socket) -> bool:
        return sock in self.reading or sock in self.writing

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(target=self._run, name="metrics-http", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for conn in [*self.reading.values(), *self.writing.values()]:
            self._drop(conn)
        for sock in self.listeners:
            if sock.family == socket.AF_UNIX:
                path = sock.getsockname()
                try:
                    if path and stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.unlink(path)
                except OSError:
                    pass
            sock.close()
        self.listeners = []
        self.selector.close()
        self._wake_r.close()
        self._wake_w.close()

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            try:
                self._step()
            except Exception:  # never reached so far; the endpoint must outlive any one bug
                log.exception("metrics server loop failed; going on")
                time.sleep(0.1)

    def _step(self) -> None:
        now = self.clock()
        timeout = 1.0
        for table in (self.reading, self.writing):
            if table:
                timeout = min(timeout, max(0.0, next(iter(table.values())).deadline - now))
        if self._accept_paused_until > now:
            timeout = min(timeout, self._accept_paused_until - now)
        ready_to_answer: list[_Conn] = []
        for key, events in self.selector.select(timeout):
            sock = key.fileobj
            if sock is self._wake_r:
                try:
                    self._wake_r.recv(64)
                except OSError:
                    pass
            elif key.data is None:
                self._accept(sock)  # type: ignore[arg-type]
            else:
                conn: _Conn = key.data
                if not self._open(conn.sock):
                    continue  # evicted by an accept earlier in this batch
                if events & selectors.EVENT_READ and conn.out is None and self._read(conn):
                    ready_to_answer.append(conn)
                elif events & selectors.EVENT_WRITE and conn.out is not None:
                    self._write(conn)
        if ready_to_answer:
            self._answer(ready_to_answer)
        self._expire(self.clock())
        self._maybe_warn()

    def _accept(self, listener: socket.socket) -> None:
        if self._accept_paused_until > self.clock():
            return
        for _ in range(ACCEPT_BATCH):  # then the open connections get their turn
            try:
                sock, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._accept_paused_until = self.clock() + ACCEPT_PAUSE_S
                    self._evict_idle()
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                raise
            self.stats["accepted"] += 1
            if self.open_connections() >= self.max_connections and not self._evict_idle():
                self.stats["refused"] += 1  # every open connection is being answered: the new one waits for none
                self._abort(sock)
                continue
            sock.setblocking(False)
            now = self.clock()
            conn = _Conn(sock, now + self.request_timeout_s, accepted_at=now)
            self.reading[sock] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _evict_idle(self) -> bool:
        """Close the connection waiting longest for its request; False if none is waiting for one."""
        if not self.reading:
            return False
        self.stats["evicted_idle"] += 1
        self._drop(next(iter(self.reading.values())), abort=True)
        return True

    def _read(self, conn: _Conn) -> bool:
        """Take what the client sent; True once the request head is complete."""
        try:
            data = conn.sock.recv(MAX_HEAD_BYTES + 1 - len(conn.head))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._drop(conn)
            return False
        if not data:
            self._drop(conn)  # gone before asking
            return False
        conn.head += data
        if b"\r\n\r\n" in conn.head or b"\n\n" in conn.head:
            return True
        if len(conn.head) > MAX_HEAD_BYTES:
            self.stats["bad_request"] += 1
            self._respond(conn, 431, b"request head too large\n")
        return False

    def _answer(self, conns: list[_Conn]) -> None:
        for conn in conns:
            if conn.sock not in self.reading:
                continue  # evicted by an accept in the same batch
            line, _, rest = bytes(conn.head).partition(b"\n")
            parts = line.decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                self.stats["bad_request"] += 1
                self._respond(conn, 400, b"bad request\n")
                continue
            method, target, _version = parts
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                self.stats["bad_request"] += 1
                self._respond(conn, 405, b"only GET and HEAD\n", extra=b"Allow: GET, HEAD\r\n")
                continue
            if path not in ("/metrics", "/"):
                self.stats["not_found"] += 1
                self._respond(conn, 404, b"not found: try /metrics\n")
                continue
            accept = ""
            for header in rest.split(b"\n"):
                name, _, value = header.partition(b":")
                if name.strip().lower() == b"accept":
                    accept = value.strip().decode("latin-1")
            try:
                body, content_type = self._rendered(accept)
            except Exception:
                self.stats["render_failed"] += 1
                log.exception("rendering /metrics failed")
                self._respond(conn, 500, b"rendering the metrics failed\n")
                continue
            self.stats["served"] += 1
            self._respond(conn, 200, body, content_type=content_type, head_only=method == "HEAD")

    def _rendered(self, accept: str) -> tuple[bytes, str]:
        cached = self._cached.get(accept)
        now = self.clock()
        if cached is not None and now - cached[0] <= REUSE_S:
            return cached[1], cached[2]
        body, content_type = self.render(accept)
        self._cached = {accept: (self.clock(), body, content_type)}  # one format at a time: bounded
        return body, content_type

    def _respond(
        self,
        conn: _Conn,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        head_only: bool = False,
        extra: bytes = b"",
    ) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 431: "Request "
                  "Header Fields Too Large", 500: "Internal Server Error"}[status]  # fmt: skip
        head = (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n"
        ).encode("latin-1")
        head += extra + b"\r\n"
        conn.out = [memoryview(head)] if head_only or not body else [memoryview(head), memoryview(body)]
        conn.head = bytearray()
        conn.deadline = self.clock() + self.response_timeout_s
        del self.reading[conn.sock]
        self.writing[conn.sock] = conn
        self.selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn: _Conn) -> None:
        out = conn.out
        assert out is not None
        try:
            sent = conn.sock.sendmsg(out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        while out and sent >= len(out[0]):
            sent -= len(out.pop(0))
        if out:
            out[0] = out[0][sent:]
        else:
            self._drop(conn)

    def _expire(self, now: float) -> None:
        for table in (self.reading, self.writing):
            while table:
                conn = next(iter(table.values()))
                if conn.deadline > now:
                    break
                self.stats["timed_out"] += 1
                self._drop(conn, abort=True)

    def _drop(self, conn: _Conn, abort: bool = False) -> None:
        if (self.reading.pop(conn.sock, None) or self.writing.pop(conn.sock, None)) is None:
            return
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        if abort:
            self._abort(conn.sock)
        else:
            try:
                conn.sock.shutdown(socket.SHUT_WR)  # the response is out: FIN, then close
            except OSError:
                pass
            conn.sock.close()

    @staticmethod
    def _abort(sock: socket.socket) -> None:
        """Close at once with a reset: no FIN_WAIT/TIME_WAIT state kept for a client we gave up on."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        sock.close()

    def _maybe_warn(self) -> None:
        now = self.clock()
        if now - self._warned_at < WARN_EVERY_S:
            return
        delta = {k: self.stats[k] - self._warned_stats[k] for k in ("timed_out", "evicted_idle", "refused")}
        if any(delta.values()):
            log.warning(
                "/metrics clients dropped since the last warning: %d timed out, %d idle closed for new ones past "
                "%d connections, %d refused (counted as http.*)",
                delta["timed_out"],
                delta["evicted_idle"],
                self.max_connections,
                delta["refused"],
            )
            self._warned_at = now
            self._warned_stats = dict(self.stats)
