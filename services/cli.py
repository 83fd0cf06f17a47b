"""`rescoin`: the operator's command line. Each subcommand lives in its own module
that defines ``add_arguments(parser)`` and ``run(args) -> exit code``; it is
imported only when called, so `rescoin tap` never loads the evaluation code.
`rescoin --version` prints the package's and the wire protocol's versions."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "tap": ("rescoin.services.tools.tap", "live, readable view of bus topics"),
    "top": ("rescoin.services.tools.top", "live full-screen view of every VM's use, share, ceiling and coins"),
    "record": ("rescoin.services.tools.record", "write bus messages to a file"),
    "replay": ("rescoin.services.tools.replay", "publish a recorded file back onto a bus"),
    "status": ("rescoin.services.tools.status", "liveness of every service on every host, from hb"),
    "doctor": ("rescoin.services.tools.doctor", "what ResCoin can enforce on this host and each VM, and why not"),
    "evaluate": ("rescoin.services.tools.evaluate", "run policies and predictors over real traces"),
    "keys": (
        "rescoin.services.tools.keys",
        "create and list CURVE keys for the bus and guest agents",
    ),
    "config": ("rescoin.services.tools.config", "print the example config or check a config file"),
}


def version_text() -> str:
    """``rescoin <package version> (protocol <n>)``, the package's version as installed."""
    from rescoin.proto import PROTOCOL_VERSION

    try:
        version = importlib.metadata.version("rescoin")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    return f"rescoin {version} (protocol {PROTOCOL_VERSION})"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--version"]:
        print(version_text())
        return 0
    parser = argparse.ArgumentParser(prog="rescoin", description="ResCoin: fair sharing of a virtualization host.")
    parser.add_argument("--version", action="store_true", help="print the package and protocol versions")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in COMMANDS.items():
        subparsers.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help() if not argv or argv[0] in ("-h", "--help") else parser.parse_args(argv)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"rescoin {name}", description=COMMANDS[name][1])
    module.add_arguments(sub)
    return int(module.run(sub.parse_args(argv[1:])) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
