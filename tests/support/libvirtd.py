"""Start and stop a libvirtd (+ virtlogd) by hand on a machine without systemd.

Debian's libvirt-daemon without libvirt-daemon-system has no qemu.conf and no
`libvirt-qemu` user, and libvirt 9.0 resolves that user before reading
qemu.conf; so we create the user/groups and a minimal qemu.conf (QEMU as
root, no security driver), as the lab notes in docs/DESIGN.md appendix A.3 found.
Only daemons this module started are stopped, by PID.

A libvirtd this module starts can run inside a network namespace it creates
(docs/DESIGN.md appendix A.11): libvirt then creates the taps of `<interface
type='ethernet'>` there, so a test VM's packets never reach the host's own
network. The cgroup tree and the unix sockets are unaffected.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

QEMU_CONF = """# written by ResCoin's test support (no libvirt-daemon-system installed)
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
"""
PID_FILES = {"virtlogd": Path("/run/virtlogd.pid"), "libvirtd": Path("/run/libvirtd.pid")}


def missing_reason() -> str | None:
    """Why libvirtd cannot be started here, or None if it can."""
    if os.geteuid() != 0:
        return "needs root to start libvirtd"
    for tool in ("libvirtd", "virtlogd", "virsh"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (deploy/install.sh --test installs it)"
    return None


def _alive(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None


def prepare_users_and_qemu_conf() -> None:
    for cmd in (["groupadd", "--system", "kvm"], ["groupadd", "--system", "libvirt-qemu"]):
        subprocess.run(cmd, capture_output=True)
    if subprocess.run(["getent", "passwd", "libvirt-qemu"], capture_output=True).returncode != 0:
        subprocess.run(
            [
                "useradd",
                "--system",
                "-g",
                "kvm",
                "-G",
                "libvirt-qemu",
                "-d",
                "/var/lib/libvirt",
                "-M",
                "-s",
                "/usr/sbin/nologin",
                "libvirt-qemu",
            ],
            check=True,
            capture_output=True,
        )
    for d in (
        "/var/log/libvirt/qemu",
        "/var/lib/libvirt/qemu",
        "/var/cache/libvirt",
        "/etc/libvirt",
    ):
        Path(d).mkdir(parents=True, exist_ok=True)
    conf = Path("/etc/libvirt/qemu.conf")
    if not conf.exists():
        conf.write_text(QEMU_CONF)


@dataclass
class Daemons:
    started: list[str]  # names of the daemons this process started (to stop later)
    netns: str | None = None  # the network namespace libvirtd runs in, if we started it in one
    created_netns: bool = False  # ... and we created that namespace (deleted by ``stop``)


def add_netns(name: str) -> bool:
    """Create network namespace ``name`` (loopback up); False if it was already there."""
    created = not Path(f"/run/netns/{name}").exists()
    if created:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
    return created


def start(log_dir: str = "/tmp/rescoin-libvirtd", netns: str | None = None, timeout_s: float = 60.0) -> Daemons:
    """Start virtlogd and libvirtd unless they already run; wait until qemu:///system answers.

    ``netns``: start libvirtd inside that network namespace, created if missing
    (nsenter --net, not `ip netns exec`, which remounts /sys and hides the cgroup
    tree). ``Daemons.netns`` says where libvirtd really runs: None if it was already running.
    """
    reason = missing_reason()
    if reason:
        raise RuntimeError(reason)
    prepare_users_and_qemu_conf()
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    started = []
    created_netns = False
    if _alive(PID_FILES["virtlogd"]) is None:
        subprocess.run(["virtlogd", "-d"], check=True)
        started.append("virtlogd")
    if _alive(PID_FILES["libvirtd"]) is None:
        env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{log_dir}/libvirtd.log")
        cmd = ["libvirtd", "-d"]
        if netns:
            created_netns = add_netns(netns)
            cmd = ["nsenter", f"--net=/run/netns/{netns}", *cmd]
        subprocess.run(cmd, check=True, env=env)
        started.append("libvirtd")
    deadline = time.monotonic() + timeout_s
    while subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"libvirtd did not answer within {timeout_s} s; see {log_dir}/libvirtd.log")
        time.sleep(0.2)
    in_netns = netns if "libvirtd" in started else None
    return Daemons(started, in_netns, created_netns)


def stop(daemons: Daemons) -> None:
    """Stop (by PID) only the daemons ``start`` started, then delete the namespace it created."""
    for name in ("libvirtd", "virtlogd"):
        if name not in daemons.started:
            continue
        pid = _alive(PID_FILES[name])
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(PID_FILES[name]) == pid and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(PID_FILES[name]) == pid:
            os.kill(pid, signal.SIGKILL)
    if daemons.created_netns and daemons.netns:
        subprocess.run(["ip", "netns", "del", daemons.netns], capture_output=True)
