"""``guest.mem``: a guest agent's memory report (numpy-free, used inside VMs).

Two wire forms of the same body (proto/README.md §4, §5):

* **guest frames**, agent → ingress: the envelope's ``v`` is the *guest format
  version*, versioned apart from the bus so that guests need not be upgraded
  in lockstep with hosts. ``GUEST_FORMAT_PREVIOUS`` (2, what every agent sent
  before formats were separate) has no pressure fields; ``GUEST_FORMAT_VERSION``
  (3) adds them, each optional. ``encode_guest_report`` / ``decode_guest_report``.
* **the bus**, ingress → stages: ``v`` is the protocol version like every bus
  message; the body is the current guest format's (pressure fields optional),
  into which the ingress converts every format it accepts.
  ``encode_guest_mem`` / ``decode_guest_mem`` (and ``codec``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .envelope import (
    KIND_GUEST_MEM,
    Envelope,
    check_int,
    check_str,
    check_uuid,
    pack_frames,
    require_keys,
    unpack_frames,
)
from .errors import ProtocolError, only_protocol_errors

# No guest has a petabyte of RAM: larger numbers are a broken or lying agent.
MAX_GUEST_BYTES = 2**50

GUEST_FORMAT_VERSION = 3  # what this agent speaks by default: meminfo + memory pressure
GUEST_FORMAT_PREVIOUS = 2  # meminfo only (every agent before guest formats were versioned apart)
GUEST_FORMATS = (GUEST_FORMAT_PREVIOUS, GUEST_FORMAT_VERSION)  # what the ingress accepts, side by side

PSI_SOME = ("psi_some_avg10", "psi_some_avg60", "psi_some_total")  # /proc/pressure/memory "some" line
PSI_FULL = ("psi_full_avg10", "psi_full_avg60", "psi_full_total")  # its "full" line
RATES = ("pgmajfault_per_s", "pswpin_per_s")  # /proc/vmstat counters, per second between two reports
PRESSURE_FIELDS = (*PSI_SOME, *PSI_FULL, *RATES)  # optional: absent where the guest's kernel cannot tell


@dataclass(frozen=True, slots=True)
class GuestMem:
    """/proc/meminfo of one VM, in bytes, and its memory pressure where the guest's kernel has it.

    ``used`` = MemTotal - MemAvailable. A pressure field is None when absent
    (no /proc/pressure on that kernel, a first report with no rate yet, or a
    guest speaking the previous format): unknown, never zero.
    """

    vm: str  # the VM's UUID (SMBIOS system UUID = libvirt domain UUID)
    mem_total: int
    mem_available: int
    mem_used: int
    swap_total: int
    swap_free: int
    agent: str  # agent version
    psi_some_avg10: float | None = None  # % of wall time some task stalled on memory, last 10 s
    psi_some_avg60: float | None = None  # ... last 60 s
    psi_some_total: int | None = None  # µs stalled since boot
    psi_full_avg10: float | None = None  # % of wall time every non-idle task stalled on memory, last 10 s
    psi_full_avg60: float | None = None
    psi_full_total: int | None = None  # µs
    pgmajfault_per_s: float | None = None  # major page faults per second
    pswpin_per_s: float | None = None  # pages swapped in per second

    FIELDS = ("vm", "mem_total", "mem_available", "mem_used", "swap_total", "swap_free", "agent")

    @property
    def has_pressure(self) -> bool:
        return any(getattr(self, name) is not None for name in PRESSURE_FIELDS)

    def to_wire(self) -> dict[str, Any]:
        wire = {name: getattr(self, name) for name in self.FIELDS}
        wire.update({name: getattr(self, name) for name in PRESSURE_FIELDS if getattr(self, name) is not None})
        return wire

    def without_pressure(self) -> GuestMem:
        """The same report in the previous guest format (an agent talking to a host that predates pressure)."""
        return GuestMem(*(getattr(self, name) for name in self.FIELDS))

    @classmethod
    def from_wire(cls, body: Mapping[str, Any], pressure: bool = True) -> GuestMem:
        """Validate a body; ``pressure=False`` is the previous guest format, which has no pressure fields."""
        require_keys(body, cls.FIELDS, PRESSURE_FIELDS if pressure else (), "body")
        vm = check_uuid(body["vm"], "body.vm")
        sizes = {k: check_int(body[k], f"body.{k}", 0, MAX_GUEST_BYTES) for k in cls.FIELDS[1:6]}
        if sizes["mem_total"] == 0:
            raise ProtocolError("mem_total is 0", "body.mem_total")
        if sizes["mem_available"] > sizes["mem_total"]:
            raise ProtocolError("mem_available exceeds mem_total", "body.mem_available")
        if sizes["mem_used"] != sizes["mem_total"] - sizes["mem_available"]:
            raise ProtocolError("mem_used is not mem_total - mem_available", "body.mem_used")
        if sizes["swap_free"] > sizes["swap_total"]:
            raise ProtocolError("swap_free exceeds swap_total", "body.swap_free")
        extra: dict[str, Any] = {}
        for line in (PSI_SOME, PSI_FULL):
            present = [name for name in line if name in body]
            if present and len(present) != len(line):
                missing = ", ".join(name for name in line if name not in body)
                raise ProtocolError(f"a PSI line's fields come together: {missing} missing", f"body.{present[0]}")
            if present:
                avg10, avg60, total = line
                extra[avg10] = _check_number(body[avg10], f"body.{avg10}", 100.0)
                extra[avg60] = _check_number(body[avg60], f"body.{avg60}", 100.0)
                extra[total] = check_int(body[total], f"body.{total}")
        for name in RATES:
            if name in body:
                extra[name] = _check_number(body[name], f"body.{name}", math.inf)
        return cls(vm=vm, agent=check_str(body["agent"], "body.agent", 64), **sizes, **extra)


def _check_number(value: object, field: str, hi: float) -> float:
    """A protocol float: a finite msgpack float or integer (never a bool) in [0, hi]."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= hi
    ):
        raise ProtocolError(f"must be a finite number in [0, {hi}], got {value!r:.40}", field)
    return float(value)


def encode_guest_mem(env: Envelope) -> list[bytes]:
    """A ``guest.mem`` as it travels on the bus (``v`` = the protocol version)."""
    if env.kind != KIND_GUEST_MEM or not isinstance(env.body, GuestMem):
        raise ProtocolError("encode_guest_mem takes a guest.mem envelope", "kind")
    return pack_frames(env, env.body.to_wire())


def decode_guest_mem(frames: Sequence[bytes]) -> Envelope:
    """Decode and validate a bus ``guest.mem`` message; anything else is a ProtocolError (and only that)."""
    with only_protocol_errors():
        kind, key, payload = unpack_frames(frames)
        if kind != KIND_GUEST_MEM:
            raise ProtocolError(f"expected guest.mem, got {kind!r}", "kind")
        return envelope_from_payload(payload, GuestMem.from_wire(payload["body"]), key)


def encode_guest_report(env: Envelope) -> list[bytes]:
    """An agent's report to the ingress: ``env.v`` is a guest format version (``GUEST_FORMATS``).

    Validated by decoding it again, so an agent never sends what the ingress
    would reject (pressure fields in the previous format, say)."""
    if env.kind != KIND_GUEST_MEM or not isinstance(env.body, GuestMem):
        raise ProtocolError("encode_guest_report takes a guest.mem envelope", "kind")
    frames = pack_frames(env, env.body.to_wire())
    decode_guest_report(frames)
    return frames


def decode_guest_report(frames: Sequence[bytes]) -> Envelope:
    """A frame from a guest agent in any guest format the ingress accepts; ProtocolError (only) otherwise.

    The envelope keeps the guest's ``v`` (its guest format version); the body
    is already in the bus's form: a previous-format report has no pressure."""
    with only_protocol_errors():
        kind, key, payload = unpack_frames(frames, versions=GUEST_FORMATS, what="guest format version")
        if kind != KIND_GUEST_MEM:
            raise ProtocolError(f"expected guest.mem, got {kind!r}", "kind")
        body = GuestMem.from_wire(payload["body"], pressure=payload["v"] != GUEST_FORMAT_PREVIOUS)
        return envelope_from_payload(payload, body, key)


def envelope_from_payload(payload: Mapping[str, Any], body: Any, topic_key: str) -> Envelope:
    env = Envelope(
        kind=payload["kind"],
        host=payload["host"],
        src=payload["src"],
        epoch=payload["epoch"],
        seq=payload["seq"],
        ts=payload["ts"],
        period=payload["period"],
        body=body,
        v=payload["v"],
    )
    if env.topic_key != topic_key:
        raise ProtocolError(f"topic key {topic_key!r} does not match the body", "topic")
    return env
