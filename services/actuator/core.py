"""The actuator's logic: turn each `alloc` into backend writes, safely.

Socket-free: ``on_alloc`` takes a decoded alloc envelope and returns the
`applied` body; ``on_period`` notices silence and moves to the fail-safe
state; ``restore`` puts back what was there before ResCoin touched it.

* Targets (DESIGN §7): exactly what the alloc says — its ``ceil`` per VM and
  resource and its ``shares`` as kernel weights (``weights``); the scheduler
  decided both and nothing is re-derived here, the memory floor included
  (the scheduler's: what the guest cannot give back, from the sample's
  ``mem_unreclaimable``, + reserve). Two rules stay here, because only the
  backend knows them: no balloon at or above a VM's size, and no ceiling below
  the template the VM's own definition states (libvirt metadata), whatever an
  alloc says: a scheduler's bug cannot starve a VM below what it was sold.
* Hysteresis: a setting is written only if it moved by more than
  max(absolute threshold, relative threshold × current value). What is set is
  kept per VM instance as (n, 4) matrices (``InForce``), so what moved is found
  with numpy; only the backend calls are per VM. A VM started anew (libvirt: a
  new domain ID) is read again.
* Originals: before the first write to a VM, its settings are read and saved
  atomically; ``restore`` (SIGTERM, ``--restore``) writes them back, even after
  a kill -9 and a restart.
* Fail-safe: no valid alloc for ``stale_periods`` → shares by template and,
  unless the last alloc's enforcement was ``shares``, ceilings at template
  (mode "failsafe"), re-applied every period until a valid alloc comes;
  balloons never below the last alloc's (only the scheduler knows what a
  guest cannot give back).
* Bad allocs (an old period; the decoder already refused Σ over capacity) are
  rejected and counted; an unknown VM is skipped and reported; one VM's
  failure never stops the others.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rescoin.proto import KIND_ALLOC, KIND_APPLIED, Envelope, topic_prefix
from rescoin.proto.messages import Alloc, Applied

from ..model.enforcement import ceilings, in_force, template_shares
from ..runtime.service import Health, Outgoing
from ..runtime.support import Counters, atomic_write, move_aside
from .backend import (
    NO_LIMIT,
    RESOURCES,
    ActuatorBackend,
    BackendError,
    Change,
    ChangeError,
    DomainLimits,
    Setting,
)
from .in_force import InForce
from .settings import ActuatorSettings

log = logging.getLogger("rescoin.actuator")
MEM, DISK, NET = 1, 2, 3
COUNTERS = ("rejected.backend", "failsafe_entries", "write_errors")  # in hb from the start (alerts use them)


BFQ_WEIGHT_MAX = 1000.0  # the kernel's largest BFQ weight (libvirt accepts 100-1000)


def weights(shares: np.ndarray) -> np.ndarray:
    """Shares (resource units) as the weights a backend sets (DESIGN §7), (n, 4).

    cpu stays in cores (backends set 1024 per core as cpu_shares, 100 per core
    as cpu.weight); net stays bytes/s (the htb rate, Σ = link capacity);
    memory has none. disk becomes a BFQ weight with the largest share at 1000:
    the kernel's range is narrow (1-1000, libvirt's 100-1000), so ratios are
    kept down to 1:10 below the largest, and the weights move only when the
    largest share moves by more than the hysteresis.
    """
    out = np.array(shares, dtype=float)
    top = float(out[:, DISK].max(initial=0.0))
    out[:, DISK] = out[:, DISK] / top * BFQ_WEIGHT_MAX if top > 0 else 0.0
    out[:, MEM] = 0.0
    return out


@dataclass(frozen=True)
class Targets:
    """What one apply should put in force, per VM and resource (n, 4), RESOURCES order."""

    ceiling: np.ndarray  # NO_LIMIT = none
    weight: np.ndarray  # backend units (``weights``); 0 = unset
    disk_fallback: np.ndarray  # (n,): the disk throttle where the device ignores weights
    link: float  # net: the link capacity the shares divide, bytes/s


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
        self.originals: dict[str, list[Setting]] = self._load_originals()
        self.in_force = InForce()
        self.instances: dict[str, str] = {}  # VM -> the instance `in_force` was read from
        self.unenforceable: dict[str, set[int]] = {}  # VM -> resources its backend said it cannot set
        self.originals_dirty = False
        self.last_alloc_period = -1
        self.last_valid: Alloc | None = None
        self.mode = "normal"
        self.periods_without_alloc = 0
        self.backend_down = ""  # why the backend could not be reached at the last apply ("" = it could)

    # -- originals -----------------------------------------------------------------

    def _load_originals(self) -> dict[str, list[Setting]]:
        """The settings found before ResCoin's first write, per VM: four (ceiling, shares) pairs of finite
        numbers. A file that is not that is moved aside, never overwritten, and a person is told: the caps
        in force now are ResCoin's own, so what restore would put back is from then on a guess."""
        path = self.originals_path
        if path is None or not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
            originals = {vm: [Setting(float(c), float(w)) for c, w in settings] for vm, settings in data.items()}
            if not all(
                isinstance(vm, str)
                and len(settings) == 4
                and all(math.isfinite(s.ceiling) and math.isfinite(s.shares) for s in settings)  # fmt: skip
                for vm, settings in originals.items()
            ):
                raise ValueError("each VM needs four finite (ceiling, shares) pairs")
            return originals
        except (OSError, ValueError, TypeError, AttributeError) as exc:
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
        data = {vm: [[s.ceiling, s.shares] for s in settings] for vm, settings in self.originals.items()}
        atomic_write(self.originals_path, json.dumps(data, indent=1).encode())

    def _read(self, vm: str) -> None:
        """What is set now, from the backend; the first time, kept as the original too (saved by the
        caller, once per batch, before any write)."""
        settings = self.backend.read(vm)
        self.in_force.put(vm, settings)
        if vm not in self.originals:
            self.originals[vm] = list(settings)
            self.originals_dirty = True

    # -- the stage -----------------------------------------------------------------

    def subscriptions(self) -> list[bytes]:
        return [topic_prefix(KIND_ALLOC, self.host)]

    def on_message(self, env: Envelope) -> list[Outgoing]:
        if env.kind != KIND_ALLOC:
            return []
        applied = self.on_alloc(env)
        return [Outgoing(KIND_APPLIED, env.period, applied)] if applied else []

    def validate(self, env: Envelope) -> str:
        if env.period <= self.last_alloc_period:
            return f"alloc for period {env.period} is not newer than {self.last_alloc_period}"
        if self.own_period is not None and env.period < self.own_period() - self.settings.stale_periods:
            # a replayed or long-delayed alloc: what it divided is gone; the fail-safe covers the gap
            return f"alloc for period {env.period} is older than {self.settings.stale_periods} periods"
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
        return self._apply(alloc.vms, self.targets(alloc), started, "normal")

    def targets(self, alloc: Alloc) -> Targets:
        """Per VM the four settings the alloc says to enforce (DESIGN §7): its shares as kernel
        weights (``weights``) and its ceilings where its enforcement mode applies them; in
        ``shares`` mode a disk ceiling is the fallback for devices that ignore weights.
        Nothing is re-derived here."""
        ceiling = in_force(alloc.ceiling, alloc.enforcement, none=NO_LIMIT)
        return Targets(ceiling, weights(alloc.shares), alloc.ceiling[:, DISK], float(alloc.capacity[NET]))

    def failsafe_targets(self, last: Alloc) -> Targets:
        """The safe state: shares by template; ceilings at template unless the last alloc's
        enforcement was ``shares``; memory never below the VM's last use + reserve, nor below the last
        alloc's balloon (its floor counted what the guest cannot give back, which only the sample knows),
        and no balloon where it had none."""
        ceiling = ceilings(last.template, last.template, last.usage, self.settings.mem_reserve_bytes)
        last_balloon = last.ceiling[:, MEM]
        # no balloon where the last alloc had none: a VM whose memory fit is not squeezed by the silence
        ceiling[:, MEM] = np.where(last_balloon == NO_LIMIT, NO_LIMIT, np.maximum(ceiling[:, MEM], last_balloon))
        shares = weights(template_shares(last.template, last.capacity))
        return Targets(in_force(ceiling, last.enforcement, none=NO_LIMIT), shares, ceiling[:, DISK],
                       float(last.capacity[NET]))  # fmt: skip

    def _moved(
        self, ceiling: np.ndarray, weight: np.ndarray, to_ceiling: np.ndarray, to_weight: np.ndarray
    ) -> np.ndarray:
        """Which settings to write, (m, 4): a ceiling set or lifted, or one that moved by more than
        max(absolute, relative × current), or a weight that moved by more than relative × current."""
        rel = self.settings.hysteresis_relative
        absolute = np.asarray(self.settings.hysteresis_absolute, dtype=float)
        toggled = (ceiling == NO_LIMIT) != (to_ceiling == NO_LIMIT)
        ceiling_moved = np.abs(to_ceiling - ceiling) > np.maximum(absolute, rel * np.abs(ceiling))
        weight_moved = np.abs(to_weight - weight) > rel * np.maximum(np.abs(weight), 1e-12)
        return toggled | ceiling_moved | weight_moved

    @staticmethod
    def _no_balloon_at_size(vms: list[str], limits: dict[str, DomainLimits], wanted: np.ndarray) -> np.ndarray:
        """Balloon targets (m,): none at or above a VM's size (the only memory rule the backend's
        knowledge adds; the floor is the scheduler's)."""
        size = np.fromiter((limits[vm].mem_max_bytes for vm in vms), float, len(vms))
        return np.where(wanted >= size, NO_LIMIT, wanted)

    def _not_below_template(self, vms: list[str], limits: dict[str, DomainLimits], ceiling: np.ndarray) -> None:
        """Ceilings below the template a VM's definition states are raised to it (in place) and counted:
        the scheduler never sends one, so each is a bug or a forgery."""
        if not vms:
            return
        template = np.array([limits[vm].template for vm in vms], dtype=float)  # nan: not stated, not checked
        below = (ceiling != NO_LIMIT) & (ceiling < template)
        if below.any():
            j, r = np.argwhere(below)[0]
            self.counters.reject(
                "below_template",
                f"{int(below.sum())} ceilings below the VM's own template, raised to it (e.g. {vms[j]} "
                f"{RESOURCES[r]}: {ceiling[j, r]:.6g} < {template[j, r]:.6g})",
                log,
            )
            ceiling[below] = template[below]

    def _throttle_where_weights_ignored(
        self, vms: list[str], ceiling: np.ndarray, weight: np.ndarray, fallback: np.ndarray, errors: list[ChangeError]
    ) -> None:
        """A disk weight does nothing on a device whose I/O scheduler ignores weights (mq-deadline, none):
        there the alloc's ceiling is the throttle, and no weight is claimed in `applied` (in place)."""
        for j in np.flatnonzero(weight[:, DISK] > 0).tolist():
            try:
                honoured = self.backend.disk_weights_honoured(vms[j])
            except BackendError as exc:
                errors.append(ChangeError(vms[j], "disk", str(exc)))
                continue
            if not honoured:
                ceiling[j, DISK] = fallback[j] if ceiling[j, DISK] == NO_LIMIT else ceiling[j, DISK]
                weight[j, DISK] = 0.0

    def _forget_restarted(self, limits: dict[str, DomainLimits]) -> None:
        """A VM started anew lost what we set (new process, new cgroup, new tap): read it again.
        One that is gone is forgotten; its originals stay, for ``restore``."""
        if not limits:  # the backend is unavailable: we know nothing new
            return
        for vm in list(self.in_force.rows):
            if vm not in limits or limits[vm].instance != self.instances.get(vm):
                if vm in limits:
                    self.counters.inc("vm_restarts")
                    log.info("%s (%s) was started anew: reading its settings again", vm, limits[vm].name)
                self.in_force.drop(vm)
                self.unenforceable.pop(vm, None)
                self.backend.forget(vm)
        self.instances = {vm: lim.instance for vm, lim in limits.items()}

    def _apply(self, vms: list[str], targets: Targets, started: float, mode: str) -> Applied:
        errors: list[ChangeError] = []
        try:
            limits = self.backend.domains()
            self.backend_down = ""
        except BackendError as exc:
            self.counters.reject("backend", str(exc), log)
            limits = {}
            errors.append(ChangeError("*", "all", f"backend unavailable: {exc}"))
            self.backend_down = str(exc)[:200]
        self._forget_restarted(limits)
        known = np.zeros(len(vms), dtype=bool)
        for i, vm in enumerate(vms):  # per VM only: is it there, and the first time, what is set
            if vm not in limits:
                if limits:
                    self.counters.reject(
                        "unknown_vm", f"alloc names VM {vm}, which the {self.backend.name} backend does not have", log
                    )
                    errors.append(ChangeError(vm, "all", "unknown VM"))
                continue
            if vm not in self.in_force:
                try:
                    self._read(vm)
                except BackendError as exc:
                    errors.append(ChangeError(vm, "all", str(exc)))
                    continue
            known[i] = True
        idx = np.flatnonzero(known)
        names = [vms[i] for i in idx.tolist()]
        rows = self.in_force.index(names)
        ceiling, weight = self.in_force.ceiling[rows], self.in_force.shares[rows]
        to_ceiling, to_weight = targets.ceiling[idx], targets.weight[idx]  # fancy indexing: copies
        self._throttle_where_weights_ignored(names, to_ceiling, to_weight, targets.disk_fallback[idx], errors)
        to_ceiling[:, MEM] = self._no_balloon_at_size(names, limits, to_ceiling[:, MEM])
        self._not_below_template(names, limits, to_ceiling)
        moved = self._moved(ceiling, weight, to_ceiling, to_weight)
        if self.unenforceable:  # reported once by the backend, never retried
            at = {vm: j for j, vm in enumerate(names)}
            for vm, resources in self.unenforceable.items():
                if vm in at:
                    moved[at[vm], sorted(resources)] = False
        if self.originals_dirty:  # one atomic save for every VM seen for the first time
            try:
                self._save_originals()
                self.originals_dirty = False
            except OSError as exc:  # ENOSPC, EIO: no write whose undo is not on disk; tried again next period
                self.counters.reject("originals", f"cannot save the originals, nothing written: {exc}", log)
                errors.append(ChangeError("*", "all", f"cannot save the original settings: {exc}"))
                moved[:] = False
        js, rs = np.nonzero(moved)
        link = targets.link
        changes = [
            Change(names[j], r, Setting(c, w, link if r == NET else 0.0))
            for j, r, c, w in zip(
                js.tolist(), rs.tolist(), to_ceiling[moved].tolist(), to_weight[moved].tolist(), strict=True
            )  # fmt: skip
        ]
        if self.settings.dry_run:
            for change in changes:
                log.info(
                    "dry-run: would set %s %s to ceiling %.6g, shares %.6g",
                    change.vm,
                    RESOURCES[change.resource],
                    change.setting.ceiling,
                    change.setting.shares,
                )
            mode = "dry-run" if mode == "normal" else mode
            failed: list[ChangeError] = []
        else:
            failed = self.backend.write(changes) if changes else []
            written = moved.copy()
            at = {vm: j for j, vm in enumerate(names)} if failed else {}
            for e in failed:
                if e.lasting and e.resource in RESOURCES:  # reported once, not retried every period
                    self.unenforceable.setdefault(e.vm, set()).add(RESOURCES.index(e.resource))
                if e.vm in at and e.resource in RESOURCES:
                    written[at[e.vm], RESOURCES.index(e.resource)] = False
            self.in_force.ceiling[rows] = np.where(written, to_ceiling, ceiling)
            self.in_force.shares[rows] = np.where(written, to_weight, weight)
            moved = written
            errors.extend(failed)
            self.counters.inc("write_errors", len(failed))
        writes = len(changes) - len(failed)
        self.counters.inc("writes", writes)
        before = np.full((len(vms), 4), NO_LIMIT)
        before[idx] = ceiling
        after = before.copy()
        after[idx] = np.where(moved, to_ceiling, ceiling)
        weight_after = np.zeros((len(vms), 4))
        weight_after[idx] = np.where(moved, to_weight, weight)
        return Applied(
            vms=list(vms),
            set=np.maximum(after, NO_LIMIT),
            before=np.maximum(before, NO_LIMIT),
            weight=np.maximum(weight_after, 0.0),
            errors=[{"vm": e.vm, "resource": e.resource, "error": e.error[:2000]} for e in errors],
            latency_s=max(self.clock() - started, 0.0),
            mode=mode,
            backend=self.backend.name,
            writes=writes,
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
        errors: list[ChangeError] = []
        changes: list[Change] = []
        if not self.settings.dry_run and vms:
            changes = [  # what the backend said a VM cannot take was never set: nothing to put back
                Change(vm, r, self.originals[vm][r])
                for vm in vms
                for r in range(4)
                if r not in self.unenforceable.get(vm, ())
            ]
            errors = self.backend.write(changes)
        restored = np.array([[s.ceiling for s in self.originals[vm]] for vm in vms]).reshape(len(vms), 4)
        weight = np.array([[s.shares for s in self.originals[vm]] for vm in vms]).reshape(len(vms), 4)
        was_in_force = np.array(
            [
                [s.ceiling for s in (self.in_force.settings(vm) if vm in self.in_force else self.originals[vm])]
                for vm in vms
            ]  # fmt: skip
        )
        if not errors and not self.settings.dry_run and self.originals_path is not None:
            self.originals_path.unlink(missing_ok=True)
            self.originals = {}
        self.in_force.clear()
        log.info("restored the original settings of %d VMs (%d errors)", len(vms), len(errors))
        return Applied(
            vms=vms,
            set=np.maximum(restored, NO_LIMIT),
            before=np.maximum(was_in_force.reshape(len(vms), 4), NO_LIMIT),
            weight=np.maximum(weight, 0.0),
            errors=[{"vm": e.vm, "resource": e.resource, "error": e.error[:2000]} for e in errors],
            latency_s=max(self.clock() - started, 0.0),
            mode="restore",
            backend=self.backend.name,
            writes=len(changes) - len(errors),
        )

    def health(self) -> Health:
        info = {
            "backend": self.backend.name,
            "mode": self.mode,
            "dry_run": self.settings.dry_run,
            "vms_touched": len(self.originals),
        }
        info.update({f"enforce.{k}": v for k, v in self.backend.capabilities().items()})
        if self.backend_down:
            info["backend_down"] = self.backend_down
        state = "failsafe" if self.mode == "failsafe" else "degraded" if self.backend_down else "ok"
        return Health(state, info)

    def close(self) -> list[Outgoing]:
        applied = self.restore() if self.settings.restore_on_stop else None
        self.backend.close()
        return [Outgoing(KIND_APPLIED, max(self.last_alloc_period, 0), applied)] if applied else []
