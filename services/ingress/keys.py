"""The CURVE key store of a host (``ingress.keys_dir``), shared by `rescoin keys` and the ingress.

<keys_dir>/server.key, server.key_secret      the ingress's key pair (secret: 0600)
<keys_dir>/guests/<vm-uuid>.key               a guest's public key (what the ingress trusts)
<keys_dir>/guests/<vm-uuid>.key_secret        the guest's key pair, to copy into that VM
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq.auth

SERVER = "server"


def guests_dir(keys_dir: Path) -> Path:
    return keys_dir / "guests"


def init_server(keys_dir: Path) -> tuple[Path, Path]:
    """Create the server key pair unless it exists; the directory is 0700, the secret 0600."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    guests_dir(keys_dir).mkdir(exist_ok=True)
    public, secret = keys_dir / f"{SERVER}.key", keys_dir / f"{SERVER}.key_secret"
    if not secret.exists():
        public, secret = (Path(p) for p in zmq.auth.create_certificates(str(keys_dir), SERVER))
    os.chmod(secret, 0o600)
    return public, secret


def add_guest(keys_dir: Path, vm: str) -> Path:
    """A key pair for one VM; returns its secret cert (to install in the guest)."""
    folder = guests_dir(keys_dir)
    folder.mkdir(parents=True, exist_ok=True)
    _public, secret = zmq.auth.create_certificates(str(folder), vm)
    os.chmod(secret, 0o600)
    return Path(secret)


def trusted_guests(keys_dir: Path) -> dict[bytes, str]:
    """z85 public key -> VM UUID, for every guest key in the store."""
    out = {}
    for path in sorted(guests_dir(keys_dir).glob("*.key")):
        public, _ = zmq.auth.load_certificate(str(path))
        out[public] = path.stem
    return out
