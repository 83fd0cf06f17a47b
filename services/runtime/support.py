"""Small pieces every process needs: logging, signals, counters, atomic files, CURVE keys."""

from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

log = logging.getLogger("rescoin.runtime")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    """One format, to stderr (supervisord writes it to the service's log file)."""
    logging.basicConfig(level=getattr(logging, level), format=LOG_FORMAT, stream=sys.stderr, force=True)


# glibc's mallopt parameters. At 10k VMs each (n, 4) numpy temporary is 320 KiB: by default
# glibc hands such blocks back to the kernel when freed and faults fresh pages in for the next,
# which more than doubled the scheduler's period step (docs/BENCHMARKS.md).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BLOCKS_UP_TO = 32 << 20  # glibc's largest mmap threshold on 64-bit
KEEP_FREE_UP_TO = 128 << 20  # free memory at the heap's top beyond this goes back to the kernel


def keep_freed_memory() -> bool:
    """Have malloc reuse freed blocks of up to 32 MiB instead of returning them to the kernel (a
    process keeps at most its peak plus 128 MiB). False where the C library has no ``mallopt``."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BLOCKS_UP_TO)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE_UP_TO))


class StopFlag:
    """SIGTERM/SIGINT only set a flag; the loop finishes its period and exits 0."""

    def __init__(self) -> None:
        self.stopping = False
        self.signal_name = ""

    def install(self) -> StopFlag:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        self.stopping = True
        self.signal_name = signal.Signals(signum).name


BASE_COUNTERS = ("received", "sent", "dropped_stale", "gaps", "rejected")


class Counters:
    """Monotone counters for `hb`, plus a bounded sample of rejected input.

    ``reject()`` is how every service records bad input: counted in total and
    by cause, kept (the last ``keep`` texts) for the operator, and logged up
    to ``max_warnings`` times per period.
    """

    def __init__(self, keep: int = 20, max_warnings: int = 10, declared: Iterable[str] = ()) -> None:
        # present from the first heartbeat: the counters proto/README.md names, and a service's
        # ``declared`` ones (an alert's increase() sees no first event in a series that starts at 1)
        self.values: collections.Counter[str] = collections.Counter(dict.fromkeys((*BASE_COUNTERS, *declared), 0))
        self.recent_errors: collections.deque[str] = collections.deque(maxlen=keep)
        self.max_warnings = max_warnings
        self._warned_this_period = 0
        self._suppressed = 0

    def inc(self, name: str, n: int = 1) -> None:
        self.values[name] += n

    def set_totals(self, totals: Mapping[str, int]) -> None:
        """Counters another part keeps as running totals (a thread, a handler): set, not added."""
        for name, value in totals.items():
            self.values[name] = value

    def reject(
        self, cause: str, detail: str, logger: logging.Logger = log, exc_info: BaseException | None = None
    ) -> None:
        """Bad input: counted as ``rejected`` and ``rejected.<cause>``, kept, logged (rate-limited)."""
        self.fail("rejected", cause, detail, logger, exc_info)

    def fail(
        self,
        counter: str,
        cause: str,
        detail: str,
        logger: logging.Logger = log,
        exc_info: BaseException | None = None,
    ) -> None:
        """Something went wrong: counted as ``<counter>`` and ``<counter>.<cause>``, kept, logged (rate-limited)."""
        self.values[counter] += 1
        self.values[f"{counter}.{cause}"] += 1
        text = f"{time.strftime('%H:%M:%S')} {cause}: {detail}"[:1000]
        self.recent_errors.append(text)
        if self._warned_this_period < self.max_warnings:
            self._warned_this_period += 1
            logger.warning("%s %s: %s", counter, cause, detail, exc_info=exc_info)
        else:
            self._suppressed += 1

    def end_period(self, logger: logging.Logger = log) -> None:
        if self._suppressed:
            logger.warning("%d more rejections this period (counted, not logged)", self._suppressed)
        self._warned_this_period = 0
        self._suppressed = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.values)


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` so that a crash (even kill -9) leaves the old or the new file, never a mix."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def move_aside(path: str | os.PathLike[str]) -> Path | None:
    """Rename a damaged state file to ``<name>.damaged-<unix time>`` (kept for a person to look at, never
    read again); None if even that failed."""
    source = Path(path)
    target = source.with_name(f"{source.name}.damaged-{int(time.time())}")
    try:
        os.replace(source, target)
    except OSError:
        return None
    return target


def load_curve_keypair(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ZeroMQ certificate file written by `rescoin keys`."""
    public, secret = zmq.auth.load_certificate(path)
    if secret is None:
        raise ValueError(f"{path} holds no secret key")
    return public, secret


def load_curve_public(path: str) -> bytes:
    public, _ = zmq.auth.load_certificate(path)
    return public


def secure_client(sock: zmq.Socket, secret_key_file: str, server_public_file: str) -> None:
    """Make ``sock`` a CURVE client of a server whose public key is in ``server_public_file``."""
    public, secret = load_curve_keypair(secret_key_file)
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = load_curve_public(server_public_file)
