"""Screenshots for the docs: `python -m rescoin.services.tools.screenshots docs/img`.

Writes, into the folder given:

* ``top.png``, ``top-mem.png`` — `rescoin top` (cpu, then memory) on a recorded
  stream, ``--record`` (default: ``top-demo.rec`` in that folder, a few periods of
  the demo pipeline; make another with ``rescoin record FILE --duration 3``);
  textual renders the screen headless as SVG, cairosvg converts it to PNG;
* ``report-*.png`` — the images of the page `rescoin evaluate --report` writes,
  run over the Bitbrains traces with ``--evaluate-args`` (default: the whole month).

Needs the ``docs`` extra (cairosvg, matplotlib) and the Cairo library (Debian: libcairo2).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rescoin.proto.codec import decode

from . import top_model as tm
from .buses import read_records
from .top import TopApp

SIZE = (120, 32)  # the terminal top is drawn in: the width tap is made to fit


def top_screenshots(record: Path, folder: Path) -> list[Path]:
    """top's screen, headless, after folding every message of ``record`` in: cpu, then memory."""
    import cairosvg

    model = tm.TopModel()
    records, _ignored = read_records(record)
    now = time.monotonic()
    for rec in records:
        model.on_message(decode([rec.topic, rec.payload]), now)
    written = []

    async def shoot() -> None:
        app = TopApp(model)
        async with app.run_test(size=SIZE) as pilot:
            for keys, name in (((), "top.png"), (("2",), "top-mem.png")):
                await pilot.press(*keys)
                await pilot.pause()
                svg = app.export_screenshot()
                cairosvg.svg2png(bytestring=svg.encode(), write_to=str(folder / name))
                written.append(folder / name)

    asyncio.run(shoot())
    return written


def report_images(folder: Path, evaluate_args: list[str]) -> list[Path]:
    """Run `rescoin evaluate --report` and save each image of its page as ``report-<what>.png``."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "rescoin.services.cli", "evaluate", *evaluate_args, "--report", tmp]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        page = (Path(tmp) / "index.html").read_text()
    written = []
    for alt, data in re.findall(r"<img alt='([^']*)' src='data:image/png;base64,([^']*)'>", page):
        path = folder / f"report-{re.sub(r'[^a-z0-9]+', '-', alt.lower()).strip('-')}.png"
        path.write_bytes(base64.b64decode(data))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rescoin.services.tools.screenshots", description=__doc__)
    parser.add_argument("folder", type=Path, help="where the PNGs go (docs/img)")
    parser.add_argument("--record", type=Path, help="the stream top shows (default: FOLDER/top-demo.rec)")
    parser.add_argument("--evaluate-args", default="", help="arguments for `rescoin evaluate` (default: none)")
    args = parser.parse_args(argv)
    args.folder.mkdir(parents=True, exist_ok=True)
    written = top_screenshots(args.record or args.folder / "top-demo.rec", args.folder)
    written += report_images(args.folder, shlex.split(args.evaluate_args))
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
