"""One scheduling period of the core at 100 / 1k / 10k VMs: allocate + predictor update + coin ledger.
Target: ≤ 5 ms at 10k VMs. Also the loop reference of `allocate`, as a ratio."""

from __future__ import annotations

import numpy as np
from common import ms, timed, write_section
from rescoin.services.predictor.models import make_predictor
from rescoin.services.scheduler import allocate, allocate_loop
from rescoin.services.scheduler.ledger import CoinLedger


def inputs(n: int, rng: np.random.Generator):
    template = rng.uniform(0.5, 2, (n, 4))
    demand = template * rng.uniform(0, 2.5, (n, 4))
    capacity = template.sum(axis=0) * 1.2
    coins = rng.normal(0, 1, (n, 4))
    return demand, template, capacity, coins


def measure(n: int, rng: np.random.Generator) -> tuple[str, tuple[float, float, float]]:
    """One table row for n VMs, and the whole-period timing."""
    demand, template, capacity, coins = inputs(n, rng)
    vms = [str(i) for i in range(n)]
    predictors = [make_predictor("ewma_dev") for _ in range(4)]
    ledger = CoinLedger(288)
    t_alloc = timed(lambda: allocate(demand, template, capacity, coins, share_leftover=True))
    t_pred = timed(lambda: [p.update(demand[:, r]) for r, p in enumerate(predictors)])
    period = [0]

    def credit():
        period[0] += 1
        ledger.credit(period[0], vms, template, demand, capacity)

    t_ledger = timed(credit)

    def one_period():
        est = np.column_stack([p.update(demand[:, r]) for r, p in enumerate(predictors)])
        credit()
        allocate(est, template, capacity, ledger.balances(vms), share_leftover=True)

    t_all = timed(one_period)
    loop = ratio = "—"
    if n <= 1_000:
        t_loop = timed(
            lambda: allocate_loop(demand, template, capacity, coins, share_leftover=True), repeat=3, warmup=1
        )
        loop, ratio = ms(t_loop), f"{t_loop[0] / t_alloc[0]:.0f}×"
    row = f"| {n:,} | {ms(t_alloc)} | {ms(t_pred)} | {ms(t_ledger)} | {ms(t_all)} | {loop} | {ratio} |"
    return row, t_all


def main() -> None:
    rng = np.random.default_rng(1)
    rows = [
        "| VMs | allocate | predictor update (4 resources) | ledger credit | one period in all | loop allocate | loop / vectorized |",
        "| ---: | --- | --- | --- | --- | --- | ---: |",
    ]
    for n in (100, 1_000, 10_000):
        row, t_all = measure(n, rng)
        rows.append(row)
    verdict = "met" if t_all[0] <= 5e-3 else "missed"
    body = (
        "\n".join(rows)
        + f"\n\nTarget ≤ 5 ms per period at 10k VMs × 4 resources: **{verdict}** ({t_all[0] * 1e3:.2f} ms median)."
    )
    write_section("Scheduler and predictor core", body)


if __name__ == "__main__":
    main()
