"""The real-VM suite's timing summary, printed at the end of the run.

A module of its own: pytest imports conftest.py under a name of its own, so a
list defined there and imported by the tests would be two different lists.
"""

from __future__ import annotations

TIMINGS: list[tuple[str, float]] = []
