"""Which service may publish each kind: a stage accepts a kind only from its owner.

On a host's bus every local publisher is the pipeline's own code: the
publish socket is an ``ipc://`` socket only the bus's user and root may open
(`services/bus/ipc.py`, docs/SECURITY.md), so the envelope's ``src`` is set by
trusted code, and this table keeps one stage's bug or a replayed recording
from standing in for another: an ``alloc`` is obeyed only if the scheduler
sent it. ``guest.mem`` is the ingress's: it authenticates each guest by its
CURVE key and publishes the report under its own envelope. ``hb`` (every
service sends its own) has no single owner.
"""

from __future__ import annotations

from rescoin.proto import Envelope
from rescoin.proto.envelope import KIND_ALLOC, KIND_APPLIED, KIND_ESTIMATE, KIND_GUEST_MEM, KIND_SAMPLE

from .support import Counters

OWNERS: dict[str, str] = {
    KIND_SAMPLE: "monitor",
    KIND_ESTIMATE: "predictor",
    KIND_ALLOC: "scheduler",
    KIND_APPLIED: "actuator",
    KIND_GUEST_MEM: "ingress",
}


def from_owner(env: Envelope, counters: Counters) -> bool:
    """True if ``env`` comes from the service that owns its kind; else counted as ``rejected.owner``."""
    owner = OWNERS.get(env.kind)
    if owner is None or env.src == owner:
        return True
    counters.reject("owner", f"{env.kind}/{env.host:.40}/ from {env.src:.40}: only {owner} publishes {env.kind}")
    return False
