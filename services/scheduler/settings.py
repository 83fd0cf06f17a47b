"""[scheduler]: the policy, the coin window and the floors."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import between, non_negative, one_of, positive, setting
from .policy import COIN_NORMS, POLICIES, STARVED_GUARDS


@dataclass
class SchedulerSettings:
    """Turns samples and estimates into allocations (rescoin-scheduler)."""

    policy: str = setting(
        "rescoin", "allocation policy: rescoin, static, shares, maxmin, credits, karma", one_of(*POLICIES)
    )
    coin_window: int = setting(
        288, "k: periods of unused template that count as coins (the seed used 10)", between(1, 100_000)
    )
    enforcement: str = setting(
        "shares",
        "how allocations reach the kernel: shares (coin-weighted kernel weights, no rate ceilings: "
        "work-conserving), ceilings (weights by template + caps at max(alloc, template): burstable instances), "
        "both (the coin-weighted weights + those caps)",
        one_of("shares", "ceilings", "both"),
    )
    share_formula: str = setting(
        "unsold",
        "shares = template + a split of: unsold (C - sum of templates, to predicted bursts by coins then "
        "template; sum of shares = C), coins (the same by coin weight alone) or seed (the seed's "
        "C - sum of min(estimate, template) by coin weight; sum of shares may exceed C, so the template "
        "guarantee leans on the prediction). docs/EVALUATION.md compares them",
        one_of("unsold", "coins", "seed"),
    )
    coin_norm: str = setting(
        "l2",
        "how a VM's coins (one balance per resource) become its priority: l2, l1 or max = one weight on every "
        "resource from that norm of its positive coins (one currency), resource = each resource by its own "
        "coins. docs/EVALUATION.md compares them",
        one_of(*COIN_NORMS),
    )
    starved_guard: str = setting(
        "off",
        "the period after a resource was busy (its VMs used >= 1 - fit_headroom of it), floor VMs at their "
        "template's part of the kernel weights: off, below (the VMs that used less than their template) or "
        "all. Only the seed formula can give less (the others always do); docs/EVALUATION.md measures it",
        one_of(*STARVED_GUARDS),
    )
    release_when_fit: bool = setting(
        True, "no ceilings on a resource whose predicted demand fits the host (alloc mode 'fit')"
    )
    share_leftover: bool = setting(
        True, "hand capacity nobody asked for out by template, so ceilings never idle a host"
    )
    cpu_floor_cores: float = setting(0.05, "no VM's cpu allocation goes below this", non_negative)
    mem_reserve_bytes: float = setting(
        64 * 2**20,
        "memory allocation and balloon >= max(the VM's use, what it cannot give back (the sample's "
        "mem_unreclaimable)) + this (never balloon into swap/OOM)",
        non_negative,
    )
    mem_pressure_guard: bool = setting(
        True,
        "guest memory pressure (the thresholds below) stops a VM's balloon shrinking, and a VM stalling now "
        "(its major faults, or its PSI where it reports no fault rate) asks for its balloon x (1 + mem_grow_step); "
        "false = the floor alone",
    )
    # the pressure thresholds as measured on real guests (docs/EVALUATION.md, memory pressure): a probe step
    # raised PSI some by at most 1.6 % and a thrash by 9.9-47.8 %; major faults were 0/s with the working set
    # resident and 190-840/s whenever it was not
    mem_pressure_some_pct: float = setting(
        5.0,
        "a VM is under memory pressure at this PSI 'some' avg10, % (a guest idling or fitting its working "
        "set stays near 0; docs/EVALUATION.md, memory pressure)",
        between(0.0, 100.0),
    )
    mem_pressure_full_pct: float = setting(2.0, "... or at this PSI 'full' avg10, %", between(0.0, 100.0))
    mem_pressure_majflt_per_s: float = setting(
        100.0,
        "... or at this many major page faults per second (swap-ins are major faults too)",
        non_negative,
    )
    mem_grow_step: float = setting(
        0.1,
        "a pressured VM asks for its balloon x (1 + this): its balloon grows back by up to this fraction "
        "per period, as far as the policy gives it memory",
        between(0.0, 10.0),
    )
    mem_shrink_step: float = setting(
        0.05,
        "without pressure a balloon shrinks by at most this fraction of itself per period (a probe the "
        "guest's pressure can stop); 1 = straight to the target",
        between(0.0, 1.0),
    )
    fit_headroom: float = setting(
        0.1,
        "a resource counts as 'fit' (no ceilings) only if predicted demand leaves this fraction free",
        between(0.0, 0.9),
    )
    fit_after_periods: int = setting(
        5,
        "a contended resource turns 'fit' again only after its demand fit this many periods in a row "
        "(a VM held at its ceiling dips below it now and then: without this its ceiling would flap)",
        between(1, 100_000),
    )
    throttled_probe: float = setting(
        0.25,
        "a VM using all of its ceiling on a contended resource asks for this fraction more than the ceiling "
        "(its use cannot show what it would take; 0 = trust the estimate)",
        between(0.0, 10.0),
    )
    estimate_wait_periods: int = setting(
        1, "periods to wait for the predictor's estimate before using last use instead", positive
    )
    ledger_file: str = setting("scheduler-ledger.npz", "coin ledger state file, relative to host.state_dir")
