"""The edge-case table: recorded messages mutated to sit just inside or just outside each rule
of proto/README.md. The code and the spec decoder must both give the verdict the spec states.

Each case is (description, frames, accepted?). The expected verdict is written from the spec,
so a rule that both decoders got wrong the same way still fails here.
"""

from __future__ import annotations

import copy
import functools
import math
import struct
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from rescoin.proto import Envelope
from rescoin.proto.codec import encode

from tests.conformance.spec_decoder import judge, judge_guest
from tests.conformance.streams import code_guest_verdict, code_verdict, recorded_frames

OK, BAD = True, False
VM = str(uuid.UUID(int=0x5EC))
Payload = dict[str, Any]


@functools.cache
def base_payloads() -> dict[str, Payload]:
    """One recorded message of each kind, arrays kept as raw extensions so a mutation can replace them."""
    found: dict[str, Payload] = {}
    for _, raw in recorded_frames("conformance_stream"):
        p = msgpack.unpackb(raw, raw=False, ext_hook=msgpack.ExtType)
        body = p["body"]
        if p["kind"] in ("sample", "estimate", "alloc", "applied") and not body["vms"]:
            continue  # the edges of per-VM rules need VMs
        if (p["kind"] == "hb" and body["state"] != "ok") or (p["kind"] == "applied" and body["mode"] != "normal"):
            continue
        found.setdefault(p["kind"], p)
    return found


def arr(values: Any) -> msgpack.ExtType:
    a = np.asarray(values, dtype="<f8")
    return ext(["<f8", list(a.shape), a.tobytes()])


def ext(items: Any, code: int = 1) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(items, use_bin_type=True))


def unarr(value: msgpack.ExtType) -> np.ndarray:
    _, shape, raw = msgpack.unpackb(value.data, raw=False)
    return np.frombuffer(raw, dtype="<f8").reshape(shape).copy()


def topic_of(p: Payload) -> bytes:
    return f"{p['kind']}/{p['body']['vm'] if p['kind'] == 'guest.mem' else p['host']}/".encode()


def frames_of(p: Payload, **pack: Any) -> list[bytes]:
    return [topic_of(p), msgpack.packb(p, use_bin_type=True, **pack)]


CASES: list[tuple[str, list[bytes], bool]] = []


def case(kind: str, description: str, expected: bool, mutate: Callable[[Payload], Any], **pack: Any) -> None:
    """The recorded `kind` message, its payload changed in place by mutate (whose result is ignored)."""
    p = copy.deepcopy(base_payloads()[kind])
    mutate(p)
    CASES.append((f"{kind}: {description}", frames_of(p, **pack), expected))


def framed(kind: str, description: str, expected: bool, make: Callable[[Payload], list[bytes]]) -> None:
    """Frames made from the recorded `kind` message by make: for what a payload map cannot express."""
    CASES.append((f"{kind}: {description}", make(copy.deepcopy(base_payloads()[kind])), expected))


def body(**changes: Any) -> Callable[[Payload], None]:
    return lambda p: p["body"].update(changes)


def env(**changes: Any) -> Callable[[Payload], None]:
    return lambda p: p.update(changes)


def with_host(host: str) -> Callable[[Payload], None]:
    return lambda p: p.update(host=host)  # frames_of puts the host in the topic too


class Packed(bytes):
    """msgpack bytes to put into a raw_map as they are."""


def raw_map(pairs: list[tuple[Any, Any]]) -> Packed:
    """A msgpack map exactly as given, repeats included (a dict cannot hold them)."""
    assert len(pairs) < 16
    items = b"".join(msgpack.packb(k) + (v if isinstance(v, Packed) else msgpack.packb(v)) for k, v in pairs)
    return Packed(bytes([0x80 | len(pairs)]) + items)


def replaced(data: bytes, old: bytes, new: bytes) -> bytes:
    assert data.count(old) == 1, f"{old!r} is not in the message once"
    return data.replace(old, new)


def shown(value: Any) -> str:
    return f"a str of {len(value)} chars" if isinstance(value, str) and len(value) > 20 else repr(value)


def n_vms(p: Payload) -> int:
    return len(p["body"]["vms"])


def matrix(p: Payload, value: float, row: int = 0, col: int = 0, key: str = "tc") -> msgpack.ExtType:
    a = unarr(p["body"][key])
    a[row, col] = value
    return arr(a)


def build_cases() -> None:  # one long table: it reads as the spec does
    # --- framing and topic (§2)
    for kind in ("sample", "guest.mem"):
        case(kind, "the recorded message as it is", OK, lambda p: None)
    framed("hb", "three frames", BAD, lambda p: [*frames_of(p), b""])
    framed("hb", "one frame", BAD, lambda p: frames_of(p)[:1])
    framed("hb", "topic without the trailing slash", BAD, lambda p: [topic_of(p)[:-1], frames_of(p)[1]])
    framed("hb", "topic with a third part", BAD, lambda p: [topic_of(p) + b"x/", frames_of(p)[1]])
    framed("hb", "topic not UTF-8", BAD, lambda p: [b"hb/\xff/", frames_of(p)[1]])
    framed("hb", "topic of 257 bytes", BAD, lambda p: [b"hb/" + b"h" * 253 + b"/", frames_of(p)[1]])
    framed(
        "hb", "topic kind not the payload's", BAD, lambda p: [b"sample/" + p["host"].encode() + b"/", frames_of(p)[1]]
    )
    framed("hb", "topic key not the host", BAD, lambda p: [b"hb/other/", frames_of(p)[1]])
    framed("guest.mem", "topic key not the vm", BAD, lambda p: [f"guest.mem/{VM}/".encode(), frames_of(p)[1]])
    framed("hb", "a byte after the payload map", BAD, lambda p: [topic_of(p), frames_of(p)[1] + b"\xc0"])
    framed("guest.mem", "payload of 4097 bytes", BAD, lambda p: [topic_of(p), frames_of(p)[1].ljust(4097, b"\xc0")])

    # --- the envelope (§2)
    framed(
        "hb",
        "v = 4 as a uint64",
        OK,
        lambda p: [topic_of(p), replaced(frames_of(p)[1], b"\xa1v\x04", b"\xa1v\xcf" + struct.pack(">Q", 4))],
    )
    for value in (1, 2, 3, 5, True, 4.0, "4", None):
        case("hb", f"v = {value!r}", BAD, env(v=value))
    framed(
        "hb",
        "unknown kind",
        BAD,
        lambda p: [b"salmon/" + p["host"].encode() + b"/", frames_of({**p, "kind": "salmon"})[1]],
    )
    case("hb", "host of 128 chars", OK, with_host("h" * 128))
    case("hb", "host of 129 chars", BAD, with_host("h" * 129))
    case("hb", "host of one char", OK, with_host("7"))
    case("hb", "host with every allowed char", OK, with_host("a-b_c.d:e9"))
    for bad in ("-h1", "_h1", ".h1", ":h1", "h 1", "hé", "h1\n", ""):
        case("hb", f"host {bad!r}", BAD, env(host=bad))
    case("hb", "src of 128 chars", OK, env(src="s" * 128))
    case("hb", "src of 129 chars", BAD, env(src="s" * 129))
    case("hb", "src '-x'", BAD, env(src="-x"))
    for key in ("epoch", "seq", "ts", "period"):
        case("hb", f"{key} = 2**63 - 1", OK, env(**{key: 2**63 - 1}))
        case("hb", f"{key} = 2**63", BAD, env(**{key: 2**63}))
        case("hb", f"{key} = -1", BAD, env(**{key: -1}))
        case("hb", f"{key} = true", BAD, env(**{key: True}))
        case("hb", f"{key} = 1.0", BAD, env(**{key: 1.0}))
    case("hb", "ts as a msgpack timestamp", BAD, env(ts=msgpack.Timestamp(1, 0)))
    case("hb", "a missing envelope key", BAD, lambda p: p.pop("seq"))
    case("hb", "an unknown envelope key", BAD, env(extra=1))
    case("hb", "an int map key", BAD, lambda p: p["body"]["counters"].update({7: 1}))
    case("hb", "a bin map key", BAD, lambda p: p["body"]["info"].update({b"pid": 1}))
    framed("hb", "a repeated envelope key", BAD, lambda p: [topic_of(p), raw_map([*p.items(), ("seq", p["seq"])])])
    framed(
        "hb",
        "a repeated body key",
        BAD,
        lambda p: [
            topic_of(p),
            raw_map([*p.items()][:-1] + [("body", raw_map([*p["body"].items(), ("state", "ok")]))]),
        ],
    )
    framed(
        "hb",
        "the same map built by hand (the repeats' control)",
        OK,
        lambda p: [topic_of(p), raw_map([*p.items()][:-1] + [("body", raw_map([*p["body"].items()]))])],
    )
    case("hb", "body not a map", BAD, env(body=[1, 2]))
    case("hb", "a str given as bin", BAD, body(state=b"ok"))

    # --- arrays (§2), on a sample
    case(
        "sample",
        "tc of dtype <f4",
        BAD,
        lambda p: p["body"].update(tc=ext(["<f4", [n_vms(p), 4], b"\0" * 16 * n_vms(p)])),
    )
    case(
        "sample",
        "tc of dtype >f8",
        BAD,
        lambda p: p["body"].update(tc=ext([">f8", [n_vms(p), 4], b"\0" * 32 * n_vms(p)])),
    )
    case("sample", "tc flattened to one dim", BAD, lambda p: p["body"].update(tc=arr(unarr(p["body"]["tc"]).ravel())))
    case("sample", "tc with a third dim", BAD, lambda p: p["body"].update(tc=arr(unarr(p["body"]["tc"])[..., None])))
    case(
        "sample",
        "tc one byte short",
        BAD,
        lambda p: p["body"].update(tc=ext(["<f8", [n_vms(p), 4], b"\0" * (32 * n_vms(p) - 1)])),
    )
    case("sample", "tc data as a str", BAD, lambda p: p["body"].update(tc=ext(["<f8", [1, 0], ""])))
    case("sample", "tc shape dims as bools", BAD, lambda p: p["body"].update(tc=ext(["<f8", [True, True], b"\0" * 8])))
    case(
        "sample",
        "tc extension with a fourth item",
        BAD,
        lambda p: p["body"].update(tc=ext(["<f8", [n_vms(p), 4], b"\0" * 32 * n_vms(p), 0])),
    )
    case(
        "sample",
        "tc extension with a trailing byte",
        BAD,
        lambda p: p["body"].update(tc=msgpack.ExtType(1, p["body"]["tc"].data + b"\xc0")),
    )
    case(
        "sample", "tc as extension type 2", BAD, lambda p: p["body"].update(tc=msgpack.ExtType(2, p["body"]["tc"].data))
    )
    case("sample", "tc as a list of float lists", BAD, lambda p: p["body"].update(tc=unarr(p["body"]["tc"]).tolist()))
    case("sample", "NaN in tc", BAD, lambda p: p["body"].update(tc=matrix(p, math.nan)))
    case("sample", "inf in au", BAD, lambda p: p["body"].update(au=matrix(p, math.inf, key="au")))
    case("sample", "-0.0 in tc", OK, lambda p: p["body"].update(tc=matrix(p, -0.0)))
    case("sample", "negative tc", BAD, lambda p: p["body"].update(tc=matrix(p, -1e-300)))
    case("sample", "a row short of vms", BAD, lambda p: p["body"].update(au=arr(unarr(p["body"]["au"])[1:])))
    case("sample", "negative C", BAD, lambda p: p["body"].update(C=arr([-1.0, 1, 1, 1])))
    case("sample", "C of shape (1, 4)", BAD, lambda p: p["body"].update(C=arr([unarr(p["body"]["C"])])))
    case("sample", "an array as a name", BAD, lambda p: p["body"]["names"].__setitem__(0, arr([1.0])))

    # --- sample (§4)
    case("sample", "a name of 256 chars", OK, lambda p: p["body"]["names"].__setitem__(0, "n" * 256))
    case("sample", "a name of 257 chars", BAD, lambda p: p["body"]["names"].__setitem__(0, "n" * 257))
    case("sample", "an empty name", OK, lambda p: p["body"]["names"].__setitem__(0, ""))
    case("sample", "a name short", BAD, lambda p: p["body"]["names"].pop())
    for source in ("guest", "balloon", "none"):
        case("sample", f"mem_src {source!r}", OK, lambda p, s=source: p["body"]["mem_src"].__setitem__(0, s))
    case("sample", "mem_src 'Guest'", BAD, lambda p: p["body"]["mem_src"].__setitem__(0, "Guest"))
    for value, verdict in (
        (1, OK),
        (0.001, OK),
        (3600, OK),
        (0.0009, BAD),
        (3600.5, BAD),
        (True, BAD),
        (math.nan, BAD),
        ("1", BAD),
    ):
        case("sample", f"period_s = {value!r}", verdict, body(period_s=value))
    case("sample", "period_s as a float32", OK, body(period_s=0.5), use_single_float=True)
    case(
        "sample",
        "an uppercase vm",
        BAD,
        lambda p: p["body"]["vms"].__setitem__(0, p["body"]["vms"][0].upper().replace("0", "A")),
    )
    case(
        "sample",
        "a vm without dashes",
        BAD,
        lambda p: p["body"]["vms"].__setitem__(0, p["body"]["vms"][0].replace("-", "")),
    )
    case("sample", "a vm listed twice", BAD, lambda p: p["body"]["vms"].__setitem__(1, p["body"]["vms"][0]))

    def vms(n: int) -> Callable[[Payload], None]:
        zeros = arr(np.zeros((n, 4)))
        vms = [str(uuid.UUID(int=i + 1)) for i in range(n)]
        unknown = {key: arr(np.full(n, -1.0)) for key in PRESSURE_VECTORS}
        return body(vms=vms, names=[""] * n, mem_src=["none"] * n, tc=zeros, au=zeros, **unknown)

    case("sample", "no VMs", OK, vms(0))
    case("sample", "100000 VMs", OK, vms(100_000))
    case("sample", "100001 VMs", BAD, vms(100_001))

    # --- sample's carried coins (§4): a subset of vms, one row of 4 finite values each
    def carry(vms: Callable[[Payload], list], rows: int, value: float = -2.5) -> Callable[[Payload], None]:
        return lambda p: p["body"].update(carried_vms=vms(p), carried=arr(np.full((rows, 4), value)))

    case("sample", "a VM carrying negative coins", OK, carry(lambda p: p["body"]["vms"][:1], 1))
    case("sample", "a carried VM not in vms", BAD, carry(lambda p: [str(uuid.UUID(int=99))], 1))
    case("sample", "a VM carried twice", BAD, carry(lambda p: p["body"]["vms"][:1] * 2, 2))
    case("sample", "carried rows != carried_vms", BAD, carry(lambda p: p["body"]["vms"][:1], 2))
    case("sample", "carried coins not finite", BAD, carry(lambda p: p["body"]["vms"][:1], 1, math.inf))

    # --- sample's memory-pressure vectors (§4): shape (n,), each exactly -1 or in range, all required
    def vector(p: Payload, key: str, value: float, row: int = 0) -> msgpack.ExtType:
        a = unarr(p["body"][key])
        a[row] = value
        return arr(a)

    for key, top in PRESSURE_VECTORS.items():
        for value, verdict in (
            (-1.0, OK),
            (0.0, OK),
            (-0.0, OK),
            (-0.5, BAD),
            (np.nextafter(-1.0, -2), BAD),
            (np.nextafter(-1.0, 0), BAD),
            (-2.0, BAD),
            (math.nan, BAD),
            (math.inf, BAD),
        ):
            case(
                "sample",
                f"{key} of {value!r}",
                verdict,
                lambda p, k=key, v=value: p["body"].update({k: vector(p, k, v)}),
            )
        if top == 100:
            case("sample", f"{key} of 100 %", OK, lambda p, k=key: p["body"].update({k: vector(p, k, 100.0)}))
            case(
                "sample",
                f"{key} just above 100 %",
                BAD,
                lambda p, k=key: p["body"].update({k: vector(p, k, np.nextafter(100.0, 101))}),
            )
        else:
            case("sample", f"{key} of 1e15", OK, lambda p, k=key: p["body"].update({k: vector(p, k, 1e15)}))
        case("sample", f"{key} missing", BAD, lambda p, k=key: p["body"].pop(k))
        case("sample", f"{key} a row short", BAD, lambda p, k=key: p["body"].update({k: arr(unarr(p["body"][k])[1:])}))
        case(
            "sample",
            f"{key} of shape (n, 1)",
            BAD,
            lambda p, k=key: p["body"].update({k: arr(unarr(p["body"][k])[:, None])}),
        )
        case(
            "sample",
            f"{key} as a list of floats",
            BAD,
            lambda p, k=key: p["body"].update({k: unarr(p["body"][k]).tolist()}),
        )

    # --- estimate (§4)
    case("estimate", "64 params", OK, body(params={f"p{i}": i for i in range(64)}))
    case("estimate", "65 params", BAD, body(params={f"p{i}": i for i in range(65)}))
    for value, verdict in (
        (2**63 - 1, OK),
        (-(2**63), OK),
        (2**63, BAD),
        (True, OK),
        ("x" * 8192, OK),
        (math.nan, BAD),
        (-math.inf, BAD),
        ([1], BAD),
        (None, BAD),
        ({"a": 1}, BAD),
    ):
        case("estimate", f"a param of {shown(value)}", verdict, body(params={"a": value}))
    case("estimate", "a param string of 8193 bytes", BAD, body(params={"a": "x" * 8193}))
    case("estimate", "an array as a param", BAD, body(params={"a": arr([1.0])}))
    case("estimate", "3 predictors", BAD, lambda p: p["body"]["predictor"].pop())
    case("estimate", "a predictor of 256 chars", OK, lambda p: p["body"]["predictor"].__setitem__(0, "x" * 256))
    case("estimate", "a predictor of 257 chars", BAD, lambda p: p["body"]["predictor"].__setitem__(0, "x" * 257))
    case(
        "estimate",
        "an unlisted predictor (an open list)",
        OK,
        lambda p: p["body"]["predictor"].__setitem__(0, "oracle"),
    )
    case("estimate", "negative est", BAD, lambda p: p["body"].update(est=matrix(p, -1.0, key="est")))

    # --- alloc (§4)
    def sum_to(p: Payload, shift: float) -> None:
        a = unarr(p["body"]["alloc"])
        total = np.zeros(4)
        for row in a:
            total = total + row
        p["body"]["C"] = arr(np.nextafter(total, total + shift) if shift else total)

    case("alloc", "C = Σ alloc exactly", OK, lambda p: sum_to(p, 0))
    case("alloc", "C one ulp below Σ alloc", BAD, lambda p: sum_to(p, -1))
    case("alloc", "C one ulp above Σ alloc", OK, lambda p: sum_to(p, +1))

    def row_order(p: Payload, capacity: float) -> None:  # rows in order: (1 + 2^-53) + 2^-53 = 1; exactly, 1 + 2^-52
        n = n_vms(p)
        a = np.zeros((n, 4))
        a[:3, 0] = [1.0, 2**-53, 2**-53]
        p["body"].update(alloc=arr(a), C=arr([capacity, 1, 1, 1]))

    case("alloc", "C = the row-order sum, below the exact sum", OK, lambda p: row_order(p, 1.0))
    case("alloc", "C below the row-order sum", BAD, lambda p: row_order(p, np.nextafter(1.0, 0)))
    case("alloc", "a negative alloc", BAD, lambda p: p["body"].update(alloc=matrix(p, -1.0, key="alloc")))
    for value, verdict in (
        (-1.0, OK),
        (0.0, OK),
        (-0.5, BAD),
        (np.nextafter(-1.0, -2), BAD),
        (np.nextafter(-1.0, 0), BAD),
        (-2.0, BAD),
    ):
        case(
            "alloc", f"a ceil of {value!r}", verdict, lambda p, v=value: p["body"].update(ceil=matrix(p, v, key="ceil"))
        )
    case("alloc", "negative coins", OK, lambda p: p["body"].update(coins=matrix(p, -1e9, key="coins")))
    case("alloc", "NaN coins", BAD, lambda p: p["body"].update(coins=matrix(p, math.nan, key="coins")))
    case("alloc", "negative shares", BAD, lambda p: p["body"].update(shares=matrix(p, -1.0, key="shares")))
    case(
        "alloc",
        "shares summing far above C (advisory)",
        OK,
        lambda p: p["body"].update(shares=matrix(p, 1e12, key="shares")),
    )
    for value in ("shares", "ceilings", "both"):
        case("alloc", f"enforce {value!r}", OK, body(enforce=value))
    for value in ("rescoin", "static", "shares", "maxmin", "credits", "karma"):
        case("alloc", f"policy {value!r}", OK, body(policy=value))
    for key, value in (
        ("enforce", "none"),
        ("policy", "fair"),
        ("policy", "RESCOIN"),
        ("est_src", "none"),
        ("policy", 1),
    ):
        case("alloc", f"{key} {value!r}", BAD, body(**{key: value}))
    case("alloc", "est_src 'last_use'", OK, body(est_src="last_use"))
    case("alloc", "mode 'Fit'", BAD, lambda p: p["body"]["mode"].__setitem__(0, "Fit"))
    case("alloc", "5 modes", BAD, lambda p: p["body"]["mode"].append("fit"))

    # --- applied (§4)
    for key in ("set", "before"):
        for value, verdict in ((-1.0, OK), (0.0, OK), (-0.5, BAD), (-1.5, BAD)):
            case(
                "applied",
                f"{key} = {value}",
                verdict,
                lambda p, k=key, v=value: p["body"].update({k: matrix(p, v, key=k)}),
            )
    case("applied", "a negative weight", BAD, lambda p: p["body"].update(weight=matrix(p, -1.0, key="weight")))
    case(
        "applied",
        "a disk weight above 1000 (advisory)",
        OK,
        lambda p: p["body"].update(weight=matrix(p, 5000.0, col=2, key="weight")),
    )

    def error(**changes: Any) -> Callable[[Payload], None]:
        return lambda p: p["body"]["errors"].append(
            {"vm": p["body"]["vms"][0], "resource": "cpu", "error": "x", **changes}
        )

    case("applied", "an error about a vm", OK, error())
    case("applied", "an error about the whole host ('*')", OK, error(vm="*", resource="all"))
    for vm in ("vm-1", "**", "", VM.upper().replace("0", "A"), 7):
        case("applied", f"an error's vm {vm!r}", BAD, error(vm=vm))
    case("applied", "an error's vm as an array", BAD, error(vm=arr([1.0])))
    case("applied", "an error's resource 'gpu'", BAD, error(resource="gpu"))
    case("applied", "an error text of 2000 chars", OK, error(error="é" * 2000))
    case("applied", "an error text of 2001 chars", BAD, error(error="e" * 2001))
    case(
        "applied", "an error without its text", BAD, lambda p: p["body"]["errors"].append({"vm": VM, "resource": "cpu"})
    )
    case("applied", "an error with an extra key", BAD, error(hint="x"))
    case("applied", "an error as a str", BAD, lambda p: p["body"]["errors"].append("bad"))
    for value, verdict in ((0, OK), (3600, OK), (3600.1, BAD), (-0.1, BAD), (False, BAD)):
        case("applied", f"latency_s = {value!r}", verdict, body(latency_s=value))
    for value in ("normal", "failsafe", "dry-run", "restore"):
        case("applied", f"mode {value!r}", OK, body(mode=value))
    case("applied", "mode 'paused'", BAD, body(mode="paused"))
    for value in ("libvirt", "cgroup", "sim"):
        case("applied", f"backend {value!r}", OK, body(backend=value))
    for value in ("qemu", "Sim", ""):
        case("applied", f"backend {value!r}", BAD, body(backend=value))
    for value, verdict in ((0, OK), (2**63 - 1, OK), (2**63, BAD), (-1, BAD), (True, BAD), (1.0, BAD)):
        case("applied", f"writes = {value!r}", verdict, body(writes=value))

    def unenforce(letter: str = "x", reason: str = "no_balloon", entries: int = 1) -> Callable[[Payload], None]:
        """VM 0's memory marked `letter`, with `entries` unenforced maps naming it."""

        def change(p: Payload) -> None:
            b = p["body"]
            b["enforced"][0] = b["enforced"][0][0] + letter + b["enforced"][0][2:]
            b["unenforced"] = [u for u in b["unenforced"] if (u["vm"], u["resource"]) != (b["vms"][0], "mem")]
            b["unenforced"] += [{"vm": b["vms"][0], "resource": "mem", "reason": reason, "detail": "d"}] * entries

        return change

    case("applied", "a memory nothing holds, with its reason", OK, unenforce())
    case("applied", "an x without its reason", BAD, unenforce(entries=0))
    case("applied", "an x with two reasons", BAD, unenforce(entries=2))
    case("applied", "a reason for a cell that is held", BAD, unenforce(letter="c"))
    case("applied", "a reason outside the closed list", BAD, unenforce(reason="tired"))
    case("applied", "enforced of 3 letters", BAD, lambda p: p["body"]["enforced"].__setitem__(0, "wcb"))
    case("applied", "enforced letter 'z'", BAD, lambda p: p["body"]["enforced"].__setitem__(0, "wczb"))
    case("applied", "one enforced too few", BAD, lambda p: p["body"]["enforced"].pop())

    # --- hb (§4)
    case("hb", "service '-x'", BAD, body(service="-x"))
    case("hb", "an unlisted service (an open list)", OK, body(service="tap-2"))
    for value in ("ok", "starting", "degraded", "failsafe", "disconnected", "stopping"):
        case("hb", f"state {value!r}", OK, body(state=value))
    case("hb", "state 'dead'", BAD, body(state="dead"))
    for value, verdict in ((1, OK), (0.001, OK), (3600, OK), (0.0005, BAD), (0, BAD), (3601, BAD), (True, BAD)):
        case("hb", f"period_s = {value!r}", verdict, body(period_s=value))
    case("hb", "256 counters", OK, body(counters={f"c{i}": i for i in range(256)}))
    case("hb", "257 counters", BAD, body(counters={f"c{i}": i for i in range(257)}))
    for value, verdict in ((2**63 - 1, OK), (2**63, BAD), (-1, BAD), (1.5, BAD), (True, BAD)):
        case("hb", f"a counter of {value!r}", verdict, body(counters={"received": value}))
    case("hb", "no counters (advisory: a missing one reads 0)", OK, body(counters={}))
    case("hb", "256 info entries", OK, body(info={f"i{i}": "x" for i in range(256)}))
    case("hb", "257 info entries", BAD, body(info={f"i{i}": "x" for i in range(257)}))
    for value, verdict in (
        (2**63 - 1, OK),
        (2**63, BAD),
        (1.5, OK),
        (math.nan, BAD),
        (math.inf, BAD),
        ([1], BAD),
        (None, BAD),
        ("x" * 8192, OK),
        ("x" * 8193, BAD),
    ):
        case("hb", f"info of {shown(value)}", verdict, body(info={"a": value}))
    case("hb", "a counter name of 8193 bytes", BAD, body(counters={"c" * 8193: 1}))
    case("hb", "20 errors", OK, body(errors=["e"] * 20))
    case("hb", "21 errors", BAD, body(errors=["e"] * 21))
    case("hb", "an error of 1000 chars", OK, body(errors=["e" * 1000]))
    case("hb", "an error of 1001 chars", BAD, body(errors=["e" * 1001]))
    case("hb", "an error that is an int", BAD, body(errors=[1]))

    # --- guest.mem (§4)
    def sizes(**values: int) -> Callable[[Payload], None]:
        def mutate(p: Payload) -> None:
            p["body"].update(values)
            if "mem_used" not in values:
                p["body"]["mem_used"] = p["body"]["mem_total"] - p["body"]["mem_available"]

        return mutate

    case("guest.mem", "mem_total = 2**50", OK, sizes(mem_total=2**50))
    case("guest.mem", "mem_total = 2**50 + 1", BAD, sizes(mem_total=2**50 + 1))
    case("guest.mem", "mem_total = 1", OK, sizes(mem_total=1, mem_available=1))
    case("guest.mem", "mem_total = 0", BAD, sizes(mem_total=0, mem_available=0))
    case("guest.mem", "mem_available = mem_total", OK, lambda p: sizes(mem_available=p["body"]["mem_total"])(p))
    case(
        "guest.mem",
        "mem_available above mem_total",
        BAD,
        lambda p: sizes(mem_available=p["body"]["mem_total"] + 1, mem_used=0)(p),
    )
    case(
        "guest.mem",
        "mem_used one above total - available",
        BAD,
        lambda p: p["body"].update(mem_used=p["body"]["mem_used"] + 1),
    )
    case(
        "guest.mem",
        "mem_used one below total - available",
        BAD,
        lambda p: p["body"].update(mem_used=p["body"]["mem_used"] - 1),
    )
    case("guest.mem", "swap_total = 2**50", OK, sizes(swap_total=2**50, swap_free=2**50))
    case("guest.mem", "swap_total = 2**50 + 1", BAD, sizes(swap_total=2**50 + 1, swap_free=0))
    case("guest.mem", "swap_free above swap_total", BAD, sizes(swap_total=10, swap_free=11))
    case("guest.mem", "mem_total = true", BAD, sizes(mem_total=True, mem_available=0))
    case("guest.mem", "mem_total as a float", BAD, lambda p: p["body"].update(mem_total=float(p["body"]["mem_total"])))
    case("guest.mem", "agent of 64 chars", OK, body(agent="a" * 64))
    case("guest.mem", "agent of 65 chars", BAD, body(agent="a" * 65))
    case("guest.mem", "agent as an array", BAD, body(agent=arr([1.0])))
    case("guest.mem", "an uppercase vm", BAD, lambda p: p["body"].update(vm=p["body"]["vm"].upper().replace("0", "A")))
    case("guest.mem", "a guest host '-guest'", BAD, env(host="-guest"))
    case("guest.mem", "a guest host of 128 chars", OK, env(host="g" * 128))

    # --- guest.mem's optional pressure fields (§4), on the bus
    case("guest.mem", "every pressure field", OK, body(**PRESSURE))
    case("guest.mem", "no pressure field at all", OK, lambda p: [p["body"].pop(k, None) for k in PRESSURE])
    for line in ("psi_some", "psi_full"):
        fields = {k: v for k, v in PRESSURE.items() if k.startswith(line)}
        case("guest.mem", f"only the {line} line", OK, body(**fields))
        for missing in fields:  # the recorded report may carry the line already: the field is taken out
            case(
                "guest.mem",
                f"the {line} line without {missing}",
                BAD,
                lambda p, fields=fields, missing=missing: [p["body"].update(fields), p["body"].pop(missing)],
            )
    for rate in ("pgmajfault_per_s", "pswpin_per_s"):
        case("guest.mem", f"only {rate}", OK, body(**{rate: 12.5}))
        for value, verdict in ((0, OK), (1e12, OK), (-0.001, BAD), (math.nan, BAD), (math.inf, BAD), (True, BAD)):
            case("guest.mem", f"{rate} = {value!r}", verdict, body(**{rate: value}))
    for avg in ("psi_some_avg10", "psi_some_avg60", "psi_full_avg10", "psi_full_avg60"):
        for value, verdict in ((0, OK), (100, OK), (37.25, OK), (100.01, BAD), (-0.01, BAD), (math.nan, BAD)):
            case("guest.mem", f"{avg} = {value!r}", verdict, body(**{**PRESSURE, avg: value}))
        case("guest.mem", f"{avg} as a str", BAD, body(**{**PRESSURE, avg: "0.5"}))
    for total in ("psi_some_total", "psi_full_total"):
        for value, verdict in ((0, OK), (2**63 - 1, OK), (2**63, BAD), (-1, BAD), (1.0, BAD), (True, BAD)):
            case("guest.mem", f"{total} = {value!r}", verdict, body(**{**PRESSURE, total: value}))
    case("guest.mem", "an unknown pressure field (psi_some_avg300)", BAD, body(**PRESSURE, psi_some_avg300=0.0))
    case(
        "guest.mem",
        "a pressure field of -1 (absent is absent, not -1)",
        BAD,
        body(**{**PRESSURE, "psi_full_avg10": -1}),
    )
    framed(
        "guest.mem",
        "every pressure field of a long agent name within 4096 bytes",
        OK,
        lambda p: frames_of({**p, "body": {**p["body"], **PRESSURE_EXTREMES, "agent": "é" * 64}}),
    )


PRESSURE_VECTORS = {
    "mem_psi_some": 100,
    "mem_psi_full": 100,
    "mem_majflt": math.inf,
    "mem_swapin": math.inf,
    "mem_unreclaimable": math.inf,
}
PRESSURE = {
    "psi_some_avg10": 1.5,
    "psi_some_avg60": 0.25,
    "psi_some_total": 1_234_567,
    "psi_full_avg10": 0.5,
    "psi_full_avg60": 0.0,
    "psi_full_total": 89_012,
    "pgmajfault_per_s": 3.0,
    "pswpin_per_s": 0.0,
}
PRESSURE_EXTREMES = {k: (2**63 - 1 if k.endswith("total") else math.pi * 1e300) for k in PRESSURE} | {
    k: 99.99999999 for k in PRESSURE if "avg" in k
}


build_cases()

# --- guest formats (§5): frames a guest sends to the ingress, with the guest format version in `v`
GUEST_CASES: list[tuple[str, list[bytes], bool]] = []


def guest_case(description: str, expected: bool, v: Any, **body_changes: Any) -> None:
    p = copy.deepcopy(base_payloads()["guest.mem"])
    p["v"] = v
    for key in PRESSURE:  # from meminfo only: the recorded report may carry this host's pressure
        p["body"].pop(key, None)
    p["body"].update(body_changes)
    GUEST_CASES.append((description, frames_of(p), expected))


def build_guest_cases() -> None:
    guest_case("format 2, meminfo only (today's agents)", OK, 2)
    guest_case("format 3, meminfo only (a kernel without PSI, a first report)", OK, 3)
    guest_case("format 3 with every pressure field", OK, 3, **PRESSURE)
    guest_case("format 3 with the PSI lines, no rates yet", OK, 3, **{k: v for k, v in PRESSURE.items() if "psi" in k})
    guest_case("format 2 with pressure fields (not in format 2)", BAD, 2, **PRESSURE)
    guest_case("format 2 with one rate", BAD, 2, pgmajfault_per_s=1.0)
    guest_case("format 3 with half a PSI line", BAD, 3, psi_some_avg10=1.0)
    guest_case("format 3 with a PSI average above 100", BAD, 3, **{**PRESSURE, "psi_some_avg10": 101.0})
    guest_case("format 3 with a broken meminfo", BAD, 3, mem_used=0)
    for v in (1, 4, 0, -1, True, 3.0, "3", None):
        guest_case(f"format {v!r}", BAD, v)
    p = copy.deepcopy(base_payloads()["guest.mem"])
    p["v"] = 3
    GUEST_CASES.append(("format 3 under another kind's topic", [f"hb/{p['host']}/".encode(), frames_of(p)[1]], BAD))
    p = copy.deepcopy(base_payloads()["hb"])
    p["v"] = 3
    GUEST_CASES.append(("format 3 heartbeat (a guest sends only guest.mem)", frames_of(p), BAD))


def test_the_table_covers_every_kind_both_ways():
    for kind in ("guest.mem", "sample", "estimate", "alloc", "applied", "hb"):
        verdicts = {expected for description, _, expected in CASES if description.startswith(f"{kind}: ")}
        assert verdicts == {OK, BAD}, kind
    assert len({description for description, _, _ in CASES}) == len(CASES)  # one case per description


@pytest.mark.parametrize(("description", "frames", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_code_and_the_spec_decoder_give_the_spec_verdict(description, frames, expected):
    spec = judge(frames)
    code_ok, _, reason = code_verdict(frames)
    assert (spec.ok, code_ok) == (expected, expected), f"spec: {spec.reason or 'ok'}; code: {reason or 'ok'}"


build_guest_cases()


def test_the_guest_table_has_both_formats_both_ways():
    assert {expected for _, _, expected in GUEST_CASES} == {OK, BAD}
    assert len({description for description, _, _ in GUEST_CASES}) == len(GUEST_CASES)


@pytest.mark.parametrize(("description", "frames", "expected"), GUEST_CASES, ids=[c[0] for c in GUEST_CASES])
def test_the_ingress_and_the_spec_decoder_read_guest_formats_alike(description, frames, expected):
    """Each guest frame: the same verdict, and an accepted one reaches the bus as the spec converts it."""
    spec = judge_guest(frames)
    code_ok, report, reason = code_guest_verdict(frames)
    assert (spec.ok, code_ok) == (expected, expected), f"spec: {spec.reason or 'ok'}; code: {reason or 'ok'}"
    if expected:
        assert report is not None
        assert report.to_wire() == spec.bus_body
        assert all(type(report.to_wire()[k]) is type(v) for k, v in spec.bus_body.items())
        # what the ingress publishes is a bus message both decoders accept
        bus = encode(Envelope("guest.mem", "h1", "ingress", 1, 0, 0, 0, report))
        assert judge(bus).ok and code_verdict(bus)[0]
