"""The actuator's logic: turn each `alloc` into backend writes, safely.

Socket-free: ``on_alloc`` takes a decoded alloc envelope and returns the
`applied` body; ``on_period`` notices silence and moves to the fail-safe
state; ``restore`` puts back what was there before ResCoin touched it.

* Targets (DESIGN §7): exactly what the alloc says — its ``ceil`` per VM and
  resource and its ``shares`` as kernel weights (``weights``); the scheduler
  decided both and nothing is re-derived here. One safety check stays here,
  because only the backend knows it: a balloon never shrinks below what the
  backend says the guest cannot give back (libvirt balloon stats: size −
  usable) + reserve; no balloon at or above its maximum.
* Hysteresis: a setting is written only if it moved by more than
  max(absolute threshold, relative threshold × current value). What is set is
  cached per VM instance: a VM started anew (libvirt: a new domain ID) is read again.
* Originals: before the first write to a VM, its settings are read and saved
  atomically; ``restore`` (SIGTERM, ``--restore``) writes them back, even after
  a kill -9 and a restart.
* Fail-safe: no valid alloc for ``stale_periods`` → shares by template and,
  unless the last alloc's enforcement was ``shares``, ceilings at template
  (mode "failsafe"), re-applied every period until a valid alloc comes.
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
from pathlib import Path

import numpy as np
from rescoin.proto import KIND_ALLOC, KIND_APPLIED, Envelope, topic_prefix
from rescoin.proto.messages import Alloc, Applied

from ..model.enforcement import ceilings, in_force, template_shares
from ..runtime.service import Health, Outgoing
from ..runtime.support import Counters, atomic_write
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
from .settings import ActuatorSettings

log = logging.getLogger("rescoin.actuator")
GUEST_NEED_MAX_AGE_S = 30.0  # how long the backend's word on a guest's memory floor holds
MEM, DISK = 1, 2


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
    ) -> None:
        self.host = host
        self.settings = settings
        self.backend = backend
        self.counters = counters
        self.clock = clock
        self.originals_path = state_dir / settings.originals_file if state_dir else None
        self.originals: dict[str, list[Setting]] = self._load_originals()
        self.current: dict[str, list[Setting]] = {}
        self.instances: dict[str, str] = {}  # VM -> the instance `current` was read from
        self.unenforceable: dict[str, set[int]] = {}  # VM -> resources its backend said it cannot set
        self.guest_floor: dict[str, tuple[float, float]] = {}  # VM -> (memory floor from the backend, asked at)
        self.originals_dirty = False
        self.last_alloc_period = -1
        self.last_valid: Alloc | None = None
        self.mode = "normal"
        self.periods_without_alloc = 0

    # -- originals -----------------------------------------------------------------

    def _load_originals(self) -> dict[str, list[Setting]]:
        if self.originals_path is None or not self.originals_path.exists():
            return {}
        try:
            data = json.loads(self.originals_path.read_text())
            return {vm: [Setting(float(s[0]), float(s[1])) for s in settings] for vm, settings in data.items()}
        except (OSError, ValueError, TypeError, IndexError) as exc:
            self.counters.reject("originals", f"unreadable originals file {self.originals_path}: {exc}", log)
            return {}

    def _save_originals(self) -> None:
        if self.originals_path is None:
            return
        data = {vm: [[s.ceiling, s.shares] for s in settings] for vm, settings in self.originals.items()}
        atomic_write(self.originals_path, json.dumps(data, indent=1).encode())

    def _settings_of(self, vm: str) -> list[Setting]:
        """What is set now; the first time, read from the backend and kept as the original
        (saved by the caller, once per batch, before any write)."""
        if vm not in self.current:
            self.current[vm] = self.backend.read(vm)
            if vm not in self.originals:
                self.originals[vm] = list(self.current[vm])
                self.originals_dirty = True
        return self.current[vm]

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

    def targets(self, alloc: Alloc) -> list[list[Setting]]:
        """Per VM the four settings the alloc says to enforce (DESIGN §7): its shares as kernel
        weights (``weights``) and its ceilings where its enforcement mode applies them; in
        ``shares`` mode a disk ceiling is the fallback for devices that ignore weights.
        Nothing is re-derived here."""
        ceiling = in_force(alloc.ceiling, alloc.enforcement, none=NO_LIMIT)
        return self._settings(ceiling, weights(alloc.shares), alloc.ceiling[:, DISK])

    def failsafe_targets(self, last: Alloc) -> list[list[Setting]]:
        """The safe state: shares by template; ceilings at template unless the last alloc's
        enforcement was ``shares``; memory never below the VM's last use + reserve."""
        ceiling = ceilings(last.template, last.template, last.usage, self.settings.mem_reserve_bytes)
        shares = weights(template_shares(last.template, last.capacity))
        return self._settings(in_force(ceiling, last.enforcement, none=NO_LIMIT), shares, ceiling[:, DISK])

    @staticmethod
    def _settings(ceiling: np.ndarray, weight: np.ndarray, disk_fallback: np.ndarray) -> list[list[Setting]]:
        rows = np.stack([ceiling, weight], axis=2).tolist()  # (n, 4, 2): one conversion, not n × 4; memory weight 0
        fallback = disk_fallback.tolist()
        return [
            [Setting(c, w, fallback[i] if r == DISK else NO_LIMIT) for r, (c, w) in enumerate(row)]
            for i, row in enumerate(rows)
        ]

    def _moved(self, resource: int, old: Setting, new: Setting) -> bool:
        if (old.ceiling == NO_LIMIT) != (new.ceiling == NO_LIMIT):
            return True
        rel = self.settings.hysteresis_relative
        absolute = self.settings.hysteresis_absolute[resource]
        ceiling_moved = abs(new.ceiling - old.ceiling) > max(absolute, rel * abs(old.ceiling))
        fallback_moved = abs(new.fallback - old.fallback) > max(absolute, rel * abs(old.fallback))
        shares_moved = abs(new.shares - old.shares) > rel * max(abs(old.shares), 1e-12)
        return ceiling_moved or fallback_moved or shares_moved

    def _above_guest_need(self, vm: str, current: Setting, wanted: Setting) -> Setting:
        """Never balloon below what the guest cannot give back + the reserve.

        The floor in ``targets`` is the guest's reported use + reserve; its
        kernel's own memory is not in that use, and ballooning into it panics
        the guest. The backend is asked when a balloon would shrink, at most
        once per GUEST_NEED_MAX_AGE_S per VM (a libvirt call each).
        """
        if wanted.ceiling == NO_LIMIT:
            return wanted
        now = self.clock()
        floor, asked = self.guest_floor.get(vm, (0.0, -math.inf))
        if now - asked >= GUEST_NEED_MAX_AGE_S and (current.ceiling == NO_LIMIT or wanted.ceiling < current.ceiling):
            need = self.backend.mem_need(vm)
            floor = 0.0 if need is None else need + self.settings.mem_reserve_bytes
            self.guest_floor[vm] = (floor, now)
            if wanted.ceiling < floor:
                self.counters.inc("mem_floor_raised")
        return wanted if wanted.ceiling >= floor else Setting(floor, wanted.shares, wanted.fallback)

    def _forget_restarted(self, limits: dict[str, DomainLimits]) -> None:
        """A VM started anew lost what we set (new process, new cgroup, new tap): read it again.
        One that is gone is forgotten; its originals stay, for ``restore``."""
        if not limits:  # the backend is unavailable: we know nothing new
            return
        for vm in list(self.current):
            if vm not in limits or limits[vm].instance != self.instances.get(vm):
                if vm in limits:
                    self.counters.inc("vm_restarts")
                    log.info("%s (%s) was started anew: reading its settings again", vm, limits[vm].name)
                del self.current[vm]
                self.guest_floor.pop(vm, None)
                self.unenforceable.pop(vm, None)
                self.backend.forget(vm)
        self.instances = {vm: lim.instance for vm, lim in limits.items()}

    def _apply(self, vms: list[str], targets: list[list[Setting]], started: float, mode: str) -> Applied:
        errors: list[ChangeError] = []
        try:
            limits = self.backend.domains()
        except BackendError as exc:
            self.counters.reject("backend", str(exc), log)
            limits = {}
            errors.append(ChangeError("*", "all", f"backend unavailable: {exc}"))
        self._forget_restarted(limits)
        before = np.full((len(vms), 4), NO_LIMIT)
        after = np.full((len(vms), 4), NO_LIMIT)
        weight = np.zeros((len(vms), 4))
        changes: list[Change] = []
        for i, vm in enumerate(vms):
            if vm not in limits:
                if limits:
                    self.counters.reject(
                        "unknown_vm", f"alloc names VM {vm}, which the {self.backend.name} backend does not have", log
                    )
                    errors.append(ChangeError(vm, "all", "unknown VM"))
                continue
            try:
                current = self._settings_of(vm)
            except BackendError as exc:
                errors.append(ChangeError(vm, "all", str(exc)))
                continue
            wanted = list(targets[i])
            wanted[MEM] = self._above_guest_need(vm, current[MEM], wanted[MEM])
            if wanted[MEM].ceiling != NO_LIMIT and wanted[MEM].ceiling >= limits[vm].mem_max_bytes:
                wanted[MEM] = Setting(NO_LIMIT, 0.0)  # at or above its size: no balloon
            for r in range(4):
                before[i, r] = current[r].ceiling
                after[i, r] = current[r].ceiling
                weight[i, r] = current[r].shares
                if r not in self.unenforceable.get(vm, ()) and self._moved(r, current[r], wanted[r]):
                    changes.append(Change(vm, r, wanted[r]))
                    after[i, r] = wanted[r].ceiling
                    weight[i, r] = wanted[r].shares
        if self.originals_dirty:  # one atomic save for every VM seen for the first time
            self._save_originals()
            self.originals_dirty = False
        writes = len(changes)
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
        elif changes:
            failed = self.backend.write(changes)
            failed_keys = {(e.vm, e.resource) for e in failed}
            for change in changes:
                if (change.vm, RESOURCES[change.resource]) not in failed_keys:
                    self.current[change.vm][change.resource] = change.setting
            for e in failed:
                if e.lasting and e.resource in RESOURCES:  # reported once, not retried every period
                    self.unenforceable.setdefault(e.vm, set()).add(RESOURCES.index(e.resource))
                row = vms.index(e.vm) if e.vm in vms else -1
                if row >= 0 and e.resource in RESOURCES:
                    r = RESOURCES.index(e.resource)
                    after[row, r], weight[row, r] = before[row, r], self.current[e.vm][r].shares
            errors.extend(failed)
            writes -= len(failed)
            self.counters.inc("write_errors", len(failed))
        self.counters.inc("writes", writes)
        return Applied(
            vms=list(vms),
            set=np.maximum(after, NO_LIMIT),
            before=np.maximum(before, NO_LIMIT),
            weight=np.maximum(weight, 0.0),
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
        if not self.settings.dry_run and vms:
            changes = [Change(vm, r, self.originals[vm][r]) for vm in vms for r in range(4)]
            errors = self.backend.write(changes)
        restored = np.array([[s.ceiling for s in self.originals[vm]] for vm in vms]).reshape(len(vms), 4)
        weight = np.array([[s.shares for s in self.originals[vm]] for vm in vms]).reshape(len(vms), 4)
        in_force = np.array([[s.ceiling for s in self.current.get(vm, self.originals[vm])] for vm in vms])
        if not errors and not self.settings.dry_run and self.originals_path is not None:
            self.originals_path.unlink(missing_ok=True)
            self.originals = {}
        self.current = {}
        log.info("restored the original settings of %d VMs (%d errors)", len(vms), len(errors))
        return Applied(
            vms=vms,
            set=np.maximum(restored, NO_LIMIT),
            before=np.maximum(in_force.reshape(len(vms), 4), NO_LIMIT),
            weight=np.maximum(weight, 0.0),
            errors=[{"vm": e.vm, "resource": e.resource, "error": e.error[:2000]} for e in errors],
            latency_s=max(self.clock() - started, 0.0),
            mode="restore",
            backend=self.backend.name,
            writes=len(vms) * 4 - len(errors),
        )

    def health(self) -> Health:
        info = {
            "backend": self.backend.name,
            "mode": self.mode,
            "dry_run": self.settings.dry_run,
            "vms_touched": len(self.originals),
        }
        info.update({f"enforce.{k}": v for k, v in self.backend.capabilities().items()})
        return Health("failsafe" if self.mode == "failsafe" else "ok", info)

    def close(self) -> list[Outgoing]:
        applied = self.restore() if self.settings.restore_on_stop else None
        self.backend.close()
        return [Outgoing(KIND_APPLIED, max(self.last_alloc_period, 0), applied)] if applied else []
