"""Skipping for a missing dependency: a skip on a developer's machine, a failure in CI.

`deploy/install.sh --test` installs everything the suite needs, so under CI
(``CI=true`` in the environment) a missing tool, daemon or privilege means the
install half-failed: the test fails, naming what is missing, instead of
letting the run come out green. Skips for what a machine simply is (cgroup v1
not mounted on a v2-only kernel) stay plain ``pytest.skip``.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(what: str) -> NoReturn:
    """Skip (locally) or fail (CI=true) this test because ``what`` is missing."""
    if in_ci():
        pytest.fail(f"missing dependency under CI=true: {what}", pytrace=False)
    pytest.skip(what)
