"""Three hosts in three network namespaces, each with its own bus and pipeline on the
sim host; `rescoin status` and `rescoin tap` in the root namespace see all three.

Each namespace gets a veth link to the root namespace (10.251.<i>.1 here,
10.251.<i>.2 there), created and removed by the test; the buses' XPUB sides bind
those link addresses, everything else stays on each namespace's loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support.bus import wait_for
from tests.support.need import missing

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("bus", "simhost", "monitor", "predictor", "scheduler", "actuator")
HOSTS = 3

CONFIG = """
[host]
name = "{name}"
period_s = 0.5
state_dir = "{state}"
[bus]
pub_endpoint = "tcp://127.0.0.1:7710"
sub_endpoint = "tcp://{addr}:7711"
[simhost]
endpoint = "tcp://127.0.0.1:7720"
n_vms = 3
[monitor]
backend = "sim"
reserve_cores = 0.0
reserve_mem_bytes = 0.0
[actuator]
backend = "sim"
"""


@pytest.fixture
def three_hosts(tmp_path):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing("needs root and iproute2 to create network namespaces")
    tag = uuid.uuid4().hex[:4]
    namespaces, procs = [], []
    try:
        for i in range(1, HOSTS + 1):
            ns, root_if = f"rcmh{tag}{i}", f"rcmh{tag}{i}"
            subprocess.run(["ip", "netns", "add", ns], check=True)
            namespaces.append((ns, root_if))
            subprocess.run(
                ["ip", "link", "add", root_if, "type", "veth", "peer", "name", "eth0", "netns", ns], check=True
            )
            subprocess.run(["ip", "addr", "add", f"10.251.{i}.1/24", "dev", root_if], check=True)
            subprocess.run(["ip", "link", "set", root_if, "up"], check=True)
            for cmd in (
                ["ip", "addr", "add", f"10.251.{i}.2/24", "dev", "eth0"],
                ["ip", "link", "set", "eth0", "up"],
                ["ip", "link", "set", "lo", "up"],
            ):
                subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
            config = tmp_path / f"h{i}.toml"
            config.write_text(CONFIG.format(name=f"h{i}", state=tmp_path / f"state{i}", addr=f"10.251.{i}.2"))
            for service in SERVICES:
                log = open(tmp_path / f"h{i}-{service}.log", "w")  # noqa: SIM115 - closed with the process
                procs.append(
                    (
                        subprocess.Popen(
                            [
                                "ip",
                                "netns",
                                "exec",
                                ns,
                                sys.executable,
                                "-m",
                                f"rescoin.services.{service}.main",
                                "--config",
                                str(config),
                            ],
                            cwd=ROOT,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                        ),
                        log,
                    )
                )
        yield [f"tcp://10.251.{i}.2:7711" for i in range(1, HOSTS + 1)]
    finally:
        for proc, _log in procs:
            proc.terminate()
        for proc, log in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        for ns, root_if in namespaces:
            subprocess.run(["ip", "link", "del", root_if], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def rescoin(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "rescoin.services.cli", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def test_status_and_tap_from_the_root_namespace_see_all_three_hosts(three_hosts):
    bus_args = [a for ep in three_hosts for a in ("--bus", ep)]
    hosts = [a for i in range(1, HOSTS + 1) for a in ("--host", f"h{i}")]
    status = {}

    def all_up() -> bool:
        status["out"] = rescoin("status", *bus_args, *hosts, "--wait", "2")
        return status["out"].returncode == 0

    assert wait_for(all_up, 60, 0.5), status["out"].stdout + status["out"].stderr
    lines = status["out"].stdout.splitlines()
    for i in range(1, HOSTS + 1):
        for service in ("bus", "monitor", "predictor", "scheduler", "actuator"):
            assert any(line.split()[:3] == [f"h{i}", service, "up"] for line in lines), status["out"].stdout
    tap = rescoin("tap", "applied/", *bus_args, "--json", "--count", "9", "--timeout", "20")
    seen = {json.loads(line)["host"] for line in tap.stdout.splitlines()}
    assert seen == {"h1", "h2", "h3"}
