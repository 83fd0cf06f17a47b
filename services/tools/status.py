"""`rescoin status`: is every service on every host alive? From `hb`, Locust-style:
a service is down after ``--misses`` missed beats. Exit 1 if anything is down,
stale or unhealthy, so it fits a cron job or a health check.

With ``--fleet FILE`` it lists every host of the fleet, one line each: up, or
SILENT (nothing heard for more than ``--misses`` of its periods, or never
heard while it listened) with how long, then only the services that are not
up. It stops listening as soon as every service of every host has been heard
and two periods have passed, else after ``--wait``. Two live streams under one
host name (two epochs of one service alternating: two machines share a name)
are a NAME COLLISION. Exit 1 on any of these.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import zmq
from rescoin.proto import Heartbeat
from rescoin.proto.messages import ENFORCED_LETTERS

from .buses import CollisionWatch, Fleet, add_bus_arguments, fleet_from_args, open_subscription, receive

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
    parser.add_argument(
        "--wait", type=float, default=3.5, help="seconds to listen (with --fleet: at most; less once all are heard)"
    )


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


@dataclass
class Heard:
    """What one listen gathered."""

    beats: dict[tuple[str, str], Beat]
    last: dict[str, float]  # host -> its last hb (monotonic)
    collisions: dict[str, set[str]]  # host -> services heard from two streams at once
    watch: CollisionWatch
    started: float


def listen(sub, wait_s: float, expected: list[str], fleet: Fleet | None) -> Heard:
    """Heartbeats for ``wait_s``; with a fleet, until every expected service of every host has beaten
    and two periods (the longest heard) have passed, if that comes first."""
    heard = Heard({}, {}, {}, CollisionWatch(), time.monotonic())
    missing = {(h, s) for h in fleet.names for s in expected} if fleet else None
    deadline = heard.started + wait_s
    longest = 0.0
    while (left := deadline - time.monotonic()) > 0:
        if missing is not None and not missing:  # all heard: wait no longer than the two periods
            left = min(left, max(heard.started + 2 * longest - time.monotonic(), 0.001))
        for msg in receive(sub, left):
            env = msg.env
            if env is not None and env.kind == "hb":
                now, service = time.monotonic(), env.body.service
                heard.beats[(env.host, service)] = Beat(env.host, service, env.period, now, env.body)
                heard.last[env.host] = now
                longest = max(longest, float(env.body.period_s))
                if heard.watch.see(env.host, service, env.epoch):
                    heard.collisions.setdefault(env.host, set()).add(service)
                if missing:
                    missing.discard((env.host, service))
            break
        if missing is not None and not missing and time.monotonic() - heard.started >= 2 * longest:
            break
    return heard


def host_verdict(host: str, heard: Heard, beats: dict[tuple[str, str], Beat], misses: int, now: float) -> str:
    """``beats``: the host's own."""
    last = heard.last.get(host)
    if last is None:
        return f"SILENT (never heard in {now - heard.started:.1f} s)"
    period = max((b.hb.period_s for b in beats.values()), default=1.0)
    if now - last > misses * period:
        return f"SILENT (last heard {now - last:.1f} s ago)"
    if host in heard.collisions:
        return f"NAME COLLISION ({', '.join(sorted(heard.collisions[host]))}: two live streams)"
    return "up"


def service_detail(beat: Beat | None) -> str:
    if beat is None:
        return ""
    c = beat.hb.counters
    detail = " ".join(f"{k}={c[k]}" for k in ("received", "sent", "rejected", "dropped_stale", "gaps") if k in c)
    if beat.hb.errors:
        detail += f"  | {beat.hb.errors[-1][:80]}"
    return detail


def run_fleet(args: argparse.Namespace, fleet: Fleet) -> int:
    expected = args.expect or list(EXPECTED)
    ctx = zmq.Context()
    try:
        sub = open_subscription(ctx, args, ["hb/"], fleet)
        heard = listen(sub, args.wait, expected, fleet)
    finally:
        ctx.destroy(linger=0)
    now = time.monotonic()
    names = fleet.names
    endpoints = {h.name: h.bus for h in fleet.hosts}
    width = max(12, *(len(n) for n in names))
    print(f"{'host':<{width}} {'state':<44} {'services up':>11}  bus")
    verdicts: dict[str, str] = {}
    by_host: dict[str, dict[tuple[str, str], Beat]] = {}
    for key, one in heard.beats.items():
        by_host.setdefault(key[0], {})[key] = one
    for host in names:
        verdicts[host] = host_verdict(host, heard, by_host.get(host, {}), args.misses, now)
        rows = judge(by_host.get(host, {}), [host], expected, args.misses, now)
        up = sum(r[2] == "up" for r in rows)
        print(f"{host:<{width}} {verdicts[host]:<44} {f'{up}/{len(rows)}':>11}  {endpoints[host]}")
    strangers = sorted(set(heard.last) - set(names))
    for host in strangers:
        print(f"{host:<{width}} {'heard, not in the fleet':<44} {'':>11}  ?")
    heard_hosts = [h for h in names if not verdicts[h].startswith("SILENT")]
    beats = {k: b for k, b in heard.beats.items() if k[0] in heard_hosts}
    bad = [r for r in judge(beats, heard_hosts, expected, args.misses, now) if r[2] != "up"]
    if bad:
        print("\nservices not up on hosts that are heard:")
        for host, service, verdict, beat in bad:
            print(f"{host:<{width}} {service:<10} {verdict:<26} {service_detail(beat)}")
    for host in names:
        actuator = heard.beats.get((host, "actuator"))
        if actuator is not None and int(actuator.hb.info.get("enforced.x", 0)):
            print(coverage(host, actuator.hb.info))
    silent = [h for h in names if verdicts[h].startswith("SILENT")]
    collided = [h for h in names if verdicts[h].startswith("NAME COLLISION")]
    print(
        f"\n{len(names)} hosts in {fleet.path}: {len(names) - len(silent) - len(collided)} up, "
        f"{len(silent)} silent, {len(collided)} name collisions, {len(bad)} services not up"
        + (f"; {len(strangers)} other hosts heard" if strangers else "")
        + f" ({now - heard.started:.1f} s)"
    )
    return 1 if silent or collided or bad else 0


def run(args: argparse.Namespace) -> int:
    fleet = fleet_from_args(args)
    if fleet is not None:
        return run_fleet(args, fleet)
    ctx = zmq.Context()
    try:
        sub = open_subscription(ctx, args, ["hb/"])
        heard = listen(sub, args.wait, [], None)
    finally:
        ctx.destroy(linger=0)
    beats = heard.beats
    rows = judge(beats, args.host, args.expect or list(EXPECTED), args.misses, time.monotonic())
    print(f"{'host':<12} {'service':<10} {'status':<26} {'period':>12}  counters / last error")
    for host, service, verdict, beat in rows:
        print(f"{host:<12} {service:<10} {verdict:<26} {beat.period if beat else '-':>12}  {service_detail(beat)}")
    for host, service, _verdict, beat in rows:
        if service == "actuator" and beat is not None:
            print(coverage(host, beat.hb.info))
    for host, services in sorted(heard.collisions.items()):
        streams = ", ".join(sorted(services))
        print(f"NAME COLLISION on {host}: two live streams of {streams} (two hosts share the name?)")
    bad = [r for r in rows if r[2] != "up"]
    if not rows:
        print("no heartbeat from any service")
    return 1 if bad or not rows or heard.collisions else 0
