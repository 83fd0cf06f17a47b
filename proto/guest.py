"""``guest.mem``: a guest agent's memory report (numpy-free, used inside VMs)."""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class GuestMem:
    """/proc/meminfo of one VM, in bytes. ``used`` = MemTotal - MemAvailable."""

    vm: str  # the VM's UUID (SMBIOS system UUID = libvirt domain UUID)
    mem_total: int
    mem_available: int
    mem_used: int
    swap_total: int
    swap_free: int
    agent: str  # agent version

    FIELDS = ("vm", "mem_total", "mem_available", "mem_used", "swap_total", "swap_free", "agent")

    def to_wire(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> GuestMem:
        require_keys(body, cls.FIELDS, (), "body")
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
        return cls(vm=vm, agent=check_str(body["agent"], "body.agent", 64), **sizes)


def encode_guest_mem(env: Envelope) -> list[bytes]:
    if env.kind != KIND_GUEST_MEM or not isinstance(env.body, GuestMem):
        raise ProtocolError("encode_guest_mem takes a guest.mem envelope", "kind")
    return pack_frames(env, env.body.to_wire())


def decode_guest_mem(frames: Sequence[bytes]) -> Envelope:
    """Decode and validate a ``guest.mem`` message; anything else is a ProtocolError (and only that)."""
    with only_protocol_errors():
        kind, key, payload = unpack_frames(frames)
        if kind != KIND_GUEST_MEM:
            raise ProtocolError(f"expected guest.mem, got {kind!r}", "kind")
        return envelope_from_payload(payload, GuestMem.from_wire(payload["body"]), key)


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
