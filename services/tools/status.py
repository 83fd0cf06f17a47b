"""`rescoin status`: is every service on every host alive? From `hb`, Locust-style:
a service is down after ``--misses`` missed beats. Exit 1 if anything is down,
stale or unhealthy, so it fits a cron job or a health check."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import zmq
from rescoin.proto import Heartbeat
from rescoin.proto.messages import ENFORCED_LETTERS

from .buses import add_bus_arguments, bus_endpoints, curve_keys, receive, subscribe

EXPECTED = ("bus", "monitor", "predictor", "scheduler", "actuator")
BAD_STATES = ("disconnected", "failsafe", "stopping")


@dataclass
class Beat:
    host: str
    service: str
    period: int
    seen_at: float
    hb: Heartbeat


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bus_arguments(parser, "listen to")
    parser.add_argument(
        "--expect", action="append", default=[], help=f"services every host must run (default: {', '.join(EXPECTED)})"
    )
    parser.add_argument(
        "--host", action="append", default=[], help="hosts that must be seen (default: whatever answers)"
    )
    parser.add_argument("--misses", type=int, default=3, help="missed beats before a service counts as down")
    parser.add_argument("--wait", type=float, default=3.5, help="seconds to listen")


def judge(
    beats: dict[tuple[str, str], Beat], hosts: list[str], expected: list[str], misses: int, now: float
) -> list[tuple[str, str, str, Beat | None]]:
    """(host, service, verdict, beat) for every expected or seen service."""
    rows = []
    for host in sorted(set(hosts) | {h for h, _ in beats}):
        names = sorted(set(expected) | {s for h, s in beats if h == host})
        for service in names:
            beat = beats.get((host, service))
            if beat is None:
                verdict = "DOWN (no heartbeat)"
            elif now - beat.seen_at > misses * beat.hb.period_s:
                verdict = f"DOWN (last beat {now - beat.seen_at:.1f} s ago)"
            elif beat.hb.state in BAD_STATES or beat.hb.state == "degraded":
                verdict = beat.hb.state.upper()
            else:
                verdict = "up"
            rows.append((host, service, verdict, beat))
    return rows


def coverage(host: str, info: dict) -> str:
    """One line per host from its actuator's hb: how many VM × resource cells are held, by mechanism."""
    counts = {letter: int(info.get(f"enforced.{letter}", 0)) for letter in ENFORCED_LETTERS}
    total = sum(counts.values())
    if not total:
        return f"enforcement on {host}: nothing applied yet"
    held = ", ".join(f"{ENFORCED_LETTERS[k]} {n}" for k, n in counts.items() if n and k != "x")
    line = f"enforcement on {host}: {total - counts['x']} of {total} VM x resource held ({held or 'none'})"
    if counts["x"]:
        line += f"; {counts['x']} NOT ENFORCED (why: rescoin doctor, or rescoin tap applied/)"
    return line


def run(args: argparse.Namespace) -> int:
    ctx = zmq.Context()
    sub = subscribe(ctx, bus_endpoints(args), ["hb/"], curve_keys(args))
    beats: dict[tuple[str, str], Beat] = {}
    deadline = time.monotonic() + args.wait
    try:
        while (left := deadline - time.monotonic()) > 0:
            for msg in receive(sub, left):
                if msg.env is not None:
                    beats[(msg.env.host, msg.env.body.service)] = Beat(
                        msg.env.host, msg.env.body.service, msg.env.period, time.monotonic(), msg.env.body
                    )
                break
    finally:
        ctx.destroy(linger=0)
    rows = judge(beats, args.host, args.expect or list(EXPECTED), args.misses, time.monotonic())
    print(f"{'host':<12} {'service':<10} {'status':<26} {'period':>12}  counters / last error")
    for host, service, verdict, beat in rows:
        detail = ""
        if beat is not None:
            c = beat.hb.counters
            detail = " ".join(
                f"{k}={c[k]}" for k in ("received", "sent", "rejected", "dropped_stale", "gaps") if k in c
            )
            if beat.hb.errors:
                detail += f"  | {beat.hb.errors[-1][:80]}"
        print(f"{host:<12} {service:<10} {verdict:<26} {beat.period if beat else '-':>12}  {detail}")
    for host, service, _verdict, beat in rows:
        if service == "actuator" and beat is not None:
            print(coverage(host, beat.hb.info))
    bad = [r for r in rows if r[2] != "up"]
    if not rows:
        print("no heartbeat from any service")
    return 1 if bad or not rows else 0
