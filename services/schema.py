"""The whole config schema: one section class per [table] of the TOML file.

Each service owns its section class (``services/<stage>/settings.py``). An
entry point hands ``runtime.config`` only the sections it reads
(``service_schema``): it validates those in full and accepts the other known
sections by name, so the bus and the ingress never import the scheduler's
policy or numpy to read their config. A misspelt section refuses every
service; a misspelt key refuses the services that read its section, and
``rescoin config check`` validates the whole file against ``full_schema()``.
"""

from __future__ import annotations

from collections.abc import Mapping

from rescoin.services.runtime.settings import BusSettings, HostSettings, LogSettings

SECTION_NAMES = (
    "host",
    "bus",
    "log",
    "ingress",
    "monitor",
    "predictor",
    "scheduler",
    "actuator",
    "simhost",
    "exporter",
)


def service_schema(**own: type) -> dict[str, type | None]:
    """Every known section: the service's own (plus host, bus and log, which every loop reads) as
    classes, the rest None (known by name, not read)."""
    unknown = sorted(set(own) - set(SECTION_NAMES))
    if unknown:
        raise ValueError(f"not config sections: {', '.join(unknown)}")
    read = {"host": HostSettings, "bus": BusSettings, "log": LogSettings, **own}
    return {name: read.get(name) for name in SECTION_NAMES}


def tools_schema() -> dict[str, type | None]:
    """What the command-line tools read: [bus] (where to tap) and [ingress] (where the keys are)."""
    from rescoin.services.ingress.settings import IngressSettings

    return service_schema(ingress=IngressSettings)


def full_schema() -> Mapping[str, type]:
    """Every section's class (imports every stage's settings: for `rescoin config` and the tests)."""
    from rescoin.services.actuator.settings import ActuatorSettings
    from rescoin.services.exporter.settings import ExporterSettings
    from rescoin.services.ingress.settings import IngressSettings
    from rescoin.services.monitor.settings import MonitorSettings
    from rescoin.services.predictor.settings import PredictorSettings
    from rescoin.services.scheduler.settings import SchedulerSettings
    from rescoin.services.simhost.settings import SimhostSettings

    schema = service_schema(
        ingress=IngressSettings,
        monitor=MonitorSettings,
        predictor=PredictorSettings,
        scheduler=SchedulerSettings,
        actuator=ActuatorSettings,
        simhost=SimhostSettings,
        exporter=ExporterSettings,
    )
    return {name: cls for name, cls in schema.items() if cls is not None}
