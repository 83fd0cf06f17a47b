"""[ingress]: where guests reach the host, and their keys."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import positive, setting


@dataclass
class IngressSettings:
    """The guest ingress: CURVE-authenticated guest.mem reports onto the bus (rescoin-ingress)."""

    keys_dir: str = setting(
        "/etc/rescoin/keys", "CURVE keys from `rescoin keys`: server.key(_secret), guests/<uuid>.key"
    )
    bind_endpoint: str = setting("tcp://127.0.0.1:7730", "endpoint guests connect to (connect mode); empty = none")
    agents: dict[str, str] = setting(
        {}, "bind mode: VM UUID = agent endpoint the ingress connects to, e.g. a per-VM hostfwd port"
    )
    reports_per_period: float = setting(
        2.0, "per VM: reports forwarded per period on average (an agent sends one); more are dropped", positive
    )
    report_burst: float = setting(4.0, "per VM: reports forwarded back to back before the average applies", positive)
