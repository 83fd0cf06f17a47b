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

A fleet file (``--fleet``, ``[exporter] fleet``; deploy/fleet.toml) names every
host's bus and the CURVE public key of that bus, plus the client key pair this
machine uses::

    client_key = "ops/ops.key_secret"      # relative paths: to the fleet file's folder
    [[host]]
    name = "host-a"
    bus = "tcp://10.0.0.11:7711"           # the bus's XPUB (subscribe) side
    server_key = "keys/host-a.key"         # that bus's public cert; omit for a plain bus (ipc://)

Every endpoint is connected with its own server key: libzmq copies a socket's
CURVE options into each connection when it is made (and remade), so one SUB
socket carries all of them.
"""

from __future__ import annotations

import re
import struct
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import msgpack
import zmq
import zmq.auth
from rescoin.proto import Envelope, ProtocolError
from rescoin.proto.codec import decode

MAGIC = b"RESCOIN-RECORD 1\n"
LENGTH = struct.Struct(">I")
MAX_RECORD = 64 * 1024 * 1024


class RecordFormatError(ValueError):
    """Not a ResCoin record file."""


class FleetError(ValueError):
    """A fleet file that cannot be used (the message names the file and the host)."""


HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")  # a topic key (proto/README.md §2)
MAX_FLEET_HOSTS = 100_000


@dataclass(frozen=True)
class BusTarget:
    """One bus to subscribe to, with the CURVE keys for that bus alone (None: a plain connection)."""

    endpoint: str
    server_public: bytes | None = None  # z85 public key of that bus
    client: tuple[bytes, bytes] | None = None  # (public, secret) z85: this machine's key pair

    def connect(self, sock: zmq.Socket) -> None:
        """Connect ``sock`` to this bus with its keys; the options set stay for later connects, so
        ``connect_all`` connects plain targets first."""
        if self.server_public is None or self.client is None:
            if sock.mechanism != zmq.NULL:
                sock.curve_server = False  # back to the NULL mechanism for the connections made from here on
        else:
            sock.curve_publickey, sock.curve_secretkey = self.client
            sock.curve_serverkey = self.server_public
        sock.connect(self.endpoint)


def connect_all(sock: zmq.Socket, targets: Sequence[BusTarget]) -> None:
    """Connect to every distinct target once, plain ones first."""
    for target in sorted(dict.fromkeys(targets), key=lambda t: t.server_public is not None):
        target.connect(sock)


@dataclass(frozen=True)
class FleetHost:
    name: str
    bus: str
    server_key: str = ""  # the bus's public cert file; "" = plain


@dataclass
class Fleet:
    path: str
    hosts: list[FleetHost]
    client_key: str = ""  # this machine's secret cert file
    client: tuple[bytes, bytes] | None = None
    server_public: dict[str, bytes] = field(default_factory=dict)  # host name -> its bus's public key

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def targets(self, skip: Sequence[str] = ()) -> list[BusTarget]:
        """Each host's bus with its own server key (endpoints in ``skip`` left out: already connected)."""
        out = []
        for host in self.hosts:
            if host.bus in skip:
                continue
            key = self.server_public.get(host.name)
            out.append(BusTarget(host.bus, key, self.client if key is not None else None))
        return list(dict.fromkeys(out))


def _key_file(base: Path, value: object, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise FleetError(f"{where}: a key file path is needed")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def load_fleet(path: str | Path) -> Fleet:
    """Read and check a fleet file; every key file is loaded now, so a bad one fails before any connect."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FleetError(f"{path}: {exc}") from exc
    unknown = sorted(set(data) - {"client_key", "host"})
    if unknown:
        raise FleetError(f"{path}: unknown keys {', '.join(unknown)} (client_key and [[host]] tables only)")
    rows = data.get("host", [])
    if not isinstance(rows, list) or not rows:
        raise FleetError(f"{path}: no [[host]] entries")
    if len(rows) > MAX_FLEET_HOSTS:
        raise FleetError(f"{path}: {len(rows)} hosts, at most {MAX_FLEET_HOSTS}")
    base = path.resolve().parent
    hosts: list[FleetHost] = []
    server_public: dict[str, bytes] = {}
    names: set[str] = set()
    for i, row in enumerate(rows):
        where = f"{path}: host {i + 1}"
        if not isinstance(row, dict):
            raise FleetError(f"{where}: not a table")
        extra = sorted(set(row) - {"name", "bus", "server_key"})
        if extra:
            raise FleetError(f"{where}: unknown keys {', '.join(extra)} (name, bus, server_key)")
        name, bus = row.get("name"), row.get("bus")
        if not isinstance(name, str) or not HOST_NAME.match(name):
            raise FleetError(f"{where}: name {name!r} is not a host name ([A-Za-z0-9][A-Za-z0-9_.:-]*)")
        where = f"{path}: host {name}"
        if name in names:
            raise FleetError(f"{where}: listed twice")
        names.add(name)
        if not isinstance(bus, str) or "://" not in bus:
            raise FleetError(f"{where}: bus {bus!r} is not an endpoint (tcp://address:port, ipc://path)")
        host = FleetHost(name, bus, "")
        if "server_key" in row:
            key_path = _key_file(base, row["server_key"], where)
            try:
                server_public[name] = load_curve_public(key_path)
            except (OSError, ValueError) as exc:
                raise FleetError(f"{where}: server_key {key_path}: {exc}") from exc
            host = FleetHost(name, bus, str(key_path))
        hosts.append(host)
    fleet = Fleet(str(path), hosts, server_public=server_public)
    if "client_key" in data:
        key_path = _key_file(base, data["client_key"], f"{path}: client_key")
        try:
            public, secret = zmq.auth.load_certificate(str(key_path))
        except (OSError, ValueError) as exc:
            raise FleetError(f"{path}: client_key {key_path}: {exc}") from exc
        if secret is None:
            raise FleetError(f"{path}: client_key {key_path} holds no secret key (the .key_secret file)")
        fleet.client_key, fleet.client = str(key_path), (public, secret)
    elif server_public:
        raise FleetError(f"{path}: hosts have a server_key but the file names no client_key")
    return fleet


def load_curve_public(path: Path) -> bytes:
    public, _ = zmq.auth.load_certificate(str(path))
    if not public or len(public) != 40:
        raise ValueError("no CURVE public key in it")
    return public


def add_bus_arguments(parser, what: str = "subscribe to") -> None:
    parser.add_argument(
        "--bus",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help=f"bus XPUB endpoint to {what} (repeatable; default: the config's bus.sub_endpoint)",
    )
    parser.add_argument(
        "--fleet",
        metavar="FILE",
        help=f"fleet file (deploy/fleet.toml): {what} every host's bus in it, each with its own server key",
    )
    parser.add_argument("--config", help="TOML config file (for the default bus endpoint)")


def fleet_from_args(args) -> Fleet | None:
    """The ``--fleet`` file, or None; a bad one ends the program (exit 2) with what is wrong."""
    if not getattr(args, "fleet", None):
        return None
    try:
        return load_fleet(args.fleet)
    except FleetError as exc:
        print(f"rescoin: bad fleet file: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def bus_endpoints(args) -> list[str]:
    if args.bus:
        return list(args.bus)
    from ..runtime.config import load_config
    from ..schema import tools_schema

    return [load_config(args.config, sections=tools_schema()).bus.sub_endpoint]


def bus_targets(args, fleet: Fleet | None = None) -> list[BusTarget]:
    """What a tool subscribes to: the fleet's buses, each with its own key, plus any ``--bus`` (with the
    config's keys); without a fleet, ``--bus`` or the config's bus."""
    targets = fleet.targets() if fleet is not None else []
    if fleet is None or args.bus:
        keys = curve_keys(args)
        client = server = None
        if keys:
            from ..runtime.support import load_curve_keypair, load_curve_public

            client, server = load_curve_keypair(keys[0]), load_curve_public(keys[1])
        targets += [BusTarget(ep, server, client) for ep in bus_endpoints(args)]
    return targets


def open_subscription(ctx: zmq.Context, args, prefixes: Sequence[str], fleet: Fleet | None = None) -> zmq.Socket:
    """One SUB socket on every bus the arguments name (``--fleet``, ``--bus``, ``--config``)."""
    return subscribe(ctx, bus_targets(args, fleet if fleet is not None else fleet_from_args(args)), prefixes)


def curve_keys(args) -> tuple[str, str] | None:
    """(client secret cert, bus public cert) from the config's [bus] curve_* keys, if set."""
    if not args.config:
        return None
    from ..runtime.config import load_config
    from ..schema import tools_schema

    bus = load_config(args.config, sections=tools_schema()).bus
    return (bus.curve_client_key, bus.curve_server_public) if bus.curve_client_key else None


def subscribe(
    ctx: zmq.Context,
    endpoints: Sequence[str | BusTarget],
    prefixes: Sequence[str],
    curve: tuple[str, str] | None = None,
) -> zmq.Socket:
    """One SUB socket connected to every endpoint (ZeroMQ fair-queues them). A ``BusTarget`` brings its
    own keys; plain strings get ``curve`` (client secret cert, bus public cert) if given."""
    sub = ctx.socket(zmq.SUB)
    sub.rcvhwm = 100_000
    targets = [e for e in endpoints if isinstance(e, BusTarget)]
    if any(isinstance(e, str) for e in endpoints):
        client = server = None
        if curve:
            from ..runtime.support import load_curve_keypair, load_curve_public

            client, server = load_curve_keypair(curve[0]), load_curve_public(curve[1])
        targets += [BusTarget(e, server, client) for e in endpoints if isinstance(e, str)]
    connect_all(sub, targets)
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


class CollisionWatch:
    """Two live streams under one host name, told apart by their epochs (set when a publisher starts).

    A restart changes a (host, service)'s epoch once and the old one never comes back; two processes
    publishing as the same host and service alternate, so an epoch heard again after another one is a
    second sender: ``see`` returns True each time that happens. At most ``keep`` epochs per stream.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.recent: dict[tuple[str, str], list[int]] = {}  # (host, service) -> epochs, latest last

    def see(self, host: str, service: str, epoch: int) -> bool:
        recent = self.recent.setdefault((host, service), [])
        if recent and recent[-1] == epoch:
            return False
        collision = epoch in recent
        if collision:
            recent.remove(epoch)
        recent.append(epoch)
        del recent[: -self.keep]
        return collision

    def streams(self, host: str, service: str) -> int:
        return len(self.recent.get((host, service), ()))

    def forget(self, keys: Sequence[tuple[str, str]]) -> None:
        for key in keys:
            self.recent.pop(key, None)
