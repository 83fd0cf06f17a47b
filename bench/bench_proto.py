"""Encode and decode of `alloc` messages at 100 / 1k / 10k VMs (the largest body on the bus)."""

from __future__ import annotations

import uuid

import numpy as np
from common import ms, timed, write_section
from rescoin.proto import Envelope
from rescoin.proto.messages import Alloc, decode, encode


def message(n: int) -> Envelope:
    vms = [str(uuid.UUID(int=i + 1)) for i in range(n)]
    m = np.ones((n, 4))
    body = Alloc(vms, m, m, m, m, np.full(4, 1e12), ["fit"] * 4, "rescoin", "estimate")
    return Envelope("alloc", "h1", "scheduler", 1, 2, 3, 4, body)


def main() -> None:
    rows = ["| VMs | payload | encode | decode (validating) | decode MB/s |", "| ---: | ---: | --- | --- | ---: |"]
    for n in (100, 1_000, 10_000):
        env = message(n)
        frames = encode(env)
        size = len(frames[1])
        t_enc = timed(lambda env=env: encode(env))
        t_dec = timed(lambda frames=frames: decode(frames))
        rows.append(f"| {n:,} | {size / 1024:.0f} KiB | {ms(t_enc)} | {ms(t_dec)} | {size / t_dec[0] / 1e6:.0f} |")
    body = (
        "\n".join(rows)
        + "\n\nDecoding checks every UUID against a regular expression, every array for shape and finiteness, and every string list; at 10k VMs the UUID check is most of the time."
    )
    write_section("Message codec", body)


if __name__ == "__main__":
    main()
