"""`rescoin replay FILE`: publish a recorded stream back onto a bus, with its spacing or at once."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import zmq

from .buses import read_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a file written by `rescoin record`")
    parser.add_argument(
        "--bus-pub", metavar="ENDPOINT", help="bus XSUB endpoint to publish to (default: the config's bus.pub_endpoint)"
    )
    parser.add_argument("--config", help="TOML config file (for the default endpoint)")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument(
        "--speed", type=float, default=1.0, help="time scale: 2 = twice as fast (default 1: as recorded)"
    )
    speed.add_argument("--max", action="store_true", help="as fast as possible")
    parser.add_argument(
        "--join-s",
        type=float,
        default=0.5,
        help="wait this long after connecting, so subscribers see the first message",
    )


def run(args: argparse.Namespace) -> int:
    records, truncated = read_records(args.file)
    if truncated:
        print(f"rescoin replay: ignoring {truncated} bytes of an unfinished last record", file=sys.stderr)
    endpoint = args.bus_pub
    if endpoint is None:
        from ..runtime.config import load_config
        from ..schema import tools_schema

        endpoint = load_config(args.config, sections=tools_schema()).bus.pub_endpoint
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.sndhwm = 0  # a replay must not drop on its own side
    pub.connect(endpoint)
    time.sleep(args.join_s)  # PUB/SUB joins are asynchronous
    start, first = time.monotonic(), records[0].ts_ns if records else 0
    for rec in records:
        if not args.max:
            due = start + (rec.ts_ns - first) / 1e9 / args.speed
            time.sleep(max(0.0, due - time.monotonic()))
        pub.send_multipart([rec.topic, rec.payload])
    pub.close(linger=5000)
    ctx.term()
    print(f"replayed {len(records)} messages to {endpoint}", file=sys.stderr)
    return 0
