"""`rescoin config example` prints every key with its default and doc;
`rescoin config check FILE` validates a file the way every service will."""

from __future__ import annotations

import argparse
import json
import sys

from ..runtime.config import ConfigError, example_toml, load_config
from ..schema import full_schema


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action",
        choices=("example", "check", "show"),
        help="example: annotated defaults; check: validate FILE; show: effective config (JSON)",
    )
    parser.add_argument("file", nargs="?", help="config file (check, show)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    if args.action == "example":
        sys.stdout.write(example_toml(full_schema()))
        return 0
    try:
        cfg = load_config(args.file, args.set, full_schema())
    except ConfigError as exc:
        print(f"rescoin: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.action == "show":
        print(json.dumps(cfg.as_dict(), indent=2, sort_keys=True))
    else:
        print(f"{cfg.source}: ok")
    return 0
