"""rescoin-guest-agent: reports this VM's memory use to its host's ResCoin ingress.

Runs inside the guest with only Python, pyzmq and msgpack. Every period it
reads /proc/meminfo and publishes ``guest.mem/<vm-uuid>/`` over ZeroMQ CURVE,
as a client holding this VM's own key pair (``rescoin keys add <uuid>`` on
the host). Two ways to reach the host:

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
from rescoin.proto import Envelope, GuestMem, encode_guest_mem

AGENT_VERSION = "0.1.0"
DMI_UUID = "/sys/class/dmi/id/product_uuid"
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


def report(vm: str, meminfo: dict[str, int]) -> GuestMem:
    total = meminfo["MemTotal"]
    available = meminfo.get("MemAvailable", meminfo.get("MemFree", 0))
    return GuestMem(
        vm,
        total,
        available,
        max(total - available, 0),
        meminfo.get("SwapTotal", 0),
        meminfo.get("SwapFree", 0),
        AGENT_VERSION,
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
    parser.add_argument("--meminfo", default="/proc/meminfo", help=argparse.SUPPRESS)
    parser.add_argument("--once", action="store_true", help="wait for the ingress, send one report, exit (0 if sent)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    vm = vm_uuid(args.uuid)
    ctx = zmq.Context()
    sock = make_socket(ctx, args)
    epoch, seq = time.time_ns(), 0
    host = guest_name(socket.gethostname())
    try:
        if args.once and not wait_subscribed(sock, 30):
            log.error("the ingress did not subscribe within 30 s (wrong key, or nobody listening)")
            return 1
        while True:
            now = time.time()
            body = report(vm, read_meminfo(args.meminfo))
            env = Envelope("guest.mem", host, "agent", epoch, seq, time.time_ns(), int(now // args.period), body)
            sock.send_multipart(encode_guest_mem(env))
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
