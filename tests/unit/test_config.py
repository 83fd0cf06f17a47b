"""One TOML schema: defaults, overrides, errors that name the key, the example file."""

from __future__ import annotations

from pathlib import Path

import pytest
from rescoin.services.runtime.config import ConfigError, example_toml, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_load_without_a_file():
    cfg = load_config(None)
    assert cfg.host.period_s == 1.0
    assert cfg.bus.pub_endpoint.startswith("tcp://127.0.0.1:")
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
    assert committed == example_toml(), "regenerate: rescoin config example > deploy/rescoin.example.toml"


def test_the_example_itself_loads(tmp_path):
    path = tmp_path / "example.toml"
    path.write_text(example_toml())
    load_config(path)
