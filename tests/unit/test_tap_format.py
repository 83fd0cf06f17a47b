"""`rescoin tap`'s tables: units per column, VM names, pickable columns, 120 columns by default."""

from __future__ import annotations

import argparse
import json
import uuid
from dataclasses import replace

import numpy as np
import pytest
from rescoin.proto import Envelope
from rescoin.proto.messages import Applied, Estimate, Sample
from rescoin.services.tools import tap

from tests.support.messages import alloc_envelope, make_alloc

VMS = [str(uuid.UUID(int=i + 1)) for i in range(2)]
CAPACITY = np.array([2.0, 8 * 2.0**30, 100e6, 100e6])
TEMPLATE = np.array([[1.0, 2**30, 10e6, 10e6]] * 2)
USE = np.array([[0.5, 512 * 2**20, 1e6, 2e6], [1.25, 2**30, 0.0, 0.0]])


def envelope(kind: str, body, src: str) -> Envelope:
    return Envelope(kind, "h1", src, 1, 10, 0, 10, body)


SAMPLE = envelope(
    "sample", Sample(CAPACITY, VMS, ["a-rather-long-vm-name", "db"], TEMPLATE, USE, ["guest"] * 2, 1.0), "monitor"
)
ALLOC = alloc_envelope(11, replace(make_alloc(VMS, USE, TEMPLATE, USE, CAPACITY), coins=np.full((2, 4), -0.5)))
NAMES = {VMS[0]: "web", VMS[1]: "db"}


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_a_sample_table_fits_120_columns_with_units_in_the_headings():
    out = lines(tap.table(SAMPLE))
    assert max(len(line) for line in out) <= 120
    assert out[2].split()[1:] == ["cpu", "cores", "mem", "MiB", "disk", "MB/s", "net", "MB/s"] * 2
    assert "template" in out[1] and "usage" in out[1]
    assert out[3].split() == ["a-rather-long-vm", "1.000", "1024", "10.000", "10.000", "0.500", "512", "1.000", "2.000"]


def test_an_alloc_table_names_vms_from_earlier_samples_else_by_uuid_prefix():
    named = lines(tap.table(ALLOC, NAMES))
    assert [line.split()[0] for line in named[3:]] == ["web", "db"]
    unnamed = lines(tap.table(ALLOC))
    assert [line.split()[0] for line in unnamed[3:]] == [vm[:8] for vm in VMS]
    assert max(len(line) for line in named) <= 120
    assert "-0.500" in named[3] and "policy rescoin" in named[0]


def test_a_sample_uses_its_own_names_over_remembered_ones():
    assert lines(tap.table(SAMPLE, {VMS[1]: "old-name"}))[4].split()[0] == "db"


def test_picked_columns_by_resource_matrix_or_both():
    assert [(c.label, c.resource) for c in tap.columns_for("sample", ["cpu"])] == [("template", 0), ("usage", 0)]
    assert [(c.label, c.resource) for c in tap.columns_for("alloc", ["shares"])] == [("shares", r) for r in range(4)]
    picked = tap.columns_for("alloc", ["coins.net", "alloc.cpu", "coins.cpu"])
    assert [(c.label, c.resource) for c in picked] == [("coins", 0), ("coins", 3), ("alloc", 0)]


def test_a_kind_with_none_of_the_picked_columns_prints_its_header_line_only():
    assert tap.table(SAMPLE, None, ["alloc.cpu"]) == lines(tap.table(SAMPLE))[0]


def test_unknown_column_names_are_refused_naming_the_choices():
    assert tap.parse_columns("usage, alloc.cpu") == ["usage", "alloc.cpu"]
    with pytest.raises(argparse.ArgumentTypeError, match="usage.*cpu"):
        tap.parse_columns("usage,bogus")


def test_no_ceiling_reads_none_and_a_disk_weight_is_a_bfq_weight():
    ceiling = np.array([[-1.0, 2**30, -1.0, -1.0]] * 2)
    weight = np.array([[0.5, 0.0, 500.0, 1e6]] * 2)
    body = Applied(VMS, ceiling, ceiling, weight, [], 0.002, "normal", "sim", 3, ["wcw-"] * len(VMS), [])
    out = lines(tap.table(envelope("applied", body, "actuator"), NAMES, ["ceiling.cpu", "weight"]))
    assert out[2].split()[1:] == ["cpu", "cores", "cpu", "cores", "mem", "MiB", "disk", "bfq", "net", "MB/s"]
    assert out[3].split() == ["web", "none", "0.500", "0", "500", "1.000"]


def test_an_estimate_renders_without_capacity():
    body = Estimate(VMS, USE, ["ewma_dev"] * 4, {})
    out = lines(tap.table(envelope("estimate", body, "predictor"), NAMES))
    assert out[0] == "── estimate/h1/  period 10  from predictor" and out[3].split()[0] == "web"


def test_json_lines_keep_the_wire_fields():
    line = json.loads(tap.as_json(SAMPLE))
    assert line["topic"] == "sample/h1/" and line["kind"] == "sample" and line["period"] == 10
    assert line["body"]["names"] == ["a-rather-long-vm-name", "db"] and line["body"]["au"] == USE.tolist()
