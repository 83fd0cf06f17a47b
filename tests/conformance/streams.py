"""The recorded streams and the code's verdict, shared by the conformance tests."""

from __future__ import annotations

from pathlib import Path

import msgpack
from rescoin.proto import KIND_GUEST_MEM, Envelope, GuestMem, ProtocolError, decode_guest_mem
from rescoin.proto.codec import decode
from rescoin.services.tools.buses import read_records

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# conformance_stream: every kind, recorded by tests/conformance/record.py; simhost_stream: the policy replay's
STREAMS = ("conformance_stream", "simhost_stream")


def recorded_frames(stem: str) -> list[list[bytes]]:
    records, torn = read_records(FIXTURES / f"{stem}.rec")
    assert not torn, f"{stem}.rec ends in a torn record"
    return [[r.topic, r.payload] for r in records]


def code_verdict(frames: list[bytes]) -> tuple[bool, Envelope | None, str]:
    """rescoin.proto's verdict: (accepted, the envelope, the rejection). Anything but ProtocolError propagates."""
    env: Envelope | None = None
    reason = ""
    try:
        env = decode(frames)
    except ProtocolError as exc:
        reason = str(exc)
    if isinstance(frames, list) and frames and bytes(frames[0]).startswith(f"{KIND_GUEST_MEM}/".encode()):
        # the ingress's and the guest tools' numpy-free decoder must say the same as the codec
        try:
            decode_guest_mem(frames)
            assert env is not None, "decode_guest_mem accepts what decode rejects"
        except ProtocolError:
            assert env is None, "decode_guest_mem rejects what decode accepts"
    return env is not None, env, reason


def code_guest_verdict(frames: list[bytes]) -> tuple[bool, GuestMem | None, str]:
    """The ingress's verdict on a frame from a guest: (accepted, the body it publishes, the rejection).

    The ingress's own check (authenticated as the report's VM), so its conversion is what is tested."""
    from rescoin.services.ingress.core import check_guest_frames

    vm = ""
    try:
        vm = msgpack.unpackb(frames[1], raw=False)["body"]["vm"]
    except Exception:
        vm = "00000000-0000-0000-0000-000000000000"
    verdict = check_guest_frames(frames, str(vm))
    return verdict.report is not None, verdict.report, verdict.detail
