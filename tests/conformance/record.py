"""Record a stream of every kind from real services, for the conformance test.

    .venv/bin/python -m tests.conformance.record tests/fixtures/conformance_stream [PERIODS]

starts the sim-host pipeline under supervisord as the e2e tests do, adds a
real ``rescoin-ingress`` on its bus and two real guest agents (reading this
machine's /proc/meminfo) for two of the simulated VMs, records every frame on
the bus, raw and undecoded, for PERIODS periods, then stops everything while
still recording: the actuator's ``restore`` apply and the ``stopping``
heartbeats are part of the stream. Writes ``<stem>.rec`` (`rescoin record`'s
format) and the config it ran under, ``<stem>.toml``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rescoin.services.ingress.keys import add_guest, init_server
from rescoin.services.tools.buses import RecordWriter

from tests.e2e.conftest import VENV_BIN, start_pipeline, stop_pipeline
from tests.support.bus import BusListener, wait_for
from tests.support.net import free_port


class RawRecorder:
    """Every two-frame message on the bus with its arrival time, undecoded (a thread fills it)."""

    def __init__(self, endpoint: str) -> None:
        self.frames: list[tuple[int, list[bytes]]] = []
        self.listener = BusListener(endpoint, lambda frames: self.frames.append((time.time_ns(), frames))).start()

    def count(self, prefix: bytes) -> int:
        return sum(frames[0].startswith(prefix) for _, frames in list(self.frames))

    def stop(self) -> None:
        self.listener.stop()


def record(stem: Path, periods: int) -> int:
    with tempfile.TemporaryDirectory(prefix="rescoin-conformance-") as tmp:
        pipeline = start_pipeline(Path(tmp))
        recorder = RawRecorder(pipeline.bus_sub)
        helpers: list[subprocess.Popen] = []
        try:
            assert wait_for(lambda: recorder.count(b"sample/") > 0, 60), pipeline.logs()
            keys = Path(tmp) / "keys"
            init_server(keys)
            ingress_endpoint = f"tcp://127.0.0.1:{free_port()}"
            ingress = [str(VENV_BIN / "rescoin-ingress"), "--config", str(pipeline.config)]
            ingress += ["--set", f"ingress.keys_dir='{keys}'", "--set", f"ingress.bind_endpoint='{ingress_endpoint}'"]
            helpers.append(subprocess.Popen(ingress, stderr=subprocess.DEVNULL))
            for vm in pipeline.sim.describe().vms[:2]:
                add_guest(keys, vm)
                agent = [str(VENV_BIN / "rescoin-guest-agent"), "--connect", ingress_endpoint, "--uuid", vm]
                agent += ["--key", str(keys / "guests" / f"{vm}.key_secret"), "--server-key", str(keys / "server.key")]
                helpers.append(subprocess.Popen([*agent, "--period", "0.5"], stderr=subprocess.DEVNULL))
            assert wait_for(
                lambda: recorder.count(b"alloc/") >= periods and recorder.count(b"guest.mem/") >= 4, 60 + periods
            ), pipeline.logs()
        finally:
            for proc in reversed(helpers):  # the agents, then the ingress (its `stopping` beat is recorded)
                proc.terminate()
                proc.wait(timeout=15)
            for program in reversed(pipeline.programs):  # one by one while the bus still runs: their
                if program != "bus":  # last words (the actuator's restore, `stopping` beats) get out
                    pipeline.ctl("stop", f"rescoin:{program}")
            stop_pipeline(pipeline)
            recorder.stop()
        stem.with_suffix(".rec").unlink(missing_ok=True)
        writer = RecordWriter(stem.with_suffix(".rec"))
        try:
            for ts_ns, frames in recorder.frames:
                writer.write(ts_ns, frames)
        finally:
            writer.close()
        stem.with_suffix(".toml").write_text(pipeline.config.read_text())
    return len(recorder.frames)


if __name__ == "__main__":
    count = record(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 8)
    print(f"recorded {count} messages to {sys.argv[1]}.rec (config: {sys.argv[1]}.toml)")
