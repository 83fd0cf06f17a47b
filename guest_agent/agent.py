"""rescoin-guest-agent: reports this VM's memory use to its host's ResCoin ingress.

Runs inside the guest with only Python, pyzmq and msgpack. Every period it
reads /proc/meminfo, the memory pressure (/proc/pressure/memory) and the major
fault and swap-in counters (/proc/vmstat), and publishes
``guest.mem/<vm-uuid>/`` over ZeroMQ CURVE, as a client holding this VM's own
key pair (``rescoin keys add <uuid>`` on the host). What the kernel does not
have is left out of the report, never sent as zero: no /proc/pressure (a
kernel before 4.20, or booted with psi=0), no rate in the first report (a
rate needs two readings). It speaks the current guest format
(``GUEST_FORMAT_VERSION``); ``--format 2`` speaks the previous one (no
pressure) to a host whose ingress predates it. Two ways to reach the host:

* ``--connect tcp://HOST:7730``: the agent dials the ingress;
* ``--bind tcp://0.0.0.0:5556``: the agent listens and the ingress dials it
  (a per-VM forwarded port; for guests behind QEMU user networking/NAT).
"""

from __future__ import annotations

import argparse
import logging
import random
import socket
import sys
import time
from pathlib import Path

import zmq
import zmq.auth
from rescoin.proto import GUEST_FORMAT_VERSION, GUEST_FORMATS, Envelope, GuestMem, encode_guest_report
from rescoin.proto.guest import GUEST_FORMAT_PREVIOUS, PSI_FULL, PSI_SOME

AGENT_VERSION = "0.2.0"
DMI_UUID = "/sys/class/dmi/id/product_uuid"
PRESSURE = "/proc/pressure/memory"
VMSTAT = "/proc/vmstat"
VMSTAT_RATES = {"pgmajfault": "pgmajfault_per_s", "pswpin": "pswpin_per_s"}  # /proc/vmstat counter -> field
log = logging.getLogger("rescoin.guest_agent")


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """The /proc/meminfo fields ResCoin uses, in bytes."""
    values = {}
    for line in Path(path).read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            values[name] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return values


def read_pressure(path: str = PRESSURE) -> dict[str, float | int]:
    """The PSI fields of /proc/pressure/memory ({} where the kernel has none).

    Each line, ``some avg10=0.12 avg60=0.05 avg300=0.01 total=12345`` (total in
    µs), gives its three fields or none: a line that is missing or does not
    parse is left out, not guessed."""
    try:
        text = Path(path).read_text()
    except OSError:  # no such file (old kernel, no CONFIG_PSI), or EOPNOTSUPP (booted with psi=0)
        return {}
    fields: dict[str, float | int] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        names = {"some": PSI_SOME, "full": PSI_FULL}.get(kind)
        if names is None:
            continue
        try:
            values = dict(item.split("=", 1) for item in rest.split())
            avg10, avg60, total = float(values["avg10"]), float(values["avg60"]), int(values["total"])
        except (KeyError, ValueError):
            continue
        if 0 <= avg10 <= 100 and 0 <= avg60 <= 100 and total >= 0:
            fields.update(zip(names, (avg10, avg60, total), strict=True))
    return fields


def read_vmstat(path: str = VMSTAT) -> dict[str, int]:
    """The /proc/vmstat counters ResCoin turns into rates, where the kernel has them."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    counters = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in VMSTAT_RATES and value.strip().isdigit():
            counters[name] = int(value)
    return counters


class CounterRates:
    """Per-second rates of cumulative counters between two readings (the first reading has none)."""

    def __init__(self) -> None:
        self.last: tuple[float, dict[str, int]] | None = None

    def update(self, now_s: float, counters: dict[str, int]) -> dict[str, float]:
        """Rates since the previous reading, by report field; a counter that went back or vanished has none."""
        last, self.last = self.last, (now_s, counters)
        if last is None or now_s <= last[0]:
            return {}
        dt = now_s - last[0]
        return {
            VMSTAT_RATES[name]: (value - last[1][name]) / dt
            for name, value in counters.items()
            if name in last[1] and value >= last[1][name]
        }


def report(
    vm: str,
    meminfo: dict[str, int],
    pressure: dict[str, float | int] | None = None,
    rates: dict[str, float] | None = None,
) -> GuestMem:
    """One report: meminfo always, PSI and rates where present (absent ones stay absent)."""
    total = meminfo["MemTotal"]
    available = min(meminfo.get("MemAvailable", meminfo.get("MemFree", 0)), total)
    return GuestMem(
        vm,
        total,
        available,
        total - available,
        meminfo.get("SwapTotal", 0),
        min(meminfo.get("SwapFree", 0), meminfo.get("SwapTotal", 0)),
        AGENT_VERSION,
        **(pressure or {}),
        **(rates or {}),
    )


def vm_uuid(override: str | None) -> str:
    if override:
        return override.lower()
    try:
        return Path(DMI_UUID).read_text().strip().lower()
    except OSError as exc:
        raise SystemExit(f"rescoin-guest-agent: cannot read {DMI_UUID} ({exc}); pass --uuid") from exc


def guest_name(hostname: str) -> str:
    """The envelope's host field: the guest's hostname made a valid name ("(none)" -> "guest")."""
    name = "".join(c if (c.isascii() and c.isalnum()) or c in "_.:-" else "-" for c in hostname.split(".")[0][:64])
    name = name.strip("-_.:")
    return name or "guest"


def make_socket(ctx: zmq.Context, args: argparse.Namespace) -> zmq.Socket:
    # XPUB: a PUB that also hears the ingress subscribe, i.e. that its reports will now be delivered
    sock = ctx.socket(zmq.XPUB)
    public, secret = zmq.auth.load_certificate(args.key)
    server_public, _ = zmq.auth.load_certificate(args.server_key)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = public, secret, server_public
    # many agents must not stampede a restarted host: jittered, growing reconnect intervals
    sock.reconnect_ivl = int(random.uniform(500, 1500))
    sock.reconnect_ivl_max = 30_000
    sock.sndhwm = 10
    sock.linger = 2000
    if args.bind:
        sock.bind(args.bind)
    else:
        sock.connect(args.connect)
    return sock


def wait_subscribed(sock: zmq.Socket, timeout_s: float) -> bool:
    """Wait until the ingress has subscribed (so after the CURVE handshake): what a PUB sends before is lost."""
    if not sock.poll(int(timeout_s * 1000)):
        return False
    sock.recv()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-guest-agent", description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--connect", metavar="ENDPOINT", help="dial the host's ingress, e.g. tcp://10.0.2.2:7730")
    where.add_argument("--bind", metavar="ENDPOINT", help="listen for the ingress, e.g. tcp://0.0.0.0:5556")
    parser.add_argument(
        "--key", required=True, help="this VM's secret cert (<uuid>.key_secret from `rescoin keys add`)"
    )
    parser.add_argument("--server-key", required=True, help="the host's public cert (server.key)")
    parser.add_argument("--uuid", help=f"VM UUID (default: {DMI_UUID})")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between reports")
    parser.add_argument(
        "--format",
        type=int,
        choices=GUEST_FORMATS,
        default=GUEST_FORMAT_VERSION,
        help=f"guest format to speak (default {GUEST_FORMAT_VERSION}; {GUEST_FORMAT_PREVIOUS}: without memory "
        "pressure, for a host whose ingress predates it)",
    )
    parser.add_argument("--meminfo", default="/proc/meminfo", help=argparse.SUPPRESS)
    parser.add_argument("--pressure", default=PRESSURE, help=argparse.SUPPRESS)
    parser.add_argument("--vmstat", default=VMSTAT, help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help="wait for the ingress, send one report, exit (0 if sent)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    vm = vm_uuid(args.uuid)
    ctx = zmq.Context()
    sock = make_socket(ctx, args)
    epoch, seq = time.time_ns(), 0
    host = guest_name(socket.gethostname())
    rates = CounterRates()
    try:
        if args.once and not wait_subscribed(sock, 30):
            log.error("the ingress did not subscribe within 30 s (wrong key, or nobody listening)")
            return 1
        while True:
            now = time.time()
            try:
                body = report(
                    vm,
                    read_meminfo(args.meminfo),
                    read_pressure(args.pressure),
                    rates.update(time.monotonic(), read_vmstat(args.vmstat)),
                )
                if args.format == GUEST_FORMAT_PREVIOUS:
                    body = body.without_pressure()
                period = int(now // args.period)
                env = Envelope("guest.mem", host, "agent", epoch, seq, time.time_ns(), period, body, v=args.format)
                frames = encode_guest_report(env)  # refuses what the ingress would reject
            except (OSError, KeyError, ValueError) as exc:  # an unreadable or absurd /proc/meminfo; ProtocolError
                log.warning("no report this period: %s", exc)
                if args.once:
                    return 1
            else:
                sock.send_multipart(frames)
                seq += 1
                if args.once:
                    return 0
            while sock.poll(0):  # (re)subscriptions of the ingress: nothing to do but take them
                sock.recv()
            time.sleep(args.period - (time.time() % args.period))
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()
        ctx.term()


if __name__ == "__main__":
    raise SystemExit(main())
