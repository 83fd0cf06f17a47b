"""deploy/: both supervisord configs, as supervisord itself reads them, and their TOML configs."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from rescoin.services.runtime.config import load_config
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ServerOptions

from tests.e2e.conftest import DEPLOY

pytestmark = pytest.mark.e2e

PIPELINE = {"bus", "monitor", "predictor", "scheduler", "actuator", "exporter"}


def parsed(name: str, tmp_path: Path) -> ServerOptions:
    """supervisord's own reading of deploy/<name>, with its paths moved under tmp_path."""
    text = (DEPLOY / name).read_text()
    for path in ("/var/lib/rescoin", "/run/rescoin", "%(here)s/../state"):
        text = text.replace(path, str(tmp_path))
    (tmp_path / "logs").mkdir(exist_ok=True)
    conf = DEPLOY / f".test-{tmp_path.name}.conf"  # beside the original: includes are relative
    conf.write_text(text)
    try:
        options = ServerOptions()
        options.realize(["-c", str(conf)])
        return options
    finally:
        conf.unlink()


@pytest.mark.parametrize(
    "name,toml,extra",
    [
        ("supervisord.conf", "demo.toml", "simhost"),
        ("supervisord-host.conf", "host.toml", "ingress"),
    ],
)
def test_every_program_restarts_stops_as_a_group_and_logs_to_the_state_dir(name, toml, extra, tmp_path):
    options = parsed(name, tmp_path)
    (group,) = options.process_group_configs
    assert group.name == "rescoin"
    programs = {p.name: p for p in group.process_configs}
    assert set(programs) == PIPELINE | {extra}
    for program in programs.values():
        assert program.autorestart is RestartUnconditionally, program.name
        assert program.startsecs >= 1 and program.stopwaitsecs >= 5, program.name
        assert program.stopsignal == signal.SIGTERM, program.name
        assert program.stopasgroup and program.killasgroup, program.name
        assert program.stdout_logfile == f"{tmp_path}/logs/{program.name}.log"
        assert program.command.endswith(f"/.venv/bin/rescoin-{program.name}")
    assert programs["actuator"].stopwaitsecs >= 10  # time to restore every tunable
    assert min(programs.values(), key=lambda p: p.priority).name == "bus"
    (server,) = options.server_configs
    assert server["family"].name == "AF_UNIX" and server["chmod"] == 0o700
    config = load_config(DEPLOY / toml)
    # the demo's sim host; a real host's kernel counters (libvirt for discovery) and libvirt for settings
    assert (config.monitor.backend, config.actuator.backend) == (
        ("sim", "sim") if extra == "simhost" else ("kernel", "libvirt")
    )


def test_the_host_config_drives_qemu_system_and_keeps_state_in_var_lib():
    config = load_config(DEPLOY / "host.toml")
    assert config.monitor.uri == config.actuator.uri == "qemu:///system"
    assert config.host.state_dir == "/var/lib/rescoin"
    unit = (DEPLOY / "rescoin.service").read_text()
    assert "supervisord --nodaemon -c /opt/rescoin/deploy/supervisord-host.conf" in unit
    assert "KillMode=mixed" in unit  # SIGTERM to supervisord alone: it stops the programs


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_is_hardened_and_pulls_in_no_libvirt_daemon():
    """No systemd here to run `systemd-analyze security`: the settings it would score are checked instead."""
    unit = unit_settings((DEPLOY / "rescoin.service").read_text())
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert set(unit["ReadWritePaths"][0].split()) == {"/var/lib/rescoin", "/run/rescoin"}
    assert int(unit["LimitNOFILE"][0]) >= 65536 and int(unit["CPUWeight"][0]) > 100
    for key in ("ProtectHome", "PrivateTmp", "ProtectKernelModules", "RestrictSUIDSGID"):
        assert key in unit
    # libvirtd and the split virtqemud conflict: order after either, require neither
    assert {"libvirtd.service", "virtqemud.service"} <= set(unit["After"][0].split())
    assert "Wants" not in unit and "Requires" not in unit


def test_only_the_actuator_and_the_monitor_run_as_root():
    for conf in (DEPLOY / "supervisor.d").rglob("*.conf"):
        users = [ln.split("=", 1)[1].strip() for ln in conf.read_text().splitlines() if ln.startswith("user")]
        if conf.stem in ("actuator", "monitor"):
            assert users in ([], ["root"]), conf
        else:
            assert users == ["%(ENV_RESCOIN_USER)s"], conf
