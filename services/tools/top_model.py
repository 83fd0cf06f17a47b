"""`rescoin top`'s model, socket-free: bus messages folded into a row per VM and totals per host.

``TopModel.on_message(env, now)`` keeps each host's latest `sample`, `alloc`,
`applied` and heartbeats; ``rows`` and ``totals`` build what the screen shows
for one resource, and the functions below format it as plain strings (the UI
only adds colour). Per VM and resource:

| column | from | meaning |
| --- | --- | --- |
| use | sample `au` (alloc `au` before a sample) | measured use in the last period |
| use/template | | use as a share of what the VM was sold; above 100 % it is bursting |
| alloc | alloc `alloc` | the scheduler's allocation for the next period |
| share | alloc `shares` | the kernel weight, in resource units (memory has none) |
| ceiling | applied `set` | the ceiling the kernel has (`none`: no ceiling; memory: the balloon target) |
| coins | alloc `coins` | coin balance: unused template over the last k periods, capacity-normalized |
| template | sample `tc` | what the VM was sold |

A cell is NaN (shown –) until the message it comes from has been heard.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from rescoin.proto import MEM, RESOURCES, Envelope

from . import units

SORT_KEYS = ("use", "alloc", "share", "ceiling", "coins", "template", "name", "host")
TEXT_KEYS = ("name", "host")  # sorted ascending by default; numbers descending (biggest first)
KINDS = ("sample", "alloc", "applied", "hb")  # what top subscribes to
MISSED_BEATS = 3  # a service is down after this many heartbeat periods of silence, as `rescoin status` says
BAR = 10  # characters in a VM's use/template bar
EIGHTHS = " ▏▎▍▌▋▊▉█"
MATRICES = ("use", "template", "alloc", "share", "ceiling", "coins")  # VmRow's (4,) fields


@dataclass(frozen=True)
class VmRow:
    """One VM on one host; every matrix is (4,): cpu, mem, disk, net, NaN where not heard yet."""

    host: str
    vm: str
    name: str  # domain name, or the UUID's prefix
    use: np.ndarray
    template: np.ndarray
    alloc: np.ndarray
    share: np.ndarray
    ceiling: np.ndarray  # -1 = no ceiling
    coins: np.ndarray

    def number(self, key: str, resource: int) -> float:
        return float(getattr(self, key)[resource])


@dataclass(frozen=True)
class HostTotals:
    """One host's state and its sums over VMs, (4,) each."""

    host: str
    period: int  # of the last sample
    vms: int
    capacity: np.ndarray
    use: np.ndarray
    alloc: np.ndarray
    template: np.ndarray
    age_s: float  # since the last sample (or alloc) arrived
    stale: bool  # no sample for MISSED_BEATS periods
    policy: str  # "" until an alloc arrives
    enforcement: str
    modes: list[str]  # per resource: fit | contended ("" unknown)
    applied_mode: str  # normal | failsafe | dry-run | restore ("" unknown)
    apply_errors: int
    services: dict[str, str]  # service -> its hb state, or "down" after MISSED_BEATS missed beats


@dataclass
class HostState:
    sample: Envelope | None = None
    alloc: Envelope | None = None
    applied: Envelope | None = None
    seen: float = 0.0  # when the last sample or alloc arrived
    beats: dict[str, tuple[float, Envelope]] = field(default_factory=dict)  # service -> (seen, hb)


class TopModel:
    """Every host's latest messages; rows and totals on demand."""

    def __init__(self, hosts: Sequence[str] = ()) -> None:
        self.only = set(hosts)  # empty: every host
        self.hosts: dict[str, HostState] = {}
        self.undecodable = 0

    def on_message(self, env: Envelope, now: float) -> None:
        """Fold one decoded message in; ``now`` is a monotonic time in seconds. Older periods are ignored."""
        if env.kind not in KINDS or (self.only and env.host not in self.only):
            return
        state = self.hosts.setdefault(env.host, HostState())
        if env.kind == "hb":
            state.beats[env.body.service] = (now, env)
            return
        last = getattr(state, env.kind)
        if last is not None and env.period < last.period:
            return  # a late or replayed message: what the host does now is newer
        setattr(state, env.kind, env)
        if env.kind in ("sample", "alloc"):
            state.seen = now

    def rows(self) -> list[VmRow]:
        """A row for every VM of every host (the VMs of the host's last sample, else of its last alloc)."""
        out = []
        for host, state in sorted(self.hosts.items()):
            basis = state.sample or state.alloc
            if basis is None:
                continue
            # the sample's use and template are the freshest; alloc carries them too, for before a sample
            sources = (
                _columns(state.sample, {"use": "usage", "template": "template"}),
                _columns(state.alloc, {"alloc": "alloc", "share": "shares", "coins": "coins"}),
                _columns(state.alloc, {"use": "usage", "template": "template"}),
                _columns(state.applied, {"ceiling": "set"}),
            )
            names = dict(zip(state.sample.body.vms, state.sample.body.names, strict=True)) if state.sample else {}
            for vm in basis.body.vms:
                found = {key: _pick(sources, key, vm) for key in MATRICES}
                found["share"][MEM] = np.nan
                out.append(VmRow(host, vm, units.vm_label(vm, names.get(vm, "")), **found))
        return out

    def totals(self, now: float) -> list[HostTotals]:
        """Per host, in name order; ``now`` on the clock ``on_message`` was given."""
        by_host: dict[str, list[VmRow]] = {}
        for row in self.rows():
            by_host.setdefault(row.host, []).append(row)
        out = []
        for host, state in sorted(self.hosts.items()):
            basis = state.sample or state.alloc
            if basis is None:
                continue
            rows = by_host.get(host, [])
            period_s = state.sample.body.period_s if state.sample else math.inf
            alloc = state.alloc.body if state.alloc else None
            applied = state.applied.body if state.applied else None
            out.append(
                HostTotals(
                    host=host,
                    period=basis.period,
                    vms=len(rows),
                    capacity=basis.body.capacity,
                    use=_sum(r.use for r in rows),
                    alloc=_sum(r.alloc for r in rows),
                    template=_sum(r.template for r in rows),
                    age_s=now - state.seen,
                    stale=now - state.seen > MISSED_BEATS * period_s,
                    policy=alloc.policy if alloc else "",
                    enforcement=alloc.enforcement if alloc else "",
                    modes=list(alloc.mode) if alloc else [""] * 4,
                    applied_mode=applied.mode if applied else "",
                    apply_errors=len(applied.errors) if applied else 0,
                    services={
                        service: "down" if now - seen > MISSED_BEATS * hb.body.period_s else hb.body.state
                        for service, (seen, hb) in sorted(state.beats.items())
                    },
                )
            )
        return out


def _columns(env: Envelope | None, attrs: dict[str, str]) -> dict[str, dict[str, np.ndarray]]:
    """column -> VM -> (4,) from one message's matrices (attribute names of its body)."""
    if env is None:
        return {}
    body = env.body
    return {key: dict(zip(body.vms, getattr(body, attr), strict=True)) for key, attr in attrs.items()}


def _pick(sources: Sequence[dict[str, dict[str, np.ndarray]]], key: str, vm: str) -> np.ndarray:
    """The first source's (4,) for this column and VM, a copy; NaN if none has it."""
    for source in sources:
        if vm in source.get(key, {}):
            return source[key][vm].astype(float)
    return np.full(4, np.nan)


def _sum(rows: Iterable[np.ndarray]) -> np.ndarray:
    stacked = list(rows)
    return np.sum(stacked, axis=0) if stacked else np.zeros(4)


def sort_rows(rows: Sequence[VmRow], key: str, resource: int, reverse: bool = False) -> list[VmRow]:
    """Rows by ``key`` (one of SORT_KEYS) of ``resource``: numbers biggest first, names A→Z; unknown (NaN)
    last either way; ties by host and name. ``reverse`` flips the direction."""
    if key in TEXT_KEYS:
        return sorted(rows, key=lambda r: (getattr(r, key), r.host, r.name), reverse=reverse)
    known = [r for r in rows if not math.isnan(r.number(key, resource))]
    unknown = [r for r in rows if math.isnan(r.number(key, resource))]
    by_name = sorted(known, key=lambda r: (r.host, r.name))
    ordered = sorted(by_name, key=lambda r: r.number(key, resource), reverse=not reverse)  # stable: ties by name
    return ordered + sorted(unknown, key=lambda r: (r.host, r.name))


def bar(fraction: float, width: int = BAR) -> str:
    """A horizontal bar ``width`` characters long, filled to ``fraction`` (clipped to 0…1) in eighths."""
    if math.isnan(fraction):
        return " " * width
    eighths = round(min(max(fraction, 0.0), 1.0) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (EIGHTHS[part] if part else "")).ljust(width)


def percent(part: float, whole: float) -> str:
    if math.isnan(part) or math.isnan(whole) or whole <= 0:
        return units.UNKNOWN
    return f"{100 * part / whole:.0f}%"


def headings(resource: int, sort_key: str, reverse: bool, several_hosts: bool) -> list[str]:
    """Column headings for ``resource`` (units in them), the sort column marked ▼ (descending) or ▲."""
    unit = units.UNITS[resource][0]
    titles = {
        "host": "host",
        "name": "vm",
        "use": f"use {unit}",
        "bar": "use/template",
        "alloc": f"alloc {unit}",
        "share": f"share {unit}",
        "ceiling": f"ceiling {unit}",
        "coins": "coins",
        "template": f"template {unit}",
    }
    descending = (sort_key not in TEXT_KEYS) != reverse
    titles[sort_key] += " ▼" if descending else " ▲"
    return [titles[key] for key in columns(several_hosts)]


def columns(several_hosts: bool) -> list[str]:
    """The table's columns, by key; the host column only when there are several hosts."""
    table = ["name", "use", "bar", "alloc", "share", "ceiling", "coins", "template"]
    return ["host", *table] if several_hosts else table


def cells(row: VmRow, resource: int, several_hosts: bool) -> list[str]:
    """One row's cells for ``resource``, in ``columns`` order."""
    use, template = row.number("use", resource), row.number("template", resource)
    text = {
        "host": row.host,
        "name": row.name,
        "use": units.amount(use, resource),
        "bar": f"{bar(use / template if template > 0 else math.nan)} {percent(use, template):>5}",
        "alloc": units.amount(row.number("alloc", resource), resource),
        "share": units.amount(row.number("share", resource), resource),
        "ceiling": units.amount(row.number("ceiling", resource), resource),
        "coins": units.coins(row.number("coins", resource)),
        "template": units.amount(template, resource),
    }
    return [text[key] for key in columns(several_hosts)]


def host_summary(totals: HostTotals, resource: int) -> list[str]:
    """Three lines for one host: who and how fresh; every resource's use of capacity (the shown one
    marked ▸); the shown resource's sums and the services' heartbeat states."""
    fresh = f"STALE: no sample for {totals.age_s:.0f} s" if totals.stale else f"sample {totals.age_s:.1f} s ago"
    policy = f"policy {totals.policy}, enforce {totals.enforcement}" if totals.policy else "no alloc yet"
    applied = f"applied {totals.applied_mode}" if totals.applied_mode else "nothing applied yet"
    errors = f" ({totals.apply_errors} errors)" if totals.apply_errors else ""
    first = f"{totals.host}  period {totals.period}  {totals.vms} VMs  {policy}  {applied}{errors}  {fresh}"
    used = np.divide(totals.use, totals.capacity, out=np.zeros(4), where=totals.capacity > 0)
    gauges = "  ".join(
        f"{'▸' if r == resource else ' '}{name} {bar(used[r], 8)}{percent(totals.use[r], totals.capacity[r]):>5} "
        f"{totals.modes[r] or '?':<9}"
        for r, name in enumerate(RESOURCES)
    )
    unit = units.UNITS[resource][0]
    sums = (
        f"{RESOURCES[resource]}: use {units.amount(totals.use[resource], resource)} of "
        f"{units.amount(totals.capacity[resource], resource)} {unit}, "
        f"alloc {units.amount(totals.alloc[resource], resource)}, "
        f"templates {units.amount(totals.template[resource], resource)}"
    )
    services = " ".join(f"{s}:{state}" for s, state in totals.services.items()) or "no heartbeats"
    return [first, gauges, f"{sums}   {services}"]
