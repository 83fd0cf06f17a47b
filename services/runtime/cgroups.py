"""Where this host's cgroups are, from /proc/self/mountinfo: no guessed paths.

A host may mount cgroup v1 controllers (each at its own mount point, maybe
several together, e.g. ``cpu,cpuacct``), the v2 hierarchy (one mount, its
controllers in ``cgroup.controllers``), or both ("hybrid": v1 controllers
plus a v2 mount with none, as on the lab machines). A controller is used
where it is: v1 if a v1 mount has it, else v2 if the v2 root offers it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

V1_NAMES = {"cpu": "cpu", "memory": "memory", "io": "blkio", "cpuacct": "cpuacct"}  # v2 name -> v1 name
DOMAIN_DIR_TAIL = re.compile(r"^(emulator|vcpu\d+|iothread\d+|libvirt)$")  # libvirt's sub-groups of a domain


@dataclass(frozen=True)
class CgroupMounts:
    v1: dict[str, Path] = field(default_factory=dict)  # v1 controller (cpu, memory, blkio, ...) -> mount point
    v2: Path | None = None  # the cgroup2 mount, if any

    def v2_controllers(self) -> set[str]:
        try:
            return set((self.v2 / "cgroup.controllers").read_text().split()) if self.v2 else set()
        except OSError:
            return set()

    def where(self, controller: str) -> tuple[str, Path | None]:
        """("v1", mount) or ("v2", root) or ("none", None) for a v2 controller name (cpu, memory, io)."""
        v1 = self.v1.get(V1_NAMES.get(controller, controller))
        if v1 is not None:
            return "v1", v1
        if controller in self.v2_controllers():
            return "v2", self.v2
        return "none", None

    def layout(self) -> str:
        """v1, v2 or hybrid, for an operator."""
        v1 = ", ".join(sorted(self.v1))
        v2 = ", ".join(sorted(self.v2_controllers())) or "no controllers"
        if self.v1 and self.v2:
            return f"hybrid (v1: {v1}; v2 at {self.v2}: {v2})"
        if self.v1:
            return f"v1 ({v1})"
        return f"v2 at {self.v2} ({v2})" if self.v2 else "none mounted"

    def group_of(self, controller: str, proc_cgroup: str) -> tuple[str, Path] | None:
        """(layout, directory) of the domain group holding a process for a v2 controller name, from its
        /proc/<pid>/cgroup; None where the controller is not mounted or the process sits in the root
        (a write there would be the whole host's)."""
        layout, mount = self.where(controller)
        v1, v2 = proc_cgroups(proc_cgroup)
        rel = v1.get(V1_NAMES.get(controller, controller)) if layout == "v1" else v2
        if mount is None or not rel:
            return None
        return layout, mount / rel


def _unescape(path: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        path = path.replace(code, char)
    return path


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> CgroupMounts:
    v1: dict[str, Path] = {}
    v2: Path | None = None
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return CgroupMounts()
    for line in lines:
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        mount_point, fstype, super_options = Path(_unescape(fields[4])), tail[0], tail[2].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = mount_point
        elif fstype == "cgroup":
            for option in super_options:
                if option not in ("rw", "ro") and not option.startswith("name=") and "=" not in option:
                    v1.setdefault(option, mount_point)
    return CgroupMounts(v1, v2)


def domain_dir(path: str) -> str:
    """A cgroup path without libvirt's per-thread sub-groups (emulator, vcpuN, iothreadN, libvirt)."""
    parts = [p for p in path.strip().split("/") if p]
    while parts and DOMAIN_DIR_TAIL.match(parts[-1]):
        parts.pop()
    return "/".join(parts)


def proc_cgroups(text: str) -> tuple[dict[str, str], str | None]:
    """/proc/<pid>/cgroup -> ({v1 controller: domain dir}, v2 domain dir); "" is the root."""
    v1: dict[str, str] = {}
    v2 = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = domain_dir(path)
        else:
            for controller in controllers.split(","):
                v1[controller] = domain_dir(path)
    return v1, v2
