"""`rescoin tap [TOPIC…]`: watch bus topics live, as tables (VM × resource, with units) or JSON lines.

A table has a column per (matrix, resource) — ``usage.cpu``, ``alloc.mem``, … —
with the unit in its heading; by default each kind's main matrices, which fit
120 columns. VMs are named by the domain names the host's last `sample`
carried (other kinds carry UUIDs only), else by UUID prefix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq
from rescoin.proto import RESOURCES, Envelope
from rescoin.proto.envelope import header_map

from . import units
from .buses import add_bus_arguments, fleet_from_args, open_subscription, receive

# kind -> (label, wire key) of its per-VM matrices, in display order
MATRICES: dict[str, tuple[tuple[str, str], ...]] = {
    "sample": (("template", "tc"), ("usage", "au")),
    "estimate": (("estimate", "est"),),
    "alloc": (("alloc", "alloc"), ("coins", "coins"), ("shares", "shares"), ("ceiling", "ceil")),
    "applied": (("ceiling", "set"), ("before", "before"), ("weight", "weight")),
}
DEFAULT_MATRICES = {
    "sample": ("template", "usage"),
    "estimate": ("estimate",),
    "alloc": ("alloc", "coins"),
    "applied": ("ceiling",),
}
CELL = 11  # characters per number column: 8 of them and a VM name fit 120 columns
NAME = 16


@dataclass(frozen=True)
class Column:
    label: str  # the matrix as a person calls it: usage, alloc, coins, …
    key: str  # its wire key: au, alloc, coins, …
    resource: int

    @property
    def heading(self) -> str:
        if self.label == "coins":
            return RESOURCES[self.resource]  # coins have no unit
        if self.label == "weight" and self.resource == 2:
            return "disk bfq"  # a BFQ weight, 1–1000
        return units.heading(self.resource)

    def cell(self, value: float) -> str:
        if self.label == "coins":
            return units.coins(value)
        if self.label == "weight" and self.resource == 2:
            return f"{value:.0f}"
        return units.amount(value, self.resource)


LABELS = tuple(dict.fromkeys(label for cols in MATRICES.values() for label, _key in cols))


def parse_columns(text: str) -> list[str]:
    """``usage,alloc.cpu`` -> ["usage", "alloc.cpu"], refusing unknown words (an argparse type)."""
    picked = [word.strip() for word in text.split(",") if word.strip()]
    known = {*LABELS, *RESOURCES, *(f"{label}.{res}" for label in LABELS for res in RESOURCES)}
    unknown = [word for word in picked if word not in known]
    if unknown or not picked:
        raise argparse.ArgumentTypeError(
            f"unknown column {', '.join(unknown) or '(none given)'}: name a matrix ({', '.join(LABELS)}), "
            f"a resource ({', '.join(RESOURCES)}) or both (usage.cpu)"
        )
    return picked


def columns_for(kind: str, picked: Sequence[str] | None = None) -> list[Column]:
    """The columns a table of ``kind`` shows: its defaults, or what ``picked`` names that this kind has.

    A resource alone means that resource of the kind's default matrices; a label alone, all four of
    its resources. Columns are grouped by matrix (in the order first named), resources in wire order."""
    keys = dict(MATRICES[kind])
    wanted: dict[str, set[int]] = {}
    for word in picked or DEFAULT_MATRICES[kind]:
        label, _, res = word.partition(".")
        if label in RESOURCES:
            for default in DEFAULT_MATRICES[kind]:
                wanted.setdefault(default, set()).add(RESOURCES.index(label))
        elif label in keys:
            wanted.setdefault(label, set()).update([RESOURCES.index(res)] if res else range(4))
    return [Column(label, keys[label], r) for label, rs in wanted.items() for r in sorted(rs)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topics", nargs="*", help="topic prefixes: sample/, alloc/h1/, hb/ … (default: everything)")
    add_bus_arguments(parser)
    parser.add_argument("--host", action="append", default=[], help="only these hosts (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON object per message and line")
    parser.add_argument(
        "--columns",
        type=parse_columns,
        metavar="LIST",
        help=f"table columns, comma-separated: a matrix ({', '.join(LABELS)}), a resource "
        f"({', '.join(RESOURCES)}) or both (alloc.cpu); default: each kind's main matrices",
    )
    parser.add_argument("--count", type=int, help="exit after this many messages")
    parser.add_argument("--timeout", type=float, help="exit after this many seconds without a message")


def to_jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def as_json(env: Envelope) -> str:
    return json.dumps({"topic": env.topic.decode(), **header_map(env), "body": to_jsonable(env.body.to_wire())})


def table(env: Envelope, names: Mapping[str, str] | None = None, picked: Sequence[str] | None = None) -> str:
    """A readable rendering: one line for hb and guest reports, a VM × column table for batches.

    ``names`` maps VM UUIDs to domain names (a sample's own names take precedence)."""
    head = f"── {env.topic.decode()}  period {env.period}  from {env.src}"
    body = env.body
    if env.kind == "hb":
        counters = " ".join(f"{k}={v}" for k, v in sorted(body.counters.items()))
        return f"{head}  [{body.state}]  {counters}" + (f"\n   last error: {body.errors[-1]}" if body.errors else "")
    if env.kind == "guest.mem":
        return f"{head}  used {body.mem_used / 2**20:.0f} MiB of {body.mem_total / 2**20:.0f} MiB"
    wire = body.to_wire()
    known = dict(names or {})
    if env.kind == "sample":
        known.update(zip(wire["vms"], wire["names"], strict=True))
    if env.kind == "sample":
        head += f"  capacity {units.capacity_line(wire['C'])}"
    elif env.kind == "alloc":
        contended = [res for res, mode in zip(RESOURCES, wire["mode"], strict=True) if mode == "contended"]
        head += f"  policy {wire['policy']}  enforce {wire['enforce']}  contended: {' '.join(contended) or 'none'}"
        head += "  (no estimate: from last use)" if wire["est_src"] == "last_use" else ""
    elif env.kind == "applied":
        head += (
            f"  {wire['mode']}  writes {wire['writes']}  latency {wire['latency_s'] * 1e3:.1f} ms"
            f"  errors {len(wire['errors'])}"
        )
    cols = columns_for(env.kind, picked)
    if not cols:
        return head
    spans = [(label, sum(c.label == label for c in cols)) for label in dict.fromkeys(c.label for c in cols)]
    groups = "".join(f" {label:─^{n * CELL - 1}}" for label, n in spans)  # ─── usage ─── over its columns
    lines = [head, f"   {'':<{NAME}}{groups}"]
    lines.append(f"   {'vm':<{NAME}}" + "".join(f"{col.heading:>{CELL}}" for col in cols))
    for i, vm in enumerate(wire["vms"]):
        label = units.vm_label(vm, known.get(vm, ""))
        cells = "".join(f"{col.cell(float(wire[col.key][i, col.resource])):>{CELL}}" for col in cols)
        lines.append(f"   {label[:NAME]:<{NAME}}{cells}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    prefixes = args.topics or [""]
    # tables name VMs from samples, so a table of other kinds also listens to samples, shown only if asked for
    extra = [] if args.json or any("sample/".startswith(p) for p in prefixes) else ["sample/"]
    fleet = fleet_from_args(args)  # a bad fleet file: exit 2 before anything starts
    ctx = zmq.Context()
    sub = open_subscription(ctx, args, prefixes + extra, fleet)
    names: dict[str, str] = {}  # VM UUID -> domain name, from every sample seen
    shown = 0
    try:
        for msg in receive(sub, args.timeout):
            if msg.env is None:
                print(f"── undecodable message on {msg.frames[0][:64]!r}: {msg.error}", file=sys.stderr)
                continue
            if msg.env.kind == "sample":
                names.update(zip(msg.env.body.vms, msg.env.body.names, strict=True))
            asked = any(bytes(msg.frames[0]).startswith(p.encode()) for p in prefixes)
            if not asked or (args.host and msg.env.host not in args.host):
                continue
            print(as_json(msg.env) if args.json else table(msg.env, names, args.columns), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        ctx.destroy(linger=0)
    return 0
