"""`rescoin evaluate --report DIR`: one self-contained HTML page (DIR/index.html), images inline.

Sections: the scenario; the headline metrics per policy (the table evaluate
prints, and a chart); each VM's satisfaction per policy; and the most
contended week of the trace — ResCoin's allocation of the most contended
resource to every VM over time, and the three VMs that burst most. The page
loads nothing from anywhere: PNGs are embedded as base64 data URIs.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
from rescoin.proto import RESOURCES

from . import evaluate_plots as plots

WEEK = 7 * 24 * 12  # 5-minute periods
STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
img { max-width: 100%; }
.note { color: #555; font-size: 0.9em; }
"""


def vm_satisfaction(sc, run: dict[str, np.ndarray]) -> np.ndarray:
    """(n,): each VM's served / demanded over the run, resources made comparable by capacity
    (the per-VM figure whose minimum is ``min_satisfaction`` in ``metrics``)."""
    served = np.minimum(run["achieved"], sc.demand) / sc.capacity
    demanded = (sc.demand / sc.capacity).sum(axis=(0, 2))
    return served.sum(axis=(0, 2)) / np.maximum(demanded, 1e-9)


def contended_week(sc) -> tuple[slice, int]:
    """The week (or the whole trace, if shorter) with the most periods whose Σ demand exceeds capacity,
    on the resource that is contended most often; returns (window, resource)."""
    over = sc.demand.sum(axis=1) > sc.capacity  # (T, 4)
    resource = int(np.argmax(over.sum(axis=0)))
    length = min(WEEK, len(over))
    per_window = np.convolve(over[:, resource], np.ones(length), mode="valid")  # contended periods per window
    start = int(np.argmax(per_window))
    return slice(start, start + length), resource


def write_report(
    folder: str, sc, runs: dict[str, dict[str, np.ndarray]], report: dict, headline: tuple[str, ...]
) -> Path:
    """Write DIR/index.html and return its path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    satisfaction = {label: vm_satisfaction(sc, run) for label, run in runs.items()}
    window, resource = contended_week(sc)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>rescoin evaluate</title>",
        f"<style>{STYLE}</style></head><body><h1>rescoin evaluate</h1>",
        _scenario(report["scenario"]),
        "<h2 id='metrics'>Headline metrics per policy</h2>",
        _table(
            ["policy", *headline],
            [[label, *(m[c] for c in headline)] for label, m in report["policies"].items()],
        ),
        "<p class='note'>Definitions: docs/EVALUATION.md. Entitlement violations: VM-periods served less than "
        "min(demand, template) on a host that was not oversold.</p>",
        _image(plots.metrics_figure(report), "headline metrics per policy"),
        "<h2 id='satisfaction'>Per-VM satisfaction</h2>",
        "<p class='note'>Served / demanded over the whole run, each resource weighted by the host's capacity.</p>",
        _image(plots.satisfaction_figure(sc.names, satisfaction), "satisfaction of every VM per policy"),
        _table(
            ["VM", *satisfaction],
            [[name, *(sat[i] for sat in satisfaction.values())] for i, name in enumerate(sc.names)],
        ),
    ]
    if "rescoin" in runs:
        span = f"periods {window.start}–{window.stop - 1} (5 min each)"
        parts += [
            "<h2 id='week'>A contended week</h2>",
            f"<p class='note'>{span}: the week with the most periods whose total {RESOURCES[resource]} demand exceeds "
            f"the host's capacity. ResCoin's allocation of {RESOURCES[resource]}, stacked over VMs:</p>",
            _image(
                plots.stacked_allocation_figure(sc, runs["rescoin"], window, resource),
                f"allocation of {RESOURCES[resource]} over the contended week",
            ),
            "<p class='note'>The three VMs that burst most in that week: demand, use achieved, allocation.</p>",
            _image(
                plots.allocation_figure(sc, runs["rescoin"], window, resource), "allocation against demand of three VMs"
            ),
            "<h2 id='coins'>Coins</h2>",
            _image(plots.coins_figure(sc, runs["rescoin"]), "coin weight of every VM over time"),
        ]
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _scenario(s: dict) -> str:
    return (
        f"<p>{s['vms']} VMs × {s['periods']} periods of 5 minutes; templates {s['template_fraction']:.0%} of each "
        f"VM's size; contention {s['contention']} (0 = capacity is Σ templates, 1 = the peak of Σ demand); "
        f"coin window k = {s['coin_window']}; ResCoin's enforcement {html.escape(s['enforcement'])}, "
        f"shares formula {html.escape(s['share_formula'])}.</p>"
    )


def _cell(value: object) -> str:
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return f"<td>{html.escape(text)}</td>"


def _table(head: list[str], rows: list[list[object]]) -> str:
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _image(fig, alt: str) -> str:
    data = base64.b64encode(plots.png(fig)).decode("ascii")
    return f"<p><img alt='{html.escape(alt)}' src='data:image/png;base64,{data}'></p>"
