"""One TOML schema: defaults, overrides, errors that name the key, the example file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rescoin.services.runtime.config import ConfigError, example_toml, load_config
from rescoin.services.runtime.settings import BusSettings
from rescoin.services.schema import SECTION_NAMES, full_schema, service_schema

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_load_without_a_file():
    cfg = load_config(None)
    assert cfg.host.period_s == 1.0
    assert cfg.bus.pub_endpoint == "ipc:///run/rescoin/bus/pub.sock"  # local publishers: a root-only socket
    assert cfg.host.name  # resolved from the hostname when empty


def test_file_and_overrides_apply_in_order(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[host]\nname = "h7"\nperiod_s = 2\n')
    cfg = load_config(path, ["host.period_s=0.5", "bus.hwm=5"])
    assert (cfg.host.name, cfg.host.period_s, cfg.bus.hwm) == ("h7", 0.5, 5)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[host]\nperiode_s = 1\n", "host.periode_s"),
        ("[hots]\nname = 'x'\n", "hots"),
        ("[host]\nperiod_s = 'fast'\n", "host.period_s"),
        ("[host]\nperiod_s = 0.01\n", "host.period_s"),
        ("[host]\nname = 'a/b'\n", "host.name"),
        ("[bus]\nhwm = 0\n", "bus.hwm"),
        ("[host\n", "(file)"),
    ],
)
def test_bad_config_is_refused_naming_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == key


def test_the_committed_example_is_the_schema_with_its_defaults():
    committed = (ROOT / "deploy" / "rescoin.example.toml").read_text()
    assert committed == example_toml(full_schema()), "regenerate: rescoin config example > deploy/rescoin.example.toml"


def test_the_example_itself_loads(tmp_path):
    path = tmp_path / "example.toml"
    path.write_text(example_toml(full_schema()))
    load_config(path)


def test_the_full_schema_has_a_class_for_every_known_section():
    assert tuple(full_schema()) == SECTION_NAMES


def test_a_program_validates_the_sections_it_reads_and_accepts_the_others_by_name(tmp_path):
    schema = service_schema()  # the bus: host, bus and log
    path = tmp_path / "c.toml"
    path.write_text("[bus]\nhwm = 5\n[scheduler]\npolicy = 'anything'\n")
    cfg = load_config(path, sections=schema)
    assert isinstance(cfg.bus, BusSettings) and cfg.bus.hwm == 5
    with pytest.raises(AttributeError, match="scheduler"):
        cfg.scheduler  # noqa: B018 - not read by this program, so not built
    path.write_text("[shceduler]\npolicy = 'rescoin'\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, sections=schema)
    assert err.value.key == "shceduler"
    with pytest.raises(ValueError, match="nosuch"):
        service_schema(nosuch=BusSettings)


# Each entry point imports, then reads its config exactly as main() does (load_config with its SCHEMA).
_IMPORT_AND_LOAD = """
import importlib, json, sys
from rescoin.services.runtime.config import load_config
main = importlib.import_module(sys.argv[1])
load_config(sys.argv[2], sections=main.SCHEMA)
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_config(module: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_AND_LOAD, module, str(ROOT / "deploy" / "demo.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", ["rescoin.services.bus.main", "rescoin.services.ingress.main"])
def test_reading_its_config_loads_no_other_stage(module):
    """The full demo config, every section in it, read without the scheduler, predictor or sim host."""
    loaded = _modules_after_config(module)
    for other in ("scheduler", "predictor", "simhost", "monitor", "actuator", "model"):
        assert not {m for m in loaded if m.startswith(f"rescoin.services.{other}")}, other


@pytest.mark.parametrize("module", ["rescoin.services.bus.main", "rescoin.services.ingress.main"])
def test_the_bus_and_the_ingress_do_not_load_numpy(module):
    assert "numpy" not in _modules_after_config(module)


def test_a_wrong_predictor_name_is_refused_at_load():
    with pytest.raises(ConfigError, match="predictor names"):
        load_config(None, ["predictor.predictors=['ewma_dev', 'nope', 'ewma', 'last']"], sections=full_schema())
