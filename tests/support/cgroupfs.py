"""A directory laid out like a cgroup v2 hierarchy, for hosts without v2 controllers."""

from __future__ import annotations

from pathlib import Path

V2_DEFAULTS = {"cpu.max": "max 100000\n", "cpu.weight": "100\n", "memory.high": "max\n", "io.max": ""}


def fake_v2_root(root: Path, groups: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    for group in groups:
        d = root / group
        d.mkdir(parents=True, exist_ok=True)
        for name, value in V2_DEFAULTS.items():
            (d / name).write_text(value)
    return root


def v2_files(root: Path, group: str) -> dict[str, str]:
    return {name: (root / group / name).read_text().strip() for name in V2_DEFAULTS}
