"""The actuator's in-force table: rows per VM, reused when a VM is forgotten."""

from __future__ import annotations

import numpy as np
import pytest
from rescoin.services.actuator.backend import NO_LIMIT, Setting
from rescoin.services.actuator.in_force import InForce


def settings(x: float) -> list[Setting]:
    return [Setting(x, x / 2), Setting(NO_LIMIT), Setting(x * 10, 0.0), Setting(NO_LIMIT, 1.0)]


def test_rows_hold_what_was_put_and_come_back_as_settings():
    table = InForce()
    for i in range(100):  # grows past its first block
        table.put(f"vm{i}", settings(float(i)))
    assert table.settings("vm42") == settings(42.0)
    rows = table.index(["vm7", "vm3"])
    assert table.ceiling[rows, 0].tolist() == [7.0, 3.0] and table.weight[rows, 3].tolist() == [1.0, 1.0]
    table.put("vm7", settings(70.0))  # overwritten in place
    assert table.settings("vm7") == settings(70.0) and len(table.rows) == 100


def test_a_forgotten_vms_row_is_reused_and_the_table_does_not_grow():
    table = InForce()
    for i in range(16):
        table.put(f"vm{i}", settings(float(i)))
    size = len(table.ceiling)
    for generation in range(50):  # VMs come and go, never more than 16 at once
        table.drop(f"vm{generation % 16}")
        table.put(f"new{generation}", settings(1.0))  # takes the row just freed
        table.drop(f"new{generation}")
        table.put(f"vm{generation % 16}", settings(2.0))
    assert len(table.ceiling) == size
    assert "vm3" in table and "new3" not in table
    with pytest.raises(KeyError):
        table.index(["new3"])
    table.clear()
    assert "vm3" not in table and np.size(table.ceiling) == 0


def test_a_resource_that_could_not_be_read_is_not_known_and_comes_back_as_none():
    table = InForce()
    table.put("vm", [Setting(1.0, 2.0), None, Setting(NO_LIMIT, 5.0), None])
    assert table.known[table.rows["vm"]].tolist() == [True, False, True, False]
    assert table.settings("vm") == [Setting(1.0, 2.0), None, Setting(NO_LIMIT, 5.0), None]
