"""What the operator tools share: subscribing to several buses, and the record file format.

Record files (``rescoin record``) are append-only and survive a crash
mid-write::

    b"RESCOIN-RECORD 1\\n"                       header, once
    then per message:
      4 bytes   big-endian length L of what follows
      L bytes   msgpack array [recv_ts_ns (int), topic (bin), payload (bin)]

Each record is flushed as it is written; a reader stops at a truncated last
record (the crash) and says how many bytes it ignored. The payload is the
message's bytes exactly as they came off the bus, so a replay is bit-exact.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgpack
import zmq
from rescoin.proto import Envelope, ProtocolError
from rescoin.proto.codec import decode

MAGIC = b"RESCOIN-RECORD 1\n"
LENGTH = struct.Struct(">I")
MAX_RECORD = 64 * 1024 * 1024


class RecordFormatError(ValueError):
    """Not a ResCoin record file."""


def add_bus_arguments(parser, what: str = "subscribe to") -> None:
    parser.add_argument(
        "--bus",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help=f"bus XPUB endpoint to {what} (repeatable; default: the config's bus.sub_endpoint)",
    )
    parser.add_argument("--config", help="TOML config file (for the default bus endpoint)")


def bus_endpoints(args) -> list[str]:
    if args.bus:
        return list(args.bus)
    from ..runtime.config import load_config

    return [load_config(args.config).bus.sub_endpoint]


def curve_keys(args) -> tuple[str, str] | None:
    """(client secret cert, bus public cert) from the config's [bus] curve_* keys, if set."""
    if not args.config:
        return None
    from ..runtime.config import load_config

    bus = load_config(args.config).bus
    return (bus.curve_client_key, bus.curve_server_public) if bus.curve_client_key else None


def subscribe(
    ctx: zmq.Context, endpoints: Sequence[str], prefixes: Sequence[str], curve: tuple[str, str] | None = None
) -> zmq.Socket:
    """One SUB socket connected to every endpoint (ZeroMQ fair-queues them); CURVE if given keys."""
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 100_000
    if curve:
        from ..runtime.support import secure_client

        secure_client(sub, *curve)
    for endpoint in endpoints:
        sub.connect(endpoint)
    for prefix in prefixes or [""]:
        sub.subscribe(prefix.encode())
    return sub


@dataclass
class Received:
    ts_ns: int
    frames: list[bytes]
    env: Envelope | None  # None when the frames do not decode
    error: str = ""


def receive(sub: zmq.Socket, timeout_s: float | None) -> Iterator[Received]:
    """Messages as they come; stops after ``timeout_s`` of silence (None: never)."""
    while True:
        if not sub.poll(None if timeout_s is None else int(timeout_s * 1000)):
            return
        frames = sub.recv_multipart()
        ts = time.time_ns()
        try:
            yield Received(ts, frames, decode(frames))
        except ProtocolError as exc:
            yield Received(ts, frames, None, str(exc))


class RecordWriter:
    def __init__(self, path: Path) -> None:
        new = not path.exists() or path.stat().st_size == 0
        self.handle: BinaryIO = open(path, "ab")  # noqa: SIM115 - kept open while recording
        if new:
            self.handle.write(MAGIC)
            self.handle.flush()

    def write(self, ts_ns: int, frames: Sequence[bytes]) -> None:
        if len(frames) != 2:
            return
        blob = msgpack.packb([ts_ns, bytes(frames[0]), bytes(frames[1])], use_bin_type=True)
        self.handle.write(LENGTH.pack(len(blob)) + blob)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


@dataclass
class Record:
    ts_ns: int
    topic: bytes
    payload: bytes


def read_records(path: Path) -> tuple[list[Record], int]:
    """All complete records, and how many trailing bytes were an unfinished one."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise RecordFormatError(f"{path} is not a ResCoin record file")
    pos, out = len(MAGIC), []
    while pos + LENGTH.size <= len(data):
        (length,) = LENGTH.unpack_from(data, pos)
        end = pos + LENGTH.size + length
        if length > MAX_RECORD or end > len(data):
            break
        try:
            ts, topic, payload = msgpack.unpackb(data[pos + LENGTH.size : end], raw=False)
        except (ValueError, TypeError, msgpack.exceptions.ExtraData) as exc:
            raise RecordFormatError(f"{path}: record at byte {pos} is corrupt: {exc}") from exc
        out.append(Record(int(ts), bytes(topic), bytes(payload)))
        pos = end
    return out, len(data) - pos
