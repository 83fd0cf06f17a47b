"""`rescoin keys`: CURVE keys for the guest ingress (and the bus).

rescoin keys init               the host's key pair (secret 0600: root's, or the rescoin user's if it exists)
rescoin keys add VM_UUID        a key pair for one guest (secret 0600): copy it and server.key into the VM
rescoin keys list               who is trusted
rescoin keys remove VM_UUID     stop trusting a guest (restart the ingress)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..ingress.keys import SERVER, add_guest, guests_dir, init_server, trusted_guests

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("init", "add", "list", "remove"))
    parser.add_argument("vm", nargs="?", help="VM UUID (add, remove)")
    parser.add_argument("--dir", help="key store (default: the config's ingress.keys_dir)")
    parser.add_argument("--config", help="TOML config file")


def run(args: argparse.Namespace) -> int:
    if args.dir:
        keys_dir = Path(args.dir)
    else:
        from ..runtime.config import load_config

        keys_dir = Path(load_config(args.config).ingress.keys_dir)
    if args.action == "init":
        public, secret = init_server(keys_dir)
        print(f"server key: {public} (public, give it to guests), {secret} (secret, 0600)")
        return 0
    if args.action == "list":
        guests = trusted_guests(keys_dir)
        server = keys_dir / f"{SERVER}.key"
        print(f"server key: {server if server.exists() else 'none (run rescoin keys init)'}")
        for public_z85, guest in sorted(guests.items(), key=lambda kv: kv[1]):
            print(f"{guest}  {public_z85.decode()}")
        return 0
    vm = (args.vm or "").lower()
    if not UUID_RE.match(vm):
        print("rescoin keys: give the VM's UUID (virsh domuuid NAME)", file=sys.stderr)
        return 2
    if args.action == "add":
        init_server(keys_dir)
        secret = add_guest(keys_dir, vm)
        print(f"{vm}: copy {secret} and {keys_dir / (SERVER + '.key')} into the guest (see guest_agent/README.md)")
        return 0
    removed = sorted(guests_dir(keys_dir).glob(f"{vm}.key*"))
    for path in removed:
        path.unlink()
    print(f"{vm}: removed {len(removed)} files; restart rescoin-ingress to drop it")
    return 0 if removed else 1
