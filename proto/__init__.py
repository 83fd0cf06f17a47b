"""ResCoin's message contract: envelope, topics, kinds, codec (see README.md).

This package's top level is numpy-free so the guest agent can import it;
the batch bodies and the full codec are in ``rescoin.proto.messages``.
"""

from .envelope import (
    CPU,
    DISK,
    KIND_ALLOC,
    KIND_APPLIED,
    KIND_ESTIMATE,
    KIND_GUEST_MEM,
    KIND_HB,
    KIND_SAMPLE,
    KINDS,
    MEM,
    NET,
    NO_LIMIT,
    PROTOCOL_VERSION,
    RATE_RESOURCES,
    RESOURCES,
    UNITS,
    Envelope,
    Resource,
    make_topic,
    parse_topic,
    topic_prefix,
)
from .errors import ProtocolError
from .guest import (
    GUEST_FORMAT_PREVIOUS,
    GUEST_FORMAT_VERSION,
    GUEST_FORMATS,
    GuestMem,
    decode_guest_mem,
    decode_guest_report,
    encode_guest_mem,
    encode_guest_report,
)
from .heartbeat import SERVICE_STATES, Heartbeat

__all__ = [
    "GUEST_FORMATS",
    "GUEST_FORMAT_PREVIOUS",
    "GUEST_FORMAT_VERSION",
    "KINDS",
    "KIND_ALLOC",
    "KIND_APPLIED",
    "KIND_ESTIMATE",
    "KIND_GUEST_MEM",
    "KIND_HB",
    "KIND_SAMPLE",
    "PROTOCOL_VERSION",
    "CPU",
    "DISK",
    "MEM",
    "NET",
    "NO_LIMIT",
    "RATE_RESOURCES",
    "RESOURCES",
    "Resource",
    "SERVICE_STATES",
    "UNITS",
    "Envelope",
    "GuestMem",
    "Heartbeat",
    "ProtocolError",
    "decode_guest_mem",
    "decode_guest_report",
    "encode_guest_mem",
    "encode_guest_report",
    "make_topic",
    "parse_topic",
    "topic_prefix",
]
