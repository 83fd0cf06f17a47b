"""The whole pipeline under a real supervisord, from the real deploy/ configs.

`pipeline` starts supervisord (foreground, so the test owns it) with
deploy/supervisord.conf rewritten to a temporary state directory, free
loopback ports and a demo-like config at ``PERIOD_S``; it watches the bus
from a thread and stops everything in a finally, killing by PID whatever
(by its RESCOIN_STATE environment) is left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rescoin.proto import Envelope
from rescoin.services.runtime.simclient import SimhostClient

from tests.support.bus import BusListener, decoded, wait_for
from tests.support.need import missing
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
VENV_BIN = ROOT / ".venv" / "bin"
HOST = "e2e"
PERIOD_S = 0.5  # fast enough for a quick suite, slow enough for a 2-core CI machine
N_VMS = 4
START_SAMPLE = 195  # 13 quiet periods (coins accrue), then these 4 VMs contend for cpu


def demo_like_config(state: Path, sim_endpoint: str, as_demo: bool = False) -> str:
    """deploy/demo.toml with this test's state directory and ports; unless ``as_demo``, its own period and
    VMs (the demo's own scenario otherwise, as ./deploy/demo.sh runs it)."""
    text = (DEPLOY / "demo.toml").read_text()
    text = text.replace('name = "demo"', f'name = "{HOST}"')
    if not as_demo:
        text = text.replace("period_s = 1.0", f"period_s = {PERIOD_S}")
        text = text.replace("n_vms = 8", f"n_vms = {N_VMS}")
        text = re.sub(r"start_sample = \d+", f"start_sample = {START_SAMPLE}", text)
    text = text.replace('state_dir = "state"', f'state_dir = "{state}"')
    text = text.replace('"ipc://state/bus/', f'"ipc://{state}/bus/')  # the bus's sockets, in this state dir
    text = text.replace("tcp://127.0.0.1:7720", sim_endpoint)
    text = text.replace("listen_port = 9810", f"listen_port = {free_port()}")  # the exporter
    return text


def supervisord_config(state: Path, config: Path) -> str:
    """deploy/supervisord.conf pointed at this test's state directory and config."""
    text = (DEPLOY / "supervisord.conf").read_text()
    text = text.replace("%(here)s/../state", str(state))
    text = text.replace("%(here)s/demo.toml", str(config))
    text = text.replace("files = supervisor.d/", f"files = {DEPLOY}/supervisor.d/")
    text = text.replace(" supervisor.d/demo/", f" {DEPLOY}/supervisor.d/demo/")
    # every program as root, as before: the checkout or its venv may not be readable by `rescoin`
    text = text.replace('RESCOIN_USER="rescoin"', 'RESCOIN_USER="root"')
    return text.replace("%(here)s", str(DEPLOY))


@dataclass
class Heard:
    when: float  # time.monotonic() at arrival
    ts_ns: int  # wall clock at arrival, as `rescoin record` stamps it
    frames: list[bytes]
    env: Envelope


@dataclass
class BusWatcher:
    """Every message on the bus, decoded, with its arrival time (a thread fills it)."""

    endpoint: str
    heard: list[Heard] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self.listener = BusListener(self.endpoint, decoded(self._hear)).start()

    def _hear(self, frames: list[bytes], env: Envelope) -> None:
        with self.lock:
            self.heard.append(Heard(time.monotonic(), time.time_ns(), frames, env))

    def stop(self) -> None:
        self.listener.stop()

    def latest(self, kind: str) -> Envelope:
        """The last message of ``kind`` heard (without copying the whole history, as since(0) would)."""
        with self.lock:
            return next(h.env for h in reversed(self.heard) if h.env.kind == kind)

    def heard_since(self, t: float) -> list[Heard]:
        with self.lock:
            return [h for h in self.heard if h.when >= t]

    def since(self, t: float, kind: str | None = None, src: str | None = None) -> list[Envelope]:
        return [
            h.env
            for h in self.heard_since(t)
            if (kind is None or h.env.kind == kind) and (src is None or h.env.src == src)
        ]


@dataclass
class Pipeline:
    state: Path
    config: Path
    conf: Path
    sim_endpoint: str
    bus_sub: str
    programs: list[str]
    proc: subprocess.Popen | None = None
    watcher: BusWatcher | None = None
    sim: SimhostClient | None = None

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=check,
        )

    def status(self) -> dict[str, tuple[str, int]]:
        """program -> (state, pid) as supervisorctl reports it."""
        out: dict[str, tuple[str, int]] = {}
        for line in self.ctl("status").stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].startswith("rescoin:"):
                pid = int(parts[3].rstrip(",")) if parts[1] == "RUNNING" else 0
                out[parts[0].split(":", 1)[1]] = (parts[1], pid)
        return out

    def all_running(self) -> bool:
        status = self.status()
        return set(status) == set(self.programs) and all(state == "RUNNING" for state, _ in status.values())

    def pid(self, program: str) -> int:
        return self.status().get(program, ("", 0))[1]

    def applied_for_all(self, since: float) -> list[Envelope]:
        """`applied` messages since ``since`` that name every simulated VM."""
        vms = set(self.sim.describe().vms)
        return [e for e in self.watcher.since(since, "applied") if set(e.body.vms) == vms]

    def wait_applied(self, since: float, timeout_s: float = 20.0) -> Envelope:
        assert wait_for(lambda: self.applied_for_all(since), timeout_s, 0.05), self.logs()
        return self.applied_for_all(since)[0]

    def logs(self, tail: int = 15) -> str:
        """The last lines of every service's log, for assertion messages."""
        parts = []
        for log in sorted((self.state / "logs").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def leftover_pids(state: Path) -> list[int]:
    """Processes whose environment names this state directory: supervisord's children."""
    marker = f"RESCOIN_STATE={state}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
    return found


def _missing_reason() -> str | None:
    for tool in ("supervisord", "supervisorctl", "rescoin-bus", "rescoin-simhost"):
        if not (VENV_BIN / tool).exists():
            return f"{VENV_BIN / tool} is missing (deploy/install.sh installs it)"
    return None


def start_pipeline(tmp: Path, as_demo: bool = False) -> Pipeline:
    reason = _missing_reason()
    if reason:
        missing(reason)
    state = tmp / "state"
    (state / "logs").mkdir(parents=True)
    sim_endpoint = f"tcp://127.0.0.1:{free_port()}"
    config = tmp / "rescoin.toml"
    config.write_text(demo_like_config(state, sim_endpoint, as_demo))
    conf = tmp / "supervisord.conf"
    conf.write_text(supervisord_config(state, config))
    group = [ln for ln in conf.read_text().splitlines() if ln.startswith("programs=")][0]
    bus_sub = [ln for ln in config.read_text().splitlines() if ln.startswith("sub_endpoint")][0]
    pipeline = Pipeline(
        state=state,
        config=config,
        conf=conf,
        sim_endpoint=sim_endpoint,
        bus_sub=bus_sub.split('"')[1],
        programs=group.split("=", 1)[1].split(","),
    )
    pipeline.watcher = BusWatcher(pipeline.bus_sub)
    pipeline.watcher.start()
    pipeline.sim = SimhostClient(sim_endpoint, timeout_s=2.0)
    pipeline.proc = subprocess.Popen(
        [str(VENV_BIN / "supervisord"), "--nodaemon", "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return pipeline


def stop_pipeline(pipeline: Pipeline) -> None:
    """SIGTERM supervisord (it stops its programs), then kill by PID whatever is left."""
    if pipeline.sim is not None:
        pipeline.sim.close()
    if pipeline.proc is not None and pipeline.proc.poll() is None:
        pipeline.proc.send_signal(signal.SIGTERM)
        try:
            pipeline.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pipeline.proc.kill()
            pipeline.proc.wait()
    for pid in leftover_pids(pipeline.state):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if pipeline.watcher is not None:
        pipeline.watcher.stop()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Iterator[Pipeline]:
    """A running pipeline shared by a module's tests; each test leaves it healthy."""
    running = start_pipeline(tmp_path_factory.mktemp("pipeline"))
    try:
        yield running
    finally:
        stop_pipeline(running)
        shutil.rmtree(running.state.parent, ignore_errors=True)


@pytest.fixture
def fresh_pipeline(tmp_path) -> Iterator[Pipeline]:
    """A pipeline of its own, for a test that stops it."""
    running = start_pipeline(tmp_path)
    try:
        yield running
    finally:
        stop_pipeline(running)


def wait_running(pipeline: Pipeline, timeout_s: float = 30.0) -> bool:
    return wait_for(pipeline.all_running, timeout_s, 0.1)
