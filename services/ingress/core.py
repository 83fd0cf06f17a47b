"""The guest ingress's logic: which guest frames may reach the bus.

A frame is forwarded only if it is a valid ``guest.mem`` message whose VM
UUID (topic and body) is the one the sender's CURVE key was issued for (the
ZAP User-Id). Everything else is dropped with a cause, which the process
counts in its `hb`: ``unauthenticated``, ``forbidden_topic``, ``malformed``,
``wrong_vm``. Socket-free: it takes frames and the authenticated identity.
"""

from __future__ import annotations

from collections.abc import Sequence

from rescoin.proto import KIND_GUEST_MEM, ProtocolError, decode_guest_mem, parse_topic


def check_guest_frames(frames: Sequence[bytes], authenticated_vm: str | None) -> tuple[bool, str, str]:
    """(forward?, cause, detail) for one message received from a guest."""
    if not authenticated_vm:
        return False, "unauthenticated", "no CURVE identity on the message"
    try:
        kind, _key = parse_topic(frames[0] if frames else b"")
    except ProtocolError as exc:
        return False, "malformed", str(exc)
    if kind != KIND_GUEST_MEM:
        return False, "forbidden_topic", f"VM {authenticated_vm} tried to publish {kind!r}"
    try:
        env = decode_guest_mem(frames)
    except ProtocolError as exc:
        return False, "malformed", f"VM {authenticated_vm}: {exc}"
    if env.body.vm != authenticated_vm:
        return False, "wrong_vm", f"VM {authenticated_vm} reported as {env.body.vm}"
    return True, "", ""
