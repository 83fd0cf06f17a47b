"""The CURVE key store of a host (``ingress.keys_dir``), shared by `rescoin keys` and the ingress.

<keys_dir>/server.key, server.key_secret      the ingress's key pair (secret: 0600)
<keys_dir>/guests/<vm-uuid>.key               a guest's public key (what the ingress trusts)
<keys_dir>/guests/<vm-uuid>.key_secret        the guest's key pair, to copy into that VM

Secret keys are written 0600 from the start (umask 077 while they are made),
public keys 0644. Made by root on a host with the ``rescoin`` user (deploy/install.sh),
the store and the server key pair belong to ``rescoin``: the ingress runs as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import zmq.auth

SERVER = "server"
SERVICE_USER = "rescoin"  # the ingress's user (deploy/supervisor.d/host/ingress.conf)


@contextlib.contextmanager
def _private_files() -> Iterator[None]:
    """umask 077: a secret key is never readable by others, not even between write and chmod."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _certificates(folder: Path, name: str) -> tuple[Path, Path]:
    """A CURVE key pair: (public 0644, secret 0600)."""
    with _private_files():
        public, secret = (Path(p) for p in zmq.auth.create_certificates(str(folder), name))
    os.chmod(public, 0o644)
    os.chmod(secret, 0o600)
    return public, secret


def _hand_to_service_user(*paths: Path) -> None:
    """As root, with the ``rescoin`` user present: make ``paths`` its own (the ingress reads them)."""
    if os.geteuid() != 0:
        return
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return
    for path in paths:
        os.chown(path, user.pw_uid, user.pw_gid)


def guests_dir(keys_dir: Path) -> Path:
    return keys_dir / "guests"


def init_server(keys_dir: Path) -> tuple[Path, Path]:
    """Create the server key pair unless it exists; the directory is 0700, the secret 0600.

    As root on a host with the ``rescoin`` user, the directory, ``guests/`` and
    the server key pair are that user's (the ingress and the bus run as it).
    """
    keys_dir.parent.mkdir(parents=True, exist_ok=True)  # e.g. /etc/rescoin: the usual mode
    with _private_files():
        keys_dir.mkdir(exist_ok=True)
        guests_dir(keys_dir).mkdir(exist_ok=True)
    os.chmod(keys_dir, 0o700)
    public, secret = keys_dir / f"{SERVER}.key", keys_dir / f"{SERVER}.key_secret"
    if not secret.exists():
        public, secret = _certificates(keys_dir, SERVER)
    os.chmod(secret, 0o600)
    _hand_to_service_user(keys_dir, guests_dir(keys_dir), public, secret)
    return public, secret


def add_guest(keys_dir: Path, vm: str) -> Path:
    """A key pair for one VM; returns its secret cert (0600, to install in the guest)."""
    folder = guests_dir(keys_dir)
    with _private_files():
        folder.mkdir(parents=True, exist_ok=True)
    _public, secret = _certificates(folder, vm)
    return secret


def trusted_guests(keys_dir: Path) -> dict[bytes, str]:
    """z85 public key -> VM UUID, for every guest key in the store."""
    out = {}
    for path in sorted(guests_dir(keys_dir).glob("*.key")):
        public, _ = zmq.auth.load_certificate(str(path))
        out[public] = path.stem
    return out
