"""A minimal stage for testing the service runtime: it answers each `sample`
with an `estimate` equal to the usage, and says goodbye on close()."""

from __future__ import annotations

import argparse

from rescoin.proto import Envelope, topic_prefix
from rescoin.proto.messages import Estimate
from rescoin.services.runtime.service import (
    Health,
    Outgoing,
    common_arguments,
    config_from_args,
    run_stage,
)
from rescoin.services.runtime.support import Counters
from rescoin.services.schema import service_schema


class EchoStage:
    name = "echo"

    def __init__(self, host: str) -> None:
        self.host = host
        self.periods = 0

    def subscriptions(self) -> list[bytes]:
        return [topic_prefix("sample", self.host)]

    def on_message(self, env: Envelope) -> list[Outgoing]:
        body = env.body
        return [Outgoing("estimate", env.period + 1, Estimate(body.vms, body.usage, ["echo"] * 4, {}))]

    def on_period(self, ended_period: int) -> list[Outgoing]:
        self.periods += 1
        return []

    def health(self) -> Health:
        return Health("ok", {"periods": self.periods})

    def close(self) -> list[Outgoing]:
        return [Outgoing("estimate", 0, Estimate([], __import__("numpy").zeros((0, 4)), ["bye"] * 4, {}))]


def main() -> int:
    parser = argparse.ArgumentParser()
    common_arguments(parser)
    cfg = config_from_args(parser.parse_args(), service_schema())
    return run_stage(EchoStage(cfg.host.name), cfg, Counters())


if __name__ == "__main__":
    raise SystemExit(main())
