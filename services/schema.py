"""The whole config schema: one section class per [table] of the TOML file.

Each service owns its section class (``services/<stage>/settings.py``); this
module only lists them, so every service validates the whole file.
"""

from rescoin.services.runtime.settings import BusSettings, HostSettings, LogSettings

SECTIONS: dict[str, type] = {
    "host": HostSettings,
    "bus": BusSettings,
    "log": LogSettings,
}
