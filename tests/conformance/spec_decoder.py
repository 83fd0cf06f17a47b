"""A second decoder, written from proto/README.md (protocol version 4, guest formats 2 and 3) alone.

It imports nothing from rescoin: only msgpack, numpy and the standard library,
as a third-party subscriber would. ``judge(frames)`` gives a verdict for one
``[topic, payload]`` message on the bus: accepted (with the decoded payload,
arrays as numpy) or rejected (with the reason). ``judge_guest(frames)`` does
the same for a frame a guest agent sends to the ingress (§5 "Guest formats"),
and gives, when accepted, the body the ingress must publish on the bus. Where
it and ``rescoin.proto`` disagree, either the code or the spec is wrong.
Clarity over speed: it is a test oracle.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

VERSION = 4
GUEST_FORMATS = (2, 3)  # §5: the previous and the current guest format, in a guest frame's `v`
KINDS = ("guest.mem", "sample", "estimate", "alloc", "applied", "hb")
UNENFORCED_REASONS = ("backend_down", "unknown_vm", "busy", "read_failed", "write_failed", "no_device", "no_balloon",
                      "unsupported", "foreign_qdisc")  # fmt: skip
ENVELOPE_KEYS = {"v", "kind", "host", "src", "epoch", "seq", "ts", "period", "body"}

# §6 "Limits of one message"
MAX_TOPIC_BYTES = 256
MAX_PAYLOAD_BYTES = 64 * 2**20
MAX_GUEST_PAYLOAD_BYTES = 4096
MAX_VMS = 100_000
MAX_LIST_ITEMS = 400_000
MAX_MAP_ENTRIES = 256
MAX_STR_BYTES = 8192
MAX_EXT_BYTES = 3_200_064
MAX_DIM = 1_000_000
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_GUEST_BYTES = 2**50

# §6 "Decoding budget": per topic kind (payload bytes, list items, map entries, maps and lists,
# arrays, items), and for every kind a payload of s bytes: maps and lists <= 16 + s // 24,
# items <= 1024 + s // 3
BUDGET = {
    "guest.mem": (4096, 16, 16, 6, 4, math.inf),
    "hb": (8 * 2**20, 20, 256, 9, 4, math.inf),
    "sample": (64 * 2**20, 100_000, 16, 9, 12, math.inf),
    "estimate": (16 * 2**20, 100_000, 64, 9, 5, math.inf),
    "alloc": (32 * 2**20, 100_000, 16, 8, 11, math.inf),
    "applied": (64 * 2**20, 400_000, 16, 800_010, 7, 6_600_064),
}

# §2 "Types"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TOPIC = re.compile(r"([^/]+)/([^/]+)/")

# §4 closed lists
MEM_SOURCES = ("guest", "balloon", "none")
ENFORCE = ("shares", "ceilings", "both")
ALLOC_MODES = ("fit", "contended")
POLICIES = ("rescoin", "static", "shares", "maxmin", "credits", "karma")
ESTIMATE_SOURCES = ("estimate", "last_use")
APPLY_MODES = ("normal", "failsafe", "dry-run", "restore")
BACKENDS = ("libvirt", "cgroup", "sim")
ERROR_RESOURCES = ("cpu", "mem", "disk", "net", "all")
STATES = ("ok", "starting", "degraded", "failsafe", "disconnected", "stopping")


class Rejected(Exception):
    """The message breaks the spec; the text says where."""


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str = ""
    payload: dict[str, Any] = field(default_factory=dict)  # when ok: the envelope, arrays as numpy
    bus_body: dict[str, Any] = field(default_factory=dict)  # judge_guest, when ok: what the ingress publishes


def judge(frames: Any) -> Verdict:
    """The spec's verdict on one message on the bus."""
    try:
        return Verdict(True, payload=_message(frames))
    except Rejected as exc:
        return Verdict(False, str(exc))


def judge_guest(frames: Any) -> Verdict:
    """The spec's verdict on one frame a guest sends to the ingress (§5 "Guest formats").

    Not the authentication or the rate limit: whether the frame itself is a
    report the ingress reads, and the `guest.mem` body it then publishes."""
    try:
        env = _message(frames, versions=GUEST_FORMATS)
    except Rejected as exc:
        return Verdict(False, str(exc))
    # §5 conversion: the body unchanged; a format-2 report simply has no pressure fields
    return Verdict(True, payload=env, bus_body=dict(env["body"]))


def _message(frames: Any, versions: tuple[int, ...] = (VERSION,)) -> dict[str, Any]:
    # §2: exactly two frames [topic, payload]
    if not isinstance(frames, list | tuple) or len(frames) != 2:
        raise Rejected("not two frames")
    topic, raw = frames
    if not isinstance(topic, bytes) or not isinstance(raw, bytes):
        raise Rejected("frames are not bytes")
    if len(topic) > MAX_TOPIC_BYTES:
        raise Rejected("topic too long")
    try:
        text = topic.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected("topic not UTF-8") from None
    shape = TOPIC.fullmatch(text)
    if shape is None:
        raise Rejected(f"topic {text!r} is not kind/key/")
    topic_kind, topic_key = shape.groups()
    if topic_kind not in BUDGET:
        raise Rejected(f"topic kind {topic_kind!r}")
    if len(raw) > min(
        BUDGET[topic_kind][0], MAX_GUEST_PAYLOAD_BYTES if topic_kind == "guest.mem" else MAX_PAYLOAD_BYTES
    ):
        raise Rejected("payload too large")
    env = _unpack(raw, topic_kind)
    if not isinstance(env, dict) or set(env) != ENVELOPE_KEYS:
        raise Rejected("envelope keys")
    if not _is_int(env["v"]) or env["v"] not in versions:
        raise Rejected("version")
    _closed(env["kind"], "kind", KINDS)
    if env["kind"] != topic_kind:
        raise Rejected("kind is not the topic's")
    _name(env["host"], "host")
    _name(env["src"], "src")
    for key in ("epoch", "seq", "ts", "period"):
        _int(env[key], key, 0, INT_MAX)
    if not isinstance(env["body"], dict):
        raise Rejected("body not a map")
    if versions != (VERSION,) and env["kind"] == "guest.mem":
        _guest_report(env["body"], env["v"])
    elif versions != (VERSION,):
        raise Rejected("a guest sends only guest.mem")
    else:
        BODIES[env["kind"]](env["body"])
    expected_key = env["body"]["vm"] if env["kind"] == "guest.mem" else env["host"]
    if topic_key != expected_key:
        raise Rejected("topic key")
    return env


def _unpack(raw: bytes, kind: str) -> Any:
    _, list_items, map_entries, containers, arrays, items = BUDGET[kind]
    left = {
        "containers": min(containers, 16 + len(raw) // 24),
        "arrays": arrays,
        "items": min(items, 1024 + len(raw) // 3),
    }

    def spend(what: str, n: int = 1) -> None:
        left[what] -= n
        if left[what] < 0:
            raise Rejected(f"decoding budget: too many {what} for a {kind}")

    def on_list(value: list[Any]) -> list[Any]:
        spend("containers")
        spend("items", len(value))
        return value

    def on_map(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
        spend("containers")
        spend("items", 2 * len(pairs))
        return _map(pairs)

    def on_ext(code: int, data: bytes) -> np.ndarray:
        spend("arrays")
        return _array(code, data)

    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=False,  # _map checks the keys itself
            object_pairs_hook=on_map,
            list_hook=on_list,
            ext_hook=on_ext,
            max_str_len=MAX_STR_BYTES,
            max_bin_len=MAX_STR_BYTES,
            max_array_len=min(MAX_LIST_ITEMS, list_items),
            max_map_len=min(MAX_MAP_ENTRIES, map_entries),
            max_ext_len=MAX_EXT_BYTES,
        )
    except Rejected:
        raise
    except Exception as exc:  # malformed msgpack, a limit, trailing bytes, an unhashable key
        raise Rejected(f"msgpack: {type(exc).__name__}") from None


def _map(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise Rejected("map keys must be distinct strings")
    return dict(pairs)


def _array(code: int, data: bytes) -> np.ndarray:
    if code != 1:
        raise Rejected(f"extension type {code}")
    try:  # §2: the str/bin limit of §6 does not apply inside; dtype <= 16 bytes, no map, no extension
        item = msgpack.unpackb(data, raw=False, max_str_len=16, max_map_len=0, max_ext_len=0)
    except Exception:
        raise Rejected("array extension is not one msgpack value within its limits") from None
    if not isinstance(item, list) or len(item) != 3:
        raise Rejected("array extension is not [dtype, shape, raw]")
    dtype, shape, raw = item
    if not isinstance(dtype, str) or dtype != "<f8":
        raise Rejected("array dtype")
    if not isinstance(shape, list) or len(shape) not in (1, 2):
        raise Rejected("array shape")
    if not all(_is_int(d) and 0 <= d <= MAX_DIM for d in shape):
        raise Rejected("array dimension")
    if not isinstance(raw, bytes) or len(raw) != 8 * math.prod(shape):
        raise Rejected("array data")
    return np.frombuffer(raw, dtype="<f8").reshape(shape)


# --- types (§2)


def _is_int(value: Any) -> bool:
    return type(value) is int  # bool is a subclass of int in Python, not on the wire


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if not _is_int(value) or not lo <= value <= hi:
        raise Rejected(f"{where}: not an int in [{lo}, {hi}]")
    return value


def _float(value: Any, where: str, lo: float, hi: float) -> None:
    if not (_is_int(value) or type(value) is float) or not math.isfinite(value) or not lo <= value <= hi:
        raise Rejected(f"{where}: not a number in [{lo}, {hi}]")


def _str(value: Any, where: str, max_chars: int) -> None:
    if not isinstance(value, str) or len(value) > max_chars:
        raise Rejected(f"{where}: not a str of at most {max_chars} chars")


def _name(value: Any, where: str) -> None:
    if not isinstance(value, str) or NAME.fullmatch(value) is None:
        raise Rejected(f"{where}: not a name")


def _uuid(value: Any, where: str) -> None:
    if not isinstance(value, str) or UUID.fullmatch(value) is None:
        raise Rejected(f"{where}: not a uuid")


def _closed(value: Any, where: str, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise Rejected(f"{where}: not one of {allowed}")


def _scalar(value: Any, where: str) -> None:
    if type(value) is float:
        ok = math.isfinite(value)
    elif _is_int(value):
        ok = INT_MIN <= value <= INT_MAX
    else:
        ok = type(value) in (str, bool)
    if not ok:
        raise Rejected(f"{where}: not a scalar")


def _keys(body: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    if set(body) != set(keys):
        raise Rejected(f"{where}: keys {sorted(body)} are not {sorted(keys)}")


def _vms(value: Any) -> int:
    if not isinstance(value, list) or len(value) > MAX_VMS:
        raise Rejected("vms: not a list of at most 100,000")
    for vm in value:
        _uuid(vm, "vms")
    if len(set(value)) != len(value):
        raise Rejected("vms: a VM twice")
    return len(value)


def _matrix(value: Any, where: str, shape: tuple[int, ...], rule: str = ">= 0", top: float = math.inf) -> np.ndarray:
    """rule: '>= 0', 'finite', 'ceiling' or 'unknown' (each exactly -1 or >= 0); top: the largest value."""
    if not isinstance(value, np.ndarray) or value.shape != shape:
        raise Rejected(f"{where}: not an array of shape {shape}")
    if not np.isfinite(value).all():
        raise Rejected(f"{where}: not finite")
    if rule == ">= 0" and (value < 0).any():
        raise Rejected(f"{where}: negative")
    if rule in ("ceiling", "unknown") and ((value < 0) & (value != -1.0)).any():
        raise Rejected(f"{where}: a value neither -1 nor >= 0")
    if (value > top).any():
        raise Rejected(f"{where}: above {top}")
    return value


def _str_list(value: Any, where: str, n: int, max_chars: int = 0, allowed: tuple[str, ...] = ()) -> None:
    if not isinstance(value, list) or len(value) != n:
        raise Rejected(f"{where}: not a list of {n}")
    for item in value:
        if allowed:
            _closed(item, where, allowed)
        else:
            _str(item, where, max_chars)


# --- bodies (§4)


# sample's memory-pressure vectors (§4): shape (n,), each -1 (unknown) or in [0, the largest value]
SAMPLE_PRESSURE = {
    "mem_psi_some": 100.0,
    "mem_psi_full": 100.0,
    "mem_majflt": math.inf,
    "mem_swapin": math.inf,
    "mem_unreclaimable": math.inf,
}


def _sample(body: dict[str, Any]) -> None:
    keys = ("C", "vms", "names", "tc", "au", "mem_src", "period_s", *SAMPLE_PRESSURE, "carried_vms", "carried")
    _keys(body, keys, "sample")
    n = _vms(body["vms"])
    _matrix(body["C"], "C", (4,))
    _str_list(body["names"], "names", n, max_chars=256)
    _matrix(body["tc"], "tc", (n, 4))
    _matrix(body["au"], "au", (n, 4))
    _str_list(body["mem_src"], "mem_src", n, allowed=MEM_SOURCES)
    _float(body["period_s"], "period_s", 0.001, 3600)
    for key, top in SAMPLE_PRESSURE.items():
        _matrix(body[key], key, (n,), "unknown", top)
    m = _vms(body["carried_vms"])
    if not set(body["carried_vms"]) <= set(body["vms"]):
        raise Rejected("carried_vms: a VM not in vms")
    _matrix(body["carried"], "carried", (m, 4), "finite")


def _estimate(body: dict[str, Any]) -> None:
    _keys(body, ("vms", "est", "predictor", "params"), "estimate")
    n = _vms(body["vms"])
    _matrix(body["est"], "est", (n, 4))
    _str_list(body["predictor"], "predictor", 4, max_chars=256)
    params = body["params"]
    if not isinstance(params, dict) or len(params) > 64:
        raise Rejected("params: not a map of at most 64")
    for value in params.values():
        _scalar(value, "params")


def _alloc(body: dict[str, Any]) -> None:
    keys = ("vms", "alloc", "coins", "tc", "au", "C", "shares", "ceil", "enforce", "mode", "policy", "est_src")
    _keys(body, keys, "alloc")
    n = _vms(body["vms"])
    alloc = _matrix(body["alloc"], "alloc", (n, 4))
    capacity = _matrix(body["C"], "C", (4,))
    total = np.zeros(4)
    for row in alloc:  # float64, the rows added in order, as §4 defines the sum
        total = total + row
    if (total > capacity).any():
        raise Rejected("alloc: sum exceeds C")
    _matrix(body["coins"], "coins", (n, 4), "finite")
    _matrix(body["tc"], "tc", (n, 4))
    _matrix(body["au"], "au", (n, 4))
    _matrix(body["shares"], "shares", (n, 4))
    _matrix(body["ceil"], "ceil", (n, 4), "ceiling")
    _closed(body["enforce"], "enforce", ENFORCE)
    _str_list(body["mode"], "mode", 4, allowed=ALLOC_MODES)
    _closed(body["policy"], "policy", POLICIES)
    _closed(body["est_src"], "est_src", ESTIMATE_SOURCES)


def _applied(body: dict[str, Any]) -> None:
    keys = ("vms", "set", "before", "weight", "errors", "latency_s", "mode", "backend", "writes", "enforced",
            "unenforced")  # fmt: skip
    _keys(body, keys, "applied")
    n = _vms(body["vms"])
    _matrix(body["set"], "set", (n, 4), "ceiling")
    _matrix(body["before"], "before", (n, 4), "ceiling")
    _matrix(body["weight"], "weight", (n, 4))
    errors = body["errors"]
    if not isinstance(errors, list) or len(errors) > 400_000:
        raise Rejected("errors: not a list of at most 400,000")
    for err in errors:
        if not isinstance(err, dict):
            raise Rejected("errors: not a map")
        _keys(err, ("vm", "resource", "error"), "errors[]")
        if not (isinstance(err["vm"], str) and err["vm"] == "*"):
            _uuid(err["vm"], "errors[].vm")
        _closed(err["resource"], "errors[].resource", ERROR_RESOURCES)
        _str(err["error"], "errors[].error", 2000)
    _float(body["latency_s"], "latency_s", 0, 3600)
    _closed(body["mode"], "mode", APPLY_MODES)
    _closed(body["backend"], "backend", BACKENDS)
    _int(body["writes"], "writes", 0, INT_MAX)
    enforced = body["enforced"]
    if not isinstance(enforced, list) or len(enforced) != n:
        raise Rejected(f"enforced: not a list of {n}")
    for letters in enforced:
        if not isinstance(letters, str) or len(letters) != 4 or set(letters) - set("wbct-x"):
            raise Rejected("enforced[]: not 4 letters of w b c t - x")
    marked = {
        (vm, r) for vm, letters in zip(body["vms"], enforced, strict=True) for r, c in enumerate(letters) if c == "x"
    }
    unenforced = body["unenforced"]
    if not isinstance(unenforced, list):
        raise Rejected("unenforced: not a list")
    named = []
    for entry in unenforced:
        if not isinstance(entry, dict):
            raise Rejected("unenforced: not a map")
        _keys(entry, ("vm", "resource", "reason", "detail"), "unenforced[]")
        _uuid(entry["vm"], "unenforced[].vm")
        _closed(entry["resource"], "unenforced[].resource", ERROR_RESOURCES[:4])
        _closed(entry["reason"], "unenforced[].reason", UNENFORCED_REASONS)
        _str(entry["detail"], "unenforced[].detail", 2000)
        named.append((entry["vm"], ERROR_RESOURCES.index(entry["resource"])))
    if len(set(named)) != len(named) or set(named) != marked:
        raise Rejected("unenforced: not exactly one entry per 'x' in enforced")


def _hb(body: dict[str, Any]) -> None:
    _keys(body, ("service", "state", "period_s", "counters", "info", "errors"), "hb")
    _name(body["service"], "service")
    _closed(body["state"], "state", STATES)
    _float(body["period_s"], "period_s", 0.001, 3600)
    counters, info, errors = body["counters"], body["info"], body["errors"]
    if not isinstance(counters, dict) or not isinstance(info, dict):
        raise Rejected("counters, info: not maps")
    for value in counters.values():
        _int(value, "counters", 0, INT_MAX)
    for value in info.values():
        _scalar(value, "info")
    if not isinstance(errors, list) or len(errors) > 20:
        raise Rejected("errors: not a list of at most 20")
    for text in errors:
        _str(text, "errors[]", 1000)


GUEST_KEYS = ("vm", "mem_total", "mem_available", "mem_used", "swap_total", "swap_free", "agent")
PSI_LINES = (
    ("psi_some_avg10", "psi_some_avg60", "psi_some_total"),
    ("psi_full_avg10", "psi_full_avg60", "psi_full_total"),
)
GUEST_RATES = ("pgmajfault_per_s", "pswpin_per_s")
OPTIONAL_GUEST_KEYS = (*PSI_LINES[0], *PSI_LINES[1], *GUEST_RATES)


def _guest_report(body: dict[str, Any], guest_format: int) -> None:
    """§5: format 2 is the seven keys alone; format 3 is the bus's guest.mem body."""
    if guest_format == 2:
        _keys(body, GUEST_KEYS, "guest format 2")
    _guest_mem(body)


def _guest_mem(body: dict[str, Any]) -> None:
    optional = [k for k in OPTIONAL_GUEST_KEYS if k in body]
    _keys(body, (*GUEST_KEYS, *optional), "guest.mem")
    for line in PSI_LINES:
        present = [k for k in line if k in body]
        if present and len(present) != 3:
            raise Rejected(f"guest.mem: {line} not all present")
        if present:
            _float(body[line[0]], line[0], 0, 100)
            _float(body[line[1]], line[1], 0, 100)
            _int(body[line[2]], line[2], 0, INT_MAX)
    for key in GUEST_RATES:
        if key in body:
            _float(body[key], key, 0, math.inf)
    _uuid(body["vm"], "vm")
    total = _int(body["mem_total"], "mem_total", 1, MAX_GUEST_BYTES)
    available = _int(body["mem_available"], "mem_available", 0, total)
    if not _is_int(body["mem_used"]) or body["mem_used"] != total - available:
        raise Rejected("mem_used is not mem_total - mem_available")
    swap = _int(body["swap_total"], "swap_total", 0, MAX_GUEST_BYTES)
    _int(body["swap_free"], "swap_free", 0, swap)
    _str(body["agent"], "agent", 64)


BODIES = {
    "guest.mem": _guest_mem,
    "sample": _sample,
    "estimate": _estimate,
    "alloc": _alloc,
    "applied": _applied,
    "hb": _hb,
}
