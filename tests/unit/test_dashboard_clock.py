"""The Timeline page's "clock: raw | corrected" toggle (issue #10): the corrected
timeline is the raw one with each rank shifted by the skew estimate."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import polars as pl

from overlapscope.analyzers.timeline import clock_variant, timeline_cache_key
from overlapscope.app.dashboard.pages import timeline as timeline_page
from overlapscope.app.dashboard.state import DashboardState, RunEntry, clock_views

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dash_components import find_component  # noqa: E402
from synthetic_skew import gpu_run  # noqa: E402

OFFSET_NS = 3_000_000.0


_find = find_component


def _two_ranks():
    return gpu_run(2, steps=1, layers=2, clock={
        "0": {"offset_ns": 0.0, "drift_ppm": 0.0},
        "1": {"offset_ns": OFFSET_NS, "drift_ppm": 0.0},
    })


def _rank_intervals(tl, rank: int) -> pl.DataFrame:
    return (tl.intervals.join(tl.lanes.select("lane", "rank", "group"), on="lane")
            .filter((pl.col("rank") == rank) & pl.col("group").is_in(["compute", "comm"]))
            .sort("item"))


def test_corrected_timeline_shifts_rank_1_by_the_estimated_offset() -> None:
    frames, _ = _two_ranks()
    views = clock_views(frames, None, time_axis="corrected")
    assert set(views.timelines) == {"raw", "corrected"} and views.default == "corrected"
    table = views.skew.table
    off = float(table.filter(pl.col("rank") == 1)["offset_ns"][0])
    assert abs(off - OFFSET_NS) < 50_000  # the estimate finds the injected offset
    raw, cor = (_rank_intervals(views.timelines[k], 1) for k in ("raw", "corrected"))
    assert raw.height > 0 and raw["item"].to_list() == cor["item"].to_list()
    for col in ("start_ns", "end_ns"):
        shift = raw[col].to_numpy() - cor[col].to_numpy()
        assert np.all(np.abs(shift - off) <= 1), (col, shift[:5], off)
    # the reference rank does not move
    r0, c0 = (_rank_intervals(views.timelines[k], 0) for k in ("raw", "corrected"))
    assert r0["start_ns"].to_list() == c0["start_ns"].to_list()
    # the report's axis is the default; "raw" when the report did not correct
    assert clock_views(frames, None, time_axis="raw").default == "raw"


def test_single_rank_run_has_no_toggle_and_says_why() -> None:
    frames, _ = _two_ranks()
    one = frames.__class__(**{
        **{k: getattr(frames, k) for k in frames.__dataclass_fields__},
        "activities": frames.activities.filter(pl.col("rank") == 0),
        "annotations": frames.annotations.filter(pl.col("rank") == 0),
        "ranks": frames.ranks.filter(pl.col("rank") == 0),
    })
    views = clock_views(one, None)
    assert list(views.timelines) == ["raw"] and views.skew is None
    entry = RunEntry("0", Path("x"), "x", "opened", timelines=views.timelines,
                     timeline=views.timelines["raw"], clock_note=views.note)
    style, value, note = timeline_page.clock_control(entry)
    assert style == {"display": "none"} and value == "raw" and note == "single rank: one clock"


def test_page_layout_has_the_clock_toggle_and_it_picks_the_prepared_timeline() -> None:
    state = DashboardState([Path(".")])
    try:
        page = timeline_page.layout(state)
        radio = _find(page, "tl-clock")
        assert radio is not None
        assert [o["value"] for o in radio.options] == ["raw", "corrected"]
        assert _find(page, "tl-clock-note") is not None
    finally:
        state.close()
    frames, _ = _two_ranks()
    views = clock_views(frames, None, time_axis="corrected")
    entry = RunEntry("0", Path("x"), "x", "opened", timelines=views.timelines,
                     timeline=views.timelines[views.default], clock=views.default,
                     clock_note=views.note, skew=views.skew)
    style, value, note = timeline_page.clock_control(entry)
    assert style["display"] != "none" and value == "corrected" and "rank 0" in note
    assert timeline_page.clock_control(entry, "raw", keep=True)[1] == "raw"
    assert entry.timeline_on("raw") is views.timelines["raw"]
    assert entry.timeline_on("corrected") is views.timelines["corrected"]


def test_corrected_timeline_has_its_own_cache_key(tmp_path) -> None:
    f = tmp_path / "rank0.json"
    f.write_text("{}")
    frames, _ = _two_ranks()
    views = clock_views(frames, None)
    variant = clock_variant(views.skew.model)
    raw_key = timeline_cache_key([f], None)
    assert raw_key == timeline_cache_key([f], None, None)
    assert timeline_cache_key([f], None, variant) != raw_key


def test_reopened_run_is_ready_from_the_caches_then_its_frames_follow(
        tmp_path, monkeypatch) -> None:
    """Second open of a run: Report, raw and corrected timelines come from the caches
    (no analysis, no skew estimate) and equal the first open's; frames follow."""
    samples = Path(__file__).resolve().parents[2] / "sample_traces"
    run = samples / "cpu" / "1f1b"
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    entries = []
    for _ in range(2):
        state = DashboardState([samples], workers=1)
        entry = state.open(run)
        assert state.wait(600) and entry.status == "ready", entry.error
        state.close()
        entries.append(entry)
    first, again = entries
    assert "details" not in first.extra  # analyzed: nothing was cached yet
    assert again.extra["details"] == "ready" and again.extra["timeline_cached"]
    assert set(again.timelines) == set(first.timelines) == {"raw", "corrected"}
    assert (again.clock, again.clock_note) == (first.clock, first.clock_note)
    for clock in ("raw", "corrected"):
        a, b = first.timelines[clock], again.timelines[clock]
        assert a.lanes.equals(b.lanes) and a.intervals.equals(b.intervals)
        assert b.frames is again.result.frames is not None
    assert again.result.report.tables["summary"].equals(first.result.report.tables["summary"])
    comm = first.timelines["raw"].intervals.with_row_index().filter(
        pl.col("kind") == "comm")["index"][0]
    assert again.timelines["raw"].describe(comm) == first.timelines["raw"].describe(comm)
