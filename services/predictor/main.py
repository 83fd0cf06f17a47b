"""rescoin-predictor: samples in, next-period demand estimates out."""

from __future__ import annotations

import argparse

from ..runtime.service import common_arguments, config_from_args, run_stage
from ..runtime.support import Counters
from ..schema import service_schema
from .core import PredictorCore
from .settings import PredictorSettings

SCHEMA = service_schema(predictor=PredictorSettings)  # the config sections this program reads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rescoin-predictor", description=__doc__)
    common_arguments(parser)
    cfg = config_from_args(parser.parse_args(argv), SCHEMA)
    counters = Counters(max_warnings=cfg.log.max_warnings_per_period)
    return run_stage(PredictorCore(cfg.host.name, cfg.predictor), cfg, counters)


if __name__ == "__main__":
    raise SystemExit(main())
