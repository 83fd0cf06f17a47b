"""The envelope, topics and framing shared by every ResCoin message.

Numpy-free on purpose: the guest agent imports this module inside VMs that
have only pyzmq and msgpack. The batch bodies with arrays live in
`rescoin.proto.messages`, which plugs its array codec in through `ext_hook`.

Wire form (see proto/README.md): a two-frame ZeroMQ message
``[topic, payload]``; topic is ``"<kind>/<key>/"`` in UTF-8 (key = host name,
or the VM UUID for guest reports), payload is one msgpack map.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

from .errors import ProtocolError

PROTOCOL_VERSION = 4  # 3 is skipped: it is guest format 3, and a bus version never equals a guest format


class Resource(IntEnum):
    """The resource axis: the column of every (n, 4) matrix on the wire, in this order (units: ``UNITS``)."""

    CPU = 0
    MEM = 1
    DISK = 2
    NET = 3


CPU, MEM, DISK, NET = Resource
RESOURCES = tuple(r.name.lower() for r in Resource)  # "cpu", "mem", "disk", "net"
UNITS = ("cores", "bytes", "bytes/s", "bytes/s")
RATE_RESOURCES = (CPU, DISK, NET)  # divided among VMs by kernel weights; memory is held by a ceiling alone
NO_LIMIT = -1.0  # a ceiling that is not set: on the wire (`alloc.ceil`, `applied.set`) and in every backend

KIND_GUEST_MEM = "guest.mem"
KIND_SAMPLE = "sample"
KIND_ESTIMATE = "estimate"
KIND_ALLOC = "alloc"
KIND_APPLIED = "applied"
KIND_HB = "hb"
KINDS = (KIND_GUEST_MEM, KIND_SAMPLE, KIND_ESTIMATE, KIND_ALLOC, KIND_APPLIED, KIND_HB)

# Frames larger than this are rejected before msgpack sees them: 10k VMs x 4
# resources x several float64 matrices is ~2 MB, so 64 MiB is generous. The
# runtime's and the bus's sockets refuse larger frames too (ZMQ_MAXMSGSIZE).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024
MAX_TOPIC_BYTES = 256
# A guest report is ~250 bytes: its payload is refused unread above this (ingress socket too).
MAX_GUEST_PAYLOAD_BYTES = 4096

# msgpack length limits, from the documented limits (proto/README.md §6): msgpack
# refuses a longer container or string before it builds a single object of it.
MAX_VMS = 100_000  # VMs in one batch body
MAX_ARRAY_LEN = 4 * MAX_VMS  # the longest list: `applied` errors, one per VM and resource
MAX_MAP_LEN = 256  # the largest map: `hb` counters or info
MAX_STR_BYTES = 8192  # the longest string: an `applied` error text (2000 chars of UTF-8)
MAX_BIN_BYTES = MAX_STR_BYTES  # no field is binary; arrays are extensions
MAX_EXT_BYTES = 8 * 4 * MAX_VMS + 64  # one (MAX_VMS, 4) float64 array and its [dtype, shape] header


@dataclass(frozen=True, slots=True)
class KindLimits:
    """What a decoder reads of one payload of a kind, at most (proto/README.md §6, "Decoding budget").

    Derived from the kind's legal shape, so no legal payload reaches any of
    them; they bound what a hostile one costs. ``payload_bytes`` is checked
    before msgpack reads a byte, ``list_items`` and ``map_entries`` by msgpack
    at each header, ``containers`` (maps and lists, the envelope's two maps
    included) and ``arrays`` (extension 1) by hooks as msgpack builds them,
    together with the budget every kind shares: at most ``16 + size // 24``
    containers and ``1024 + size // 3`` list items, map keys and map values.
    """

    payload_bytes: int
    list_items: int
    map_entries: int
    containers: int
    arrays: int
    items: int = MAX_PAYLOAD_BYTES  # list items, map keys and values: the common budget, unless a kind's is less


# A few more containers and arrays than legal (SPARE), so that a map, list or array where a scalar
# belongs is still decoded and refused by name ("body.agent"), not as "payload".
SPARE = 4

KIND_LIMITS: dict[str, KindLimits] = {
    # two maps (envelope, body: 9 and at most 15 entries), no list, no array
    KIND_GUEST_MEM: KindLimits(MAX_GUEST_PAYLOAD_BYTES, 16, 16, 2 + SPARE, SPARE),
    # + counters, info, errors (20 strs); the largest legal payload is ~6.4 MB
    KIND_HB: KindLimits(8 * 2**20, 20, MAX_MAP_LEN, 5 + SPARE, SPARE),
    # + vms, names, mem_src, carried_vms; C, tc, au, the five pressure vectors, carried; up to 64 MiB
    KIND_SAMPLE: KindLimits(MAX_PAYLOAD_BYTES, MAX_VMS, 16, 6 + SPARE, 9 + SPARE),
    # + vms, predictor, params (64); est; the largest legal payload is ~8.4 MB
    KIND_ESTIMATE: KindLimits(16 * 2**20, MAX_VMS, 64, 5 + SPARE, 1 + SPARE),
    # + vms, mode; alloc, coins, tc, au, C, shares, ceil; the largest legal payload is ~26.5 MB
    KIND_ALLOC: KindLimits(32 * 2**20, MAX_VMS, 16, 4 + SPARE, 7 + SPARE),
    # + vms, errors, enforced, unenforced and a map per error and per unenforced cell; set, before, weight
    # items: vms and enforced (one per VM), errors (7 per entry with its map's), unenforced (9 per entry)
    KIND_APPLIED: KindLimits(
        MAX_PAYLOAD_BYTES,
        MAX_ARRAY_LEN,
        16,
        6 + 2 * MAX_ARRAY_LEN + SPARE,
        3 + SPARE,
        2 * MAX_VMS + 16 * MAX_ARRAY_LEN + 64,
    ),
}


def container_budget(size: int) -> int:
    """Maps and lists a payload of ``size`` bytes may hold, whatever its kind (a legal map in a list
    of maps, the only containers a body repeats, takes at least 26 bytes)."""
    return 16 + size // 24


def item_budget(size: int) -> int:
    """List items, map keys and map values a payload of ``size`` bytes may hold, whatever its kind
    (the densest legal body, `applied` errors, has one per 3.7 bytes)."""
    return 1024 + size // 3


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}")  # always fullmatch: "$" accepts a trailing \n
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# the same shape for a list in one C-speed pass: hex digits -> "x", "-" and "\n" kept, anything else -> "?"
_UUID_SHAPE = bytes(
    ord("x") if chr(b) in "0123456789abcdef" else b if chr(b) in "-\n" else ord("?") for b in range(256)
)
_UUID_LINE = b"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx\n"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # every integer on the wire fits a signed 64-bit one

ENVELOPE_FIELDS = ("v", "kind", "host", "src", "epoch", "seq", "ts", "period", "body")


def check_name(value: object, field: str) -> str:
    """A host name or publisher id: 1-128 chars of [A-Za-z0-9_.:-], no '/'."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ProtocolError(f"must be a name of [A-Za-z0-9_.:-] (1-128 chars), got {value!r:.80}", field)
    return value


def check_uuid(value: object, field: str) -> str:
    """A VM id: a lowercase canonical UUID string (as libvirt prints it)."""
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
        raise ProtocolError(f"must be a lowercase UUID string, got {value!r:.80}", field)
    return value


def check_uuids(values: list[Any], field: str) -> None:
    """``check_uuid`` for a whole list in one pass (a 10k-VM message); the slow path names the bad one."""
    try:
        joined = ("\n".join(values) + "\n").encode("ascii")
        if joined.translate(_UUID_SHAPE) == _UUID_LINE * len(values):  # also: no id hides a newline
            return
    except (TypeError, UnicodeEncodeError):
        pass
    for i, value in enumerate(values):
        check_uuid(value, f"{field}[{i}]")


def is_int(value: object) -> bool:
    """An integer and not a bool (``True`` is an int to Python, not to the protocol)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_scalar(value: object, field: str) -> None:
    """A free-form value (``params``, ``info``): a string, a 64-bit integer, a finite float or a bool."""
    if isinstance(value, float):
        ok = math.isfinite(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        ok = INT64_MIN <= value <= INT64_MAX
    else:
        ok = isinstance(value, str | bool)
    if not ok:
        raise ProtocolError("must be a string, a 64-bit integer, a finite float or a boolean", field)


def check_one_of(value: object, field: str, allowed: Sequence[str]) -> str:
    """A string from a closed list; typed first, so an array or a list is refused, never compared."""
    if not isinstance(value, str) or value not in allowed:
        shown = repr(value)[:40] if isinstance(value, str | int | float | bool | None) else type(value).__name__
        raise ProtocolError(f"must be one of {', '.join(allowed)}, got {shown}", field)
    return value


def check_int(value: object, field: str, lo: int = 0, hi: int = INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ProtocolError(f"must be an integer in [{lo}, {hi}], got {value!r:.80}", field)
    return value


def check_str(value: object, field: str, max_len: int = 1024) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        got = f"{len(value)} chars" if isinstance(value, str) else type(value).__name__
        raise ProtocolError(f"must be a string of at most {max_len} chars, got {got}", field)
    return value


def check_map(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ProtocolError(f"must be a map with string keys, got {type(value).__name__}", field)
    return value


def require_keys(body: Mapping[str, Any], required: Sequence[str], optional: Sequence[str], where: str) -> None:
    """Exactly the documented keys: missing ones are errors, unknown ones too."""
    missing = [k for k in required if k not in body]
    if missing:
        raise ProtocolError(f"missing field(s) {', '.join(missing)}", where)
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise ProtocolError(f"unknown field(s) {', '.join(unknown)[:200]}", where)


def make_topic(kind: str, key: str) -> bytes:
    """``kind/key/``: the trailing slash keeps ``sample/h1/`` from matching ``sample/h10/``."""
    return f"{kind}/{key}/".encode()


def topic_prefix(kind: str = "", key: str = "") -> bytes:
    """A subscription prefix: all kinds, one kind on every host, or one kind on one host."""
    if not kind:
        return b""
    return make_topic(kind, key) if key else f"{kind}/".encode()


def parse_topic(raw: bytes) -> tuple[str, str]:
    if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) > MAX_TOPIC_BYTES:
        raise ProtocolError("topic must be at most 256 bytes", "topic")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("topic is not UTF-8", "topic") from exc
    parts = text.split("/")
    if len(parts) != 3 or parts[2] != "" or not parts[0] or not parts[1]:
        raise ProtocolError(f"topic must look like 'kind/key/', got {text!r:.80}", "topic")
    return parts[0], parts[1]


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message: who sent it, when, for which period, and its body.

    ``body`` is the kind's body object (a dataclass from guest.py or
    messages.py); the codec converts it to and from its wire map.
    """

    kind: str
    host: str
    src: str
    epoch: int  # publisher start time, ns: a new value means it restarted
    seq: int  # counter per publisher and topic, for gap detection
    ts: int  # send time, ns since the epoch
    period: int  # floor(unix_time / period_s) of the period the body is about
    body: Any
    v: int = PROTOCOL_VERSION

    @property
    def topic_key(self) -> str:
        return self.body.vm if self.kind == KIND_GUEST_MEM else self.host

    @property
    def topic(self) -> bytes:
        return make_topic(self.kind, self.topic_key)


def header_map(env: Envelope) -> dict[str, Any]:
    """The envelope's fields other than the body, as on the wire."""
    return {name: getattr(env, name) for name in ENVELOPE_FIELDS if name != "body"}


def pack_frames(env: Envelope, body_map: Mapping[str, Any], default: Callable[[Any], Any] | None = None) -> list[bytes]:
    payload = {**header_map(env), "body": body_map}
    return [env.topic, msgpack.packb(payload, default=default, use_bin_type=True)]


def unpack_frames(
    frames: Sequence[bytes],
    ext_hook: Callable[[int, bytes], Any] | None = None,
    versions: Sequence[int] = (PROTOCOL_VERSION,),
    what: str = "protocol version",
) -> tuple[str, str, dict[str, Any]]:
    """Split and msgpack-decode a frame list; validate the envelope header.

    Returns (kind, topic key, payload map). The body is left for the kind's
    decoder. Every failure is a ProtocolError. ``versions`` are the values of
    ``v`` this side speaks: the protocol version on the bus, the guest format
    versions at the guest ingress (``what`` names which, for the error).
    """
    if not isinstance(frames, Sequence) or isinstance(frames, bytes | str) or len(frames) != 2:
        raise ProtocolError("a message is exactly two frames [topic, payload]", "frames")
    topic_kind, topic_key = parse_topic(frames[0])
    raw = frames[1]
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise ProtocolError("payload frame must be bytes", "payload")
    limits = KIND_LIMITS.get(topic_kind)
    if limits is None:  # nothing of a kind nobody speaks is read
        raise ProtocolError(f"topic kind must be one of {', '.join(KINDS)}, got {topic_kind!r:.40}", "topic")
    size = len(raw)
    if size > limits.payload_bytes:  # msgpack's max_buffer_size: unpackb has none, the frame is already whole
        raise ProtocolError(f"{topic_kind} payload of {size} bytes exceeds {limits.payload_bytes}", "payload")
    budget = _Budget(topic_kind, limits, size, ext_hook or _reject_ext)
    try:
        payload = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            use_list=True,
            ext_hook=budget.on_ext,
            list_hook=budget.on_list,
            object_pairs_hook=budget.on_map,
            max_str_len=MAX_STR_BYTES,
            max_bin_len=MAX_BIN_BYTES,
            max_array_len=limits.list_items,
            max_map_len=limits.map_entries,
            max_ext_len=MAX_EXT_BYTES,
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for bad bytes
        raise ProtocolError(f"payload is not valid msgpack ({type(exc).__name__}: {exc})"[:300], "payload") from exc
    payload = dict(check_map(payload, "payload"))
    require_keys(payload, ENVELOPE_FIELDS, (), "envelope")
    version = payload["v"]
    if not is_int(version) or version not in versions:
        shown = repr(version)[:20] if is_int(version) or isinstance(version, str) else type(version).__name__
        spoken = ", ".join(str(v) for v in versions)
        raise ProtocolError(f"unsupported {what} {shown} (this side speaks {spoken})", "v")
    kind = check_one_of(payload["kind"], "kind", KINDS)
    if kind != topic_kind:
        raise ProtocolError(f"topic kind {topic_kind!r} does not match payload kind {kind!r}", "topic")
    check_name(payload["host"], "host")
    check_name(payload["src"], "src")
    check_int(payload["epoch"], "epoch")
    check_int(payload["seq"], "seq")
    check_int(payload["ts"], "ts")
    check_int(payload["period"], "period")
    if kind != KIND_GUEST_MEM and topic_key != payload["host"]:
        raise ProtocolError(f"topic host {topic_key!r} does not match payload host {payload['host']!r}", "topic")
    check_map(payload["body"], "body")
    return kind, topic_key, payload


class _Budget:
    """msgpack's hooks for one payload: count what it builds and stop at the kind's budget.

    msgpack calls ``list``/``map`` as each container is complete and ``ext``
    for each extension, so a payload is refused after building at most the
    budget's worth of objects, never the millions a small frame can describe
    (an empty list is one byte on the wire, ~60 in memory)."""

    __slots__ = ("kind", "containers", "items", "arrays", "ext_hook")

    def __init__(self, kind: str, limits: KindLimits, size: int, ext_hook: Callable[[int, bytes], Any]) -> None:
        self.kind = kind
        self.containers = min(limits.containers, container_budget(size))
        self.items = min(limits.items, item_budget(size))
        self.arrays = limits.arrays
        self.ext_hook = ext_hook

    def _spend(self, items: int) -> None:
        self.containers -= 1
        self.items -= items
        if self.containers < 0 or self.items < 0:
            raise ProtocolError(
                f"more maps, lists or items than a legal {self.kind} (the topic's kind) of this size holds", "payload"
            )

    def on_list(self, items: list[Any]) -> list[Any]:
        self._spend(len(items))
        return items

    def on_map(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        self._spend(2 * len(pairs))
        return _map_without_repeats(pairs)

    def on_ext(self, code: int, data: bytes) -> Any:
        self.arrays -= 1
        if self.arrays < 0:
            raise ProtocolError(f"more arrays than a legal {self.kind} (the topic's kind) holds", "payload")
        return self.ext_hook(code, data)


def _map_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # msgpack would keep the last of a repeated key; other decoders keep the first or refuse: refuse
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ProtocolError("a map repeats a key", "payload")
    return result


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(f"msgpack extension type {code} is not allowed in this message", "payload")
