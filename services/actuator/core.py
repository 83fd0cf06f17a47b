"""The actuator's logic: turn each `alloc` into backend writes, one VM and one resource at a time.

Socket-free: ``on_alloc`` takes a decoded alloc envelope and returns the
`applied` body; ``on_period`` notices silence and moves to the fail-safe
state; ``restore`` puts back what was there before ResCoin touched it.

An apply is *plan*, then *execute* (docs/DESIGN.md §7):

* Learn: each VM the alloc names is probed once per instance (what can hold
  each of its resources here: ``Capability``) and each resource read on its
  own; one that cannot be read is never written (there would be no original
  to restore) and is tried again next period.
* Plan (plan.py, pure): exactly what the alloc says — its ``ceil`` and its
  ``shares`` as kernel weights (``weights``) — through each cell's
  capability: the weight where honoured, the alloc's ceiling as a throttle
  where only a ceiling works, *unenforced* with the reason where nothing
  does; the two backend-knowledge rules (no balloon at or above the VM's
  size, no ceiling below the template its own definition states); the
  hysteresis.
* Execute: the backend's batch write; one VM's or one change's failure is a
  ChangeError for that cell only. A failure the backend calls lasting (no
  device, no balloon) is not retried until the VM restarts.
* Report: one ``Applied`` per apply, with a letter per VM × resource for
  what holds it (proto's ``ENFORCED_LETTERS``) and a reason for each cell
  nothing holds; counters ``unenforced.<reason>`` (cells × periods) in `hb`.

Originals: before the first write to a VM's resource, its setting is read
and saved atomically; ``restore`` (SIGTERM, ``--restore``) writes them back,
even after a kill -9 and a restart. Fail-safe: no valid alloc for
``stale_periods`` → shares by template and, unless the last alloc's
enforcement was ``shares``, ceilings at template, re-applied every period.
Bad allocs (an old period; the decoder already refused Σ over capacity) are
rejected and counted; the wall clock stepping back is followed, not waited out.
"""

from __future__ import annotations

import json
import logging
import math
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rescoin.proto import CPU, DISK, KIND_ALLOC, KIND_APPLIED, MEM, NET, NO_LIMIT, RESOURCES, Envelope, topic_prefix
from rescoin.proto.messages import ENFORCED_LETTERS, UNENFORCED_REASONS, Alloc, Applied

from ..model.enforcement import ceilings, in_force, template_shares
from ..runtime.service import Health, Outgoing
from ..runtime.support import Counters, atomic_write, move_aside
from .backend import (
    EVERY_BALLOON,
    ActuatorBackend,
    BackendError,
    BusyError,
    Capability,
    Change,
    ChangeError,
    CpuWeightRange,
    DomainLimits,
    Setting,
)
from .in_force import InForce
from .plan import Targets, letters, plan
from .settings import ActuatorSettings

log = logging.getLogger("rescoin.actuator")
# in hb from the start (alerts use them)
COUNTERS = (
    "rejected.backend",
    "failsafe_entries",
    "write_errors",
    "clock_steps",
    "unenforced",
    *(f"unenforced.{reason}" for reason in UNENFORCED_REASONS),
)
BFQ_WEIGHT_MAX = 1000.0  # the kernel's largest BFQ weight (libvirt accepts 100-1000)


def weights(shares: np.ndarray, cpu: CpuWeightRange) -> np.ndarray:
    """Shares (resource units) as the weights a backend sets, (n, 4).

    cpu stays in cores, scaled by one factor for all VMs if the largest would pass the kernel's range
    (``cpu.hi`` / ``cpu.per_core``: 256 cores for cgroup v1 cpu.shares, 9.8 for libvirt's cpu_shares on a
    cgroup v2 host), so the ratios hold; net stays bytes/s (the htb rate, Σ = link capacity); memory has
    none. disk becomes a BFQ weight with the largest share at 1000: the kernel's range is narrow (1-1000,
    libvirt's 100-1000), so ratios are kept down to 1:10 below the largest, and the weights move only
    when the largest share moves by more than the hysteresis.
    """
    out = np.array(shares, dtype=float)
    top_cpu = float(out[:, CPU].max(initial=0.0)) * cpu.per_core
    if top_cpu > cpu.hi:
        out[:, CPU] *= cpu.hi / top_cpu
    top = float(out[:, DISK].max(initial=0.0))
    out[:, DISK] = out[:, DISK] / top * BFQ_WEIGHT_MAX if top > 0 else 0.0
    out[:, MEM] = 0.0
    return out


class Report:
    """What one apply found per VM × resource that nothing holds, and the errors, for ``Applied``."""

    def __init__(self, vms: list[str]) -> None:
        self.vms = vms
        self.unenforced = np.zeros((len(vms), 4), dtype=bool)
        self.reasons: dict[tuple[int, int], tuple[str, str]] = {}  # (i, r) -> (reason, detail)
        self.errors: list[ChangeError] = []

    def cell(self, i: int, r: int, reason: str, detail: str) -> None:
        self.unenforced[i, r] = True
        self.reasons[(i, r)] = (reason, detail[:2000])

    def row(self, i: int, reason: str, detail: str) -> None:
        for r in range(4):
            self.cell(i, r, reason, detail)

    def entries(self) -> list[dict[str, str]]:
        return [
            {"vm": self.vms[i], "resource": RESOURCES[r], "reason": reason, "detail": detail}
            for (i, r), (reason, detail) in sorted(self.reasons.items())
            if self.unenforced[i, r]
        ]


class ActuatorCore:
    name = "actuator"

    def __init__(
        self,
        host: str,
        settings: ActuatorSettings,
        backend: ActuatorBackend,
        counters: Counters,
        state_dir: Path | None,
        clock: Callable[[], float] = time.monotonic,
        own_period: Callable[[], int] | None = None,
    ) -> None:
        self.host = host
        self.settings = settings
        self.backend = backend
        self.counters = counters
        self.clock = clock
        self.own_period = own_period  # this host's period by its wall clock; None: allocs are only ordered
        self.originals_path = state_dir / settings.originals_file if state_dir else None
        self.originals: dict[str, list[Setting | None]] = self._load_originals()
        self.in_force = InForce()
        self.instances: dict[str, str] = {}  # VM -> the instance `in_force` was read from
        self.capabilities: dict[str, list[Capability]] = {}  # VM -> what can hold each resource (this instance)
        self.unenforceable: dict[str, dict[int, ChangeError]] = {}  # VM -> lasting write failures, per resource
        self.originals_dirty = False
        self.last_alloc_period = -1
        self.last_valid: Alloc | None = None
        self.mode = "normal"
        self.periods_without_alloc = 0
        self.backend_down = ""  # why the backend could not be reached at the last apply ("" = it could)
        self.coverage: dict[str, int] = {}  # letter -> VM × resource cells at the last apply (hb info)
        self.balloons: dict[str, list[float]] = {}  # VM -> [balloon target (NO_LIMIT: full size), periods since]
        self.balloon_stuck: dict[str, str] = {}  # VM -> why its balloon is unenforced (it does not follow)
        self.balloon_look: set[str] = set()  # stuck VMs to read again: their balloon moved, or its target did

    # -- originals -----------------------------------------------------------------

    def _load_originals(self) -> dict[str, list[Setting | None]]:
        """The settings found before ResCoin's first write, per VM: four (ceiling, weight) pairs of finite
        numbers, or null for a resource never read. A file that is not that is moved aside, never
        overwritten, and a person is told: the caps in force now are ResCoin's own, so what restore would
        put back is from then on a guess."""
        path = self.originals_path
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            originals = {
                vm: [None if pair is None else Setting(float(pair[0]), float(pair[1])) for pair in settings]
                for vm, settings in data.items()
            }
            if not all(
                isinstance(vm, str)
                and len(settings) == 4
                and all(s is None or (math.isfinite(s.ceiling) and math.isfinite(s.weight)) for s in settings)
                for vm, settings in originals.items()
            ):
                raise ValueError("each VM needs four finite (ceiling, weight) pairs or nulls")
            return originals
        except (OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
            kept = move_aside(path)
            self.counters.reject(
                "originals",
                f"damaged originals file {path} (kept as {kept or 'nothing: it could not be moved'}): {exc}; "
                "the settings in force now will be recorded as the originals",
                log,
            )
            return {}

    def _save_originals(self) -> None:
        if self.originals_path is None:
            return
        data = {
            vm: [None if s is None else [s.ceiling, s.weight] for s in settings]
            for vm, settings in self.originals.items()
        }
        atomic_write(self.originals_path, json.dumps(data, indent=1).encode())

    # -- the stage -----------------------------------------------------------------

    def subscriptions(self) -> list[bytes]:
        return [topic_prefix(KIND_ALLOC, self.host)]

    def on_message(self, env: Envelope) -> list[Outgoing]:
        if env.kind != KIND_ALLOC:
            return []
        applied = self.on_alloc(env)
        return [Outgoing(KIND_APPLIED, env.period, applied)] if applied else []

    def validate(self, env: Envelope) -> str:
        stale = self.settings.stale_periods
        own = self.own_period() if self.own_period is not None else None
        if env.period <= self.last_alloc_period:
            # the host's clock stepped back: the last alloc is far ahead of our own clock, this one is
            # current by it. Follow the clock (as the input filter does), never wait the step out.
            if own is not None and self.last_alloc_period > own + stale and env.period >= own - stale:
                self.counters.inc("clock_steps")
                log.warning("the clock stepped back %d periods: following it", self.last_alloc_period - own)
                return ""
            return f"alloc for period {env.period} is not newer than {self.last_alloc_period}"
        if own is not None and env.period < own - stale:
            # a replayed or long-delayed alloc: what it divided is gone; the fail-safe covers the gap
            return f"alloc for period {env.period} is older than {stale} periods"
        return ""

    def on_alloc(self, env: Envelope) -> Applied | None:
        """Apply one allocation; None if it was rejected."""
        started = self.clock()
        problem = self.validate(env)
        if problem:
            self.counters.reject("alloc", problem, log)
            return None
        alloc: Alloc = env.body
        self.last_alloc_period = env.period
        self.last_valid = alloc
        self.periods_without_alloc = 0
        if self.mode == "failsafe":
            log.info("valid alloc for period %d: leaving the fail-safe state", env.period)
        self.mode = "normal"
        applied = self._apply(alloc.vms, self.targets(alloc), started, "normal")
        self._carry(alloc, env.period)
        return applied

    def _carry(self, alloc: Alloc, period: int) -> None:
        """Each managed VM's coins and originals into what travels with it (libvirt: its domain's metadata),
        a 1/k share of the VMs each period, so a migrated VM's balance is at most k periods old."""
        every = self.settings.carry_every_periods
        if not every or self.settings.dry_run:
            return
        states = {
            vm: (tuple(alloc.coins[i].tolist()), self.originals[vm])
            for i, vm in enumerate(alloc.vms)
            if vm in self.originals and zlib.crc32(vm.encode()) % every == period % every
        }
        if states:
            self.backend.carry(states, period)

    def targets(self, alloc: Alloc) -> Targets:
        """Per VM the four settings the alloc says to enforce: its shares as kernel weights (``weights``)
        and its ceilings where its enforcement mode applies them; the alloc's ceilings are the throttle
        where a weight would not be honoured. Nothing is re-derived here."""
        ceiling = in_force(alloc.ceiling, alloc.enforcement, none=NO_LIMIT)
        return Targets(
            ceiling, weights(alloc.shares, self.backend.cpu_weight_range()), alloc.ceiling, float(alloc.capacity[NET])
        )

    def failsafe_targets(self, last: Alloc) -> Targets:
        """The safe state: shares by template; ceilings at template unless the last alloc's
        enforcement was ``shares``; memory never below the VM's last use + reserve, nor below the last
        alloc's balloon (its floor counted what the guest cannot give back, which only the sample knows),
        and no balloon where it had none."""
        ceiling = ceilings(last.template, last.template, last.usage, self.settings.mem_reserve_bytes)
        last_balloon = last.ceiling[:, MEM]
        # no balloon where the last alloc had none: a VM whose memory fit is not squeezed by the silence
        ceiling[:, MEM] = np.where(last_balloon == NO_LIMIT, NO_LIMIT, np.maximum(ceiling[:, MEM], last_balloon))
        shares = weights(template_shares(last.template, last.capacity), self.backend.cpu_weight_range())
        return Targets(in_force(ceiling, last.enforcement, none=NO_LIMIT), shares, ceiling, float(last.capacity[NET]))

    # -- learn: what each VM has and what can hold it --------------------------------

    def _forget_restarted(self, limits: dict[str, DomainLimits]) -> None:
        """A VM started anew lost what we set (new process, new cgroup, new tap), and one with a device
        hot-plugged has new disks or taps to hold: probe and read it again.
        One that is gone is forgotten; its originals stay, for ``restore``."""
        if not limits:  # the backend is unavailable: we know nothing new
            return
        for vm in list(self.capabilities):
            if vm not in limits or limits[vm].instance != self.instances.get(vm):
                if vm in limits:
                    self.counters.inc("vm_restarts")
                    log.info("%s (%s) was started anew or hot-plugged: probing and reading it again", vm,
                             limits[vm].name)  # fmt: skip
                self.in_force.drop(vm)
                self.capabilities.pop(vm, None)
                self.balloons.pop(vm, None)
                self.balloon_stuck.pop(vm, None)
                self.balloon_look.discard(vm)
                self.unenforceable.pop(vm, None)
                self.backend.forget(vm)
        self.instances = {vm: lim.instance for vm, lim in limits.items()}

    def _learn(self, vm: str, i: int, report: Report) -> bool:
        """Probe ``vm`` (once per instance) and read each resource not yet known; False if it could not
        be probed at all (every cell reported, tried again next period)."""
        if vm not in self.capabilities:
            try:
                self.capabilities[vm] = self.backend.probe(vm)
            except BackendError as exc:
                report.row(i, "busy" if isinstance(exc, BusyError) else "read_failed", str(exc))
                return False
            log.info("%s: %s", vm, "; ".join(  # once per instance: how each resource is held, or why not
                f"{RESOURCES[r]} {c.how if c.enforceable else f'unenforced ({c.reason}: {c.how})'}"
                for r, c in enumerate(self.capabilities[vm])))  # fmt: skip
        known = self.in_force.settings(vm) if vm in self.in_force else [None] * 4
        if all(known):
            return True
        read: list[Setting | None] = list(known)
        for r, setting in enumerate(known):
            if setting is None and self.capabilities[vm][r].enforceable:
                try:
                    read[r] = self.backend.read(vm, r)
                except BackendError as exc:
                    reason = "busy" if isinstance(exc, BusyError) else "read_failed"
                    report.cell(i, r, reason, f"cannot read what is set: {exc}")
        self.in_force.put(vm, read)
        if vm not in self.originals:  # new here: a VM that migrated brings the originals of its first host
            carried = self.backend.carried_originals(vm)
            self.originals[vm] = list(carried) if carried else [None] * 4
            if carried:
                self.originals_dirty = True
                log.info("%s brought its original settings from the host it came from", vm)
        original = self.originals[vm]
        for r, setting in enumerate(read):
            if original[r] is None and setting is not None and known[r] is None:
                original[r] = setting
                self.originals_dirty = True
        return True

    # -- plan, execute, report -------------------------------------------------------

    def _apply(self, vms: list[str], targets: Targets, started: float, mode: str) -> Applied:
        report = Report(vms)
        try:
            limits = self.backend.domains()
            self.backend_down = ""
        except BackendError as exc:
            self.counters.reject("backend", str(exc), log)
            limits = {}
            report.errors.append(ChangeError("*", "all", f"backend unavailable: {exc}", "backend_down"))
            self.backend_down = str(exc)[:200]
        self._forget_restarted(limits)
        rows: list[int] = []  # the alloc's rows of the VMs that can be planned for
        for i, vm in enumerate(vms):
            if vm not in limits:
                if limits:
                    self.counters.reject(
                        "unknown_vm", f"alloc names VM {vm}, which the {self.backend.name} backend does not have", log
                    )
                    report.row(i, "unknown_vm", f"the {self.backend.name} backend has no VM {vm}")
                else:
                    report.row(i, "backend_down", self.backend_down)
                continue
            if limits[vm].problem:
                report.errors.append(ChangeError(vm, "all", limits[vm].problem))
            if self._learn(vm, i, report):
                rows.append(i)
        idx = np.array(rows, dtype=np.intp)
        names = [vms[i] for i in rows]
        self._follow_balloons(names, limits)
        at = self.in_force.index(names)
        ceiling_now, weight_now = self.in_force.ceiling[at], self.in_force.weight[at]
        can_weight, can_ceiling = self._can(names, self.in_force.known[at])
        todo = plan(
            Targets(targets.ceiling[idx], targets.weight[idx], targets.throttle[idx], targets.link),
            ceiling_now,
            weight_now,
            can_weight,
            can_ceiling,
            np.fromiter((limits[vm].mem_max_bytes for vm in names), float, len(names)),
            np.array([limits[vm].template for vm in names], dtype=float).reshape(len(names), 4),
            self.settings.hysteresis_relative,
            np.asarray(self.settings.hysteresis_absolute, dtype=float),
        )
        self._count_below_template(names, todo.below_template, todo.ceiling)
        for j, vm in enumerate(names):  # cells nothing can hold: why, from the probe or the last failure
            for r in np.flatnonzero(~todo.enforceable[j]).tolist():
                if (rows[j], r) not in report.reasons:
                    report.cell(rows[j], r, *self._why_not(vm, r))
        write = todo.write.copy()
        if self.originals_dirty:  # one atomic save for every resource read for the first time
            try:
                self._save_originals()
                self.originals_dirty = False
            except OSError as exc:  # ENOSPC, EIO: no write whose undo is not on disk; tried again next period
                self.counters.reject("originals", f"cannot save the originals, nothing written: {exc}", log)
                report.errors.append(ChangeError("*", "all", f"cannot save the original settings: {exc}"))
                write[:] = False
        changes = [
            Change(names[j], r, Setting(todo.ceiling[j, r], todo.weight[j, r], targets.link if r == NET else 0.0))
            for j, r in zip(*np.nonzero(write), strict=True)
        ]
        if self.settings.dry_run:
            for change in changes:
                log.info("dry-run: would set %s %s to ceiling %.6g, weight %.6g", change.vm,
                         RESOURCES[change.resource], change.setting.ceiling, change.setting.weight)  # fmt: skip
            mode = "dry-run" if mode == "normal" else mode
        else:
            self._execute(changes, names, rows, write, report)
            for j in np.flatnonzero(write[:, MEM]).tolist():  # a balloon set: does it get there?
                self.balloons.setdefault(names[j], [NO_LIMIT, 0])[0] = todo.ceiling[j, MEM]  # periods kept
                if names[j] in self.balloon_stuck:
                    self.balloon_look.add(names[j])  # a new target may be where it sits: no event would say so
            self.in_force.ceiling[at] = np.where(write, todo.ceiling, ceiling_now)
            self.in_force.weight[at] = np.where(write, todo.weight, weight_now)
        ceiling_after, weight_after = np.full((len(vms), 4), NO_LIMIT), np.zeros((len(vms), 4))
        before = ceiling_after.copy()
        before[idx] = ceiling_now
        ceiling_after[idx] = np.where(write, todo.ceiling, ceiling_now)
        weight_after[idx] = np.where(write, todo.weight, weight_now)
        throttled = np.zeros((len(vms), 4), dtype=bool)
        throttled[idx] = todo.throttled
        for j, vm in enumerate(names):
            if vm in self.balloon_stuck and not report.unenforced[rows[j], MEM]:
                report.cell(rows[j], MEM, "no_balloon", self.balloon_stuck[vm])
        return self._applied(report, ceiling_after, before, weight_after, throttled, started, mode, int(write.sum()))

    def _follow_balloons(self, names: list[str], limits: dict[str, DomainLimits]) -> None:
        """A balloon still far from its target ``balloon_grace_periods`` after a target was first set and not
        yet reached (the guest has no balloon driver, or cannot give the memory back) is unenforced until it
        gets there. Cheap: one read per VM whose balloon has somewhere to go, none once it got there, and
        one for one found stuck when the hypervisor says its balloon moved, or, with no such events, every
        ``balloon_grace_periods`` (at 100 paused guests, reading each stuck balloon every period was most of
        a steady apply's libvirt calls, and every 5th period still most of its time)."""
        tolerance = self.settings.hysteresis_absolute[MEM]
        try:
            moved = self.backend.balloons_moved()
        except BackendError:
            moved = {EVERY_BALLOON}  # we cannot tell what it missed
        if moved is not None:
            self.balloon_look |= set(self.balloon_stuck) if EVERY_BALLOON in moved else moved & set(self.balloon_stuck)
        for vm in names:
            check = self.balloons.get(vm)
            if check is None:
                continue
            check[1] += 1
            grace = self.settings.balloon_grace_periods
            if vm in self.balloon_stuck:
                if moved is None and check[1] % grace == 0:
                    self.balloon_look.add(vm)  # no events to wait for: a look every grace periods
                if vm not in self.balloon_look:
                    continue  # still where it was: looked at again when it moves or gets a new target
            elif check[1] < grace:
                continue  # its grace
            try:
                actual = self.backend.read(vm, MEM).ceiling
            except BackendError:
                continue  # busy or gone: asked again next period
            self.balloon_look.discard(vm)
            target = check[0] if check[0] != NO_LIMIT else limits[vm].mem_max_bytes
            # far, not just behind: a working balloon trails a moving target by a step or two (5-10 %)
            if actual == check[0] or abs(actual - target) <= max(
                tolerance, 4 * self.settings.hysteresis_relative * target
            ):
                del self.balloons[vm]
                self.balloon_stuck.pop(vm, None)
            elif vm not in self.balloon_stuck:
                self.balloon_stuck[vm] = (
                    f"the balloon is at {actual / 2**20:.0f} MiB, {int(check[1])} periods after its target was "
                    f"set to {target / 2**20:.0f} MiB: no balloon driver in the guest, or it cannot give it back"
                )
                log.warning("%s: %s", vm, self.balloon_stuck[vm])

    def _can(self, names: list[str], known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(m, 4) bool each: a weight / a ceiling can hold the cell (probed, read, no lasting failure)."""
        can_weight = np.array([[c.weight for c in self.capabilities[vm]] for vm in names], dtype=bool)
        can_ceiling = np.array([[c.ceiling for c in self.capabilities[vm]] for vm in names], dtype=bool)
        can_weight, can_ceiling = can_weight.reshape(-1, 4) & known, can_ceiling.reshape(-1, 4) & known
        for j, vm in enumerate(names):
            for r in self.unenforceable.get(vm, {}):
                can_weight[j, r] = can_ceiling[j, r] = False
        return can_weight, can_ceiling

    def _why_not(self, vm: str, r: int) -> tuple[str, str]:
        failed = self.unenforceable.get(vm, {}).get(r)
        if failed is not None:
            return failed.reason, failed.error
        capability = self.capabilities[vm][r]
        if capability.enforceable:  # it could be held, but what is set could not be read
            return "read_failed", "what is set could not be read"
        return capability.reason, capability.how

    def _count_below_template(self, names: list[str], below: np.ndarray, ceiling: np.ndarray) -> None:
        """Ceilings the plan raised to a VM's stated template: the scheduler never sends one, so each is a
        bug or a forgery."""
        if below.any():
            j, r = np.argwhere(below)[0]
            self.counters.reject(
                "below_template",
                f"{int(below.sum())} ceilings below the VM's own template, raised to it (e.g. {names[j]} "
                f"{RESOURCES[r]}: now {ceiling[j, r]:.6g})",
                log,
            )

    def _execute(self, changes: list[Change], names: list[str], rows: list[int], write: np.ndarray,
                 report: Report) -> None:  # fmt: skip
        """The backend's batch write; a failed change leaves its cell as it was (``write`` cleared, in
        place) and unenforced with the reason; a lasting one is not retried for this instance."""
        failed = self.backend.write(changes) if changes else []
        at = {vm: j for j, vm in enumerate(names)}
        for e in failed:
            report.errors.append(e)
            if e.vm not in at or e.resource not in RESOURCES:
                continue
            j, r = at[e.vm], RESOURCES.index(e.resource)
            write[j, r] = False
            report.cell(rows[j], r, e.reason, e.error)
            if e.lasting:
                self.unenforceable.setdefault(e.vm, {})[r] = e
        self.counters.inc("write_errors", len(failed))
        self.counters.inc("writes", len(changes) - len(failed))

    def _applied(
        self,
        report: Report,
        ceiling: np.ndarray,
        before: np.ndarray,
        weight: np.ndarray,
        throttled: np.ndarray,
        started: float,
        mode: str,
        writes: int,
    ) -> Applied:
        """The one place an ``Applied`` is built; counts what nothing holds, by reason."""
        enforced = letters(ceiling, weight, throttled, report.unenforced)
        unenforced = report.entries()
        self.counters.inc("unenforced", len(unenforced))
        for entry in unenforced:
            self.counters.inc(f"unenforced.{entry['reason']}")
        self.coverage = dict.fromkeys(ENFORCED_LETTERS, 0)
        for row in enforced:
            for letter in row:
                self.coverage[letter] += 1
        return Applied(
            vms=list(report.vms),
            set=np.maximum(ceiling, NO_LIMIT),
            before=np.maximum(before, NO_LIMIT),
            weight=np.maximum(weight, 0.0),
            errors=[{"vm": e.vm, "resource": e.resource, "error": e.error[:2000]} for e in report.errors],
            latency_s=max(self.clock() - started, 0.0),
            mode=mode,
            backend=self.backend.name,
            writes=writes,
            enforced=enforced,
            unenforced=unenforced,
        )

    def on_period(self, ended_period: int) -> list[Outgoing]:
        """Count silent periods; past ``stale_periods`` move every VM to the safe state."""
        self.periods_without_alloc += 1
        if self.periods_without_alloc <= self.settings.stale_periods or self.last_valid is None:
            return []
        if self.mode != "failsafe":
            self.mode = "failsafe"
            self.counters.inc("failsafe_entries")
            log.warning("no valid alloc for %d periods: the safe state (fail-safe)", self.periods_without_alloc)
        # every period while it holds: a VM started anew meanwhile gets it too (hysteresis keeps it cheap)
        last = self.last_valid
        applied = self._apply(last.vms, self.failsafe_targets(last), self.clock(), "failsafe")
        return [Outgoing(KIND_APPLIED, ended_period + 1, applied)]

    def restore(self) -> Applied:
        """Put back every original setting ResCoin recorded; forget them once done."""
        started = self.clock()
        vms = list(self.originals)
        report = Report(vms)
        changes = [  # what was never read, or that the backend said a VM cannot take, was never set
            Change(vm, r, setting)
            for vm in vms
            for r, setting in enumerate(self.originals[vm])
            if setting is not None and r not in self.unenforceable.get(vm, {})
        ]
        if not self.settings.dry_run and changes:
            report.errors = self.backend.write(changes)
        for i, vm in enumerate(vms):
            for r, setting in enumerate(self.originals[vm]):
                if setting is None:
                    report.cell(i, r, "read_failed", "never read, so never written: nothing to restore")
        restored = np.array([[s.ceiling if s else NO_LIMIT for s in self.originals[vm]] for vm in vms])
        weight = np.array([[s.weight if s else 0.0 for s in self.originals[vm]] for vm in vms])
        was = [self.in_force.settings(vm) if vm in self.in_force else self.originals[vm] for vm in vms]
        was_in_force = np.array([[s.ceiling if s else NO_LIMIT for s in settings] for settings in was])
        if not report.errors and not self.settings.dry_run and self.originals_path is not None:
            self.originals_path.unlink(missing_ok=True)
            self.originals = {}
        self.in_force.clear()
        self.capabilities.clear()
        log.info("restored the original settings of %d VMs (%d errors)", len(vms), len(report.errors))
        shape = (len(vms), 4)
        writes = len(changes) - len(report.errors)
        return self._applied(
            report, restored.reshape(shape), was_in_force.reshape(shape), weight.reshape(shape),
            np.zeros(shape, dtype=bool), started, "restore", writes,
        )  # fmt: skip

    def health(self) -> Health:
        info = {
            "backend": self.backend.name,
            "mode": self.mode,
            "dry_run": self.settings.dry_run,
            "vms_touched": len(self.originals),
        }
        info.update({f"enforced.{letter}": n for letter, n in self.coverage.items()})
        info.update({f"host.{k}": v for k, v in self.backend.capabilities().items()})
        if self.backend_down:
            info["backend_down"] = self.backend_down
        state = "failsafe" if self.mode == "failsafe" else "degraded" if self.backend_down else "ok"
        return Health(state, info)

    def close(self) -> list[Outgoing]:
        applied = self.restore() if self.settings.restore_on_stop else None
        self.backend.close()
        return [Outgoing(KIND_APPLIED, max(self.last_alloc_period, 0), applied)] if applied else []
