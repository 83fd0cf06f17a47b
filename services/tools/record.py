"""`rescoin record FILE [TOPIC…]`: every message from one or more buses, to a file (format: tools/buses.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import zmq

from ..runtime.support import StopFlag
from .buses import RecordWriter, add_bus_arguments, fleet_from_args, open_subscription


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="record file (appended to if it exists)")
    parser.add_argument("topics", nargs="*", help="topic prefixes, e.g. sample/ alloc/h1/ (default: everything)")
    add_bus_arguments(parser)
    parser.add_argument("--count", type=int, help="stop after this many messages")
    parser.add_argument("--duration", type=float, help="stop after this many seconds")


def run(args: argparse.Namespace) -> int:
    stop = StopFlag().install()
    fleet = fleet_from_args(args)  # a bad fleet file: exit 2 before anything starts
    ctx = zmq.Context()
    sub = open_subscription(ctx, args, args.topics, fleet)
    writer = RecordWriter(args.file)
    deadline = time.monotonic() + args.duration if args.duration else None
    count = 0
    try:
        while not stop.stopping and (args.count is None or count < args.count):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if not sub.poll(200):
                continue
            frames = sub.recv_multipart()
            writer.write(time.time_ns(), frames)
            count += 1
    finally:
        writer.close()
        ctx.destroy(linger=0)
    print(f"recorded {count} messages to {args.file}", file=sys.stderr)
    return 0
