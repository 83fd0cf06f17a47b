"""One libvirt connection that comes back: shared by the monitor and the actuator.

``LibvirtConnection.get()`` returns a live connection, opening a new one when
there is none or the old one died (libvirtd restarted): the caller gets a
``LibvirtDown`` while libvirtd cannot be reached and a working connection the
first call after it is back, with no restart of the service.

A hung libvirtd (stopped, deadlocked) would block a call forever. Every
connection therefore has libvirt's keepalive on: the client pings every
``keepalive_s`` seconds and, after ``keepalive_count`` unanswered pings,
closes the connection, which fails the blocked call. Keepalive needs
libvirt's event loop running; one daemon thread per process runs it
(``virEventRunDefaultImpl``).
"""

from __future__ import annotations

import logging
import threading

import libvirt

log = logging.getLogger("rescoin.libvirt")
_event_loop_lock = threading.Lock()
_event_loop_started = False


class LibvirtDown(RuntimeError):
    """libvirtd cannot be reached now; the next ``get()`` tries again."""


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; the services log theirs once, their way."""


def _run_event_loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def ensure_event_loop() -> None:
    """libvirt's default event loop in a daemon thread, once per process (keepalive needs it)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()  # before the first connection is opened
        threading.Thread(target=_run_event_loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class LibvirtConnection:
    def __init__(self, uri: str, read_only: bool = False, keepalive_s: int = 5, keepalive_count: int = 3) -> None:
        self.uri = uri
        self.read_only = read_only
        self.keepalive = (keepalive_s, keepalive_count)
        self.conn: libvirt.virConnect | None = None
        self.connects = 0  # successful opens: more than one means it came back after a loss
        self.losses = 0
        self.lock = threading.Lock()
        libvirt.registerErrorHandler(_quiet, None)
        ensure_event_loop()

    def get(self) -> libvirt.virConnect:
        """A live connection, reopened if the last one died; LibvirtDown if libvirtd cannot be reached.
        Thread-safe: two threads never open two connections (the test driver's state is per connection)."""
        with self.lock:
            return self._get()

    def _get(self) -> libvirt.virConnect:
        if self.conn is not None and self.conn.isAlive():
            return self.conn
        if self.conn is not None:  # it died between calls (libvirtd restarted, keepalive gave up)
            self.drop()
            self.losses += 1
            log.warning("lost %s", self.uri)
        try:
            conn = libvirt.openReadOnly(self.uri) if self.read_only else libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise LibvirtDown(f"cannot connect to {self.uri}: {exc}") from exc
        if not self.uri.startswith("test"):  # the test driver runs in-process: nothing to ping
            try:
                conn.setKeepAlive(*self.keepalive)
            except libvirt.libvirtError as exc:
                log.warning("no keepalive on %s (a hung libvirtd would block calls): %s", self.uri, exc)
        self.conn = conn
        self.connects += 1
        log.info("connected to %s%s", self.uri, " (again)" if self.connects > 1 else "")
        return conn

    def failed(self, exc: libvirt.libvirtError) -> bool:
        """After a call raised ``exc``: True (and the connection dropped) if the connection itself is gone,
        False if only that call failed."""
        with self.lock:
            if self.conn is not None and self.conn.isAlive():
                return False
            self.drop()
            self.losses += 1
        log.warning("lost %s: %s", self.uri, exc)
        return True

    def drop(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
        except libvirt.libvirtError:
            pass
        self.conn = None
