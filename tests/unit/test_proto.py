"""The message contract: round trips of every kind, strict rejection of everything else."""

from __future__ import annotations

import dataclasses
import math
import uuid
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rescoin.proto import (
    GUEST_FORMAT_PREVIOUS,
    GUEST_FORMAT_VERSION,
    GUEST_FORMATS,
    KINDS,
    PROTOCOL_VERSION,
    SERVICE_STATES,
    Envelope,
    GuestMem,
    Heartbeat,
    ProtocolError,
    decode_guest_mem,
    decode_guest_report,
    encode_guest_mem,
    encode_guest_report,
    make_topic,
    parse_topic,
)
from rescoin.proto.arrays import EXT_NDARRAY
from rescoin.proto.codec import decode, encode
from rescoin.proto.envelope import MAX_GUEST_PAYLOAD_BYTES
from rescoin.proto.guest import MAX_GUEST_BYTES
from rescoin.proto.heartbeat import MAX_HB_ERRORS, MAX_PERIOD_S, MIN_PERIOD_S
from rescoin.proto.messages import (
    APPLY_MODES,
    BACKENDS,
    ENFORCEMENT_MODES,
    ERROR_RESOURCES,
    ESTIMATE_SOURCES,
    MAX_ERROR_CHARS,
    MAX_NAME_CHARS,
    MAX_PARAMS,
    MEM_SOURCES,
    MODES,
    POLICY_NAMES,
    UNKNOWN,
    Alloc,
    Applied,
    Estimate,
    Sample,
)

VMS = [str(uuid.UUID(int=i + 1)) for i in range(3)]
RNG = np.random.default_rng(7)


def mat(n: int = 3, lo: float = 0.0) -> np.ndarray:
    return lo + RNG.random((n, 4)) * 10


def envelope(kind: str, body, host: str = "h1", period: int = 100) -> Envelope:
    return Envelope(
        kind=kind,
        host=host,
        src="test",
        epoch=1_700_000_000_000_000_000,
        seq=5,
        ts=1_700_000_000_500_000_000,
        period=period,
        body=body,
    )


def sample_body(n: int = 3) -> Sample:
    return Sample(
        np.array([2.0, 8e9, 1e8, 1e8]),
        VMS[:n],
        [f"vm{i}" for i in range(n)],
        mat(n),
        mat(n),
        ["guest", "balloon", "none"][:n],
        1.0,
    )


BODIES = {
    "guest.mem": GuestMem(VMS[0], 2_000_000, 500_000, 1_500_000, 100, 50, "0.1.0"),
    "sample": sample_body(),
    "estimate": Estimate(VMS, mat(), ["ewma_dev", "ewma_dev", "ewma", "last"], {"alpha": 0.7, "beta": 1.0}),
    "alloc": Alloc(
        VMS,
        mat(),
        mat(lo=-5),
        mat(),
        mat(),
        np.array([40.0, 8e9, 1e8, 1e8]),
        mat(),
        np.where(mat() > 5, -1.0, mat()),
        "shares",
        ["fit", "contended", "fit", "fit"],
        "rescoin",
        "estimate",
    ),
    "applied": Applied(
        VMS,
        np.where(mat() > 5, -1.0, mat()),
        np.where(mat() > 5, -1.0, mat()),
        mat(),
        [{"vm": VMS[1], "resource": "disk", "error": "no such disk"}],
        0.004,
        "normal",
        "libvirt",
        7,
        ["wbc-"] * len(VMS),
        [],
    ),
    "hb": Heartbeat(
        "monitor",
        "ok",
        1.0,
        {"received": 3, "sent": 2},
        {"backend": "libvirt", "pid": 42},
        ["12:00:00 body: bad"],
    ),
}


def bodies_equal(a, b) -> bool:
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            if not np.array_equal(x, y):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips(kind):
    env = envelope(kind, BODIES[kind])
    frames = encode(env)
    back = decode(frames)
    assert back.kind == kind and back.host == "h1" and back.period == 100 and back.seq == 5
    assert bodies_equal(back.body, env.body)


def test_topic_is_kind_slash_host_slash_and_guest_topic_uses_vm_uuid():
    assert encode(envelope("sample", BODIES["sample"]))[0] == b"sample/h1/"
    assert encode(envelope("guest.mem", BODIES["guest.mem"]))[0] == make_topic("guest.mem", VMS[0])
    assert parse_topic(b"alloc/h10/") == ("alloc", "h10")


def test_arrays_travel_as_extension_not_float_lists():
    payload = msgpack.unpackb(
        encode(envelope("sample", BODIES["sample"]))[1], raw=False, ext_hook=lambda c, d: ("ext", c)
    )
    assert payload["body"]["tc"] == ("ext", EXT_NDARRAY)
    assert payload["v"] == PROTOCOL_VERSION


def test_guest_mem_codec_needs_no_numpy_module():
    frames = encode_guest_mem(envelope("guest.mem", BODIES["guest.mem"]))
    assert decode_guest_mem(frames).body == BODIES["guest.mem"]
    with pytest.raises(ProtocolError):
        decode_guest_mem(encode(envelope("hb", BODIES["hb"])))


def repack(frames, mutate):
    payload = msgpack.unpackb(frames[1], raw=False, ext_hook=msgpack.ExtType)
    mutate(payload)
    return [frames[0], msgpack.packb(payload, use_bin_type=True)]


def arr_ext(a: np.ndarray) -> msgpack.ExtType:
    return msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", list(a.shape), a.astype("<f8").tobytes()]))


BAD_MUTATIONS = {
    "unknown version": lambda p: p.update(v=PROTOCOL_VERSION + 1),
    "version as string": lambda p: p.update(v="1"),
    "unknown kind": lambda p: p.update(kind="salmon"),
    "missing seq": lambda p: p.pop("seq"),
    "extra field": lambda p: p.update(extra=1),
    "negative period": lambda p: p.update(period=-1),
    "bool seq": lambda p: p.update(seq=True),
    "host with slash": lambda p: p.update(host="h/1"),
    "body not a map": lambda p: p.update(body=[1, 2]),
    "NaN in usage": lambda p: p["body"].update(au=arr_ext(np.full((3, 4), math.nan))),
    "inf in capacity": lambda p: p["body"].update(C=arr_ext(np.array([1.0, math.inf, 1.0, 1.0]))),
    "negative template": lambda p: p["body"].update(tc=arr_ext(-np.ones((3, 4)))),
    "wrong shape": lambda p: p["body"].update(tc=arr_ext(np.ones((3, 3)))),
    "n does not match vms": lambda p: p["body"].update(au=arr_ext(np.ones((2, 4)))),
    "float list instead of array": lambda p: p["body"].update(tc=[[1.0] * 4] * 3),
    "duplicate vm": lambda p: p["body"].update(vms=[VMS[0], VMS[0], VMS[1]]),
    "vm not a uuid": lambda p: p["body"].update(vms=["vm-1", VMS[1], VMS[2]]),
    "vm with a trailing newline": lambda p: p["body"].update(vms=[VMS[0] + "\n", VMS[1], VMS[2]]),
    "two vms in one string": lambda p: p["body"].update(vms=[VMS[0] + "\n" + VMS[1], VMS[2], str(uuid.UUID(int=9))]),
    "vm not a string": lambda p: p["body"].update(vms=[VMS[0], 7, VMS[2]]),
    "uppercase vm": lambda p: p["body"].update(vms=[VMS[0], VMS[1], VMS[2].upper().replace("0", "A")]),
    "host with a trailing newline": lambda p: p.update(host="h1\n"),
    "unknown mem source": lambda p: p["body"].update(mem_src=["guest", "balloon", "psychic"]),
    "wrong dtype": lambda p: p["body"].update(
        tc=msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<i8", [3, 4], b"\0" * 96]))
    ),
    "short array bytes": lambda p: p["body"].update(
        tc=msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", [3, 4], b"\0" * 95]))
    ),
    "huge shape": lambda p: p["body"].update(tc=msgpack.ExtType(EXT_NDARRAY, msgpack.packb(["<f8", [2**40, 4], b""]))),
    "unknown extension": lambda p: p["body"].update(tc=msgpack.ExtType(9, b"x")),
}


@pytest.mark.parametrize("name", BAD_MUTATIONS)
def test_mutated_sample_is_rejected_with_protocol_error(name):
    frames = repack(encode(envelope("sample", BODIES["sample"])), BAD_MUTATIONS[name])
    with pytest.raises(ProtocolError):
        decode(frames)


def test_names_and_ids_match_whole_strings_only():
    from rescoin.proto.envelope import check_name, check_uuid

    for bad in ("h1\n", "h1/", ""):
        with pytest.raises(ProtocolError):
            check_name(bad, "host")
    with pytest.raises(ProtocolError):
        check_uuid(VMS[0] + "\n", "vm")  # re's "$" would have let this through
    assert check_name("h1", "host") == "h1" and check_uuid(VMS[0], "vm") == VMS[0]


def test_a_bad_vm_id_is_named_by_its_index():
    frames = repack(encode(envelope("sample", BODIES["sample"])), BAD_MUTATIONS["vm not a string"])
    with pytest.raises(ProtocolError, match=r"body\.vms\[1\]"):
        decode(frames)


def test_topic_must_agree_with_payload():
    frames = encode(envelope("sample", BODIES["sample"]))
    with pytest.raises(ProtocolError, match="topic"):
        decode([b"sample/h10/", frames[1]])
    with pytest.raises(ProtocolError, match="topic"):
        decode([b"alloc/h1/", frames[1]])
    guest = encode(envelope("guest.mem", BODIES["guest.mem"]))
    with pytest.raises(ProtocolError, match="topic"):
        decode([make_topic("guest.mem", VMS[1]), guest[1]])


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"sample/h1/"],
        [b"a", b"b", b"c"],
        b"sample/h1/",
        [b"sample/h1", b"\x80"],
        [b"\xff\xfe/h1/", b"\x80"],
        [b"sample/h1/", b"\xc1"],
    ],
)
def test_malformed_framing_is_rejected(frames):
    with pytest.raises(ProtocolError):
        decode(frames)


def test_absurd_guest_numbers_are_rejected():
    frames = encode(envelope("guest.mem", BODIES["guest.mem"]))
    for field, value in (
        ("mem_used", 10**18),
        ("mem_available", 3_000_000),
        ("mem_total", 0),
        ("swap_free", 10**6),
    ):
        with pytest.raises(ProtocolError):
            decode(repack(frames, lambda p, f=field, v=value: p["body"].update({f: v})))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.binary(max_size=64))
def test_random_bytes_raise_only_protocol_error(payload, topic):
    for frames in ([topic, payload], [b"sample/h1/", payload]):
        try:
            decode(frames)
        except ProtocolError:
            pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    cut=st.integers(min_value=0, max_value=10_000),
    flip=st.integers(min_value=0, max_value=10_000),
    byte=st.integers(0, 255),
)
def test_truncated_or_corrupted_frames_raise_only_protocol_error(kind, cut, flip, byte):
    topic, payload = encode(envelope(kind, BODIES[kind]))
    truncated = payload[: cut % (len(payload) + 1)]
    corrupted = bytearray(payload)
    corrupted[flip % len(payload)] = byte
    for candidate in (truncated, bytes(corrupted)):
        try:
            env = decode([topic, candidate])
        except ProtocolError:
            continue
        assert env.kind == kind  # a corruption that still decodes must still be a valid message


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(KINDS),
    field=st.sampled_from(["v", "kind", "host", "src", "epoch", "seq", "ts", "period", "body"]),
    value=msgpack_values,
)
def test_wrongly_typed_envelope_fields_raise_only_protocol_error(kind, field, value):
    frames = repack(encode(envelope(kind, BODIES[kind])), lambda p: p.update({field: value}))
    try:
        decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), value=msgpack_values, data=st.data())
def test_wrongly_typed_body_fields_raise_only_protocol_error(kind, value, data):
    body_keys = sorted(
        msgpack.unpackb(encode(envelope(kind, BODIES[kind]))[1], raw=False, ext_hook=msgpack.ExtType)["body"]
    )
    field = data.draw(st.sampled_from(body_keys))
    frames = repack(encode(envelope(kind, BODIES[kind])), lambda p: p["body"].update({field: value}))
    try:
        decode(frames)
    except ProtocolError:
        pass


def test_encode_refuses_a_body_of_the_wrong_kind():
    with pytest.raises(ProtocolError):
        encode(envelope("alloc", BODIES["sample"]))


def test_large_batch_round_trips():
    n = 10_000
    vms = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    body = Alloc(
        vms,
        np.ones((n, 4)),
        np.zeros((n, 4)),
        np.ones((n, 4)),
        np.ones((n, 4)),
        np.full(4, 1e12),
        np.ones((n, 4)),
        np.full((n, 4), -1.0),
        "both",
        ["fit"] * 4,
        "rescoin",
        "estimate",
    )
    back = decode(encode(envelope("alloc", body)))
    assert back.body.alloc.shape == (n, 4) and back.body.vms[-1] == vms[-1]


def test_spec_document_and_code_agree_on_version_and_kinds():
    spec = (Path(__file__).resolve().parents[2] / "proto" / "README.md").read_text()
    assert f"Protocol version: **{PROTOCOL_VERSION}**" in spec
    for kind in KINDS:
        assert f"### `{kind}`" in spec
    for body in BODIES.values():
        wire = body.to_wire()
        for key in wire:
            assert f"| `{key}` |" in spec, f"{key} is not documented in proto/README.md"


def spec_rows(key: str) -> list[str]:
    """Every table row of proto/README.md that documents the field ``key``."""
    spec = (Path(__file__).resolve().parents[2] / "proto" / "README.md").read_text()
    return [line for line in spec.splitlines() if line.startswith(f"| `{key}` |")]


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("kind", KINDS),
        ("mem_src", MEM_SOURCES),
        ("enforce", ENFORCEMENT_MODES),
        ("mode", MODES),
        ("mode", APPLY_MODES),
        ("policy", POLICY_NAMES),
        ("est_src", ESTIMATE_SOURCES),
        ("backend", BACKENDS),
        ("state", SERVICE_STATES),
        ("errors", ERROR_RESOURCES),
    ],
)
def test_spec_states_every_closed_list_as_closed_with_its_values(key, values):
    assert any(
        "closed list" in row and all(f"{v}`" in row or f'"{v}"' in row for v in values) for row in spec_rows(key)
    )


@pytest.mark.parametrize(
    ("key", "text"),
    [
        ("params", f"at most {MAX_PARAMS}"),
        ("names", f"≤ {MAX_NAME_CHARS} chars"),
        ("predictor", f"≤ {MAX_NAME_CHARS} chars"),
        ("errors", f'error": str ≤ {MAX_ERROR_CHARS} chars'),
        ("errors", f"at most {MAX_HB_ERRORS}, each ≤ 1000 chars"),
        ("agent", "≤ 64 chars"),
        ("mem_total", "2^50"),
        ("swap_total", "2^50"),
        ("period_s", f"{MIN_PERIOD_S}–{MAX_PERIOD_S:.0f}"),
    ],
)
def test_spec_states_the_limits_the_decoder_enforces(key, text):
    assert MAX_GUEST_BYTES == 2**50
    assert any(text in row for row in spec_rows(key)), f"{key}: {text!r}"


def test_a_map_that_repeats_a_key_is_rejected():
    topic, payload = encode(envelope("hb", BODIES["hb"]))
    assert payload.startswith(b"\x89\xa1v\x04")  # a fixmap of 9: v first
    repeated = b"\x8a\xa1v\x04" + payload[1:]  # ten entries, "v" twice
    with pytest.raises(ProtocolError, match="repeats a key"):
        decode([topic, repeated])


@pytest.mark.parametrize("key", ["set", "before"])
def test_an_applied_ceiling_is_minus_one_or_non_negative(key):
    frames = encode(envelope("applied", BODIES["applied"]))
    for value, accepted in ((-1.0, True), (0.0, True), (-0.5, False), (-1.5, False)):
        a = np.full((3, 4), value)
        mutated = repack(frames, lambda p, a=a: p["body"].update({key: arr_ext(a)}))
        if accepted:
            assert decode(mutated).kind == "applied"
        else:
            with pytest.raises(ProtocolError, match=f"body.{key}"):
                decode(mutated)


def test_an_applied_error_names_a_vm_or_the_whole_host():
    frames = encode(envelope("applied", BODIES["applied"]))
    host_wide = {"vm": "*", "resource": "all", "error": "backend unavailable"}
    assert decode(repack(frames, lambda p: p["body"].update(errors=[host_wide]))).body.errors == [host_wide]
    for vm in ("vm-1", "", VMS[0].replace("0", "A"), "**"):
        bad = {"vm": vm, "resource": "cpu", "error": "x"}
        with pytest.raises(ProtocolError, match=r"errors\[0\]\.vm"):
            decode(repack(frames, lambda p, bad=bad: p["body"].update(errors=[bad])))


def test_applied_backend_is_a_closed_list():
    frames = encode(envelope("applied", BODIES["applied"]))
    for backend in BACKENDS:
        assert decode(repack(frames, lambda p, b=backend: p["body"].update(backend=b))).body.backend == backend
    with pytest.raises(ProtocolError, match="body.backend"):
        decode(repack(frames, lambda p: p["body"].update(backend="qemu")))


def test_guest_mem_used_is_exactly_total_minus_available():
    frames = encode(envelope("guest.mem", BODIES["guest.mem"]))
    for used in (1_500_001, 1_499_999, 0):
        with pytest.raises(ProtocolError, match="mem_used"):
            decode(repack(frames, lambda p, u=used: p["body"].update(mem_used=u)))
    huge = {"swap_total": 2**50 + 1, "swap_free": 0}
    with pytest.raises(ProtocolError, match="swap_total"):
        decode(repack(frames, lambda p: p["body"].update(huge)))


def test_a_period_is_at_least_a_millisecond_and_may_travel_as_an_integer():
    for kind in ("hb", "sample"):
        frames = encode(envelope(kind, BODIES[kind]))
        assert decode(repack(frames, lambda p: p["body"].update(period_s=2))).body.period_s == 2.0
        assert decode(repack(frames, lambda p: p["body"].update(period_s=MIN_PERIOD_S))).kind == kind
        with pytest.raises(ProtocolError, match="period_s"):
            decode(repack(frames, lambda p: p["body"].update(period_s=MIN_PERIOD_S / 2)))


@pytest.mark.parametrize(("kind", "key"), [("estimate", "params"), ("hb", "info")])
def test_free_form_integers_fit_64_bits(kind, key):
    frames = encode(envelope(kind, BODIES[kind]))
    for value in (2**63 - 1, -(2**63)):
        assert getattr(decode(repack(frames, lambda p, v=value: p["body"].update({key: {"x": v}}))).body, key) == {
            "x": value
        }
    with pytest.raises(ProtocolError, match=f"body.{key}.x"):
        decode(repack(frames, lambda p: p["body"].update({key: {"x": 2**63}})))


def test_the_allocation_sum_adds_rows_in_order():
    """1 + 2^-53 rounds to 1 at each step, so in row order Σ = 1 = C (the exact sum is above C)."""
    frames = encode(envelope("alloc", BODIES["alloc"]))
    alloc = np.zeros((3, 4))
    alloc[:, 0] = [1.0, 2**-53, 2**-53]
    capacity = np.array([1.0, 1, 1, 1])
    assert decode(repack(frames, lambda p: p["body"].update(alloc=arr_ext(alloc), C=arr_ext(capacity)))).kind == "alloc"
    below = np.array([np.nextafter(1.0, 0), 1, 1, 1])
    with pytest.raises(ProtocolError, match="body.alloc"):
        decode(repack(frames, lambda p: p["body"].update(alloc=arr_ext(alloc), C=arr_ext(below))))


# --- memory pressure: guest formats, the bus's guest.mem, sample's pressure vectors -------------------

PRESSURE = {
    "psi_some_avg10": 12.5,
    "psi_some_avg60": 3.25,
    "psi_some_total": 987_654_321,
    "psi_full_avg10": 1.0,
    "psi_full_avg60": 0.5,
    "psi_full_total": 12_345,
    "pgmajfault_per_s": 40.0,
    "pswpin_per_s": 8.5,
}
SQUEEZED = GuestMem(VMS[0], 2_000_000, 500_000, 1_500_000, 100, 50, "0.2.0", **PRESSURE)


def guest_envelope(body: GuestMem, v: int) -> Envelope:
    return Envelope("guest.mem", "guest", "agent", 1, 0, 0, 0, body, v=v)


def test_a_report_with_pressure_round_trips_on_the_bus_and_absent_fields_stay_absent():
    assert decode(encode(envelope("guest.mem", SQUEEZED))).body == SQUEEZED
    assert decode_guest_mem(encode_guest_mem(envelope("guest.mem", SQUEEZED))).body == SQUEEZED
    plain = decode(encode(envelope("guest.mem", BODIES["guest.mem"]))).body
    assert plain.psi_some_avg10 is None and plain.pgmajfault_per_s is None and not plain.has_pressure
    assert set(BODIES["guest.mem"].to_wire()) == set(GuestMem.FIELDS)  # absent: no key, not a 0 or a -1


def test_the_agent_speaks_the_current_guest_format_and_the_ingress_reads_both():
    assert GUEST_FORMATS == (GUEST_FORMAT_PREVIOUS, GUEST_FORMAT_VERSION) == (2, 3)
    current = decode_guest_report(encode_guest_report(guest_envelope(SQUEEZED, GUEST_FORMAT_VERSION)))
    assert current.v == 3 and current.body == SQUEEZED
    previous = decode_guest_report(encode_guest_report(guest_envelope(BODIES["guest.mem"], GUEST_FORMAT_PREVIOUS)))
    assert previous.v == 2 and previous.body == BODIES["guest.mem"] and not previous.body.has_pressure


def test_todays_agent_frames_are_the_previous_guest_format_byte_for_byte():
    """What every agent sent before (encode_guest_mem at protocol version 2) is guest format 2."""
    frames = encode_guest_mem(guest_envelope(BODIES["guest.mem"], 2))
    assert frames == encode_guest_report(guest_envelope(BODIES["guest.mem"], GUEST_FORMAT_PREVIOUS))
    assert decode_guest_report(frames).body == BODIES["guest.mem"]


def test_the_previous_guest_format_has_no_pressure_fields():
    with pytest.raises(ProtocolError, match="unknown field"):
        encode_guest_report(guest_envelope(SQUEEZED, GUEST_FORMAT_PREVIOUS))
    assert encode_guest_report(guest_envelope(SQUEEZED.without_pressure(), GUEST_FORMAT_PREVIOUS))


@pytest.mark.parametrize("v", [1, 4, 0])
def test_a_guest_format_the_ingress_does_not_speak_is_refused_naming_both(v):
    frames = encode_guest_mem(guest_envelope(BODIES["guest.mem"], v))
    with pytest.raises(ProtocolError, match=rf"unsupported guest format version {v} \(this side speaks 2, 3\)") as err:
        decode_guest_report(frames)
    assert err.value.field == "v"


def test_a_guest_format_version_is_not_a_bus_version():
    frames = encode_guest_report(guest_envelope(SQUEEZED, GUEST_FORMAT_VERSION))
    with pytest.raises(ProtocolError, match="unsupported protocol version 3"):
        decode(frames)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"psi_some_avg10": 100.5}, "body.psi_some_avg10"),
        ({"psi_full_avg60": -0.1}, "body.psi_full_avg60"),
        ({"psi_some_total": -1}, "body.psi_some_total"),
        ({"psi_some_total": 1.5}, "body.psi_some_total"),
        ({"pgmajfault_per_s": math.nan}, "body.pgmajfault_per_s"),
        ({"pswpin_per_s": -1.0}, "body.pswpin_per_s"),
        ({"pswpin_per_s": True}, "body.pswpin_per_s"),
    ],
)
def test_pressure_fields_out_of_range_are_refused(changes, field):
    frames = encode(envelope("guest.mem", SQUEEZED))
    with pytest.raises(ProtocolError) as err:
        decode(repack(frames, lambda p: p["body"].update(changes)))
    assert err.value.field == field


def test_a_psi_line_comes_whole_or_not_at_all():
    frames = encode(envelope("guest.mem", SQUEEZED))
    with pytest.raises(ProtocolError, match="psi_full_total missing"):
        decode(repack(frames, lambda p: p["body"].pop("psi_full_total")))
    no_full = repack(
        frames, lambda p: [p["body"].pop(k) for k in ("psi_full_avg10", "psi_full_avg60", "psi_full_total")]
    )
    assert decode(no_full).body.psi_full_avg10 is None and decode(no_full).body.psi_some_avg10 == 12.5


def test_a_guest_report_with_every_pressure_field_at_its_widest_fits_the_guest_limit():
    widest = GuestMem(
        VMS[0], 2**50, 0, 2**50, 2**50, 2**50, "é" * 64,
        **{k: (2**63 - 1 if k.endswith("total") else 99.999999999 if "avg" in k else 1.7e308) for k in PRESSURE},
    )  # fmt: skip
    frames = encode_guest_report(guest_envelope(widest, GUEST_FORMAT_VERSION))
    assert len(frames[1]) < MAX_GUEST_PAYLOAD_BYTES // 4


SAMPLE_PRESSURE = ("mem_psi_some", "mem_psi_full", "mem_majflt", "mem_swapin", "mem_unreclaimable")


def test_a_sample_carries_memory_pressure_per_vm_and_round_trips():
    values = {
        "mem_psi_some": np.array([12.5, -1.0, 100.0]),
        "mem_psi_full": np.array([1.0, -1.0, 0.0]),
        "mem_majflt": np.array([40.0, -1.0, 0.0]),
        "mem_swapin": np.array([8.5, -1.0, 1e6]),
        "mem_unreclaimable": np.array([3e9, 2**30, -1.0]),
    }
    body = dataclasses.replace(sample_body(), **values)
    back = decode(encode(envelope("sample", body))).body
    for name, expected in values.items():
        np.testing.assert_array_equal(getattr(back, name), expected)
    assert set(SAMPLE_PRESSURE) <= set(body.to_wire())


def test_a_sample_built_without_pressure_knows_none():
    body = sample_body()
    for name in SAMPLE_PRESSURE:
        assert getattr(body, name).tolist() == [UNKNOWN] * 3 == [-1.0] * 3


@pytest.mark.parametrize("name", SAMPLE_PRESSURE)
def test_sample_pressure_is_minus_one_or_in_range_and_required(name):
    frames = encode(envelope("sample", sample_body()))
    top = 100.0 if "psi" in name else 1e18
    for value, accepted in ((-1.0, True), (0.0, True), (top, True), (-0.5, False), (-1.5, False), (math.nan, False)):
        mutated = repack(frames, lambda p, v=value: p["body"].update({name: arr_ext(np.full(3, v))}))
        if accepted:
            assert getattr(decode(mutated).body, name).tolist() == [value] * 3
        else:
            with pytest.raises(ProtocolError, match=f"body.{name}"):
                decode(mutated)
    if "psi" in name:
        with pytest.raises(ProtocolError, match=f"body.{name}"):
            decode(repack(frames, lambda p: p["body"].update({name: arr_ext(np.full(3, 100.01))})))
    with pytest.raises(ProtocolError, match=f"body.{name}"):
        decode(repack(frames, lambda p: p["body"].update({name: arr_ext(np.zeros(2))})))
    with pytest.raises(ProtocolError, match="missing"):
        decode(repack(frames, lambda p: p["body"].pop(name)))


def test_spec_document_states_the_guest_format_versions_and_the_new_limits():
    spec = (Path(__file__).resolve().parents[2] / "proto" / "README.md").read_text()
    assert f"Guest format version: **{GUEST_FORMAT_VERSION}**" in spec
    assert f"also accepts **{GUEST_FORMAT_PREVIOUS}**" in spec
    for key in PRESSURE:
        assert any("*optional*" in row for row in spec_rows(key)), key
    for key in ("psi_some_avg10", "psi_full_avg60", "mem_psi_some", "mem_psi_full"):
        assert any("0–100" in row for row in spec_rows(key)), key
    for key in SAMPLE_PRESSURE:
        assert any("exactly `-1` (unknown)" in row for row in spec_rows(key)), key
    for body in (SQUEEZED, sample_body()):
        for key in body.to_wire():
            assert f"| `{key}` |" in spec, key
