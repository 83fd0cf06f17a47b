"""Record a sim-host stream from a live pipeline, for the policy regression test.

    .venv/bin/python -m tests.e2e.capture tests/fixtures/simhost_stream [PERIODS]

starts the pipeline under supervisord exactly as the e2e tests do (fresh state,
so predictor and scheduler start empty, as a replay does), records every
`sample`, `estimate` and `alloc` from the first one for PERIODS periods into
``simhost_stream.rec`` (`rescoin record`'s format, so `rescoin replay` plays
it too) and the config they were made under into ``simhost_stream.toml``.
Regenerate them when a change to the policy or the predictor is intended;
the replay test then pins the new behaviour.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from rescoin.proto import Envelope
from rescoin.proto.codec import decode
from rescoin.services.tools.buses import RecordWriter, read_records

from tests.e2e.conftest import start_pipeline, stop_pipeline
from tests.support.bus import wait_for

KINDS = ("sample", "estimate", "alloc")


def load_stream(stem: Path) -> tuple[str, list[Envelope]]:
    """(the config text it was recorded under, the messages in recorded order)."""
    records, torn = read_records(stem.with_suffix(".rec"))
    if torn:
        raise ValueError(f"{stem}.rec ends in a torn record ({torn} bytes)")
    return stem.with_suffix(".toml").read_text(), [decode([r.topic, r.payload]) for r in records]


def record(stem: Path, periods: int) -> int:
    with tempfile.TemporaryDirectory(prefix="rescoin-capture-") as tmp:
        pipeline = start_pipeline(Path(tmp))
        try:
            start = time.monotonic()
            assert wait_for(lambda: len(pipeline.watcher.since(start, "alloc")) >= periods, 60 + periods), (
                pipeline.logs()
            )
            heard = [h for h in pipeline.watcher.heard_since(start) if h.env.kind in KINDS]
            stem.with_suffix(".rec").unlink(missing_ok=True)
            writer = RecordWriter(stem.with_suffix(".rec"))
            try:
                for h in heard:
                    writer.write(h.ts_ns, h.frames)
            finally:
                writer.close()
            stem.with_suffix(".toml").write_text(pipeline.config.read_text())
        finally:
            stop_pipeline(pipeline)
    return len(heard)


if __name__ == "__main__":
    count = record(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 40)
    print(f"recorded {count} messages to {sys.argv[1]}.rec (config: {sys.argv[1]}.toml)")
