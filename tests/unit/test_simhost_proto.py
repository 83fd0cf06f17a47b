"""The sim host's request/reply contract: round trips, strict rejection of everything else."""

from __future__ import annotations

import uuid

import msgpack
import numpy as np
import pytest
from rescoin.proto import ProtocolError
from rescoin.proto.arrays import pack_default
from rescoin.proto.simhost import (
    OP_DESCRIBE,
    OP_GET_TUNABLES,
    OP_SET_TUNABLES,
    OP_STATS,
    HostInfo,
    HostStats,
    Tunables,
    WriteResult,
    decode_reply,
    decode_request,
    encode_error,
    encode_request,
    encode_result,
)

VMS = [str(uuid.UUID(int=i + 1)) for i in range(2)]


def info() -> HostInfo:
    return HostInfo(
        host="h1",
        period_s=0.5,
        capacity=np.array([4.0, 8e9, 1e8, 1e8]),
        vms=VMS,
        names=["a", "b"],
        template=np.ones((2, 4)),
        provisioned=np.full((2, 4), 4.0),
        initial_shares=np.full((2, 4), 1024.0),
        initial_ceiling=np.full((2, 4), -1.0),
        traces=["7.csv.gz", "46.csv.gz"],
    )


def stats() -> HostStats:
    return HostStats(
        now_ns=1_700_000_000_000_000_000,
        period=42,
        vms=VMS,
        counters=np.arange(10.0).reshape(2, 5),
        mem_used=np.array([1e9, 2e9]),
        mem_target=np.array([2e9, 4e9]),
        demand=np.ones((2, 4)),
        achieved=np.ones((2, 4)) * 0.5,
        below_template=np.zeros((2, 4)),
    )


@pytest.mark.parametrize(
    "op,result",
    [
        (OP_DESCRIBE, info()),
        (OP_STATS, stats()),
        (OP_GET_TUNABLES, Tunables(VMS, np.ones((2, 4)), np.full((2, 4), -1.0))),
        (OP_SET_TUNABLES, WriteResult(3, [{"vm": VMS[0], "resource": "cpu", "error": "x"}])),
    ],
)
def test_every_result_round_trips(op, result):
    back = decode_reply(op, encode_result(result))
    assert type(back) is type(result)
    for name in result.__slots__:
        a, b = getattr(result, name), getattr(back, name)
        assert np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b, name


def test_a_set_request_round_trips_with_its_writes():
    writes = [
        {"vm": VMS[0], "resource": "cpu", "shares": 2048.0, "ceiling": 1.5},
        {"vm": VMS[1], "resource": "mem", "ceiling": 1e9},
    ]
    assert decode_request(encode_request(OP_SET_TUNABLES, {"writes": writes})) == (
        OP_SET_TUNABLES,
        {"writes": writes},
    )


@pytest.mark.parametrize(
    "message,field",
    [
        ({"v": 2, "op": "stats", "args": {}}, "request.v"),
        ({"v": 1, "op": "reboot", "args": {}}, "request.op"),
        ({"v": 1, "op": "stats", "args": {"x": 1}}, "request.args"),
        ({"v": 1, "op": "stats"}, "request"),
        ({"v": 1, "op": "set_tunables", "args": {"writes": "all"}}, "args.writes"),
        (
            {"v": 1, "op": "set_tunables", "args": {"writes": [{"vm": "x", "resource": "cpu"}]}},
            "args.writes[0].vm",
        ),
        (
            {"v": 1, "op": "set_tunables", "args": {"writes": [{"vm": VMS[0], "resource": "gpu"}]}},
            "args.writes[0].resource",
        ),
        (
            {"v": 1, "op": "set_tunables", "args": {"writes": [{"vm": VMS[0], "resource": "cpu"}]}},
            "args.writes[0]",
        ),
        (
            {
                "v": 1,
                "op": "set_tunables",
                "args": {"writes": [{"vm": VMS[0], "resource": "cpu", "ceiling": float("nan")}]},
            },
            "args.writes[0].ceiling",
        ),
        (
            {
                "v": 1,
                "op": "set_tunables",
                "args": {"writes": [{"vm": VMS[0], "resource": "cpu", "shares": -1}]},
            },
            "args.writes[0].shares",
        ),
    ],
)
def test_bad_requests_are_rejected_naming_the_field(message, field):
    with pytest.raises(ProtocolError) as err:
        decode_request(msgpack.packb(message))
    assert err.value.field == field


@pytest.mark.parametrize("frame", [b"", b"\xc1", msgpack.packb([1, 2]), b"x" * (17 << 20)])
def test_garbage_is_a_protocol_error(frame):
    with pytest.raises(ProtocolError):
        decode_request(frame)


def test_a_server_error_reply_raises_with_its_text():
    with pytest.raises(ProtocolError, match="no such VM"):
        decode_reply(OP_STATS, encode_error("no such VM"))


def test_a_reply_with_wrong_shapes_is_rejected():
    wire = stats().to_wire()
    wire["demand"] = np.ones((3, 4))
    frame = msgpack.packb(
        {"v": 1, "ok": True, "result": wire},
        default=pack_default,
    )
    with pytest.raises(ProtocolError) as err:
        decode_reply(OP_STATS, frame)
    assert err.value.field == "result.demand"
