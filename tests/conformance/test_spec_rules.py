"""The rules proto/README.md settled for issue #29, each checked against the code and the spec decoder:
integer encodings (§2 "Types"), -0.0 against "≥ 0", the str limit inside the array extension (§2
"Arrays"), guest.mem's 4096 bytes on the bus, the decoding budget (§6), and the receiver's stream
rules (§3, §6: the stale-drop key, a new epoch).

Each decoder gets the message in the protocol version it speaks (only `v` differs), so these rules
are checked whatever the version is.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from rescoin.proto import PROTOCOL_VERSION, Envelope, Heartbeat, ProtocolError
from rescoin.proto.codec import decode, encode
from rescoin.proto.guest import GuestMem
from rescoin.proto.messages import Sample
from rescoin.services.runtime.service import InputFilter
from rescoin.services.runtime.support import Counters

from tests.conformance import spec_decoder

VMS = [str(uuid.UUID(int=i + 1)) for i in range(300)]
EPOCH = 1_700_000_000_000_000_000


class Raw:
    """Bytes placed in a payload as they are (a hand-made msgpack encoding)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def pack(value: Any) -> bytes:
    """msgpack, except that a Raw is written as its bytes."""
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, dict):
        return (
            msgpack.packb({}, use_bin_type=True)[:0]
            + _map_header(len(value))
            + b"".join(pack(k) + pack(v) for k, v in value.items())
        )
    if isinstance(value, list):
        return _array_header(len(value)) + b"".join(pack(v) for v in value)
    return msgpack.packb(value, use_bin_type=True)


def _map_header(n: int) -> bytes:
    return bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)


def _array_header(n: int) -> bytes:
    return bytes([0x90 | n]) if n < 16 else b"\xdc" + struct.pack(">H", n)


def payload_of(env: Envelope) -> dict[str, Any]:
    return msgpack.unpackb(encode(env)[1], raw=False, ext_hook=msgpack.ExtType)


def sample(n: int = 3) -> Envelope:
    body = Sample(np.ones(4) * 1e9, VMS[:n], [f"vm{i}" for i in range(n)], np.ones((n, 4)), np.ones((n, 4)),
                  ["guest"] * n, 1.0)  # fmt: skip
    return Envelope("sample", "h1", "monitor", EPOCH, 1, EPOCH, 5, body)


def heartbeat() -> Envelope:
    return Envelope("hb", "h1", "monitor", EPOCH, 1, EPOCH, 5, Heartbeat("monitor", "ok", 1.0, {"received": 1}, {}, []))


def guest_mem(**extra: Any) -> Envelope:
    body = GuestMem(VMS[0], 2**30, 2**29, 2**29, 0, 0, "0.2.0", **extra)
    return Envelope("guest.mem", "h1", "ingress", EPOCH, 1, EPOCH, 5, body)


def verdicts(env: Envelope, mutate: Callable[[dict[str, Any]], Any] = lambda p: None) -> tuple[bool, bool]:
    """(spec decoder, code) on the message with mutate applied, each in its own protocol version."""
    results = []
    for version, judge in ((spec_decoder.VERSION, _spec), (PROTOCOL_VERSION, _code)):
        p = payload_of(env)
        p["v"] = version
        mutate(p)
        results.append(judge([encode(env)[0], pack(p)]))
    return results[0], results[1]


def _spec(frames: list[bytes]) -> bool:
    return spec_decoder.judge(frames).ok


def _code(frames: list[bytes]) -> bool:
    try:
        decode(frames)
    except ProtocolError:
        return False
    return True


def agree(expected: bool, env: Envelope, mutate: Callable[[dict[str, Any]], Any] = lambda p: None) -> None:
    assert verdicts(env, mutate) == (expected, expected)


def ext_array(values: Any, dtype: Any = "<f8") -> msgpack.ExtType:
    a = np.asarray(values, dtype="<f8")
    return msgpack.ExtType(1, msgpack.packb([dtype, list(a.shape), a.tobytes()], use_bin_type=True))


# --- §2 "Types": an int is its value, whatever its encoding


@pytest.mark.parametrize(
    ("encoded", "ok"),
    [
        (b"\xcf" + struct.pack(">Q", 5), True),  # 5 as a uint 64
        (b"\xd3" + struct.pack(">q", 5), True),  # 5 as an int 64
        (b"\xcf" + struct.pack(">Q", 2**63 - 1), True),
        (b"\xcf" + struct.pack(">Q", 2**63), False),  # above int 64
        (b"\xd3" + struct.pack(">q", -1), False),  # seq is >= 0
        (b"\xff", False),  # -1 as a negative fixint
    ],
)
def test_an_int_is_read_by_value_in_any_encoding(encoded, ok):
    agree(ok, heartbeat(), lambda p: p.update(seq=Raw(encoded)))


def test_a_float_may_be_any_uint64_but_a_scalar_int_must_fit_int64():
    big = Raw(b"\xcf" + struct.pack(">Q", 2**64 - 1))
    agree(True, guest_mem(pgmajfault_per_s=1.0), lambda p: p["body"].update(pgmajfault_per_s=big))
    agree(False, heartbeat(), lambda p: p["body"]["info"].update(x=big))
    agree(True, heartbeat(), lambda p: p["body"]["info"].update(x=Raw(b"\xd3" + struct.pack(">q", -(2**63)))))


# --- -0.0 equals 0


def test_minus_zero_satisfies_at_least_zero():
    agree(True, guest_mem(psi_some_avg10=1.0, psi_some_avg60=1.0, psi_some_total=1),
          lambda p: p["body"].update(psi_some_avg10=-0.0))  # fmt: skip
    agree(True, sample(), lambda p: p["body"].update(au=ext_array(np.full((3, 4), -0.0))))
    agree(True, sample(), lambda p: p["body"].update(mem_psi_some=ext_array(np.full(3, -0.0))))
    agree(False, sample(), lambda p: p["body"].update(au=ext_array(np.full((3, 4), -1e-300))))


# --- §2 "Arrays": the 8192-byte limit does not apply inside the extension


def test_the_str_and_bin_limit_does_not_apply_inside_the_array_extension():
    n = 300  # tc is 300 x 4 x 8 = 9600 bytes of raw
    assert n * 32 > 8192
    agree(True, sample(n))
    agree(False, sample(), lambda p: p["body"].update(C=ext_array(np.ones(4), dtype="<f8" + " " * 14)))


# --- §6: guest.mem is at most 4096 bytes on the bus too, and no legal one comes near


def test_the_largest_legal_guest_mem_fits_4096_bytes_and_a_larger_payload_is_refused():
    env = guest_mem(
        psi_some_avg10=99.5, psi_some_avg60=99.5, psi_some_total=2**63 - 1, psi_full_avg10=99.5,
        psi_full_avg60=99.5, psi_full_total=2**63 - 1, pgmajfault_per_s=1e300, pswpin_per_s=1e300,
    )  # fmt: skip
    env = Envelope("guest.mem", "h" * 128, "s" * 128, 2**63 - 1, 2**63 - 1, 2**63 - 1, 2**63 - 1,
                   GuestMem(VMS[0], 2**50, 0, 2**50, 2**50, 2**50, "\U0001f600" * 64, **{
                       k: getattr(env.body, k) for k in ("psi_some_avg10", "psi_some_avg60", "psi_some_total",
                                                          "psi_full_avg10", "psi_full_avg60", "psi_full_total",
                                                          "pgmajfault_per_s", "pswpin_per_s")}))  # fmt: skip

    def fat(p: dict[str, Any]) -> None:  # every header at its longest
        for key, value in list(p.items()):
            if isinstance(value, dict):
                fat(value)
            elif isinstance(value, str):
                data = value.encode()
                p[key] = Raw(b"\xdb" + struct.pack(">I", len(data)) + data)
            elif isinstance(value, int):
                p[key] = Raw(b"\xd3" + struct.pack(">q", value))

    agree(True, env, fat)
    frames = encode(env)
    assert len(frames[1]) <= 1074
    agree(False, env, lambda p: p["body"].update(agent=Raw(b"\xdb" + struct.pack(">I", 3100) + b"a" * 3100)))


# --- §6 "Decoding budget"


def test_a_payload_over_its_kinds_limit_is_refused_unread():
    for kind, limit in (("hb", 8 * 2**20), ("estimate", 16 * 2**20), ("alloc", 32 * 2**20)):
        frames = [f"{kind}/h1/".encode(), b"\x80" + b"\x00" * limit]
        assert not spec_decoder.judge(frames).ok
        with pytest.raises(ProtocolError, match="exceeds"):
            decode(frames)


@pytest.mark.parametrize(
    ("extra", "ok"),
    [
        ([], True),
        ([[]] * 4, False),  # past the 4 spare: a hb holds 5 maps and lists, 9 with the spare
    ],
)
def test_more_maps_and_lists_than_a_kind_holds_are_refused(extra, ok):
    def add(p: dict[str, Any]) -> None:
        p["body"]["info"]["x"] = [[] for _ in extra] if extra else "x"

    agree(ok, heartbeat(), add)


def test_a_misplaced_structure_is_still_refused_by_name_not_by_budget():
    frames = encode(heartbeat())
    p = msgpack.unpackb(frames[1], raw=False)
    p["body"]["state"] = [[], {}]
    with pytest.raises(ProtocolError) as info:
        decode([frames[0], msgpack.packb(p)])
    assert info.value.field == "body.state"


def test_more_arrays_than_a_kind_holds_are_refused():
    agree(False, sample(), lambda p: p["body"]["names"].__setitem__(0, [ext_array([1.0])] * 5))


def test_a_topic_kind_outside_the_closed_list_is_not_read():
    frames = [b"nokind/h1/", encode(heartbeat())[1]]
    assert not spec_decoder.judge(frames).ok
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.field == "topic"


# --- §3, §6: what a receiver does across messages


def envelope(src: str, epoch: int, seq: int, period: int) -> Envelope:
    return Envelope("hb", "h1", src, epoch, seq, EPOCH, period, heartbeat().body)


def test_the_stale_drop_is_keyed_on_kind_topic_key_src_and_host():
    counters = Counters()
    streams = InputFilter(counters)
    assert streams.accept(envelope("monitor", 1, 0, 10))
    assert streams.accept(envelope("scheduler", 1, 0, 9))  # another src on the same topic: not stale
    assert not streams.accept(envelope("monitor", 1, 1, 9))  # the same stream, an older period
    assert counters.values["dropped_stale"] == 1


def test_a_new_epoch_need_not_be_larger_and_counts_no_gap():
    counters = Counters()
    streams = InputFilter(counters)
    assert streams.accept(envelope("monitor", 2_000, 41, 10))
    assert streams.accept(envelope("monitor", 1_000, 0, 11))  # restarted with an earlier clock: taken
    assert streams.accept(envelope("monitor", 1_000, 1, 12))
    assert counters.values["gaps"] == 0
    assert not streams.accept(envelope("monitor", 3_000, 0, 11))  # the period rule holds across epochs
