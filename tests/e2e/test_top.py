"""`rescoin top` in a real terminal (tmux, 120×40) against the running sim-host pipeline.

The pane is read back with `tmux capture-pane`: every VM has a row, the sort
keys reorder the rows, and `q` leaves the program and gives the shell back
with the terminal restored (alternate screen off).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest
from rescoin.services.tools.top_model import SORT_KEYS

from tests.e2e.conftest import VENV_BIN, Pipeline, wait_running
from tests.support.bus import wait_for
from tests.support.need import missing

pytestmark = pytest.mark.e2e

SESSION = "top"
PROMPT = "top-test$ "


class Tmux:
    """A tmux server of the test's own (its own socket), one 120×40 session running a plain bash."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", SESSION)

    def type(self, *keys: str) -> None:
        self("send-keys", "-t", SESSION, *keys)

    def wait_screen(self, ok: Callable[[str], bool], timeout_s: float = 30.0) -> str:
        """The screen once ``ok`` holds for it; fails with the last screen seen."""
        seen = [""]

        def check() -> bool:
            seen[0] = self.screen()
            return ok(seen[0])

        assert wait_for(check, timeout_s, 0.2), "the pane never got there; it shows:\n" + seen[0]
        return seen[0]


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        missing("tmux (deploy/install.sh --test installs it)")
    term = Tmux(f"rescoin-test-top-{os.getpid()}")
    shell = f"env PS1={shlex.quote(PROMPT)} bash --norc --noprofile -i"  # a known prompt, whatever the rc files say
    term("-f", "/dev/null", "new-session", "-d", "-s", SESSION, "-x", "120", "-y", "40", shell)
    try:
        term.wait_screen(lambda s: PROMPT.strip() in s, 10)
        yield term
    finally:
        subprocess.run(["tmux", "-L", term.socket, "kill-server"], capture_output=True, timeout=10)


def row_order(screen: str, names: list[str]) -> list[str]:
    """The VM names in the order their rows appear on the screen."""
    lines = screen.splitlines()

    def line_of(name: str) -> int:
        pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
        return next((i for i, line in enumerate(lines) if pattern.search(line)), -1)

    return sorted((n for n in names if line_of(n) >= 0), key=line_of)


def test_top_shows_every_vm_sorts_on_keys_and_q_restores_the_shell(pipeline: Pipeline, tmux: Tmux):
    assert wait_running(pipeline), pipeline.logs()
    pipeline.wait_applied(time.monotonic())
    names = pipeline.sim.describe().names
    tmux.type(f"{VENV_BIN}/rescoin top --bus {pipeline.bus_sub} --refresh 0.3", "Enter")

    # every VM has a row, with its share and the ceiling the actuator reported (the applied message)
    screen = tmux.wait_screen(lambda s: len(row_order(s, names)) == len(names) and "applied normal" in s)
    assert "use cores ▼" in screen and "share cores" in screen, screen

    tmux.type(*["s"] * SORT_KEYS.index("name"))  # `s` steps through the sort columns to the VM name (A→Z)
    screen = tmux.wait_screen(lambda s: "vm ▲" in s and row_order(s, names) == sorted(names))
    tmux.type("r")
    screen = tmux.wait_screen(lambda s: "vm ▼" in s and row_order(s, names) == sorted(names, reverse=True))

    tmux.type("2")  # memory: the column headings change unit
    tmux.wait_screen(lambda s: "use MiB" in s and "ceiling MiB" in s)

    tmux.type("q")
    # the shell is back: the program exited 0 and the alternate screen is gone (the terminal restored)
    tmux.wait_screen(lambda s: s.rstrip().endswith(PROMPT.rstrip()), 15)
    assert tmux("display-message", "-p", "-t", SESSION, "#{alternate_on}").strip() == "0"
    tmux.type("echo exit=$?", "Enter")
    screen = tmux.wait_screen(lambda s: "exit=" in s.replace("echo exit=", ""), 10)
    assert "exit=0" in screen.replace("echo exit=", ""), screen
    assert "use cores" not in screen, "the TUI is still on the screen:\n" + screen
