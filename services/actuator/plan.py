"""The actuator's plan: what should be in force, and which settings to write. Pure, no backend.

Input, for the m VMs of an alloc the backend has and could read: the
targets (the alloc's ceilings and weights), what is in force now, what each
VM × resource can be held by (the backend's probe: ``Capability``), the VM's
memory size and stated template, and the hysteresis. Output: a ``Plan`` of
the (m, 4) settings to write and the letter (proto's ``ENFORCED_LETTERS``)
each cell will have once they are written.

The rules, per VM and resource:

* a weight where the weight is honoured;
* where it is not but a ceiling can be set (a disk on mq-deadline or none, a
  network disk, an interface that only takes an average): the alloc's own
  ceiling for that resource, as a *throttle* ("t"), and no weight claimed;
* where neither can: nothing written, *unenforced* ("x"), with the
  capability's reason (the caller names it);
* no balloon at or above the VM's size; no ceiling below the template the
  VM's own definition states (a scheduler's bug or a forged alloc cannot
  starve a VM below what it was sold; counted by the caller);
* a setting is written only if it moved by more than max(absolute,
  relative × current); a ceiling set or lifted always is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rescoin.proto import MEM, NO_LIMIT, RATE_RESOURCES, Resource

RATE = np.isin(np.arange(len(Resource)), RATE_RESOURCES)  # (4,) bool: divided by weights; memory is not


@dataclass(frozen=True)
class Targets:
    """What one apply should put in force, per VM and resource (n, 4), RESOURCES order."""

    ceiling: np.ndarray  # NO_LIMIT = none
    weight: np.ndarray  # backend units (``core.weights``); 0 = unset
    throttle: np.ndarray  # the alloc's ceilings: what holds a rate resource where its weight is not honoured
    link: float  # net: the link capacity the shares divide, bytes/s


@dataclass(frozen=True)
class Plan:
    ceiling: np.ndarray  # (m, 4) the ceilings to have in force
    weight: np.ndarray  # (m, 4) the weights to have in force
    write: np.ndarray  # (m, 4) bool: settings that moved past the hysteresis
    throttled: np.ndarray  # (m, 4) bool: a ceiling stands in for a weight the kernel would ignore
    enforceable: np.ndarray  # (m, 4) bool: something can hold the cell (else it is "x")
    below_template: np.ndarray  # (m, 4) bool: ceilings the plan raised to the VM's stated template


def plan(
    targets: Targets,
    ceiling_now: np.ndarray,
    weight_now: np.ndarray,
    can_weight: np.ndarray,
    can_ceiling: np.ndarray,
    mem_size: np.ndarray,
    template: np.ndarray,
    hysteresis_relative: float,
    hysteresis_absolute: np.ndarray,
) -> Plan:
    """The settings for the m VMs in ``targets`` (rows already selected), see the module docstring.

    ``can_weight``/``can_ceiling``: (m, 4) bool from the backend's probe, False where a cell could not be
    read either; ``mem_size``: (m,) bytes; ``template``: (m, 4), nan where the VM states none."""
    ceiling = np.array(targets.ceiling, dtype=float)
    weight = np.array(targets.weight, dtype=float)
    throttled = RATE & (weight > 0) & ~can_weight & can_ceiling
    ceiling = np.where(throttled & (ceiling == NO_LIMIT), targets.throttle, ceiling)
    weight = np.where(can_weight, weight, 0.0)
    ceiling = np.where(can_ceiling, ceiling, NO_LIMIT)
    ceiling[:, MEM] = np.where(ceiling[:, MEM] >= mem_size, NO_LIMIT, ceiling[:, MEM])
    below = (ceiling != NO_LIMIT) & (ceiling < template)  # nan template: never below
    ceiling = np.where(below, template, ceiling)
    enforceable = can_weight | can_ceiling
    write = enforceable & _moved(ceiling_now, weight_now, ceiling, weight, hysteresis_relative, hysteresis_absolute)
    return Plan(ceiling, weight, write, throttled, enforceable, below)


def _moved(
    ceiling: np.ndarray,
    weight: np.ndarray,
    to_ceiling: np.ndarray,
    to_weight: np.ndarray,
    relative: float,
    absolute: np.ndarray,
) -> np.ndarray:
    """A ceiling set or lifted, or one that moved by more than max(absolute, relative × current), or a
    weight that moved by more than relative × current."""
    toggled = (ceiling == NO_LIMIT) != (to_ceiling == NO_LIMIT)
    ceiling_moved = np.abs(to_ceiling - ceiling) > np.maximum(absolute, relative * np.abs(ceiling))
    weight_moved = np.abs(to_weight - weight) > relative * np.maximum(np.abs(weight), 1e-12)
    return toggled | ceiling_moved | weight_moved


def letters(ceiling: np.ndarray, weight: np.ndarray, throttled: np.ndarray, unenforced: np.ndarray) -> list[str]:
    """Per VM the four letters of proto's ENFORCED_LETTERS for what is in force (all (m, 4))."""
    has_ceiling, has_weight = ceiling != NO_LIMIT, weight > 0
    code = np.select(
        [unenforced, has_weight & has_ceiling, has_weight, throttled & has_ceiling, has_ceiling],
        [ord("x"), ord("b"), ord("w"), ord("t"), ord("c")],
        ord("-"),
    ).astype(np.uint8)
    return [row.tobytes().decode() for row in code]
