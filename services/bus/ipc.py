"""Who may open the bus's ``ipc://`` sockets: Unix permissions on their directory and files.

A local bus listens on ``ipc://`` sockets (Unix domain sockets) in one
directory, e.g. ``/run/rescoin/bus/`` on a host or ``state/bus/`` in the demo.
Connecting to a Unix socket needs search permission on every directory above
it and write permission on the socket file itself, so the kernel decides who
may publish or subscribe; ZeroMQ adds nothing and checks nothing.

The layout (docs/SECURITY.md):

=====================  ======  =========================================================
``<dir>/``             0750    owner: the bus's user (``rescoin``), group ``rescoin``
``<dir>/pub.sock``     0600    the bus's user and root: the pipeline's own services publish
``<dir>/sub.sock``     0660    also the group ``rescoin``: tools, the exporter, operators
=====================  ======  =========================================================

A local user outside the group can neither publish nor subscribe. The group
can subscribe but not publish, and cannot replace a socket (the directory is
not group-writable). TCP endpoints are left alone: they are for other hosts'
tools, with CURVE (docs/DEPLOY.md).
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("rescoin.bus")

SERVICE_GROUP = "rescoin"  # may subscribe; the services that publish run as the bus's user or root
DIR_MODE = 0o750
PUBLISH_MODE = 0o600  # the XSUB side: the bus's own user (the pipeline's services) and root
SUBSCRIBE_MODE = 0o660  # the XPUB side: also members of SERVICE_GROUP


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint (None for any other transport)."""
    if not endpoint.startswith("ipc://") or endpoint.startswith("ipc://@"):  # "@": abstract, no file
        return None
    return Path(endpoint[len("ipc://") :])


def _service_gid() -> int | None:
    try:
        return grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        return None


def prepare_socket_dir(endpoint: str) -> None:
    """Create the directory of an ``ipc://`` endpoint (0750, group ``rescoin``) before the bus binds.

    A directory made earlier (install.sh, demo.sh, systemd) keeps its owner and
    group; if this process owns it, access for others is removed. Raises
    OSError when the directory cannot be created.
    """
    path = ipc_path(endpoint)
    if path is None:
        return
    folder = path.parent
    if not folder.is_dir():
        folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        gid = _service_gid()
        if gid is not None and gid != folder.stat().st_gid:
            try:
                os.chown(folder, -1, gid)
            except PermissionError:  # not root and not in the group: owner-only then
                pass
        os.chmod(folder, DIR_MODE)
    info = folder.stat()
    if info.st_mode & 0o007:
        if info.st_uid == os.geteuid():
            os.chmod(folder, stat.S_IMODE(info.st_mode) & ~0o007)
        else:
            log.warning("%s is open to every local user (mode %o); the sockets' modes apply", folder, info.st_mode)


def restrict_socket(endpoint: str, mode: int) -> None:
    """After bind: give an ``ipc://`` socket file ``mode`` and its directory's group."""
    path = ipc_path(endpoint)
    if path is None:
        return
    try:
        group = path.parent.stat().st_gid
        if path.stat().st_gid != group:
            os.chown(path, -1, group)
    except PermissionError:  # not root and not in the directory's group: the mode still applies
        pass
    os.chmod(path, mode)
