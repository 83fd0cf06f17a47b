"""Real VM traces (shipped in ``data/traces/``) as demand in ResCoin's units.

Bitbrains GWA-T-12 "Rnd" files: one VM each, ``;``+TAB separated, 11 columns,
a sample every 300 s with jittered timestamps (in seconds, despite the header)
and a few gaps. Every VM is put on one common 300 s grid, holding the last
value across gaps, so VMs line up period by period. Units out: cpu cores
(usage MHz / MHz per core), memory bytes, disk read+write bytes/s, network
rx+tx bytes/s. CPU usage can exceed the provisioned capacity in the source (up
to ~112 %); it is kept, as real demand.
"""

from __future__ import annotations

import atexit
import functools
import os
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

STEP_S = 300
KIB = 1024.0
TRACES_ENV = "RESCOIN_TRACES"
BITBRAINS = "bitbrains_rnd_2013-08"

# columns of a Bitbrains row
TS, CORES, CAP_MHZ, USE_MHZ, _PCT, MEM_CAP_KB, MEM_USE_KB, RD_KBPS, WR_KBPS, RX_KBPS, TX_KBPS = range(11)


@dataclass(frozen=True)
class Trace:
    """One VM's trace on the common grid."""

    vm_id: str
    path: str
    demand: np.ndarray  # (T, 4): cores, bytes, bytes/s, bytes/s
    provisioned: np.ndarray  # (4,): vcpus, max memory, peak disk, peak net
    read_share: np.ndarray  # (T,): reads / (reads + writes), 0.5 when idle
    rx_share: np.ndarray  # (T,): received / (received + sent), 0.5 when idle


def default_traces_dir() -> Path:
    """$RESCOIN_TRACES, else the Bitbrains month shipped as package data (``data/traces/``, its README)."""
    env = os.environ.get(TRACES_ENV)
    if env:
        return Path(env)
    return _packaged_traces_dir()


@functools.cache
def _packaged_traces_dir() -> Path:
    packaged = resources.files(__package__ or "rescoin.services.model") / "data" / "traces" / BITBRAINS
    if isinstance(packaged, Path):  # an ordinary install or a checkout: the files are on disk already
        return packaged
    extracted = ExitStack()  # a zipped install: copied out once, removed at exit
    atexit.register(extracted.close)
    return extracted.enter_context(resources.as_file(packaged))


def _share(part: np.ndarray, other: np.ndarray) -> np.ndarray:
    total = part + other
    return np.where(total > 0, part / np.where(total > 0, total, 1.0), 0.5)


def read_bitbrains_file(path: Path) -> np.ndarray:
    """The raw rows of one file, (rows, 11) float64, sorted by time."""
    rows = np.loadtxt(path, delimiter=";", skiprows=1, ndmin=2)
    if rows.shape[1] != 11:
        raise ValueError(f"{path}: expected 11 columns, got {rows.shape[1]}")
    return rows[np.argsort(rows[:, TS], kind="stable")]


def load_bitbrains(
    traces_dir: str | os.PathLike[str] | None = None, vm_ids: list[str] | None = None, n_vms: int | None = None
) -> list[Trace]:
    """Load Bitbrains traces onto one 300 s grid spanning all of them.

    ``vm_ids`` picks files by VM id (``"7"`` → ``7.csv.gz``); otherwise the
    first ``n_vms`` files by numeric id (all if None).
    """
    folder = Path(traces_dir) if traces_dir else default_traces_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"no trace folder at {folder} (set {TRACES_ENV} or --trace)")
    if vm_ids:
        paths = [folder / f"{vm}.csv.gz" for vm in vm_ids]
    else:
        paths = sorted(folder.glob("*.csv.gz"), key=lambda p: (len(p.name), p.name))
        paths = paths[:n_vms] if n_vms else paths
    if not paths:
        raise FileNotFoundError(f"no *.csv.gz traces in {folder}")
    raw = [read_bitbrains_file(p) for p in paths]
    start = min(r[0, TS] for r in raw)
    end = max(r[-1, TS] for r in raw)
    grid = start + STEP_S * np.arange(int((end - start) // STEP_S) + 1)
    return [_on_grid(p, r, grid) for p, r in zip(paths, raw, strict=True)]


def _on_grid(path: Path, rows: np.ndarray, grid: np.ndarray) -> Trace:
    # hold the last value (and the first one before the trace starts)
    idx = np.clip(np.searchsorted(rows[:, TS], grid + STEP_S / 2, side="right") - 1, 0, len(rows) - 1)
    r = rows[idx]
    mhz_per_core = np.where(r[:, CORES] > 0, r[:, CAP_MHZ] / np.maximum(r[:, CORES], 1), 1.0)
    reads, writes = r[:, RD_KBPS] * KIB, r[:, WR_KBPS] * KIB
    rx, tx = r[:, RX_KBPS] * KIB, r[:, TX_KBPS] * KIB
    demand = np.stack(
        [
            r[:, USE_MHZ] / np.where(mhz_per_core > 0, mhz_per_core, 1.0),
            r[:, MEM_USE_KB] * KIB,
            reads + writes,
            rx + tx,
        ],
        axis=1,
    )
    demand = np.maximum(demand, 0.0)
    provisioned = np.array(
        [rows[:, CORES].max(), rows[:, MEM_CAP_KB].max() * KIB, demand[:, 2].max(), demand[:, 3].max()]
    )
    return Trace(path.name.split(".")[0], str(path), demand, provisioned, _share(reads, writes), _share(rx, tx))
