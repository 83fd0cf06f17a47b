"""The package as a user installs it: build the wheel, install it into a throwaway
virtualenv, and run the console scripts from there, outside the checkout.

The wheel is built from a copy of what it packages (not in the working tree);
its dependencies come from this test run's environment through a .pth line, so
nothing is downloaded but the build backend. The checkout's editable install
never takes part: its finder lives in a .pth file that a path line does not
process, and every check asserts that `rescoin` imports from the throwaway venv.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.support.net import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ("pyproject.toml", "README.md", "proto", "services", "guest_agent")


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args[0]} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str], Path]:
    """(venv bin folder, environment for it, an empty working folder)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in PACKAGED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp / "dist"), str(src)], tmp, env, 300)
    (wheel,) = (tmp / "dist").glob("rescoin-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    py = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", str(wheel)], tmp, env)
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp, env).strip())
    (site / "zz_rescoin_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")  # after the wheel's own
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    work = tmp / "work"
    work.mkdir()
    return venv / "bin", env, work


def test_the_wheel_is_what_is_imported_and_carries_the_traces(installed):
    bin_dir, env, work = installed
    probe = (
        "import json, rescoin.services.cli as c; from rescoin.services.model.traces import default_traces_dir as d; "
        "print(json.dumps([c.__file__, str(d()), len(list(d().glob('*.csv.gz')))]))"
    )
    cli_file, traces, count = json.loads(_run([str(bin_dir / "python"), "-c", probe], work, env))
    venv = bin_dir.parent
    assert Path(cli_file).is_relative_to(venv), cli_file
    assert Path(traces).is_relative_to(venv) and count == 31, (traces, count)
    assert (Path(traces).parent / "README.md").is_file()
    assert (Path(traces).parent / "bitbrains_rnd_2013-08_manifest.csv").is_file()


def test_version_names_the_package_and_the_protocol(installed):
    bin_dir, env, work = installed
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    from rescoin.proto import PROTOCOL_VERSION

    out = _run([str(bin_dir / "rescoin"), "--version"], work, env)
    assert out.strip() == f"rescoin {version} (protocol {PROTOCOL_VERSION})"


def test_evaluate_runs_on_the_packaged_traces(installed):
    bin_dir, env, work = installed
    report = json.loads(_run([str(bin_dir / "rescoin"), "evaluate", "--periods", "200", "--json"], work, env))
    assert report["scenario"]["vms"] == 31 and report["scenario"]["periods"] == 200
    assert "rescoin" in report["policies"] and len(report["policies"]) > 1


def test_a_sim_host_started_from_the_wheel_serves_the_monitor(installed):
    bin_dir, env, work = installed
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sets = [
        f"bus.pub_endpoint='tcp://127.0.0.1:{free_port()}'",
        f"bus.sub_endpoint='tcp://127.0.0.1:{free_port()}'",
        f"simhost.endpoint='{endpoint}'",
        "simhost.n_vms=3",
        "monitor.backend='sim'",
    ]
    common = ["--host", "wheel", "--period", "0.2", "--state-dir", str(work)]
    for item in sets:
        common += ["--set", item]
    sim = subprocess.Popen([str(bin_dir / "rescoin-simhost"), *common], cwd=work, env=env, stderr=subprocess.PIPE)
    try:
        sample = json.loads(_run([str(bin_dir / "rescoin-monitor"), *common, "--once", "--json"], work, env, 60))
    finally:
        sim.terminate()
        _, err = sim.communicate(timeout=20)
    assert len(sample["vms"]) == 3, err.decode()[-2000:]
    assert len(sample["C"]) == 4 and all(c > 0 for c in sample["C"])
