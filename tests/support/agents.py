"""The real guest agent's command line, as a test or a benchmark starts it outside a VM."""

from __future__ import annotations

from pathlib import Path


def agent_command(bin_dir: Path, endpoint: str, keys: Path, vm: str, period_s: float, meminfo: Path) -> list[str]:
    """``rescoin-guest-agent`` connecting to the ingress at ``endpoint`` with ``vm``'s key from ``keys``,
    reporting ``meminfo`` every ``period_s``."""
    return [
        str(bin_dir / "rescoin-guest-agent"),
        "--connect",
        endpoint,
        "--key",
        str(keys / "guests" / f"{vm}.key_secret"),
        "--server-key",
        str(keys / "server.key"),
        "--uuid",
        vm,
        "--period",
        str(period_s),
        "--meminfo",
        str(meminfo),
    ]
