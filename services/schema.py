"""The whole config schema: one section class per [table] of the TOML file.

Each service owns its section class (``services/<stage>/settings.py``); this
module only lists them, so every service validates the whole file.
"""

from rescoin.services.actuator.settings import ActuatorSettings
from rescoin.services.exporter.settings import ExporterSettings
from rescoin.services.ingress.settings import IngressSettings
from rescoin.services.monitor.settings import MonitorSettings
from rescoin.services.predictor.settings import PredictorSettings
from rescoin.services.runtime.settings import BusSettings, HostSettings, LogSettings
from rescoin.services.scheduler.settings import SchedulerSettings
from rescoin.services.simhost.settings import SimhostSettings

SECTIONS: dict[str, type] = {
    "host": HostSettings,
    "bus": BusSettings,
    "log": LogSettings,
    "ingress": IngressSettings,
    "monitor": MonitorSettings,
    "predictor": PredictorSettings,
    "scheduler": SchedulerSettings,
    "actuator": ActuatorSettings,
    "simhost": SimhostSettings,
    "exporter": ExporterSettings,
}
