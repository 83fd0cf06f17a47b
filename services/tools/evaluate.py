"""`rescoin evaluate`: run the policies and predictors over real traces, in one process.

The simulation reuses the real code: predictors from services/predictor, the
policies and the coin ledger from services/scheduler, the scheduler's floors,
and the one enforcement model (services/model/enforcement.py, the same the
sim host runs). Per period t of the trace:

1. each VM *demands* its trace row d_t (cpu cores, memory bytes, disk and net bytes/s);
2. the predictor, fed the use the VMs *achieved* so far (what a monitor
   measures), estimates the demand; the policy allocates from it and the coins;
3. the period's decision is the scheduler's own ``step.decide`` (throttled
   probe, policy, floors, fit hysteresis, shares and ceilings per enforcement
   mode), with the scheduler's own settings; the enforcement model divides
   the host by those weights up to those ceilings (memory: min(d, balloon
   target)); achieved use follows;
4. coins are credited from template − achieved use;
5. the memory pressure the next period's step sees is modelled (traces have
   no PSI): a VM whose balloon held it below its demand stalled for the
   share it lacked (``modelled_pressure``).

The host is sized by services/model/scenario.py (as the sim host is):
templates a fraction of each VM's provisioned size, capacity ``--contention``
of the way from Σ templates to the peak of Σ demand.

``--estimate`` swaps what the step is fed for the predictor's estimate, for
evaluation only (the live predictor is untouched): ``oracle`` is the true
demand of the period being decided, ``quantile`` a per-VM quantile of recent
use (``evaluate_oracle.RecentQuantile``). ``--bound`` adds the best any
allocation that honours entitlements can do (``evaluate_oracle``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np
from rescoin.proto import RESOURCES

from ..model.enforcement import ENFORCEMENT_MODES, MEM, enforce
from ..model.scenario import Scenario, build_scenario
from ..model.traces import PACKAGED, default_traces_dir, load_traces
from ..predictor.models import DEFAULT_PARAMS, PREDICTORS, make_predictor
from ..scheduler.ledger import CoinLedger
from ..scheduler.policy import COIN_NORMS, POLICIES, SHARE_FORMULAS, STARVED_GUARDS
from ..scheduler.pressure import MemoryPressure
from ..scheduler.settings import SchedulerSettings
from ..scheduler.step import decide
from .evaluate_oracle import RecentQuantile, bound_allocation, savers
from .evaluate_synthetic import is_synthetic, load_synthetic

HEADLINE = (  # the table `evaluate` prints and the report shows, in this order
    "entitlement_violations",
    "jain",
    "utilization",
    "min_satisfaction",
    "saver_burst_service",
    "hog_burst_service",
    "unmet_p95",
)
EPS = 1e-9
ORACLE, QUANTILE = "oracle", "quantile"  # evaluation-only estimates (not predictors the service can run)
ESTIMATES = (*PREDICTORS, QUANTILE, ORACLE)
LIVE_PREDICTOR = "ewma_dev"  # what the predictor service runs by default: rows fed it keep their plain label
QUANTILE_PARAMS = {"q": 0.9, "window": 12}  # the 90th percentile of the last hour


@dataclass
class Options:
    """What a run simulates: the scheduler's own settings, plus the predictors it feeds it."""

    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    predictors: list[str] = field(default_factory=lambda: ["ewma_dev"] * 4)  # per resource; or ESTIMATES
    beta: float = 1.0


def simulate(sc: Scenario, policy: str, opts: Options) -> dict[str, np.ndarray]:
    """Run one policy over the scenario; returns per-period arrays (T, n, 4)."""
    T, n, _ = sc.demand.shape
    settings = replace(opts.scheduler, policy=policy)
    models = [_model(name, r, opts) for r, name in enumerate(opts.predictors)]
    oracle = np.array([name == ORACLE for name in opts.predictors])
    ledger = CoinLedger(settings.coin_window)
    vms = [str(i) for i in range(n)]
    achieved_all = np.zeros_like(sc.demand)
    alloc_all = np.zeros_like(sc.demand)
    coins_all = np.zeros_like(sc.demand)
    shares_all = np.zeros_like(sc.demand)
    asked_all = np.zeros_like(sc.demand)
    last_use = np.minimum(sc.demand[0], sc.template)
    estimate = last_use.copy()
    fit_streak = np.full(4, settings.fit_after_periods)
    ceiling = np.full((n, 4), np.inf)
    pressure = MemoryPressure.unknown(n)
    for t in range(T):
        coins = ledger.balances(vms)
        if oracle.any():  # the true demand of the period being decided
            estimate = np.where(oracle[None], sc.demand[t], estimate)
        step = decide(estimate, last_use, sc.template, sc.capacity, coins, ceiling, fit_streak, settings, pressure)
        fit_streak, ceiling = step.fit_streak, step.ceiling_in_force
        achieved = enforce(sc.demand[t], step.shares, ceiling, sc.capacity)
        pressure = modelled_pressure(sc.demand[t, :, MEM], achieved[:, MEM])
        ledger.credit(t, vms, sc.template, achieved, sc.capacity)
        estimate = np.column_stack([m.update(achieved[:, r]) for r, m in enumerate(models)])
        last_use = achieved
        achieved_all[t], alloc_all[t], coins_all[t], shares_all[t] = achieved, step.alloc, coins, step.shares
        asked_all[t] = step.demand
    return {"achieved": achieved_all, "alloc": alloc_all, "coins": coins_all, "shares": shares_all, "asked": asked_all}


def _model(name: str, resource: int, opts: Options):  # type: ignore[no-untyped-def]
    """A predictor by name; ``quantile`` is evaluation-only, ``oracle`` predicts nothing (see simulate)."""
    if name == QUANTILE:
        return RecentQuantile(**QUANTILE_PARAMS)  # type: ignore[arg-type]
    if name == ORACLE:
        return make_predictor("last")  # its estimate is replaced by the true demand
    return make_predictor(name, _params(name, resource, opts))


def modelled_pressure(demand: np.ndarray, achieved: np.ndarray) -> MemoryPressure:
    """What a guest's pressure signals would say, from what a trace can tell: it is pressured when its
    balloon held it below its demand, stalled for the share of its demand it lacked (PSI some = full =
    100 × shortfall / demand, %). Traces have no faults and no kernel memory: those stay unknown (-1),
    so the floor is use + reserve. (n,) bytes in."""
    short = np.maximum(demand - achieved, 0.0)
    stall = np.where(demand > 0, 100.0 * short / np.where(demand > 0, demand, 1.0), 0.0)
    none = MemoryPressure.unknown(len(demand))
    return MemoryPressure(stall, stall, none.majflt, none.unreclaimable)


def _params(name: str, resource: int, opts: Options) -> dict[str, float]:
    params = dict(DEFAULT_PARAMS[name])
    if "alpha" in params:
        params["alpha"] = 0.7 if resource == 0 else 0.8  # the seed's values
    if name == "ewma_dev":
        params["beta"] = opts.beta
    return params


def metrics(sc: Scenario, run: dict[str, np.ndarray]) -> dict[str, float]:
    """The fairness and efficiency figures of one run (see docs/EVALUATION.md)."""
    d, a, tc = sc.demand, run["achieved"], sc.template
    cap = np.where(sc.capacity > 0, sc.capacity, 1.0)  # a resource the host lacks (PlanetLab's) has no demand
    served = np.minimum(a, d)
    entitled = np.minimum(d, tc[None])
    not_oversold = entitled.sum(axis=1) <= sc.capacity[None] * (1 + 1e-9)  # (T, 4)
    short = (served < entitled * (1 - 1e-6) - 1e-9) & not_oversold[:, None, :]
    violations = short.any(axis=2)  # VM-periods with any resource short of its entitlement
    demand_norm = d / cap  # resources made comparable
    served_norm = served / cap
    per_vm_sat = served_norm.sum(axis=(0, 2)) / np.maximum(demand_norm.sum(axis=(0, 2)), EPS)
    jain = per_vm_sat.sum() ** 2 / (len(per_vm_sat) * (per_vm_sat**2).sum())
    burst_d = np.maximum(d - tc[None], 0) / cap
    burst_s = np.maximum(served - tc[None], 0) / cap
    saver = savers(sc)  # VMs whose mean use is under their template in every resource the host has
    unmet = ((d - served) / cap).sum(axis=2)  # per VM-period, over resources
    return {
        "entitlement_violations": int(violations.sum()),
        "entitlement_violation_rate": float(violations.mean()),
        "jain": float(jain),
        "utilization": float(served_norm.sum() / max(demand_norm.sum(), EPS)),
        "min_satisfaction": float(per_vm_sat.min()),
        "saver_burst_service": float(burst_s[:, saver].sum() / max(burst_d[:, saver].sum(), EPS)),
        "hog_burst_service": float(burst_s[:, ~saver].sum() / max(burst_d[:, ~saver].sum(), EPS)),
        "unmet_p95": float(np.percentile(unmet, 95)),
        "savers": int(saver.sum()),
    }


def predictor_accuracy(sc: Scenario, opts: Options) -> dict[str, dict[str, dict[str, float]]]:
    """MAPE, under-estimation rate and slack of every predictor on the true demand."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    d = sc.demand
    for name in (*PREDICTORS, QUANTILE):
        out[name] = {}
        for r, res in enumerate(RESOURCES):
            model = _model(name, r, opts)
            est = np.empty_like(d[:, :, r])
            est[0] = d[0, :, r]
            for t in range(len(d) - 1):
                est[t + 1] = model.update(d[t, :, r])
            use = d[1:, :, r]
            e = est[1:]
            pos = use > 0
            out[name][res] = {
                "mape": float(np.mean(np.abs(e[pos] - use[pos]) / use[pos])),
                "under_rate": float(np.mean(use > e * (1 + 1e-9))),
                "slack": float(np.mean((e[pos] - use[pos]) / use[pos])),
            }
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SchedulerSettings()
    parser.add_argument(
        "--trace",
        help=f"a shipped set ({', '.join(PACKAGED)}), a folder of Bitbrains-format .csv.gz files or of PlanetLab "
        f"planetlab_<day>.csv.gz files (default: {default_traces_dir()}), or synthetic:SAVERS:HOGS[:SEED] "
        "(a week of generated savers and hogs: services/tools/evaluate_synthetic.py)",
    )
    parser.add_argument("--vms", type=int, help="use the first N VMs (default: all)")
    parser.add_argument("--periods", type=int, help="use the first N 5-minute periods (default: all)")
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument(
        "--enforcement",
        nargs="+",
        default=[defaults.enforcement],
        choices=ENFORCEMENT_MODES,
        help="ResCoin's enforcement mode(s); each is a row (the baselines have their own mechanism)",
    )
    parser.add_argument(
        "--share-formula",
        nargs="+",
        default=[defaults.share_formula],
        choices=list(SHARE_FORMULAS),
        help="ResCoin's shares formula(s); each is a row",
    )
    parser.add_argument("--predictors", action="store_true", help="also report every predictor's accuracy")
    parser.add_argument(
        "--estimate",
        nargs="+",
        default=[LIVE_PREDICTOR],
        choices=ESTIMATES,
        help="what every row's step is fed, each a row set (evaluation only): a predictor, 'quantile' (q 0.9 of "
        "the last 12 periods) or 'oracle' (the true demand); rows fed anything but ewma_dev are labelled name@estimate",
    )
    parser.add_argument(
        "--bound", action="store_true", help="add the best any allocation honouring entitlements can do (a row)"
    )
    parser.add_argument(
        "--template-fraction", type=float, default=0.3, help="template = this fraction of the provisioned size"
    )
    parser.add_argument("--contention", type=float, default=0.25, help="capacity: 0 = Σ templates, 1 = peak Σ demand")
    parser.add_argument(
        "--coin-window", type=int, nargs="+", default=[defaults.coin_window], help="k, periods of coins; each a row"
    )
    parser.add_argument(
        "--coin-norm",
        nargs="+",
        default=[defaults.coin_norm],
        choices=list(COIN_NORMS),
        help="how ResCoin turns a coin vector into a weight (scheduler.coin_norm); each a row",
    )
    parser.add_argument(
        "--starved-guard",
        nargs="+",
        default=[defaults.starved_guard],
        choices=STARVED_GUARDS,
        help="ResCoin's scheduler.starved_guard; each a row",
    )
    parser.add_argument("--beta", type=float, default=1.0, help="ewma_dev headroom in deviations")
    parser.add_argument("--no-leftover", action="store_true", help="do not hand unrequested capacity out by template")
    parser.add_argument(
        "--keep-ceilings", action="store_true", help="enforce ceilings even when the estimate fits the host"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--plot", metavar="DIR", help="write PNG plots to DIR (matplotlib)")
    parser.add_argument("--report", metavar="DIR", help="write DIR/index.html, one self-contained page (matplotlib)")


def variants(args: argparse.Namespace, base: SchedulerSettings) -> dict[str, tuple[str, SchedulerSettings]]:
    """Report row -> (policy, settings): ResCoin once per enforcement mode × shares formula × coin norm ×
    guard × coin window asked for, named plainly for the defaults and ``rescoin[mode,formula,...]``
    otherwise (what differs from the defaults: the norm, ``guard:…``; ``k=…`` where several windows are
    asked for); each baseline once, with the first window (credits and karma spend coins too)."""
    rows: dict[str, tuple[str, SchedulerSettings]] = {}
    defaults = SchedulerSettings()
    for policy in args.policies:
        if policy != "rescoin":
            rows[policy] = (policy, replace(base, coin_window=args.coin_window[0]))
            continue
        for mode, formula, norm, guard, window in itertools.product(
            args.enforcement, args.share_formula, args.coin_norm, args.starved_guard, args.coin_window
        ):
            formula = formula if mode != "ceilings" else base.share_formula  # ceilings: shares ∝ template
            settings = replace(
                base,
                enforcement=mode,
                share_formula=formula,
                coin_norm=norm,
                starved_guard=guard,
                coin_window=window,
            )
            extras = [norm] if norm != defaults.coin_norm else []
            extras += [f"guard:{guard}"] if guard != defaults.starved_guard else []
            extras += [f"k={window}"] if len(args.coin_window) > 1 and window != defaults.coin_window else []
            plain = mode == base.enforcement and formula == base.share_formula and not extras
            named = [mode] + ([] if mode == "ceilings" else [formula]) + extras
            rows.setdefault("rescoin" if plain else f"rescoin[{','.join(named)}]", (policy, settings))
    return rows


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    traces = load_synthetic(args.trace, args.vms) if is_synthetic(args.trace) else load_traces(args.trace, args.vms)
    sc = build_scenario(traces, args.periods, args.template_fraction, args.contention)
    base = replace(
        SchedulerSettings(),
        share_leftover=not args.no_leftover,
        release_when_fit=not args.keep_ceilings,
    )
    rows = variants(args, base)
    progress = sys.stderr.isatty() and not args.json
    runs = {}
    for estimate in args.estimate:
        for label, (policy, settings) in rows.items():
            name = label if estimate == LIVE_PREDICTOR else f"{label}@{estimate}"
            if progress:
                print(f"  simulating {name} ...", file=sys.stderr, end="\r", flush=True)
            runs[name] = simulate(sc, policy, Options(scheduler=settings, predictors=[estimate] * 4, beta=args.beta))
    certificate = None
    if args.bound:
        served, certificate = bound_allocation(sc)
        runs["bound"] = {"achieved": served, "alloc": served, "coins": np.zeros_like(served), "shares": served}
    report: dict[str, object] = {
        "scenario": {
            "vms": sc.demand.shape[1],
            "periods": sc.demand.shape[0],
            "capacity": sc.capacity.tolist(),
            "template_sum": sc.template.sum(axis=0).tolist(),
            "template_fraction": args.template_fraction,
            "contention": args.contention,
            "coin_window": args.coin_window[0] if len(args.coin_window) == 1 else args.coin_window,
            "beta": args.beta,
            "enforcement": base.enforcement,
            "share_formula": base.share_formula,
            "estimate": args.estimate,
        },
        "policies": {label: metrics(sc, r) for label, r in runs.items()},
    }
    if certificate is not None:
        report["bound"] = certificate
    if args.predictors:
        report["predictors"] = predictor_accuracy(sc, Options(scheduler=base, beta=args.beta))
    report["wall_s"] = round(time.monotonic() - started, 2)
    if args.plot:
        from .evaluate_plots import write_plots

        write_plots(args.plot, sc, runs, report)
    if args.report:
        from .evaluate_report import write_report

        print(f"report: {write_report(args.report, sc, runs, report, HEADLINE)}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_table(report)
    return 0


def print_table(report: dict) -> None:
    s = report["scenario"]
    print(
        f"{s['vms']} VMs × {s['periods']} periods, templates {s['template_fraction']:.0%} of size, "
        f"contention {s['contention']}, k={s['coin_window']}"
    )
    cols = HEADLINE
    width = max(9, *(len(name) + 1 for name in report["policies"]))
    print(f"{'policy':<{width}}" + "".join(f"{c[:18]:>20}" for c in cols))
    for name, m in report["policies"].items():
        cells = (f"{m[c]:>20.4f}" if isinstance(m[c], float) else f"{m[c]:>20}" for c in cols)
        print(f"{name:<{width}}" + "".join(cells))
    for name, per_res in report.get("predictors", {}).items():
        print(
            f"{name:<9}"
            + "  ".join(
                f"{res}: mape {v['mape']:.3f} under {v['under_rate']:.3f} slack {v['slack']:.3f}"
                for res, v in per_res.items()
            )
        )
    if "bound" in report:
        b = report["bound"]
        print(
            f"bound: lowest satisfaction {b['lowest']:.4f} (no allocation honouring entitlements exceeds "
            f"{b['lowest_upper']:.4f}); savers' burst service at most {b['saver_upper']:.4f}"
        )
    print(f"({report['wall_s']} s)", file=sys.stderr)
