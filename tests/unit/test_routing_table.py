"""The routing table reads the profiler's node-limit statistics from run.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from overlapscope.analyzers import build_report
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.routing import routing_table

ROOT = Path(__file__).resolve().parents[2]


def test_routing_rows_worked_by_hand() -> None:
    manifest = {"ranks": [
        {"rank": 1, "facts": {"routing": {"tokens": 64, "tokens_redirected": 16,
                                          "ib_bytes": 6_528, "ib_bytes_unlimited": 17_136,
                                          "nodes": 2, "max_nodes": 1}}},
        {"rank": 0, "routing": {"tokens": 0, "tokens_redirected": 0, "ib_bytes": 0,
                                "ib_bytes_unlimited": 0}},
        {"rank": 2},  # no statistics: no row
    ]}
    t = routing_table(manifest)
    assert t["rank"].to_list() == [0, 1]
    assert t["redirected_fraction"].to_list() == [None, 0.25]
    assert t["ib_bytes_saved"].to_list() == [0, 10_608]


def test_sample_run_reports_the_node_limit() -> None:
    rep = build_report(load_run(ROOT / "sample_traces" / "cpu" / "dualpipe"))
    t = rep.tables["routing"]
    assert (t["max_nodes"] < t["nodes"]).all()  # the limit binds in the demo layout
    assert t["ib_bytes_saved"].sum() > 0 and t["tokens_redirected"].sum() > 0
    head = rep.headline()
    assert head["ib_bytes_saved"] == pytest.approx(float(t["ib_bytes_saved"].sum()))
    hand = build_report(load_run(ROOT / "sample_traces" / "handmade"))
    assert "run.json" in hand.not_applicable["routing"]
