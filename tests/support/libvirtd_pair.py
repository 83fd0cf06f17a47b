"""Two libvirtds (each with its own virtlogd) on this one machine: a live migration's hosts.

libvirt refuses to migrate a domain to "the same host" (same host UUID), and
two daemons cannot share /run/libvirt, /var/lib/libvirt or the pid files. So
each daemon here runs in a mount namespace of its own, where directories of
ours are bind-mounted over libvirt's runtime, state, log and cache directories
(the test reaches its socket there, and cleanup is one rmtree), with its own
libvirtd.conf (host_uuid) and pid files; and in a network namespace of its
own, so that a migrated guest's user-networking port forwards (bound again by
the destination QEMU while the source QEMU still holds them) do not collide.
Neither is the machine's qemu:///system, so a test's actuator never touches
another test's VMs. Users and qemu.conf are tests/support/libvirtd.py's; only
the processes started here are stopped, by PID.
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
class PrivateDaemon:
    root: Path  # its private directories, config, pid files and log, seen from here
    netns: str
    created_netns: bool
    pids: dict[str, int]  # daemon name -> the PID this module started

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root}/run/libvirt-sock"


def missing_reason() -> str | None:
    """Why two private libvirtds cannot be started here, or None if they can."""
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} (util-linux) is not installed"
    return libvirtd_support.missing_reason()


def start(root: Path, netns: str, timeout_s: float = 60.0) -> PrivateDaemon:
    """Start virtlogd + libvirtd in a mount namespace of their own, in network namespace ``netns``."""
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    libvirtd_support.prepare_users_and_qemu_conf()
    for key in PRIVATE_DIRS:
        (root / key / "qemu").mkdir(parents=True, exist_ok=True)
    caps = Path("/var/cache/libvirt/qemu/capabilities")
    if caps.is_dir():  # the first daemon's probe of the same QEMU binary: saves the ~8 s probe
        shutil.copytree(caps, root / "cache" / "qemu" / "capabilities", dirs_exist_ok=True)
    conf = root / "libvirtd.conf"
    conf.write_text(f'host_uuid = "{uuid.uuid4()}"\n')  # a host of its own, or libvirt refuses the migration
    mounts = " && ".join(f"mount --bind {root / key} {target}" for key, target in PRIVATE_DIRS.items())
    pid_files = {name: root / f"{name}.pid" for name in ("virtlogd", "libvirtd")}
    script = f"{mounts} && virtlogd -d -p {pid_files['virtlogd']} && libvirtd -d -p {pid_files['libvirtd']} -f {conf}"
    created_netns = libvirtd_support.add_netns(netns)
    env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{root}/libvirtd.log")
    daemon = PrivateDaemon(root, netns, created_netns, {})
    try:
        subprocess.run(
            ["nsenter", f"--net=/run/netns/{netns}", "unshare", "--mount", "--propagation", "private",
             "sh", "-c", script],
            check=True, env=env, capture_output=True, text=True,
        )  # fmt: skip
    except subprocess.CalledProcessError as e:
        daemon.pids = _read_pids(pid_files)
        stop(daemon)
        raise RuntimeError(f"private libvirtd did not start: {e.stderr.strip()}") from e
    deadline = time.monotonic() + timeout_s
    while True:
        daemon.pids = _read_pids(pid_files)
        answer = subprocess.run(["virsh", "-c", daemon.uri, "version"], capture_output=True)
        if answer.returncode == 0 and len(daemon.pids) == 2:
            return daemon
        if time.monotonic() > deadline:
            log = (root / "libvirtd.log").read_text(errors="replace")[-3000:]  # stop removes it
            stop(daemon)
            raise RuntimeError(f"private libvirtd did not answer within {timeout_s} s; its log ends:\n{log}")
        time.sleep(0.2)


SPACER_XML = """<domain type='qemu'>
  <name>rc-id-spacer</name>
  <memory unit='MiB'>16</memory>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""


def skip_domain_id(conn: libvirt.virConnect, domain_id: int) -> None:
    """Make the next domain ``conn`` starts get an id other than ``domain_id``.

    Every daemon puts a domain in the cgroup /machine/qemu-<id>-<name>.libvirt-qemu
    (from the cgroup root, whatever the daemon's own cgroup), and two fresh
    daemons count ids from 1: a domain migrated with its id would share its
    source's cgroup (seen: the source's cleanup then fails with EBUSY). Each
    paused empty domain started and destroyed here uses up one id.
    """
    while True:
        spacer = conn.createXML(SPACER_XML, libvirt.VIR_DOMAIN_START_PAUSED)
        used = spacer.ID()
        spacer.destroy()
        if used + 1 != domain_id:
            return


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


def stop(daemon: PrivateDaemon) -> None:
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
