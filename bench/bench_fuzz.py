"""10^5 mutated real frames through the validating decoder (issue 14): the rate, the slowest frame, and
that nothing but ProtocolError comes out; plus what validating on encode costs a publisher."""

from __future__ import annotations

import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.unit's frame mutators

from common import ms, timed, write_section  # noqa: E402
from rescoin.proto.codec import encode  # noqa: E402

from tests.unit.test_fuzz_frames import Outcome, base_frames, byte_mutant, structure_mutants  # noqa: E402
from tests.unit.test_hostile_input import envelope, make_alloc  # noqa: E402

TOTAL = 100_000


def main() -> None:
    bases = base_frames()
    structure = [m for frames in bases for m in structure_mutants(frames)]
    rng = random.Random(14)
    outcome = Outcome()
    t0 = time.perf_counter()
    for i in range(TOTAL):
        frames = structure[i % len(structure)] if i % 2 == 0 else byte_mutant(rng.choice(bases), rng)
        outcome.feed(frames)
    elapsed = time.perf_counter() - t0
    print(outcome.summary(), f"{outcome.count / elapsed:,.0f} frames/s")
    n = 10_000
    env = envelope("alloc", make_alloc([str(uuid.UUID(int=i + 1)) for i in range(n)]))
    plain = timed(lambda: encode(env, validate=False), repeat=30)
    checked = timed(lambda: encode(env), repeat=30)
    body = (
        "| frames | structure / byte mutants | rate | max per frame | over 50 ms | non-ProtocolError | via safety net "
        "| still valid |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        f"| {outcome.count:,} | {TOTAL // 2:,} / {TOTAL - TOTAL // 2:,} | {outcome.count / elapsed:,.0f} frames/s "
        f"| {outcome.max_s * 1e3:.2f} ms | {outcome.slow} | {len(outcome.escaped)} | {len(outcome.internal)} "
        f"| {outcome.accepted:,} |\n\n"
        f"Frames: the sim host's recorded stream (`tests/fixtures/simhost_stream.rec`, brought to protocol "
        f"version {__import__('rescoin.proto', fromlist=['PROTOCOL_VERSION']).PROTOCOL_VERSION}) and one "
        "encoded message of every kind, 3 VMs each. Every other frame is a structure mutant (cycled through "
        f"all {len(structure):,}: each value anywhere in the map tree replaced by an array extension, a list, "
        "a map, nil, bools, huge and negative ints, NaN/inf, a long string, bytes, or a field removed), the "
        "rest seeded byte mutants (1–4 bit flips, byte sets, truncations, insertions, deletions, duplicated "
        "chunks, sometimes another topic). Each frame is timed around `rescoin.proto.codec.decode`; one "
        "that still decodes is re-encoded (with validation), so decoder and encoder agree. *Via safety net*: "
        "ProtocolErrors that only `decode()`'s last-line conversion of an unforeseen exception caught (a "
        "missing check); CI runs the same mutators on fewer frames (`tests/unit/test_fuzz_frames.py`).\n\n"
        f"Validation on encode (what `Publisher.send` does: the frames are decoded before they are sent), "
        f"`alloc` of {n:,} VMs: {ms(plain)} without, {ms(checked)} with."
    )
    write_section("Decoder fuzzing", body)


if __name__ == "__main__":
    main()
