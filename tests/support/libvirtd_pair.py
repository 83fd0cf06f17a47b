"""A second libvirtd (+ its own virtlogd) on this machine: a migration destination.

libvirt refuses to migrate a domain to "the same host" (same host UUID), and
two daemons cannot share /run/libvirt, /var/lib/libvirt or the pid files. So the
second pair runs in a mount namespace of its own, where directories of ours
are bind-mounted over libvirt's runtime, state, log and cache directories (so
the test reaches its socket, and cleanup is one rmtree), with its own
libvirtd.conf (host_uuid) and pid files; and in a network namespace of its own,
so that a migrated guest's user-networking port forwards (bound again by the
destination QEMU while the source QEMU still holds them) do not collide.
Everything else (users, qemu.conf) is tests/support/libvirtd.py's; only the
processes started here are stopped, by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import libvirt

from tests.support import libvirtd as libvirtd_support

# libvirt's directories the second daemon gets its own copy of (root/<key> is bind-mounted there)
PRIVATE_DIRS = {
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}


@dataclass
class SecondDaemon:
    root: Path  # its private directories, config, pid files and log, seen from here
    netns: str
    created_netns: bool
    pids: dict[str, int]  # daemon name -> the PID this module started

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root}/run/libvirt-sock"


def start(root: Path, netns: str, timeout_s: float = 60.0) -> SecondDaemon:
    """Start virtlogd + libvirtd in a mount namespace of their own, in network namespace ``netns``."""
    reason = libvirtd_support.missing_reason()
    if reason:
        raise RuntimeError(reason)
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        raise RuntimeError("unshare/nsenter (util-linux) are not installed")
    libvirtd_support._prepare()
    for key in PRIVATE_DIRS:
        (root / key / "qemu").mkdir(parents=True, exist_ok=True)
    caps = Path("/var/cache/libvirt/qemu/capabilities")
    if caps.is_dir():  # the first daemon's probe of the same QEMU binary: saves the ~8 s probe
        shutil.copytree(caps, root / "cache" / "qemu" / "capabilities", dirs_exist_ok=True)
    conf = root / "libvirtd.conf"
    conf.write_text(f'host_uuid = "{uuid.uuid4()}"\n')  # a host of its own, or libvirt refuses the migration
    mounts = " && ".join(f"mount --bind {root / key} {target}" for key, target in PRIVATE_DIRS.items())
    pid_files = {name: root / f"{name}.pid" for name in ("virtlogd", "libvirtd")}
    script = (
        f"{mounts} && virtlogd -d -p {pid_files['virtlogd']}"
        f" && libvirtd -d -p {pid_files['libvirtd']} -f {conf}"
    )
    created_netns = libvirtd_support._add_netns(netns)
    env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{root}/libvirtd.log")
    daemon = SecondDaemon(root, netns, created_netns, {})
    try:
        subprocess.run(
            ["nsenter", f"--net=/run/netns/{netns}", "unshare", "--mount", "--propagation", "private",
             "sh", "-c", script],
            check=True, env=env, capture_output=True, text=True,
        )  # fmt: skip
    except subprocess.CalledProcessError as e:
        daemon.pids = _read_pids(pid_files)
        stop(daemon)
        raise RuntimeError(f"second libvirtd did not start: {e.stderr.strip()}") from e
    deadline = time.monotonic() + timeout_s
    while True:
        daemon.pids = _read_pids(pid_files)
        answer = subprocess.run(["virsh", "-c", daemon.uri, "version"], capture_output=True)
        if answer.returncode == 0 and len(daemon.pids) == 2:
            return daemon
        if time.monotonic() > deadline:
            stop(daemon)
            raise RuntimeError(f"second libvirtd did not answer within {timeout_s} s; see {root}/libvirtd.log")
        time.sleep(0.2)


def _read_pids(pid_files: dict[str, Path]) -> dict[str, int]:
    pids = {}
    for name, pid_file in pid_files.items():
        try:
            pids[name] = int(pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            pass
    return pids


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def stop(daemon: SecondDaemon) -> None:
    """Destroy its domains, stop its daemons by PID, delete its namespace (if created here) and directories."""
    try:
        conn = libvirt.open(daemon.uri)
        for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
            dom.destroy()
        conn.close()
    except libvirt.libvirtError:
        pass  # not up: then it started no QEMU
    for name in ("libvirtd", "virtlogd"):
        pid = daemon.pids.get(name)
        if pid is None or not _running(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
    if daemon.created_netns:
        subprocess.run(["ip", "netns", "del", daemon.netns], capture_output=True)
    shutil.rmtree(daemon.root, ignore_errors=True)
