"""Figures for `rescoin evaluate`: PNG files for ``--plot DIR``, and the images of ``--report DIR``.

Each ``*_figure`` function builds one matplotlib figure (no display needed);
``write_plots`` saves the classic three, ``png`` renders one to bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

PLOTTED_METRICS = ("jain", "utilization", "min_satisfaction", "saver_burst_service", "hog_burst_service")
RESOURCE_UNITS = (("cpu", "cores", 1.0), ("mem", "GiB", 2.0**30), ("disk", "MB/s", 1e6), ("net", "MB/s", 1e6))
DPI = 110
TWO_DAYS = 576  # 5-minute periods
STACKED = 8  # VMs drawn one by one in a stacked allocation; the rest are summed as "others"


def write_plots(folder: str, scenario, runs: dict[str, dict[str, np.ndarray]], report: dict) -> list[Path]:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    window = slice(0, min(TWO_DAYS, scenario.demand.shape[0]))
    figures = {"metrics.png": metrics_figure(report)}
    if "rescoin" in runs:
        figures["allocation_vs_demand.png"] = allocation_figure(scenario, runs["rescoin"], window)
        figures["coins.png"] = coins_figure(scenario, runs["rescoin"])
    written = []
    for name, fig in figures.items():
        fig.savefig(out / name, dpi=DPI)
        plt.close(fig)
        written.append(out / name)
    return written


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes (and closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def allocation_figure(sc, run: dict[str, np.ndarray], window: slice, resource: int = 0) -> Figure:
    """Demand, achieved use and allocation over ``window`` for the three VMs that burst most on ``resource``."""
    name, unit, scale = RESOURCE_UNITS[resource]
    burst = (sc.demand[window, :, resource] - sc.template[None, :, resource]).clip(min=0).sum(axis=0)
    vms = np.argsort(burst)[-3:]
    x = np.arange(sc.demand.shape[0])[window]
    fig, axes = plt.subplots(len(vms), 1, figsize=(10, 2.6 * len(vms)), sharex=True)
    for ax, i in zip(np.atleast_1d(axes), vms, strict=True):
        ax.plot(x, sc.demand[window, i, resource] / scale, label="demand", lw=1)
        ax.plot(x, run["achieved"][window, i, resource] / scale, label="achieved (rescoin)", lw=1)
        ax.plot(x, run["alloc"][window, i, resource] / scale, label="allocation (rescoin)", lw=0.8, ls="--")
        ax.axhline(sc.template[i, resource] / scale, color="grey", lw=0.8, label="template")
        ax.set_ylabel(f"VM {sc.names[i]}\n{name} {unit}")
    np.atleast_1d(axes)[0].legend(loc="upper right", fontsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("period (5 min)")
    fig.tight_layout()
    return fig


def stacked_allocation_figure(sc, run: dict[str, np.ndarray], window: slice, resource: int) -> Figure:
    """ResCoin's allocation of ``resource`` to every VM over ``window``, stacked, against capacity and Σ demand."""
    name, unit, scale = RESOURCE_UNITS[resource]
    alloc = run["alloc"][window, :, resource] / scale  # (t, n)
    biggest = np.argsort(alloc.sum(axis=0))[::-1]
    shown, rest = biggest[:STACKED], biggest[STACKED:]
    layers = [alloc[:, i] for i in shown] + ([alloc[:, rest].sum(axis=1)] if len(rest) else [])
    labels = [f"VM {sc.names[i]}" for i in shown] + (["others"] if len(rest) else [])
    x = np.arange(sc.demand.shape[0])[window]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    ax.stackplot(x, layers, labels=labels, lw=0, alpha=0.85)
    ax.plot(x, sc.demand[window, :, resource].sum(axis=1) / scale, color="black", lw=0.8, label="Σ demand")
    ax.axhline(sc.capacity[resource] / scale, color="red", lw=1, ls="--", label="capacity")
    ax.set_xlabel("period (5 min)")
    ax.set_ylabel(f"{name} {unit}")
    ax.set_xlim(x[0], x[-1])
    ax.legend(loc="upper left", fontsize=7, ncol=5)
    fig.tight_layout()
    return fig


def coins_figure(sc, run: dict[str, np.ndarray]) -> Figure:
    coins = np.linalg.norm(np.maximum(run["coins"], 0), axis=2)  # (T, n): the coin weight
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(coins, lw=0.6)
    ax.set_xlabel("period (5 min)")
    ax.set_ylabel("coin weight ‖max(coins, 0)‖₂")
    ax.set_title(f"Coin balances of the {coins.shape[1]} VMs")
    fig.tight_layout()
    return fig


def metrics_figure(report: dict) -> Figure:
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
    return fig


def satisfaction_figure(names: list[str], satisfaction: dict[str, np.ndarray]) -> Figure:
    """Each VM's satisfaction under each policy, VMs ordered by the first policy's."""
    order = np.argsort(next(iter(satisfaction.values())))
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for label, sat in satisfaction.items():
        ax.plot(np.arange(len(order)), sat[order], marker="o", ms=3, lw=0.6, label=label)
    ax.set_xticks(np.arange(len(order)), [names[i] for i in order], rotation=90, fontsize=6)
    ax.set_xlabel("VM (ordered by the first policy's satisfaction)")
    ax.set_ylabel("served / demanded")
    ax.legend(fontsize=7, ncol=len(satisfaction))
    fig.tight_layout()
    return fig
