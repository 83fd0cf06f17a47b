"""Real VM traces (shipped in ``data/traces/``) as demand in ResCoin's units.

Bitbrains GWA-T-12 "Rnd" files: one VM each, ``;``+TAB separated, 11 columns,
a sample every 300 s with jittered timestamps (in seconds, despite the header)
and a few gaps. Every VM is put on one common 300 s grid, holding the last
value across gaps, so VMs line up period by period. Units out: cpu cores
(usage MHz / MHz per core), memory bytes, disk read+write bytes/s, network
rx+tx bytes/s. CPU usage can exceed the provisioned capacity in the source (up
to ~112 %); it is kept, as real demand.

PlanetLab/CoMon CPU traces (the CloudSim workload, ``planetlab_<YYYYMMDD>.csv.gz``,
one file per day, one row per VM: ``vm,t000,…,t287``, integer CPU percent of
the VM per 5-minute interval): the VMs present on every day of the folder,
days concatenated in date order (they need not be consecutive). CPU only: a VM
is one vCPU (cores = percent / 100); memory, disk and network have no demand and
no size, so a host of them has zero capacity there and those columns play no
part (no coins, no satisfaction).
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
BITBRAINS = "bitbrains_rnd_2013-08"
PLANETLAB = "planetlab_2011-03"
PACKAGED = {"bitbrains": BITBRAINS, "planetlab": PLANETLAB}  # short names for the shipped sets
PLANETLAB_GLOB = "planetlab_*.csv.gz"
PLANETLAB_SLOTS = 288  # 5-minute intervals per day file

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
    """The Bitbrains month shipped as package data (``data/traces/``, its README)."""
    return _packaged_traces_dir()


def traces_dir(name: str | os.PathLike[str] | None) -> Path:
    """A folder of traces: a shipped set's short name (``bitbrains``, ``planetlab``) or folder name, a
    path, or None (``default_traces_dir``). The one way every program names traces (``[simhost]
    traces_dir``, ``rescoin evaluate --trace``)."""
    if name is None or str(name) == "":
        return default_traces_dir()
    key = str(name)
    if key in PACKAGED or key in PACKAGED.values():
        return _packaged_traces_dir(PACKAGED.get(key, key))
    return Path(name)


def load_traces(traces: str | os.PathLike[str] | None = None, n_vms: int | None = None) -> list[Trace]:
    """Any supported trace folder (``traces_dir``): PlanetLab day files if it holds
    ``planetlab_*.csv.gz``, Bitbrains files otherwise."""
    folder = traces_dir(traces)
    if folder.is_dir() and any(folder.glob(PLANETLAB_GLOB)):
        return load_planetlab(folder, n_vms)
    return load_bitbrains(folder, None, n_vms)


@functools.cache
def _packaged_traces_dir(name: str = BITBRAINS) -> Path:
    packaged = resources.files(__package__ or "rescoin.services.model") / "data" / "traces" / name
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
    traces: str | os.PathLike[str] | None = None, vm_ids: list[str] | None = None, n_vms: int | None = None
) -> list[Trace]:
    """Load Bitbrains traces onto one 300 s grid spanning all of them.

    ``vm_ids`` picks files by VM id (``"7"`` → ``7.csv.gz``); otherwise the
    first ``n_vms`` files by numeric id (all if None).
    """
    folder = traces_dir(traces)
    if not folder.is_dir():
        raise FileNotFoundError(f"no trace folder at {folder} ([simhost] traces_dir, or --trace)")
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


def read_planetlab_day(path: Path) -> tuple[list[str], np.ndarray]:
    """One PlanetLab day file: (VM names, CPU percent (vms, 288))."""
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        header = next(f, "").rstrip("\n").split(",")
        if len(header) != PLANETLAB_SLOTS + 1 or header[0] != "vm":
            raise ValueError(f"{path}: expected a header vm,t000,…,t{PLANETLAB_SLOTS - 1:03d}")
        rows = [line.rstrip("\n").rsplit(",", PLANETLAB_SLOTS) for line in f if line.strip()]
    if any(len(r) != PLANETLAB_SLOTS + 1 for r in rows):
        raise ValueError(f"{path}: every row needs a name and {PLANETLAB_SLOTS} values")
    return [r[0] for r in rows], np.array([r[1:] for r in rows], dtype=float).reshape(len(rows), PLANETLAB_SLOTS)


def load_planetlab(traces_dir: str | os.PathLike[str], n_vms: int | None = None) -> list[Trace]:
    """PlanetLab day files (``planetlab_<YYYYMMDD>.csv.gz``) as CPU-only traces: the VMs present on every
    day, sorted by name (the first ``n_vms`` of them if given), days concatenated in date order."""
    folder = Path(traces_dir)
    paths = sorted(folder.glob(PLANETLAB_GLOB))
    if not paths:
        raise FileNotFoundError(f"no {PLANETLAB_GLOB} traces in {folder}")
    days = [read_planetlab_day(p) for p in paths]
    common = sorted(set.intersection(*(set(names) for names, _ in days)))
    if not common:
        raise ValueError(f"{folder}: no VM is present on every day")
    common = common[:n_vms] if n_vms else common
    pct = np.concatenate(
        [values[[names.index(vm) for vm in common]] for names, values in days], axis=1
    )  # (vms, days × 288)
    out = []
    for vm, row in zip(common, pct, strict=True):
        demand = np.zeros((len(row), 4))
        demand[:, 0] = np.maximum(row, 0.0) / 100.0
        half = np.full(len(row), 0.5)
        out.append(Trace(vm, str(folder), demand, np.array([1.0, 0.0, 0.0, 0.0]), half, half))
    return out
