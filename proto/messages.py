"""The batch bodies: sample, estimate, alloc, applied (the codec is ``rescoin.proto.codec``).

Every batch body is column-wise for one host and one period: ``vms`` lists
the VM UUIDs and every matrix has one row per VM, columns in RESOURCES order
(cpu cores, mem bytes, disk bytes/s, net bytes/s).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .arrays import check_matrix
from .envelope import (
    KIND_ALLOC,
    KIND_APPLIED,
    KIND_ESTIMATE,
    KIND_SAMPLE,
    NO_LIMIT,
    RESOURCES,
    check_int,
    check_map,
    check_one_of,
    check_scalar,
    check_str,
    check_uuid,
    check_uuids,
    require_keys,
)
from .envelope import MAX_VMS as MAX_VMS  # re-exported: callers import it from here
from .errors import ProtocolError
from .heartbeat import MAX_PERIOD_S, MIN_PERIOD_S

MEM_SOURCES = ("guest", "balloon", "none")
MODES = ("fit", "contended")
ESTIMATE_SOURCES = ("estimate", "last_use")
ENFORCEMENT_MODES = ("shares", "ceilings", "both")
POLICY_NAMES = ("rescoin", "static", "shares", "maxmin", "credits", "karma")
APPLY_MODES = ("normal", "failsafe", "dry-run", "restore")
# `applied.enforced`: per VM one letter per resource (cpu, mem, disk, net) saying what holds it now
ENFORCED_LETTERS = {
    "w": "weight",  # the share as a kernel weight (cpu_shares/cpu.weight, a BFQ weight, an htb rate)
    "b": "weight+ceiling",  # the weight and a ceiling (ceilings/both modes)
    "c": "ceiling",  # a ceiling alone: a balloon/memory.high target, a quota, an interface average
    "t": "throttle",  # a ceiling standing in for a weight this device ignores (the alloc's ceil)
    "-": "open",  # nothing to hold: no ceiling asked and no weight to set (e.g. memory that fits)
    "x": "unenforced",  # nothing holds it: the reason is in `unenforced`
}
UNENFORCED_REASONS = (
    "backend_down",  # the backend could not be reached this period
    "unknown_vm",  # the alloc names a VM the backend does not have
    "busy",  # the domain did not answer in time (a migration's job, a stopped QEMU): skipped this period
    "read_failed",  # what is set could not be read, so nothing is written (no original to restore)
    "write_failed",  # the last write failed; tried again next period
    "no_device",  # no host device to act on: no disk, a user-mode/vhost-user/hostdev NIC
    "no_balloon",  # no balloon device, or a balloon that does not follow its target
    "unsupported",  # this backend or driver has no mechanism for it (no controller, no quota, ...)
    "foreign_qdisc",  # the tap carries a qdisc ResCoin did not create: left alone
)
BACKENDS = ("libvirt", "cgroup", "sim")
ERROR_RESOURCES = (*RESOURCES, "all")
ALL_VMS = "*"  # an `applied` error's vm when it concerns the whole host (the backend is down)
MAX_PARAMS = 64
MAX_NAME_CHARS = 256  # a domain name in `sample`, a predictor's name in `estimate`
MAX_ERROR_CHARS = 2000  # an `applied` error text


def column_sums(matrix: np.ndarray) -> np.ndarray:
    """Σ over the rows of (n, m), as §4 defines it for ``Σ alloc ≤ C``: float64, the rows added in
    order. numpy's axis-0 sum of a C-ordered array is exactly that; of a Fortran-ordered one it is
    pairwise and rounds differently, so any other layout is copied first."""
    return np.ascontiguousarray(matrix, dtype=float).sum(axis=0)


UNKNOWN = -1.0  # in `sample`'s memory-pressure vectors: not known for this VM (NaN is not allowed on the wire)
MAX_PSI_PCT = 100.0
# sample's per-VM memory-pressure vectors, shape (n,), each value UNKNOWN or in [0, max]
MEM_PRESSURE: dict[str, float] = {
    "mem_psi_some": MAX_PSI_PCT,  # the guest's PSI "some" avg10, % (proto/README.md §4)
    "mem_psi_full": MAX_PSI_PCT,  # its "full" avg10, %
    "mem_majflt": math.inf,  # its major page faults per second
    "mem_swapin": math.inf,  # its pages swapped in per second
    "mem_unreclaimable": math.inf,  # bytes the guest cannot give back: balloon actual - usable
}
_UNSET = np.empty(0)  # a Sample built without a pressure vector: UNKNOWN for every VM


def _check_vms(value: Any, field_name: str = "body.vms") -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_VMS:
        raise ProtocolError(f"must be a list of at most {MAX_VMS} VM UUIDs", field_name)
    check_uuids(value, field_name)
    if len(set(value)) != len(value):
        raise ProtocolError("lists a VM twice", field_name)
    return value


def _check_str_list(value: Any, field_name: str, n: int, allowed: Sequence[str] | None = None) -> list[str]:
    if not isinstance(value, list) or len(value) != n:
        raise ProtocolError(f"must be a list of {n} strings", field_name)
    for i, item in enumerate(value):
        if allowed is None:
            check_str(item, f"{field_name}[{i}]", MAX_NAME_CHARS)
        else:
            check_one_of(item, f"{field_name}[{i}]", allowed)
    return value


def _check_float(value: Any, field_name: str, lo: float = 0.0, hi: float = math.inf) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise ProtocolError(f"must be a finite number in [{lo}, {hi}]", field_name)
    return float(value)


def _check_params(value: Any, field_name: str) -> dict[str, Any]:
    params = check_map(value, field_name)
    if len(params) > MAX_PARAMS:
        raise ProtocolError(f"at most {MAX_PARAMS} parameters", field_name)
    for key, item in params.items():
        check_scalar(item, f"{field_name}.{key:.40}")
    return dict(params)


def _check_ceilings(value: Any, field_name: str, n: int) -> np.ndarray:
    """A (n, 4) matrix of ceilings: each NO_LIMIT (-1) or >= 0, nothing between."""
    ceiling = check_matrix(value, field_name, n, lo=NO_LIMIT)
    if ((ceiling < 0) & (ceiling != NO_LIMIT)).any():
        raise ProtocolError("a ceiling is -1 (none) or >= 0", field_name)
    return ceiling


def _check_or_unknown(value: Any, field_name: str, n: int, hi: float) -> np.ndarray:
    """A (n,) vector whose values are each UNKNOWN (-1) or in [0, hi], nothing between."""
    vector = check_matrix(value, field_name, n, None, lo=UNKNOWN)
    if ((vector < 0) & (vector != UNKNOWN)).any() or (vector > hi).any():
        raise ProtocolError(f"each value is -1 (unknown) or in [0, {hi}]", field_name)
    return vector


def _unknown() -> np.ndarray:
    return _UNSET


@dataclass(frozen=True, slots=True)
class Sample:
    """monitor -> all: what each VM used in the period that just ended, and how squeezed its memory is.

    The memory-pressure vectors are UNKNOWN (-1) for a VM where nothing told
    the monitor (no fresh guest report with that field, no balloon stats);
    left out of the constructor, they are UNKNOWN for every VM.
    """

    capacity: np.ndarray  # (4,): host capacity C after the host reserve
    vms: list[str]
    names: list[str]  # domain names, for people
    template: np.ndarray  # (n, 4): tc, what each VM was sold
    usage: np.ndarray  # (n, 4): au, measured use
    mem_source: list[str]  # per VM: guest | balloon | none
    period_s: float
    mem_psi_some: np.ndarray = field(default_factory=_unknown)  # (n,): guest PSI "some" avg10, %
    mem_psi_full: np.ndarray = field(default_factory=_unknown)  # (n,): guest PSI "full" avg10, %
    mem_majflt: np.ndarray = field(default_factory=_unknown)  # (n,): major page faults/s in the guest
    mem_swapin: np.ndarray = field(default_factory=_unknown)  # (n,): pages/s swapped in by the guest
    mem_unreclaimable: np.ndarray = field(default_factory=_unknown)  # (n,): bytes, balloon actual - usable
    # coins a VM's domain carries in its metadata (written by the actuator of the host it ran on): a VM
    # that migrated brings its balance, which the scheduler takes when it first sees the VM
    carried_vms: list[str] = field(default_factory=list)  # a subset of vms
    carried_coins: np.ndarray = field(default_factory=lambda: np.zeros((0, len(RESOURCES))))  # (m, 4)

    WIRE: ClassVar[tuple[str, ...]] = (
        "C", "vms", "names", "tc", "au", "mem_src", "period_s", *MEM_PRESSURE, "carried_vms", "carried",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in MEM_PRESSURE:
            if getattr(self, name) is _UNSET:
                object.__setattr__(self, name, np.full(len(self.vms), UNKNOWN))

    def to_wire(self) -> dict[str, Any]:
        return {
            "C": self.capacity,
            "vms": list(self.vms),
            "names": list(self.names),
            "tc": self.template,
            "au": self.usage,
            "mem_src": list(self.mem_source),
            "period_s": float(self.period_s),
            **{name: getattr(self, name) for name in MEM_PRESSURE},
            "carried_vms": list(self.carried_vms),
            "carried": self.carried_coins,
        }

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Sample:
        require_keys(body, cls.WIRE, (), "body")
        vms = _check_vms(body["vms"])
        n = len(vms)
        carried_vms = _check_vms(body["carried_vms"], "body.carried_vms")
        if not set(carried_vms) <= set(vms):
            raise ProtocolError("must be distinct VMs of body.vms", "body.carried_vms")
        return cls(
            capacity=check_matrix(body["C"], "body.C", len(RESOURCES), None),
            vms=vms,
            names=_check_str_list(body["names"], "body.names", n),
            template=check_matrix(body["tc"], "body.tc", n),
            usage=check_matrix(body["au"], "body.au", n),
            mem_source=_check_str_list(body["mem_src"], "body.mem_src", n, MEM_SOURCES),
            period_s=_check_float(body["period_s"], "body.period_s", MIN_PERIOD_S, MAX_PERIOD_S),
            **{name: _check_or_unknown(body[name], f"body.{name}", n, hi) for name, hi in MEM_PRESSURE.items()},
            carried_vms=carried_vms,
            carried_coins=check_matrix(body["carried"], "body.carried", len(carried_vms), lo=None),
        )


@dataclass(frozen=True, slots=True)
class Estimate:
    """predictor -> scheduler: predicted demand for the next period."""

    vms: list[str]
    estimate: np.ndarray  # (n, 4): d, predicted demand
    predictor: list[str]  # per resource: the predictor's name
    params: dict[str, Any] = field(default_factory=dict)

    WIRE: ClassVar[tuple[str, ...]] = ("vms", "est", "predictor", "params")

    def to_wire(self) -> dict[str, Any]:
        return {
            "vms": list(self.vms),
            "est": self.estimate,
            "predictor": list(self.predictor),
            "params": dict(self.params),
        }

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Estimate:
        require_keys(body, cls.WIRE, (), "body")
        vms = _check_vms(body["vms"])
        return cls(
            vms=vms,
            estimate=check_matrix(body["est"], "body.est", len(vms)),
            predictor=_check_str_list(body["predictor"], "body.predictor", len(RESOURCES)),
            params=_check_params(body["params"], "body.params"),
        )


@dataclass(frozen=True, slots=True)
class Alloc:
    """scheduler -> actuator: each VM's allocation for the next period and how to enforce it.

    The scheduler decides what is enforced (``shares``, ``ceiling``,
    ``enforcement``); the actuator enforces exactly that and re-derives nothing.
    """

    vms: list[str]
    alloc: np.ndarray  # (n, 4): Σ ≤ C per resource
    coins: np.ndarray  # (n, 4): coin balance after this period; may be negative
    template: np.ndarray  # (n, 4): tc, what each VM was sold
    usage: np.ndarray  # (n, 4): au the allocation was based on (memory floor check)
    capacity: np.ndarray  # (4,)
    shares: np.ndarray  # (n, 4): kernel weights, resource units (cpu, disk, net; memory column not enforced)
    ceiling: np.ndarray  # (n, 4): ceilings to enforce, resource units, NO_LIMIT (-1) = none
    enforcement: str  # shares | ceilings | both
    mode: list[str]  # per resource: fit | contended
    policy: str
    estimate_source: str  # estimate | last_use (the predictor's estimate was missing)

    WIRE: ClassVar[tuple[str, ...]] = (
        "vms",
        "alloc",
        "coins",
        "tc",
        "au",
        "C",
        "shares",
        "ceil",
        "enforce",
        "mode",
        "policy",
        "est_src",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "vms": list(self.vms),
            "alloc": self.alloc,
            "coins": self.coins,
            "tc": self.template,
            "au": self.usage,
            "C": self.capacity,
            "shares": self.shares,
            "ceil": self.ceiling,
            "enforce": self.enforcement,
            "mode": list(self.mode),
            "policy": self.policy,
            "est_src": self.estimate_source,
        }

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Alloc:
        require_keys(body, cls.WIRE, (), "body")
        vms = _check_vms(body["vms"])
        n = len(vms)
        capacity = check_matrix(body["C"], "body.C", len(RESOURCES), None)
        alloc = check_matrix(body["alloc"], "body.alloc", n)
        over = column_sums(alloc) > capacity
        if over.any():
            names = ", ".join(RESOURCES[r] for r in np.flatnonzero(over))
            raise ProtocolError(f"sum of allocations exceeds capacity for {names}", "body.alloc")
        ceiling = _check_ceilings(body["ceil"], "body.ceil", n)
        return cls(
            vms=vms,
            alloc=alloc,
            coins=check_matrix(body["coins"], "body.coins", n, lo=None),
            template=check_matrix(body["tc"], "body.tc", n),
            usage=check_matrix(body["au"], "body.au", n),
            capacity=capacity,
            shares=check_matrix(body["shares"], "body.shares", n),
            ceiling=ceiling,
            enforcement=check_one_of(body["enforce"], "body.enforce", ENFORCEMENT_MODES),
            mode=_check_str_list(body["mode"], "body.mode", len(RESOURCES), MODES),
            policy=check_one_of(body["policy"], "body.policy", POLICY_NAMES),
            estimate_source=check_one_of(body["est_src"], "body.est_src", ESTIMATE_SOURCES),
        )


@dataclass(frozen=True, slots=True)
class Applied:
    """actuator -> all: what was set (ceilings in resource units, NO_LIMIT = none; weights)."""

    vms: list[str]
    set: np.ndarray  # (n, 4): the ceiling in force after this apply
    before: np.ndarray  # (n, 4): the ceiling before it
    weight: np.ndarray  # (n, 4): the weight in force after it (cpu cores, disk BFQ weight, net bytes/s; 0 = unset)
    errors: list[dict[str, str]]  # {"vm", "resource", "error"}
    latency_s: float  # from receiving the alloc to the last write
    mode: str  # normal | failsafe | dry-run | restore
    backend: str
    writes: int  # backend calls that changed something
    enforced: list[str]  # per VM, 4 letters of ENFORCED_LETTERS (cpu, mem, disk, net)
    unenforced: list[dict[str, str]]  # one {"vm", "resource", "reason", "detail"} per "x" in `enforced`

    WIRE: ClassVar[tuple[str, ...]] = (
        "vms",
        "set",
        "before",
        "weight",
        "errors",
        "latency_s",
        "mode",
        "backend",
        "writes",
        "enforced",
        "unenforced",
    )

    def to_wire(self) -> dict[str, Any]:
        return {
            "vms": list(self.vms),
            "set": self.set,
            "before": self.before,
            "weight": self.weight,
            "errors": [dict(e) for e in self.errors],
            "latency_s": float(self.latency_s),
            "mode": self.mode,
            "backend": self.backend,
            "writes": int(self.writes),
            "enforced": list(self.enforced),
            "unenforced": [dict(u) for u in self.unenforced],
        }

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Applied:
        require_keys(body, cls.WIRE, (), "body")
        vms = _check_vms(body["vms"])
        n = len(vms)
        errors = body["errors"]
        if not isinstance(errors, list) or len(errors) > 4 * MAX_VMS:
            raise ProtocolError("must be a list of error maps", "body.errors")
        for i, err in enumerate(errors):
            err = check_map(err, f"body.errors[{i}]")
            require_keys(err, ("vm", "resource", "error"), (), f"body.errors[{i}]")
            if not (isinstance(err["vm"], str) and err["vm"] == ALL_VMS):
                check_uuid(err["vm"], f"body.errors[{i}].vm")
            check_one_of(err["resource"], f"body.errors[{i}].resource", ERROR_RESOURCES)
            check_str(err["error"], f"body.errors[{i}].error", MAX_ERROR_CHARS)
        mode = check_one_of(body["mode"], "body.mode", APPLY_MODES)
        enforced = _check_enforced(body["enforced"], vms)
        unenforced = _check_unenforced(body["unenforced"], vms, enforced)
        return cls(
            vms=vms,
            set=_check_ceilings(body["set"], "body.set", n),
            before=_check_ceilings(body["before"], "body.before", n),
            weight=check_matrix(body["weight"], "body.weight", n),
            errors=[dict(e) for e in errors],
            latency_s=_check_float(body["latency_s"], "body.latency_s", 0.0, 3600.0),
            mode=mode,
            backend=check_one_of(body["backend"], "body.backend", BACKENDS),
            writes=check_int(body["writes"], "body.writes"),
            enforced=enforced,
            unenforced=unenforced,
        )


def _check_enforced(value: Any, vms: list[str]) -> list[str]:
    if not isinstance(value, list) or len(value) != len(vms):
        raise ProtocolError(f"must be a list of {len(vms)} strings, one per VM", "body.enforced")
    for i, letters in enumerate(value):
        if (
            not isinstance(letters, str)
            or len(letters) != len(RESOURCES)
            or not set(letters) <= ENFORCED_LETTERS.keys()
        ):
            shown = repr(letters)[:20] if isinstance(letters, str) else type(letters).__name__
            raise ProtocolError(f"must be 4 letters of {''.join(ENFORCED_LETTERS)}, got {shown}", f"body.enforced[{i}]")
    return list(value)


def _check_unenforced(value: Any, vms: list[str], enforced: list[str]) -> list[dict[str, str]]:
    """Exactly one entry per "x" in `enforced`, naming that VM and resource."""
    if not isinstance(value, list) or len(value) > len(RESOURCES) * MAX_VMS:
        raise ProtocolError("must be a list of maps", "body.unenforced")
    cells = set()
    for i, entry in enumerate(value):
        where = f"body.unenforced[{i}]"
        entry = check_map(entry, where)
        require_keys(entry, ("vm", "resource", "reason", "detail"), (), where)
        vm = check_uuid(entry["vm"], f"{where}.vm")
        resource = check_one_of(entry["resource"], f"{where}.resource", RESOURCES)
        check_one_of(entry["reason"], f"{where}.reason", UNENFORCED_REASONS)
        check_str(entry["detail"], f"{where}.detail", MAX_ERROR_CHARS)
        cells.add((vm, RESOURCES.index(resource)))
    marked = {(vm, r) for vm, letters in zip(vms, enforced, strict=True) for r, c in enumerate(letters) if c == "x"}
    if cells != marked or len(cells) != len(value):
        raise ProtocolError("must have exactly one entry per 'x' in body.enforced", "body.unenforced")
    return [dict(e) for e in value]


BATCH_BODIES: dict[str, Any] = {
    KIND_SAMPLE: Sample,
    KIND_ESTIMATE: Estimate,
    KIND_ALLOC: Alloc,
    KIND_APPLIED: Applied,
}
