"""The sim host's request/reply contract (``rescoin-simhost``).

The trace-driven sim host is not on the bus: the monitor and the actuator
reach it through their ``sim`` backends, from their own processes, over a
ZeroMQ REQ/REP socket (``simhost.endpoint``, loopback or ipc by default).
Each request is ONE frame, a msgpack map; each reply is ONE frame, a map.
Arrays use the bus's array codec (msgpack extension 1, ``"<f8"``, see
proto/README.md §2); resource columns are always cpu, mem, disk, net.

Request: ``{"v": 1, "op": <op>, "args": {...}}``.
Reply: ``{"v": 1, "ok": true, "result": {...}}`` or
``{"v": 1, "ok": false, "error": <text>}`` (the request was bad or failed;
the server goes on).

Ops (args -> result; the result types are the dataclasses below):

* ``describe`` ({} -> HostInfo): the host name, ``period_s``, ``capacity``
  (4,), ``vms`` [uuid], ``names``, ``template`` (n,4) (the guarantee each VM
  was sold), ``provisioned`` (n,4) (its size in vcpus, bytes, bytes/s,
  bytes/s; demand never exceeds it), ``initial_shares``/``initial_ceiling``
  (n,4) (the tunables the VMs booted with: what a restore puts back) and
  ``traces`` (the trace file each VM replays).
* ``stats`` ({} -> HostStats): ``now_ns`` (the sim host's clock), ``period``,
  ``vms``, ``counters`` (n,5) cumulative since the sim host started: cpu time ns, disk read
  bytes, disk write bytes, net rx bytes, net tx bytes (linear in time within
  a period, so two reads at any moments give the exact rate between them);
  ``mem_used`` (n,) bytes in use now; ``mem_target`` (n,) balloon target
  bytes; ``demand`` and ``achieved`` (n,4) this period; ``below_template``
  (n,4) how many periods a ceiling was set below the template (a broken
  guarantee).
* ``get_tunables`` ({} -> Tunables): ``vms``, ``shares`` (n,4), ``ceiling`` (n,4).
* ``set_tunables`` (``writes``: [``{"vm", "resource", "shares"?, "ceiling"?}``]
  -> WriteResult): ``writes`` (how many changed something) and ``errors``
  [``{"vm", "resource", "error"}``].

Tunables, per VM and resource (units: cores, bytes, bytes/s, bytes/s):
``shares`` is the weight the sim host divides contended capacity by (cpu:
``cpu_shares``; disk: io weight; net: htb ``rate``; mem: unused, 0);
``ceiling`` is the cap (cpu: quota in cores; mem: balloon target bytes,
never above the provisioned size; disk: throttle; net: htb ``ceil``), and
``-1`` means no cap (mem: the provisioned size). A write names one VM and
one resource and sets ``shares``, ``ceiling`` or both; a bad write is
reported in ``errors`` and does not stop the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import msgpack
import numpy as np

from .arrays import check_matrix, ext_hook, pack_default
from .envelope import (
    NO_LIMIT,
    RESOURCES,
    check_int,
    check_map,
    check_str,
    check_uuid,
    require_keys,
)
from .errors import ProtocolError
from .messages import _check_float, _check_str_list, _check_vms  # one set of checks

OP_DESCRIBE = "describe"
OP_STATS = "stats"
OP_GET_TUNABLES = "get_tunables"
OP_SET_TUNABLES = "set_tunables"
OPS = (OP_DESCRIBE, OP_STATS, OP_GET_TUNABLES, OP_SET_TUNABLES)

COUNTERS = ("cpu_time_ns", "disk_rd_bytes", "disk_wr_bytes", "net_rx_bytes", "net_tx_bytes")
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_WRITES = 100_000

SIMHOST_VERSION = 1  # the sim host RPC evolves on its own, not with the bus protocol


def _pack(message: Mapping[str, Any]) -> bytes:
    return msgpack.packb(dict(message), default=pack_default, use_bin_type=True)


def _unpack(frame: bytes, where: str) -> dict[str, Any]:
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise ProtocolError("must be one bytes frame", where)
    if len(frame) > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {len(frame)} bytes exceeds {MAX_FRAME_BYTES}", where)
    try:
        message = msgpack.unpackb(frame, raw=False, strict_map_key=True, ext_hook=ext_hook)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for bad bytes
        raise ProtocolError(f"not valid msgpack ({type(exc).__name__})", where) from exc
    message = dict(check_map(message, where))
    if message.get("v") != SIMHOST_VERSION:
        raise ProtocolError(f"unsupported version {message.get('v')!r:.20}", f"{where}.v")
    return message


def check_write(write: Any, where: str) -> dict[str, Any]:
    """One tunable write: a VM, a resource, and a finite ``shares`` >= 0 and/or ``ceiling``."""
    write = check_map(write, where)
    require_keys(write, ("vm", "resource"), ("shares", "ceiling"), where)
    check_uuid(write["vm"], f"{where}.vm")
    if write["resource"] not in RESOURCES:
        raise ProtocolError(f"resource must be one of {RESOURCES}", f"{where}.resource")
    if "shares" not in write and "ceiling" not in write:
        raise ProtocolError("sets neither shares nor ceiling", where)
    write = dict(write)
    for key, lo in (("shares", 0.0), ("ceiling", NO_LIMIT)):
        if key in write:
            write[key] = _check_float(write[key], f"{where}.{key}", lo)
    return write


def encode_request(op: str, args: Mapping[str, Any] | None = None) -> bytes:
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r:.40}", "op")
    return _pack({"v": SIMHOST_VERSION, "op": op, "args": dict(args or {})})


def decode_request(frame: bytes) -> tuple[str, dict[str, Any]]:
    """One request frame -> (op, args), validated; anything else is a ProtocolError."""
    message = _unpack(frame, "request")
    require_keys(message, ("v", "op", "args"), (), "request")
    op = message["op"]
    if op not in OPS:
        raise ProtocolError(f"unknown op {op!r:.40} (known: {', '.join(OPS)})", "request.op")
    args = dict(check_map(message["args"], "request.args"))
    if op == OP_SET_TUNABLES:
        require_keys(args, ("writes",), (), "request.args")
        writes = args["writes"]
        if not isinstance(writes, list) or len(writes) > MAX_WRITES:
            raise ProtocolError(f"must be a list of at most {MAX_WRITES} writes", "args.writes")
        args["writes"] = [check_write(w, f"args.writes[{i}]") for i, w in enumerate(writes)]
    elif args:
        raise ProtocolError(f"{op} takes no arguments", "request.args")
    return op, args


def encode_reply(result: Mapping[str, Any]) -> bytes:
    return _pack({"v": SIMHOST_VERSION, "ok": True, "result": dict(result)})


def encode_error(text: str) -> bytes:
    return _pack({"v": SIMHOST_VERSION, "ok": False, "error": text[:2000]})


def encode_result(result: Any) -> bytes:
    """A result body (HostInfo, HostStats, Tunables, WriteResult) -> a reply frame."""
    return encode_reply(result.to_wire())


def decode_reply(op: str, frame: bytes) -> Any:
    """The reply to ``op`` -> its validated result body. A server-side error raises too."""
    message = _unpack(frame, "reply")
    if message.get("ok") is True:
        require_keys(message, ("v", "ok", "result"), (), "reply")
        return RESULT_TYPES[op].from_wire(check_map(message["result"], "reply.result"))
    require_keys(message, ("v", "ok", "error"), (), "reply")
    raise ProtocolError(check_str(message["error"], "reply.error", 2000), "simhost")


@dataclass(frozen=True, slots=True)
class HostInfo:
    """``describe``: the simulated host and its VMs (fixed while the sim host runs)."""

    host: str
    period_s: float
    capacity: np.ndarray  # (4,): C, cores, bytes, bytes/s, bytes/s
    vms: list[str]
    names: list[str]
    template: np.ndarray  # (n, 4): the guarantee each VM was sold
    provisioned: np.ndarray  # (n, 4): its size; demand never exceeds it
    initial_shares: np.ndarray  # (n, 4): tunables at boot, what a restore must put back
    initial_ceiling: np.ndarray  # (n, 4)
    traces: list[str]  # the trace file each VM replays

    WIRE: ClassVar[tuple[str, ...]] = (
        "host",
        "period_s",
        "capacity",
        "vms",
        "names",
        "template",
        "provisioned",
        "initial_shares",
        "initial_ceiling",
        "traces",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "period_s": float(self.period_s),
            "capacity": self.capacity,
            "vms": list(self.vms),
            "names": list(self.names),
            "template": self.template,
            "provisioned": self.provisioned,
            "initial_shares": self.initial_shares,
            "initial_ceiling": self.initial_ceiling,
            "traces": list(self.traces),
        }

    @classmethod
    def from_wire(cls, result: Mapping[str, Any]) -> HostInfo:
        require_keys(result, cls.WIRE, (), "result")
        vms = _check_vms(result["vms"], "result.vms")
        n = len(vms)
        return cls(
            host=check_str(result["host"], "result.host", 128),
            period_s=_check_float(result["period_s"], "result.period_s", 1e-3, 3600),
            capacity=check_matrix(result["capacity"], "result.capacity", len(RESOURCES), None),
            vms=vms,
            names=_check_str_list(result["names"], "result.names", n),
            template=check_matrix(result["template"], "result.template", n),
            provisioned=check_matrix(result["provisioned"], "result.provisioned", n),
            initial_shares=check_matrix(result["initial_shares"], "result.initial_shares", n),
            initial_ceiling=check_matrix(result["initial_ceiling"], "result.initial_ceiling", n, lo=NO_LIMIT),
            traces=_check_str_list(result["traces"], "result.traces", n),
        )


@dataclass(frozen=True, slots=True)
class HostStats:
    """``stats``: cumulative counters and current use, what a monitor reads each period."""

    now_ns: int
    period: int
    vms: list[str]
    counters: np.ndarray  # (n, 5): COUNTERS, cumulative since the sim host started
    mem_used: np.ndarray  # (n,): bytes in use now
    mem_target: np.ndarray  # (n,): balloon target bytes now
    demand: np.ndarray  # (n, 4): what each VM asks for this period
    achieved: np.ndarray  # (n, 4): what it gets, given the tunables
    below_template: np.ndarray  # (n, 4): periods a ceiling sat below the template

    WIRE: ClassVar[tuple[str, ...]] = (
        "now_ns",
        "period",
        "vms",
        "counters",
        "mem_used",
        "mem_target",
        "demand",
        "achieved",
        "below_template",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "now_ns": int(self.now_ns),
            "period": int(self.period),
            "vms": list(self.vms),
            "counters": self.counters,
            "mem_used": self.mem_used,
            "mem_target": self.mem_target,
            "demand": self.demand,
            "achieved": self.achieved,
            "below_template": self.below_template,
        }

    @classmethod
    def from_wire(cls, result: Mapping[str, Any]) -> HostStats:
        require_keys(result, cls.WIRE, (), "result")
        vms = _check_vms(result["vms"], "result.vms")
        n = len(vms)
        return cls(
            now_ns=check_int(result["now_ns"], "result.now_ns"),
            period=check_int(result["period"], "result.period"),
            vms=vms,
            counters=check_matrix(result["counters"], "result.counters", n, len(COUNTERS)),
            mem_used=check_matrix(result["mem_used"], "result.mem_used", n, None),
            mem_target=check_matrix(result["mem_target"], "result.mem_target", n, None),
            demand=check_matrix(result["demand"], "result.demand", n),
            achieved=check_matrix(result["achieved"], "result.achieved", n),
            below_template=check_matrix(result["below_template"], "result.below_template", n),
        )


@dataclass(frozen=True, slots=True)
class Tunables:
    """``get_tunables``: what is set now, per VM and resource."""

    vms: list[str]
    shares: np.ndarray  # (n, 4)
    ceiling: np.ndarray  # (n, 4); NO_LIMIT = no cap

    def to_wire(self) -> dict[str, Any]:
        return {"vms": list(self.vms), "shares": self.shares, "ceiling": self.ceiling}

    @classmethod
    def from_wire(cls, result: Mapping[str, Any]) -> Tunables:
        require_keys(result, ("vms", "shares", "ceiling"), (), "result")
        vms = _check_vms(result["vms"], "result.vms")
        n = len(vms)
        return cls(
            vms=vms,
            shares=check_matrix(result["shares"], "result.shares", n),
            ceiling=check_matrix(result["ceiling"], "result.ceiling", n, lo=NO_LIMIT),
        )


@dataclass(frozen=True, slots=True)
class WriteResult:
    """``set_tunables``: how many writes changed something, and the ones that failed."""

    writes: int
    errors: list[dict[str, str]]  # {"vm", "resource", "error"}

    def to_wire(self) -> dict[str, Any]:
        return {"writes": int(self.writes), "errors": [dict(e) for e in self.errors]}

    @classmethod
    def from_wire(cls, result: Mapping[str, Any]) -> WriteResult:
        require_keys(result, ("writes", "errors"), (), "result")
        errors = result["errors"]
        if not isinstance(errors, list) or len(errors) > MAX_WRITES:
            raise ProtocolError("must be a list of error maps", "result.errors")
        for i, err in enumerate(errors):
            err = check_map(err, f"result.errors[{i}]")
            require_keys(err, ("vm", "resource", "error"), (), f"result.errors[{i}]")
            for key in ("vm", "resource", "error"):
                check_str(err[key], f"result.errors[{i}].{key}", 2000)
        return cls(check_int(result["writes"], "result.writes"), [dict(e) for e in errors])


RESULT_TYPES: dict[str, Any] = {
    OP_DESCRIBE: HostInfo,
    OP_STATS: HostStats,
    OP_GET_TUNABLES: Tunables,
    OP_SET_TUNABLES: WriteResult,
}
