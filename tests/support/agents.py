"""The real guest agent's command line, as a test or a benchmark starts it outside a VM."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

AGENT_MODULE = (sys.executable, "-m", "rescoin.guest_agent.agent")


def agent_command(
    endpoint: str, keys: Path, vm: str, meminfo: Path, *options: str, program: Sequence[str] = AGENT_MODULE
) -> list[str]:
    """The guest agent (``program``) connecting to the ingress at ``endpoint`` with ``vm``'s key from
    ``keys``, reading ``meminfo``, with more ``options`` (``--period``, ``--once``, ``--format``, …)."""
    return [
        *program,
        "--connect",
        endpoint,
        "--key",
        str(keys / "guests" / f"{vm}.key_secret"),
        "--server-key",
        str(keys / "server.key"),
        "--uuid",
        vm,
        "--meminfo",
        str(meminfo),
        *options,
    ]
