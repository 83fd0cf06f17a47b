"""The guest ingress's logic: which guest reports may reach the bus, and how often.

A frame is accepted only if it is a valid ``guest.mem`` message whose VM UUID
(topic and body) is the one the sender's CURVE key was issued for (the ZAP
User-Id), and only as often as ``GuestRateLimit`` allows. Everything else is
dropped with a cause, which the process counts in its `hb`:
``unauthenticated``, ``forbidden_topic``, ``malformed``, ``wrong_vm``,
``rate_limited``, ``guest_format`` (a guest format version this ingress does
not speak). Guests speak a guest format of their own, versioned apart from the
bus (``GUEST_FORMATS``: the previous one, without memory pressure, and the
current one, side by side), so guests and hosts are upgraded independently;
every accepted report is converted to the bus's ``guest.mem`` body (a
previous-format report simply has no pressure fields) and published again
under the ingress's own envelope (this host, src ``ingress``, this host's
period, the bus protocol version): a guest chooses none of what the stages key
their tables on. Socket-free: it takes frames, the authenticated identity and
the time; ``IngressStage`` is the stage ``ServiceLoop`` runs (main.py hands it
the guest socket's messages).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rescoin.proto import KIND_GUEST_MEM, GuestMem, ProtocolError, decode_guest_report, parse_topic

from ..runtime.service import BusSilentStage, Health, Outgoing
from ..runtime.support import Counters

log = logging.getLogger("rescoin.ingress")

# every cause a guest message is dropped for, in hb from the start (deploy/prometheus alerts on them)
CAUSES = ("unauthenticated", "zap_denied", "forbidden_topic", "malformed", "wrong_vm", "rate_limited", "guest_format")
COUNTERS = tuple(f"rejected.{cause}" for cause in CAUSES)


@dataclass(frozen=True)
class Verdict:
    report: GuestMem | None  # the body to publish (the bus's form), None if dropped
    cause: str = ""  # the reject counter's name
    detail: str = ""
    guest_format: int = 0  # the guest format version the report came in (0 if dropped)


def check_guest_frames(frames: Sequence[bytes], authenticated_vm: str | None) -> Verdict:
    """The report in one message received from a guest, or why it is dropped."""
    if not authenticated_vm:
        return Verdict(None, "unauthenticated", "no CURVE identity on the message")
    try:
        kind, _key = parse_topic(frames[0] if frames else b"")
    except ProtocolError as exc:
        return Verdict(None, "malformed", str(exc))
    if kind != KIND_GUEST_MEM:
        return Verdict(None, "forbidden_topic", f"VM {authenticated_vm} tried to publish {kind!r}")
    try:
        env = decode_guest_report(frames)  # any guest format we speak, converted to the bus's body
    except ProtocolError as exc:
        return Verdict(None, "guest_format" if exc.field == "v" else "malformed", f"VM {authenticated_vm}: {exc}")
    if env.body.vm != authenticated_vm:
        return Verdict(None, "wrong_vm", f"VM {authenticated_vm} reported as {env.body.vm}")
    return Verdict(env.body, guest_format=env.v)


class GuestRateLimit:
    """A token bucket per VM: ``per_period`` reports a period on average, bursts of ``burst``.

    An agent reports once a period; a flood from one guest is dropped here
    (counted ``rate_limited``) before it costs the bus or the monitor anything.
    Keyed by the authenticated VM, so the table holds at most one entry per
    guest key.
    """

    def __init__(
        self, per_period: float, burst: float, period_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_period / period_s  # tokens per second
        self.burst = burst
        self.clock = clock
        self.buckets: dict[str, tuple[float, float]] = {}  # vm -> (tokens, when)

    def allow(self, vm: str) -> bool:
        now = self.clock()
        tokens, then = self.buckets.get(vm, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        allowed = tokens >= 1.0
        self.buckets[vm] = (tokens - 1.0 if allowed else tokens, now)
        return allowed


class IngressStage(BusSilentStage):
    """The ingress as a stage: nothing from the bus, guest reports in, ``guest.mem`` out. ``facts()``
    gives the connection guard's and the ZAP handler's numbers for each heartbeat."""

    name = "ingress"

    def __init__(
        self, counters: Counters, limit: GuestRateLimit, facts: Callable[[], tuple[dict[str, int], dict[str, Any]]]
    ) -> None:
        self.counters = counters
        self.limit = limit
        self.facts = facts  # () -> (counter values to report, hb info)

    def on_guest(self, frames: Sequence[bytes], authenticated_vm: str | None, period: int) -> list[Outgoing]:
        """One message from a guest: its report for the bus, or nothing (counted by cause)."""
        self.counters.inc("received")
        verdict = check_guest_frames(frames, authenticated_vm)
        if verdict.report is None:
            self.counters.reject(verdict.cause, verdict.detail, log)
            return []
        if not self.limit.allow(verdict.report.vm):
            self.counters.reject("rate_limited", f"VM {verdict.report.vm}: more reports than allowed", log)
            return []
        self.counters.inc("forwarded")
        self.counters.inc(f"guest_format.{verdict.guest_format}")  # who still runs old agents
        return [Outgoing(KIND_GUEST_MEM, period, verdict.report)]

    def health(self) -> Health:
        values, info = self.facts()
        self.counters.set_totals(values)
        return Health("ok", info)
