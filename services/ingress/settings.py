"""[ingress]: where guests reach the host, and their keys."""

from __future__ import annotations

from dataclasses import dataclass

from ..runtime.config import non_negative, positive, setting


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
    max_connections: int = setting(
        0,
        "guest connections open at once (0 = as many as the open-file limit allows, less a reserve); past it "
        "the oldest that have not sent a CURVE handshake are closed",
        non_negative,
    )
    handshake_timeout_s: float = setting(
        5.0, "a guest connection that has not finished its CURVE handshake by then is closed", positive
    )
    heartbeat_s: float = setting(
        10.0, "ZMTP heartbeat (PING) to each guest connection this often; 0 = none", non_negative
    )
    heartbeat_timeout_s: float = setting(
        30.0, "a guest connection silent this long (no data, no PONG) is closed; also the agent's TTL", positive
    )
