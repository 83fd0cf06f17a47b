"""``hb``: every service's liveness and counters, once per period (numpy-free)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .envelope import (
    MAX_MAP_LEN,
    check_int,
    check_map,
    check_name,
    check_one_of,
    check_scalar,
    check_str,
    require_keys,
)
from .errors import ProtocolError

SERVICE_STATES = ("ok", "starting", "degraded", "failsafe", "disconnected", "stopping")
MAX_HB_ERRORS = 20
MAX_HB_ENTRIES = MAX_MAP_LEN
MIN_PERIOD_S, MAX_PERIOD_S = 1e-3, 3600.0  # every period_s on the wire, `sample`'s too


@dataclass(frozen=True, slots=True)
class Heartbeat:
    service: str  # "monitor", "bus", ...
    state: str  # one of SERVICE_STATES
    period_s: float  # the service's configured period: status uses it to judge staleness
    counters: dict[str, int] = field(default_factory=dict)  # monotone since `epoch`
    info: dict[str, Any] = field(default_factory=dict)  # str/int/float/bool facts ("backend": "libvirt")
    errors: list[str] = field(default_factory=list)  # the most recent rejections, newest last

    REQUIRED = ("service", "state", "period_s", "counters", "info", "errors")

    def to_wire(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "state": self.state,
            "period_s": float(self.period_s),
            "counters": dict(self.counters),
            "info": dict(self.info),
            "errors": list(self.errors[-MAX_HB_ERRORS:]),
        }

    @classmethod
    def from_wire(cls, body: Mapping[str, Any]) -> Heartbeat:
        require_keys(body, cls.REQUIRED, (), "body")
        state = check_one_of(body["state"], "body.state", SERVICE_STATES)
        period_s = body["period_s"]
        if (
            isinstance(period_s, bool)
            or not isinstance(period_s, int | float)
            or not (math.isfinite(period_s) and MIN_PERIOD_S <= period_s <= MAX_PERIOD_S)
        ):
            raise ProtocolError(f"period_s must be a number in [{MIN_PERIOD_S}, {MAX_PERIOD_S}]", "body.period_s")
        counters = check_map(body["counters"], "body.counters")
        info = check_map(body["info"], "body.info")
        errors = body["errors"]
        if len(counters) > MAX_HB_ENTRIES or len(info) > MAX_HB_ENTRIES:
            raise ProtocolError(f"at most {MAX_HB_ENTRIES} counters and info entries", "body")
        for name, value in counters.items():
            check_int(value, f"body.counters.{name:.40}")
        for name, value in info.items():
            check_scalar(value, f"body.info.{name:.40}")
        if not isinstance(errors, list) or len(errors) > MAX_HB_ERRORS:
            raise ProtocolError(f"errors must be a list of at most {MAX_HB_ERRORS} strings", "body.errors")
        for i, text in enumerate(errors):
            check_str(text, f"body.errors[{i}]", 1000)
        return cls(
            service=check_name(body["service"], "body.service"),
            state=state,
            period_s=float(period_s),
            counters=dict(counters),
            info=dict(info),
            errors=list(errors),
        )
