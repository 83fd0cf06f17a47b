"""Bring a recorded stream to today's wire form without recording it again.

    .venv/bin/python -m tests.conformance.migrate tests/fixtures/conformance_stream tests/fixtures/simhost_stream

Protocol version 2 gained, before its release, `sample`'s required memory-pressure
vectors (proto/README.md §7). A stream recorded before has none; this adds them to
every `sample` as `-1` (unknown) for every VM, which is what the monitor of the
recording knew: no agent reported pressure and no backend gave `usable`. Everything
else, arrival times included, is kept as recorded; a stream that has them already is
left as it is. Writes ``<stem>.rec`` in place.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack
import numpy as np
from rescoin.services.tools.buses import RecordWriter, read_records

SAMPLE_PRESSURE = ("mem_psi_some", "mem_psi_full", "mem_majflt", "mem_swapin", "mem_unreclaimable")


def unknown_vector(n: int) -> msgpack.ExtType:
    raw = np.full(n, -1.0, dtype="<f8").tobytes()
    return msgpack.ExtType(1, msgpack.packb(["<f8", [n], raw], use_bin_type=True))


def migrate_payload(topic: bytes, payload: bytes) -> bytes:
    if not topic.startswith(b"sample/"):
        return payload
    p = msgpack.unpackb(payload, raw=False, ext_hook=msgpack.ExtType)
    missing = [name for name in SAMPLE_PRESSURE if name not in p["body"]]
    if not missing:
        return payload
    p["body"].update({name: unknown_vector(len(p["body"]["vms"])) for name in missing})
    return msgpack.packb(p, use_bin_type=True)


def migrate(stem: Path) -> int:
    """Rewrite ``<stem>.rec``; returns how many messages changed."""
    path = stem.with_suffix(".rec")
    records, torn = read_records(path)
    if torn:
        raise ValueError(f"{path} ends in a torn record")
    migrated = [(r.ts_ns, r.topic, migrate_payload(r.topic, r.payload)) for r in records]
    changed = sum(new != r.payload for r, (_, _, new) in zip(records, migrated, strict=True))
    if changed:
        tmp = path.with_suffix(".rec.tmp")
        tmp.unlink(missing_ok=True)
        writer = RecordWriter(tmp)
        try:
            for ts_ns, topic, payload in migrated:
                writer.write(ts_ns, [topic, payload])
        finally:
            writer.close()
        tmp.replace(path)
    return changed


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(f"{arg}.rec: {migrate(Path(arg))} messages migrated")
