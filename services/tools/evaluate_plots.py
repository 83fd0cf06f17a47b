"""PNG plots for `rescoin evaluate --plot DIR` (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

PLOTTED_METRICS = ("jain", "utilization", "min_satisfaction", "saver_burst_service", "hog_burst_service")


def write_plots(folder: str, scenario, runs: dict[str, dict[str, np.ndarray]], report: dict) -> list[Path]:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = [_allocation(out, scenario, runs), _coins(out, scenario, runs), _metrics(out, report)]
    return [p for p in written if p is not None]


def _allocation(out: Path, sc, runs) -> Path | None:
    if "rescoin" not in runs:
        return None
    burst = (sc.demand[:, :, 0] - sc.template[None, :, 0]).clip(min=0).sum(axis=0)
    vms = np.argsort(burst)[-3:]  # the three VMs that burst most
    window = slice(0, min(576, sc.demand.shape[0]))  # two days of 5-minute periods
    fig, axes = plt.subplots(len(vms), 1, figsize=(10, 2.6 * len(vms)), sharex=True)
    for ax, i in zip(np.atleast_1d(axes), vms, strict=True):
        ax.plot(sc.demand[window, i, 0], label="demand", lw=1)
        ax.plot(runs["rescoin"]["achieved"][window, i, 0], label="achieved (rescoin)", lw=1)
        ax.plot(runs["rescoin"]["alloc"][window, i, 0], label="allocation (rescoin)", lw=0.8, ls="--")
        ax.axhline(sc.template[i, 0], color="grey", lw=0.8, label="template")
        ax.set_ylabel(f"VM {sc.names[i]}\ncpu cores")
    np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("period (5 min)")
    fig.tight_layout()
    path = out / "allocation_vs_demand.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _coins(out: Path, sc, runs) -> Path | None:
    if "rescoin" not in runs:
        return None
    coins = np.linalg.norm(np.maximum(runs["rescoin"]["coins"], 0), axis=2)  # (T, n): the coin weight
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(coins, lw=0.6)
    ax.set_xlabel("period (5 min)")
    ax.set_ylabel("coin weight ‖max(coins, 0)‖₂")
    ax.set_title("Coin balances of the 31 Bitbrains VMs")
    fig.tight_layout()
    path = out / "coins.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _metrics(out: Path, report: dict) -> Path:
    policies = list(report["policies"])
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.8 / len(policies)
    x = np.arange(len(PLOTTED_METRICS))
    for k, name in enumerate(policies):
        ax.bar(x + k * width, [report["policies"][name][m] for m in PLOTTED_METRICS], width, label=name)
    ax.set_xticks(x + 0.4 - width / 2, PLOTTED_METRICS, fontsize=8)
    ax.set_ylim(0.5, 1.01)
    ax.legend(fontsize=7, ncol=len(policies))
    fig.tight_layout()
    path = out / "metrics.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
