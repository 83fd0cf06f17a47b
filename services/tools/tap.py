"""`rescoin tap [TOPIC…]`: watch bus topics live, as tables (VM × resource, with units) or JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import zmq
from rescoin.proto import Envelope
from rescoin.proto.envelope import header_map

from .buses import add_bus_arguments, bus_endpoints, curve_keys, receive, subscribe

UNITS = (("cpu", "cores", 1.0), ("mem", "MiB", 2**20), ("disk", "MB/s", 1e6), ("net", "MB/s", 1e6))
MATRICES = {
    "sample": (("tc", "template"), ("au", "usage")),
    "estimate": (("est", "estimate"),),
    "alloc": (("alloc", "alloc"), ("coins", "coins")),
    "applied": (("set", "set"),),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("topics", nargs="*", help="topic prefixes: sample/, alloc/h1/, hb/ … (default: everything)")
    add_bus_arguments(parser)
    parser.add_argument("--host", action="append", default=[], help="only these hosts (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON object per message and line")
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


def table(env: Envelope) -> str:
    """A readable rendering: one line for hb and guest reports, a VM table for batches."""
    head = f"── {env.topic.decode()}  period {env.period}  from {env.src}"
    body = env.body
    if env.kind == "hb":
        counters = " ".join(f"{k}={v}" for k, v in sorted(body.counters.items()))
        return f"{head}  [{body.state}]  {counters}" + (f"\n   last error: {body.errors[-1]}" if body.errors else "")
    if env.kind == "guest.mem":
        return f"{head}  used {body.mem_used / 2**20:.0f} MiB of {body.mem_total / 2**20:.0f} MiB"
    wire = body.to_wire()
    names = wire.get("names") or [vm[:8] for vm in wire["vms"]]
    extra = {
        "sample": f"capacity {fmt_row(wire['C'])}",
        "alloc": f"policy {wire.get('policy')}  mode {'/'.join(wire.get('mode', []))}  "
        f"estimate from {wire.get('est_src')}",
        "applied": f"{wire.get('mode')}  writes {wire.get('writes')}  latency {wire.get('latency_s', 0) * 1e3:.1f} ms  "
        f"errors {len(wire.get('errors', []))}",
    }
    lines = [head + ("  " + extra[env.kind] if env.kind in extra else "")]
    cols = MATRICES[env.kind]
    header = f"   {'vm':<14}" + "".join(
        f"{label:>12} {name}/{unit}"[:28].rjust(28) for _key, label in cols for name, unit, _s in UNITS
    )
    lines.append(header)
    for i, name in enumerate(names):
        cells = "".join(f"{fmt(wire[key][i, r], r, key):>28}" for key, _label in cols for r in range(4))
        lines.append(f"   {name[:14]:<14}{cells}")
    return "\n".join(lines)


def fmt(value: float, resource: int, key: str) -> str:
    if key == "coins":
        return f"{value:+.3f}"
    if value < 0:
        return "none"
    return f"{value / UNITS[resource][2]:.3f}"


def fmt_row(row: np.ndarray) -> str:
    return ", ".join(f"{v / s:.2f} {u}" for v, (_n, u, s) in zip(row, UNITS, strict=True))


def run(args: argparse.Namespace) -> int:
    ctx = zmq.Context()
    sub = subscribe(ctx, bus_endpoints(args), args.topics, curve_keys(args))
    shown = 0
    try:
        for msg in receive(sub, args.timeout):
            if msg.env is None:
                print(f"── undecodable message on {msg.frames[0][:64]!r}: {msg.error}", file=sys.stderr)
                continue
            if args.host and msg.env.host not in args.host:
                continue
            print(as_json(msg.env) if args.json else table(msg.env), flush=True)
            shown += 1
            if args.count and shown >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        ctx.destroy(linger=0)
    return 0
