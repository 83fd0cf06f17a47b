"""How the operator tools show amounts: one unit per resource column, the same in `tap` and `top`.

Wire values are in base units (cores, bytes, bytes/s); a column shows them
scaled to the unit in its heading, so a cell is a bare number.
"""

from __future__ import annotations

import math

from rescoin.proto import RESOURCES

# (unit in a heading, wire units per displayed unit, decimals): cpu cores, mem MiB, disk and net MB/s
UNITS: tuple[tuple[str, float, int], ...] = (("cores", 1.0, 3), ("MiB", 2.0**20, 0), ("MB/s", 1e6, 3), ("MB/s", 1e6, 3))
UNKNOWN = "–"  # nothing heard yet for this cell


def heading(resource: int) -> str:
    """``cpu cores``, ``mem MiB``, …: a column's resource and unit."""
    return f"{RESOURCES[resource]} {UNITS[resource][0]}"


def amount(value: float, resource: int) -> str:
    """A resource amount in its column unit; ``none`` for a ceiling of -1 (no limit), – if unknown (NaN)."""
    if math.isnan(value):
        return UNKNOWN
    if value < 0:
        return "none"
    _unit, scale, decimals = UNITS[resource]
    return f"{value / scale:.{decimals}f}"


def coins(value: float) -> str:
    """A coin balance: capacity-normalized, signed (a VM that used more than its template is negative)."""
    return UNKNOWN if math.isnan(value) else f"{value:+.3f}"


def capacity_line(capacity) -> str:
    """``2.000 cores, 7629 MiB, 100.000 MB/s, 100.000 MB/s``: a host's capacity with its units."""
    return ", ".join(f"{amount(v, r)} {UNITS[r][0]}" for r, v in enumerate(capacity))


def vm_label(vm: str, name: str = "") -> str:
    """What a person calls a VM: its domain name when known, else the UUID's first 8 characters."""
    return name or vm[:8]
