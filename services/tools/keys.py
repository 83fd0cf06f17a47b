"""`rescoin keys`: CURVE keys for the guest ingress and the bus.

rescoin keys init               the host's key pair (secret 0600: root's, or the rescoin user's if it exists)
rescoin keys add VM_UUID        a key pair for one guest (secret 0600): copy it and server.key into the VM
rescoin keys list               who is trusted (guests; with --bus-keys, the bus's allowed subscribers)
rescoin keys remove VM_UUID     stop trusting a guest (restart the ingress)

The bus (docs/DEPLOY.md "CURVE between hosts"), with --dir the folder of the bus's server key:
rescoin keys client NAME        a client key pair for an operator's machine or a central exporter (secret 0600)
rescoin keys allow NAME FILE    let the holder of the public key FILE subscribe: copied to clients/NAME.key
rescoin keys disallow NAME      remove clients/NAME.key
then send the bus SIGHUP (`supervisorctl signal HUP rescoin:bus`) to read the allow-list again.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

import zmq.auth

from ..ingress.keys import (
    SERVER,
    _certificates,
    _hand_to_service_user,
    add_guest,
    guests_dir,
    init_server,
    trusted_guests,
)

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CLIENTS = "clients"  # services/bus/main.py CLIENTS_DIR: the bus's allow-list, next to its server key
BUS_ACTIONS = ("client", "allow", "disallow")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("init", "add", "list", "remove", *BUS_ACTIONS))
    parser.add_argument(
        "vm", nargs="?", metavar="NAME", help="VM UUID (add, remove); a client's name (client, allow, …)"
    )
    parser.add_argument("key", nargs="?", metavar="FILE", help="allow: the client's public key file (NAME.key)")
    parser.add_argument(
        "--dir",
        help="key store (default: the config's ingress.keys_dir; allow/disallow: the folder of bus.curve_server_key)",
    )
    parser.add_argument("--config", help="TOML config file")


def _keys_dir(args: argparse.Namespace) -> Path:
    if args.dir:
        return Path(args.dir)
    from ..runtime.config import load_config
    from ..schema import tools_schema

    cfg = load_config(args.config, sections=tools_schema())
    if args.action in ("allow", "disallow"):
        if not cfg.bus.curve_server_key:
            raise SystemExit("rescoin keys: give --dir (the config sets no bus.curve_server_key)")
        return Path(cfg.bus.curve_server_key).parent
    if args.action == "client":
        raise SystemExit("rescoin keys client: give --dir (where this machine keeps its key pair)")
    return Path(cfg.ingress.keys_dir)


def bus_action(args: argparse.Namespace, keys_dir: Path) -> int:
    name = args.vm or ""
    if not NAME_RE.match(name):
        print("rescoin keys: give a name: letters, digits, '_', '.', '-'", file=sys.stderr)
        return 2
    if args.action == "client":
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if (keys_dir / f"{name}.key_secret").exists():
            print(f"rescoin keys: {keys_dir / name}.key_secret exists; not replaced", file=sys.stderr)
            return 1
        public, secret = _certificates(keys_dir, name)
        print(f"{name}: {secret} (secret, 0600, stays here); give {public} to each bus: rescoin keys allow {name} FILE")
        return 0
    clients = keys_dir / CLIENTS
    target = clients / f"{name}.key"
    if args.action == "disallow":
        if not target.exists():
            print(f"rescoin keys: {target} does not exist", file=sys.stderr)
            return 1
        target.unlink()
        print(f"{name}: removed {target}; send the bus SIGHUP (connections it has stay until they drop)")
        return 0
    if not args.key:
        print("rescoin keys allow NAME FILE: give the client's public key file", file=sys.stderr)
        return 2
    try:
        client_public, _ = zmq.auth.load_certificate(args.key)
    except (OSError, ValueError) as exc:
        print(f"rescoin keys: {args.key}: {exc}", file=sys.stderr)
        return 1
    if not client_public or len(client_public) != 40:
        print(f"rescoin keys: {args.key} holds no CURVE public key", file=sys.stderr)
        return 1
    clients.mkdir(parents=True, exist_ok=True, mode=0o755)
    shutil.copyfile(args.key, target)
    os.chmod(target, 0o644)
    _hand_to_service_user(clients, target)
    print(f"{name}: {target} ({client_public.decode()}); send the bus SIGHUP to take it in")
    return 0


def run(args: argparse.Namespace) -> int:
    keys_dir = _keys_dir(args)
    if args.action in BUS_ACTIONS:
        return bus_action(args, keys_dir)
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
        for path in sorted((keys_dir / CLIENTS).glob("*.key")):
            try:
                client_public, _ = zmq.auth.load_certificate(str(path))
            except (OSError, ValueError) as exc:
                print(f"bus client {path.stem}  unreadable: {exc}")
                continue
            print(f"bus client {path.stem}  {client_public.decode()}")
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
