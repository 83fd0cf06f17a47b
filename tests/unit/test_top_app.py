"""`rescoin top`'s screen, headless (textual's test pilot): keys switch resource and sort, redraws keep the place."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
from rescoin.proto import Envelope
from rescoin.proto.messages import Sample
from rescoin.services.tools import top_model as tm
from rescoin.services.tools.top import TopApp

N = 60  # more VMs than the screen has rows
VMS = [str(uuid.UUID(int=i + 1)) for i in range(N)]
NAMES = [f"vm-{i:02d}" for i in range(N)]


def model() -> tm.TopModel:
    use = np.outer(np.arange(N, dtype=float), [0.01, 2**20, 1e3, 1e3])  # vm-59 uses most
    body = Sample(np.array([64.0, 2.0**40, 1e9, 1e9]), VMS, NAMES, np.ones((N, 4)), use, ["guest"] * N, 1.0)
    top = tm.TopModel()
    top.on_message(Envelope("sample", "h1", "monitor", 1, 10, 0, 10, body), 0.0)
    return top


def first_column(app: TopApp) -> list[str]:
    from textual.widgets import DataTable

    table = app.query_one(DataTable)
    return [str(table.get_row_at(i)[0]) for i in range(table.row_count)]


def run(scenario) -> None:
    async def go() -> None:
        app = TopApp(model(), refresh_s=60)  # redraws only when the test asks
        async with app.run_test(size=(120, 30)) as pilot:
            await pilot.pause()
            await scenario(app, pilot)

    asyncio.run(go())


def test_keys_pick_the_resource_and_the_sort_column():
    async def scenario(app, pilot):
        assert first_column(app)[:2] == ["vm-59", "vm-58"]  # by use, biggest first
        await pilot.press("m")
        assert "ceiling MiB" in app.shown_headings
        for _ in range(tm.SORT_KEYS.index("name")):  # s steps through the columns; host is skipped for one host
            await pilot.press("s")
        assert app.sort_key == "name" and first_column(app)[:2] == ["vm-00", "vm-01"]
        await pilot.press("r")
        assert first_column(app)[:2] == ["vm-59", "vm-58"]

    run(scenario)


def test_a_redraw_keeps_the_cursor_on_its_vm_and_the_view_scrolled():
    async def scenario(app, pilot):
        from textual.widgets import DataTable

        table = app.query_one(DataTable)
        for _ in range(40):
            await pilot.press("down")
        await pilot.pause()
        scrolled = table.scroll_y
        assert scrolled > 0 and first_column(app)[table.cursor_row] == "vm-19"
        app.redraw()
        await pilot.pause()
        assert first_column(app)[table.cursor_row] == "vm-19" and table.scroll_y == scrolled

    run(scenario)


def test_q_quits():
    async def scenario(app, pilot):
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running

    run(scenario)
