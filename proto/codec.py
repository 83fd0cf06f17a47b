"""The codec for every kind: ``encode(env) -> [topic, payload]``, ``decode(frames) -> Envelope``.

numpy-free at import: the batch bodies (and numpy with them) load the first
time a batch kind is encoded or decoded, so the bus, the ingress and the
guest agent's tools read their config and send heartbeats without numpy.

    frames = encode(env)          # [topic, payload]
    env = decode(frames)          # validated Envelope, or ProtocolError
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .envelope import KIND_GUEST_MEM, KIND_HB, Envelope, pack_frames, unpack_frames
from .errors import ProtocolError, only_protocol_errors
from .guest import GuestMem, envelope_from_payload
from .heartbeat import Heartbeat

NUMPY_FREE_BODIES: dict[str, Any] = {KIND_GUEST_MEM: GuestMem, KIND_HB: Heartbeat}


def body_types() -> dict[str, Any]:
    """Every kind's body class; imports the batch bodies (numpy) on first call."""
    from .messages import BATCH_BODIES

    return {**NUMPY_FREE_BODIES, **BATCH_BODIES}


def _body_type(kind: str) -> Any:
    return NUMPY_FREE_BODIES.get(kind) or body_types().get(kind)


def _array_ext(code: int, data: bytes) -> Any:
    from .arrays import ext_hook  # numpy only once a payload carries an array

    return ext_hook(code, data)


def _array_default(obj: Any) -> Any:
    from .arrays import pack_default

    return pack_default(obj)


def encode(env: Envelope, validate: bool = True) -> list[bytes]:
    """Envelope -> ``[topic, payload]`` frames.

    With ``validate`` (the default, what every publisher uses) the frames are
    decoded again before they are returned, so nothing a receiver would reject
    (NaN, a negative use, n not matching ``vms``...) is ever sent: the sender
    gets the ProtocolError instead. Costs about one decode (~1 ms at 10k VMs).
    """
    body_type = _body_type(env.kind)
    if body_type is None or not isinstance(env.body, body_type):
        raise ProtocolError(f"body of a {env.kind!r} message must be {getattr(body_type, '__name__', '?')}", "body")
    try:
        frames = pack_frames(env, env.body.to_wire(), default=_array_default)
    except ProtocolError:
        raise
    except Exception as exc:  # a value msgpack cannot carry (an int above 2**64, an object...)
        raise ProtocolError(f"cannot encode: {type(exc).__name__}: {exc}"[:300], "body") from exc
    if validate:
        decode(frames)
    return frames


def decode(frames: Sequence[bytes]) -> Envelope:
    """``[topic, payload]`` frames -> validated Envelope. Raises only ProtocolError."""
    with only_protocol_errors():  # the fuzz tests find nothing that needs this net
        kind, key, payload = unpack_frames(frames, _array_ext)
        body = _body_type(kind).from_wire(payload["body"])
        return envelope_from_payload(payload, body, key)
