"""Decode bombs: frames whose msgpack describes far more objects than bytes (issue #29).

Each bomb is decoded by `rescoin.proto.codec.decode` in this process: the time
to refusal, the peak RSS above the RSS before (VmHWM, reset before each), and
the RSS after. ``--before PATH`` decodes with the envelope module found in PATH
instead (a copy of the old proto/envelope.py), for the numbers before the fix;
``--scale`` shrinks the bombs for that run (the old decoder built them whole).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import struct
import sys
import time
from pathlib import Path

from common import write_section
from rescoin.proto import ProtocolError
from rescoin.proto.codec import decode

MIB = 2**20


def status(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def array_header(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def envelope_around(kind: str, body_value: bytes) -> bytes:
    """A payload map whose first value is body_value (the bomb), so msgpack reads it first."""
    return b"\x81\xa4body" + body_value


def lists_of_empty_lists(size: int, per_list: int) -> bytes:
    """[[[], [], ...], [[], ...], ...]: one byte per list."""
    inner = array_header(per_list) + b"\x90" * per_list
    count = size // len(inner)
    return array_header(count) + inner * count


def lists_of_ints(size: int, per_list: int) -> bytes:
    """Lists of -32 (a negative fixint, one byte, a fresh 28-byte int object each)."""
    inner = array_header(per_list) + b"\xe0" * per_list
    count = size // len(inner)
    return array_header(count) + inner * count


def lists_of_empty_maps(size: int, per_list: int) -> bytes:
    inner = array_header(per_list) + b"\x80" * per_list
    count = size // len(inner)
    return array_header(count) + inner * count


def arrays_ext(size: int) -> bytes:
    """A list of tiny array extensions ([dtype, [0], b""]): 14 bytes, a numpy array each."""
    data = b"\x93\xa3<f8\x91\x00\xc4\x00"
    one = b"\xc7" + bytes([len(data)]) + b"\x01" + data
    count = min(size // len(one), 400_000)
    return array_header(count) + one * count


def bombs(size: int) -> list[tuple[str, str, bytes]]:
    return [
        ("alloc", "empty lists, 400,000 a list", envelope_around("alloc", lists_of_empty_lists(size, 400_000))),
        ("alloc", "empty lists, 100,000 a list", envelope_around("alloc", lists_of_empty_lists(size, 100_000))),
        ("sample", "empty lists, 100,000 a list", envelope_around("sample", lists_of_empty_lists(size, 100_000))),
        ("applied", "empty lists, 400,000 a list", envelope_around("applied", lists_of_empty_lists(size, 400_000))),
        ("applied", "empty maps, 400,000 a list", envelope_around("applied", lists_of_empty_maps(size, 400_000))),
        ("applied", "ints (-32), 400,000 a list", envelope_around("applied", lists_of_ints(size, 400_000))),
        ("sample", "ints (-32), 100,000 a list", envelope_around("sample", lists_of_ints(size, 100_000))),
        ("alloc", "tiny array extensions", envelope_around("alloc", arrays_ext(size))),
        ("hb", "empty lists, 20 a list", envelope_around("hb", lists_of_empty_lists(min(size, 8 * MIB), 20))),
    ]


def run(size: int, decoder) -> list[str]:
    rows = []
    for kind, what, payload in bombs(size):
        frames = [f"{kind}/h1/".encode(), payload]
        gc.collect()
        rss0 = status("VmRSS")
        reset_peak()
        t0 = time.perf_counter()
        try:
            decoder(frames)
            verdict = "accepted"
        except ProtocolError as exc:
            verdict = f"refused: {exc.reason[:60]}"
        elapsed = time.perf_counter() - t0
        peak = status("VmHWM") - rss0
        gc.collect()
        after = status("VmRSS") - rss0
        row = (
            f"| `{kind}` | {what} | {len(payload) / MIB:.1f} MiB | {elapsed * 1e3:,.1f} ms | "
            f"{peak:+,.0f} MiB | {after:+,.0f} MiB | {verdict} |"
        )
        print(row, flush=True)
        rows.append(row)
        del frames, payload
    return rows


def old_decoder(path: str):
    """decode() with the old envelope.py: its unpack_frames, then the body as today."""
    spec = importlib.util.spec_from_file_location("rescoin.proto._old_envelope", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    from rescoin.proto.codec import _array_ext

    return lambda frames: module.unpack_frames(frames, _array_ext)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", help="an old proto/envelope.py to decode with instead")
    parser.add_argument("--size-mib", type=float, default=60.0)
    args = parser.parse_args()
    size = int(args.size_mib * MIB)
    header = [
        "| topic kind | bomb | payload | until refused | peak RSS | RSS after | verdict |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    if args.before:
        rows = run(size, old_decoder(args.before))
        print("\n".join(header + rows))
        return
    rows = run(size, decode)
    body = (
        "\n".join(header + rows)
        + f"\n\nEach bomb is one payload of about {args.size_mib:g} MiB (the `hb` one 8 MiB, its kind's limit) "
        "decoded by `rescoin.proto.codec.decode` in the benchmark's process: the time until the ProtocolError, "
        "the peak RSS above the RSS before (VmHWM, reset before each), the RSS after. The payload is a map whose "
        '`body` is the bomb, so msgpack reads it first. Limits: proto/README.md §6 "Decoding budget".\n\n'
        "Before the budget (`--before` with the old proto/envelope.py, bombs of 6 MiB since it built them whole): "
        "every container bomb took 1.2–1.7 s and +400 MiB of peak RSS (so ~4 GB and ~15 s at 60 MiB, the issue's "
        "4.4 GB and 33 s on a busier actuator), the int bombs 0.22 s and +220 MiB, 4.6 MiB of tiny arrays 1.3 s "
        "and +98 MiB. Now a bomb on the actuator's input (`alloc`) or on `hb` is refused by its size before a byte "
        "is read, one on `sample` after at most 9 containers; `applied`, whose legal shape holds 400,000 maps in "
        "each of two lists, is the costliest kind and stays below what a legal `applied` of the same size costs."
    )
    write_section("Decode bomb", body)


if __name__ == "__main__":
    sys.exit(main())
