"""`rescoin top`: a live full-screen view of every VM on one or more hosts, in the manner of virt-top.

A row per VM with its use (and a bar of use against its template), allocation,
kernel share, ceiling in force, coins and template for one resource at a time;
each host's totals above. Keys: 1–4 or c/m/d/n pick the resource, s the sort
column, r reverses it, q quits. The logic is in top_model.py; this module is the
terminal (textual) and the bus: it drains the subscription every 0.1 s and
redraws every ``--refresh`` seconds.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable

import zmq
from rescoin.proto import RESOURCES, Envelope
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Static

from . import top_model as tm
from .buses import add_bus_arguments, fleet_from_args, open_subscription, receive

RESOURCE_KEYS = {"1": 0, "c": 0, "2": 1, "m": 1, "3": 2, "d": 2, "4": 3, "n": 3}
TEXT_COLUMNS = ("host", "name")  # left-aligned; numbers right-aligned


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_bus_arguments(parser)
    parser.add_argument("--host", action="append", default=[], help="only these hosts (repeatable)")
    parser.add_argument("--refresh", type=float, default=1.0, help="seconds between redraws (default 1)")
    parser.add_argument("--resource", choices=RESOURCES, default="cpu", help="the resource shown first")


class TopApp(App):
    """The screen. ``drain`` returns the messages that arrived since it was last called (None: none come)."""

    TITLE = "rescoin top"
    ENABLE_COMMAND_PALETTE = False  # every action has its own key
    CSS = "#hosts { height: auto; padding: 0 1; } DataTable { height: 1fr; }"
    BINDINGS = [
        Binding("q", "quit", "quit"),
        *(Binding(key, f"resource({r})", RESOURCES[r], show=key.isdigit()) for key, r in RESOURCE_KEYS.items()),
        Binding("s", "next_sort", "sort column"),
        Binding("r", "reverse", "reverse"),
    ]

    def __init__(
        self,
        model: tm.TopModel,
        drain: Callable[[], Iterable[Envelope | None]] | None = None,
        refresh_s: float = 1.0,
        resource: int = 0,
    ) -> None:
        super().__init__()
        self.model, self.drain, self.refresh_s = model, drain, refresh_s
        self.resource, self.sort_key, self.reverse = resource, "use", False
        self.shown_headings: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(id="hosts")
        yield DataTable(zebra_stripes=True, cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        if self.drain is not None:
            self.set_interval(0.1, self.take_messages)
        self.set_interval(self.refresh_s, self.redraw)
        self.redraw()

    def take_messages(self) -> None:
        assert self.drain is not None
        now = time.monotonic()
        for env in self.drain():
            if env is None:
                self.model.undecodable += 1
            else:
                self.model.on_message(env, now)

    def redraw(self) -> None:
        now = time.monotonic()
        totals = self.model.totals(now)
        lines = Text()
        for host in totals:
            summary = tm.host_summary(host, self.resource)
            lines.append(summary[0] + "\n", style="bold red" if host.stale else "bold")
            lines.append("\n".join(summary[1:]) + "\n")
        if not totals:
            lines.append("waiting for sample/ and alloc/ messages …\n", style="bold")
        if self.model.undecodable:
            lines.append(f"{self.model.undecodable} undecodable messages ignored\n", style="red")
        lines.rstrip()
        self.query_one("#hosts", Static).update(lines)
        several = len(totals) > 1
        table = self.query_one(DataTable)
        # the table is refilled: keep the cursor on the same VM and the view where the reader left it
        selected = table.coordinate_to_cell_key(table.cursor_coordinate).row_key if table.row_count else None
        scroll_y = table.scroll_y
        heads = tm.headings(self.resource, self.sort_key, self.reverse, several)
        if heads != self.shown_headings:
            table.clear(columns=True)
            keys = tm.columns(several)
            table.add_columns(
                *(Text(h, justify="left" if k in TEXT_COLUMNS else "right") for k, h in zip(keys, heads, strict=True))
            )
            self.shown_headings = heads
        else:
            table.clear()
        rows = tm.sort_rows(self.model.rows(), self.sort_key, self.resource, self.reverse)
        for row in rows:
            table.add_row(*self.styled(row, several), key=f"{row.host}/{row.vm}")
        if selected is not None and selected in table.rows:
            table.move_cursor(row=table.get_row_index(selected), scroll=False)
        table.call_after_refresh(table.scroll_to, y=scroll_y, animate=False)

    def styled(self, row: tm.VmRow, several: bool) -> list[Text]:
        """A row's cells, coloured: a bursting VM's bar (use above template) yellow, negative coins red."""
        use, template = row.number("use", self.resource), row.number("template", self.resource)
        styles = {
            "bar": "yellow" if use > template else "green",
            "coins": "red" if row.number("coins", self.resource) < 0 else "",
        }
        keys = tm.columns(several)
        return [
            Text(cell, style=styles.get(key, ""), justify="left" if key in TEXT_COLUMNS else "right")
            for key, cell in zip(keys, tm.cells(row, self.resource, several), strict=True)
        ]

    def action_resource(self, resource: int) -> None:
        self.resource = resource
        self.redraw()

    def action_next_sort(self) -> None:
        keys = [k for k in tm.SORT_KEYS if k != "host" or len(self.model.hosts) > 1]  # no host column for one
        self.sort_key = keys[(keys.index(self.sort_key) + 1) % len(keys)] if self.sort_key in keys else keys[0]
        self.reverse = False
        self.redraw()

    def action_reverse(self) -> None:
        self.reverse = not self.reverse
        self.redraw()


def run(args: argparse.Namespace) -> int:
    fleet = fleet_from_args(args)  # a bad fleet file: exit 2 before anything starts
    ctx = zmq.Context()
    sub = open_subscription(ctx, args, [f"{kind}/" for kind in tm.KINDS], fleet)

    def drain() -> list[Envelope | None]:
        return [msg.env for msg in receive(sub, 0)]  # what has arrived, without waiting

    try:
        TopApp(tm.TopModel(args.host), drain, args.refresh, RESOURCES.index(args.resource)).run()
    finally:
        ctx.destroy(linger=0)
    return 0
