"""Timeline lanes and the per-lane range-max index (analyzers/timeline.py).

Hand-worked views on tiny lanes (which interval must win each pixel column), a
brute-force second method compared on random data, and the lanes of the
hand-made sample run checked against its Report.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from overlapscope.analyzers import analyze
from overlapscope.analyzers.timeline import (
    BLOCK,
    LaneIndex,
    Timeline,
    build_timeline,
    column_edges,
    merge_touching,
    warp_timeline,
)

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"


def _timeline(rows: list[tuple], n_lanes: int) -> Timeline:
    """Lanes ``0..n_lanes-1`` holding (lane, start, end, name[, kind]) intervals."""
    lanes = pl.DataFrame(
        {
            "lane": list(range(n_lanes)),
            "rank": [0] * n_lanes,
            "device": [0] * n_lanes,
            "group": ["compute"] * n_lanes,
            "key": list(range(n_lanes)),
            "label": [f"lane {i}" for i in range(n_lanes)],
        },
        schema={"lane": pl.Int32, "rank": pl.Int32, "device": pl.Int32, "group": pl.Utf8,
                "key": pl.Int64, "label": pl.Utf8},
    )
    iv = pl.DataFrame(
        {
            "lane": [r[0] for r in rows],
            "start_ns": [r[1] for r in rows],
            "end_ns": [r[2] for r in rows],
            "name": [r[3] for r in rows],
            "kind": [r[4] if len(r) > 4 else "compute" for r in rows],
            "comm_type": [None] * len(rows),
            "item": list(range(len(rows))),
        }
    )
    return Timeline.from_intervals(lanes, iv)


def _winners(tl: Timeline, t0: int, t1: int, pixels: int) -> list[list[str | None]]:
    """Name of the winning interval per lane and column (None: nothing there)."""
    lane_ids, rows = tl.index.query(t0, t1, pixels)
    names = tl.intervals["name"].to_list()
    return [
        [names[tl.index.order[r]] if r >= 0 else None for r in lane_rows] for lane_rows in rows
    ]


def test_longest_interval_wins_each_column() -> None:
    tl = _timeline(
        [
            (0, 0, 10, "A"), (0, 2, 4, "B"), (0, 12, 20, "C"),
            (1, 0, 3, "D"), (1, 3, 6, "E"), (1, 4, 5, "F"),
        ],
        2,
    )
    # columns [0,5) [5,10) [10,15) [15,20): A covers the first two, C the last two
    # (column [10,15) holds only C, which starts at 12).
    assert _winners(tl, 0, 20, 4)[0] == ["A", "A", "C", "C"]
    # columns [0,3) [3,6): E starts at 3 so it is not in the first column; in the
    # second E (3 ns) beats F (1 ns).
    assert _winners(tl, 0, 6, 2)[1] == ["D", "E"]
    view = tl.view(0, 20, 4)
    lane0 = view.filter(pl.col("lane") == 0)
    assert lane0["name"].to_list() == ["A", "C"]
    assert lane0["px0"].to_list() == [0, 2] and lane0["px1"].to_list() == [2, 4]
    # rectangles keep the interval's true times, not the column's
    assert lane0.row(0, named=True)["start_ns"] == 0 and lane0.row(0, named=True)["end_ns"] == 10


def test_ties_go_to_the_earlier_interval_and_gaps_stay_empty() -> None:
    tl = _timeline([(0, 0, 4, "G"), (0, 2, 6, "H"), (0, 20, 25, "N")], 1)
    assert _winners(tl, 0, 10, 1)[0] == ["G"]  # equal durations: earlier start
    # [10, 15) overlaps nothing: no rectangle there
    assert _winners(tl, 10, 15, 1)[0] == [None]
    assert tl.view(10, 15, 1).height == 0


def test_short_interval_inside_the_row_range_never_wins_without_overlap() -> None:
    # Rows sorted by start: I [0,100), J [10,20), K [50,52). For column [30,40)
    # the row range is [I, J] (J starts before 40) but J ends before 30: I wins.
    tl = _timeline([(0, 0, 100, "I"), (0, 10, 20, "J"), (0, 50, 52, "K")], 1)
    assert _winners(tl, 30, 40, 1)[0] == ["I"]
    assert _winners(tl, 50, 51, 1)[0] == ["I"]
    # alone, without I, K wins its column and J is not drawn
    tl2 = _timeline([(0, 10, 20, "J"), (0, 50, 52, "K")], 1)
    # columns [30,40) [40,50) [50,60): only the last one holds K
    assert _winners(tl2, 30, 60, 3)[0] == [None, None, "K"]


def test_zero_length_intervals_are_not_drawn() -> None:
    tl = _timeline([(0, 5, 5, "Z"), (0, 6, 7, "Y")], 1)
    assert tl.index.size == 1
    assert _winners(tl, 0, 10, 2)[0] == [None, "Y"]


def test_column_edges_are_integer_and_cover_the_window() -> None:
    e = column_edges(10, 17, 3)
    assert e.tolist() == [10, 12, 14, 17]


def _brute(starts, ends, lanes, n_lanes, t0, t1, pixels) -> np.ndarray:
    """Second method: per lane and column scan every interval; the winner is the
    longest overlapping one, ties to (earliest start, longest, first row)."""
    edges = column_edges(t0, t1, pixels)
    out = np.full((n_lanes, pixels), -1, dtype=np.int64)
    for lane in range(n_lanes):
        rows = [i for i in range(len(starts)) if lanes[i] == lane and ends[i] > starts[i]]
        rows.sort(key=lambda i: (starts[i], -(ends[i] - starts[i]), i))
        for p in range(pixels):
            a, b = edges[p], edges[p + 1]
            best = None
            for i in rows:  # in sorted order: the first maximum wins ties
                if starts[i] < b and ends[i] > a and (
                    best is None or ends[i] - starts[i] > ends[best] - starts[best]
                ):
                    best = i
            out[lane, p] = -1 if best is None else best
    return out


@pytest.mark.parametrize("seed", range(6))
def test_index_equals_brute_force_on_random_lanes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_lanes = 3
    n = int(rng.integers(BLOCK, 8 * BLOCK))  # several blocks: every query path is used
    starts = rng.integers(0, 10_000, n)
    # mostly short intervals, some long ones that nest many others, some zero-length
    durs = np.where(rng.random(n) < 0.1, rng.integers(500, 5000, n), rng.integers(0, 60, n))
    durs[rng.random(n) < 0.05] = 7  # many equal durations: ties
    ends = starts + durs
    lanes = rng.integers(0, n_lanes, n)
    tl = Timeline.from_intervals(
        pl.DataFrame({"lane": range(n_lanes), "rank": [0] * n_lanes, "device": [0] * n_lanes,
                      "group": ["compute"] * n_lanes, "key": range(n_lanes),
                      "label": ["x"] * n_lanes}),
        pl.DataFrame({"lane": lanes, "start_ns": starts, "end_ns": ends, "name": ["n"] * n,
                      "kind": ["compute"] * n, "comm_type": [None] * n, "item": range(n)}),
    )
    for t0, t1, pixels in [(0, 11_000, 50), (2_000, 2_300, 37), (-500, 20_000, 7),
                           (4_000, 4_010, 10), (0, 11_000, 1)]:
        _, rows = tl.index.query(t0, t1, pixels)
        got = np.where(rows >= 0, tl.index.order[np.maximum(rows, 0)], -1)
        want = _brute(starts, ends, lanes, n_lanes, t0, t1, pixels)
        np.testing.assert_array_equal(got, want)
        view = tl.view(t0, t1, pixels)
        assert view.height <= n_lanes * pixels
        # merged rectangles cover exactly the columns that have a winner
        assert int((view["px1"] - view["px0"]).sum()) == int((want >= 0).sum())


def test_range_best_on_a_long_lane_uses_the_block_table() -> None:
    n = 40 * BLOCK
    durs = 1 + np.arange(n) % 97
    idx = LaneIndex.build(pl.DataFrame({"lane": [0] * n, "start_ns": np.arange(n) * 100,
                                        "end_ns": np.arange(n) * 100 + durs}))
    rng = np.random.default_rng(1)
    lo = rng.integers(0, n - 1, 500)
    hi = np.minimum(lo + rng.integers(1, 10 * BLOCK, 500), n)
    got = idx.range_best(lo, hi)
    sorted_durs = idx.durs
    for a, b, g in zip(lo, hi, got, strict=True):
        seg = sorted_durs[a:b]
        assert g == a + int(np.argmax(seg))  # argmax: the first maximum, as the index


def test_handmade_lanes_and_exposed_comm_match_the_report() -> None:
    run = analyze([SAMPLES / "handmade"], keep_frames=True, workers=1).runs[0]
    tl = build_timeline(run.frames)
    groups = tl.lanes.group_by("rank", "group").len().sort("rank", "group")
    assert set(groups["group"]) == {"annotation", "compute", "comm", "exposed"}
    # exposed-comm intervals, clipped to each device's window, sum to the summary's
    summary = run.report.tables["summary"]
    for row in summary.iter_rows(named=True):
        lanes = tl.lanes.filter((pl.col("rank") == row["rank"]) & (pl.col("group") == "exposed"))
        ex = tl.intervals.filter(pl.col("lane").is_in(lanes["lane"].implode()))
        clipped = ex.select(
            (pl.min_horizontal("end_ns", pl.lit(row["win_end_ns"]))
             - pl.max_horizontal("start_ns", pl.lit(row["win_start_ns"]))).clip(0).sum()
        ).item()
        assert clipped == row["exposed_comm_ns"]
    v = tl.view(tl.t_min, tl.t_max, 200)
    assert 0 < v.height <= tl.lanes.height * 200
    info = tl.describe(int(v.filter(pl.col("kind") == "comm")["row"][0]))
    assert info["kind"] == "comm" and info["stream"] is not None and info["dur_ns"] > 0


def test_cpu_run_has_thread_lanes_and_warp_timeline_has_warp_lanes() -> None:
    run = analyze([SAMPLES / "cpu" / "ep-dispatch"], keep_frames=True, workers=1).runs[0]
    tl = build_timeline(run.frames)
    assert "thread" in set(tl.lanes["group"]) and "compute" not in set(tl.lanes["group"])
    assert tl.lanes.filter(pl.col("label").str.contains("comm thread")).height == 8
    warps = analyze([SAMPLES / "h200" / "warp_events_M4_NS4_NR4.csv.gz"], keep_frames=True,
                    workers=1).runs[0]
    wt = warp_timeline(warps.frames)
    assert wt.lanes.height == warps.frames.warp_events.select("channel", "warp").n_unique()
    v = wt.view(wt.t_min, wt.t_max, 100)
    assert set(v["kind"]) <= {"busy", "wait_tail", "wait_remote_head"}
    assert v.height <= wt.lanes.height * 100


def _plain(value: object) -> list:
    """A figure array as a list: plotly.js typed-array specs decoded the way the
    browser does (base64 of little-endian values of ``dtype``)."""
    if isinstance(value, dict) and "bdata" in value:
        raw = base64.b64decode(value["bdata"])
        return np.frombuffer(raw, dtype=np.dtype(value["dtype"]).newbyteorder("<")).tolist()
    return list(value)  # type: ignore[call-overload]


def _bar_extents(trace: dict, bargap: float) -> list[tuple[float, float]]:
    """Each bar's [y0, y1] as plotly draws it: ``width`` when the trace sets one, else
    (1 - bargap) x the smallest gap between the positions of this trace (overlay mode)."""
    ys = [float(y) for y in _plain(trace["y"])]
    width = trace.get("width")
    if width is None:
        distinct = sorted(set(ys))
        gaps = [b - a for a, b in zip(distinct, distinct[1:], strict=False)]
        width = (min(gaps) if gaps else 1.0) * (1 - bargap)
    widths = width if isinstance(width, list) else [width] * len(ys)
    return [(y - w / 2, y + w / 2) for y, w in zip(ys, widths, strict=True)]


@pytest.mark.parametrize("run", ["cpu/dualpipe", "handmade"])
def test_timeline_figure_draws_each_rectangle_inside_its_own_lane(run: str) -> None:
    from overlapscope.app.dashboard.components.figures import timeline_figure

    frames = analyze([SAMPLES / run], keep_frames=True, workers=1).runs[0].frames
    tl = build_timeline(frames)
    lanes = tl.lanes  # every lane of every rank, display order
    t0, t1 = tl.t_min, tl.t_max
    rects = tl.view(t0, t1, 400, lanes["lane"].to_list())
    fig = timeline_figure(tl, rects, lanes, t0, t1, 400)
    layout = fig["layout"]
    assert layout["barmode"] == "overlay"
    labels = lanes["label"].to_list()
    assert layout["yaxis"]["ticktext"] == labels
    assert layout["yaxis"]["tickvals"] == list(range(len(labels)))
    pos_of = {lane: i for i, lane in enumerate(lanes["lane"].to_list())}
    lane_of_row = tl.intervals["lane"].to_list()
    group_at = lanes["group"].to_list()
    seen_exposed = 0
    for trace in fig["data"]:
        assert trace["type"] == "bar" and trace["orientation"] == "h"
        extents = _bar_extents(trace, layout.get("bargap", 0.2))
        for (y0, y1), y, custom in zip(extents, _plain(trace["y"]), trace["customdata"],
                                       strict=True):
            pos = pos_of[lane_of_row[custom[0]]]
            assert y == pos, (trace["name"], labels[pos])
            assert pos - 0.5 <= y0 < y1 <= pos + 0.5, (trace["name"], labels[pos], y0, y1)
            if trace["name"] == "exposed":
                assert group_at[pos] == "exposed" and labels[pos].endswith("exposed comm")
                seen_exposed += 1
    assert seen_exposed > 0


def test_timeline_cache_returns_the_same_timeline_and_is_keyed_by_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from overlapscope.analyzers.classify import load_rules
    from overlapscope.analyzers.load import run_files
    from overlapscope.analyzers.timeline import cached_timeline, timeline_cache_key

    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    shutil.copytree(SAMPLES / "handmade", run)
    files = run_files(run)
    frames = analyze([run], keep_frames=True, workers=1).runs[0].frames
    built, hit = cached_timeline(files, frames)
    assert not hit
    again, hit = cached_timeline(files, frames)
    assert hit
    assert again.lanes.equals(built.lanes) and again.intervals.equals(built.intervals)
    assert again.items is not None and again.items.equals(built.items)
    for name in LaneIndex._ARRAYS:
        assert np.array_equal(getattr(again.index, name), getattr(built.index, name)), name
    assert len(again.index.table) == len(built.index.table)
    assert again.view(again.t_min, again.t_max, 300).equals(
        built.view(built.t_min, built.t_max, 300))
    row = int(built.view(built.t_min, built.t_max, 300).filter(
        pl.col("kind") == "comm")["row"][0])
    assert again.describe(row) == built.describe(row)
    # other rules or other file contents: another entry
    key = timeline_cache_key(files, None)
    assert timeline_cache_key(files, load_rules(None)) != key
    data = files[0].read_bytes()
    files[0].write_bytes(data + b"\n")
    assert timeline_cache_key(files, None) != key
    # a damaged entry is rebuilt, not trusted
    files[0].write_bytes(data)
    entry = next((tmp_path / "cache").glob("timeline-v*/*"))
    (entry / "index.npz").write_bytes(b"not an npz")
    rebuilt, hit = cached_timeline(files, frames)
    assert not hit and rebuilt.intervals.equals(built.intervals)
    assert cached_timeline(files, frames)[1]
    assert not cached_timeline(files, frames, cache=False)[1]


def test_touching_winners_of_one_kind_merge_into_one_bar() -> None:
    # 10 columns of 1 ns over [0, 10). Lane 0 winners by column:
    # A A B C C - D D E -   (C is comm, column 5 and 9 hold nothing)
    tl = _timeline([
        (0, 0, 2, "A"), (0, 2, 3, "B"), (0, 3, 5, "C", "comm"), (0, 6, 8, "D"),
        (0, 8, 9, "E"), (1, 0, 10, "F"),
    ], 2)
    v = tl.view(0, 10, 10)
    assert v.filter(pl.col("lane") == 0)["name"].to_list() == ["A", "B", "C", "D", "E"]
    m = merge_touching(v)
    lane0 = m.filter(pl.col("lane") == 0)
    # A+B touch (columns [0,2) then [2,3)) and are both compute: one bar, A the longest;
    # C is comm: its own bar; the empty column 5 splits D+E from C.
    assert lane0["name"].to_list() == ["A", "C", "D"]
    assert lane0["members"].to_list() == [2, 1, 2]
    assert lane0["start_ns"].to_list() == [0, 3, 6]
    assert lane0["end_ns"].to_list() == [3, 5, 9]
    assert lane0["px0"].to_list() == [0, 3, 6] and lane0["px1"].to_list() == [3, 5, 9]
    names = tl.intervals["name"].to_list()
    assert [names[r] for r in lane0["row"].to_list()] == ["A", "C", "D"]
    # a new lane always starts a new bar
    assert m.filter(pl.col("lane") == 1)["name"].to_list() == ["F"]
    assert m.height == 4


def test_merge_keeps_the_earliest_of_equally_long_members_and_empty_views() -> None:
    tl = _timeline([(0, 0, 1, "G"), (0, 1, 2, "H")], 1)
    m = merge_touching(tl.view(0, 2, 2))
    assert m["name"].to_list() == ["G"] and m["members"].to_list() == [2]
    empty = merge_touching(tl.view(5, 6, 1))
    assert empty.height == 0 and "members" in empty.columns


def test_figure_sends_starts_and_widths_as_typed_arrays_equal_to_the_bars() -> None:
    from overlapscope.app.dashboard.components.figures import HOVER_NAMES_MAX, timeline_figure

    # lane 0: A [0,4) and B [10,12); window [2, 12) at 5 columns of 2 ns:
    # A is clipped to [2,4); B is [10,12).
    tl = _timeline([(0, 0, 4, "A"), (0, 10, 12, "B")], 1)
    rects = merge_touching(tl.view(2, 12, 5))
    fig = timeline_figure(tl, rects, tl.lanes, 2, 12, 5)
    (trace,) = fig["data"]
    assert trace["base"]["dtype"] == "f8" and "bdata" in trace["base"]
    assert _plain(trace["base"]) == [2e-6, 10e-6]
    assert np.allclose(_plain(trace["x"]), [2e-6, 2e-6])
    assert _plain(trace["y"]) == [0, 0]
    assert [c[0] for c in trace["customdata"]] == [0, 1]  # rows of A and B
    assert [c[1] for c in trace["customdata"]] == [0.004, 0.002]  # true durations, µs
    # above the hover limit no per-bar data travels but the typed lanes, starts, widths
    many = pl.concat([rects] * (HOVER_NAMES_MAX // 2 + 1))
    big = timeline_figure(tl, many, tl.lanes, 2, 12, 5)["data"][0]
    assert "customdata" not in big and "hovertext" not in big
    assert len(_plain(big["base"])) == many.height



@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bars_equal_merge_touching_of_the_view(seed: int) -> None:
    # second method: Timeline.bars (index arrays) against merge_touching(view) (frames)
    rng = np.random.default_rng(seed)
    rows = []
    for lane in range(5):
        for _ in range(int(rng.integers(0, 60))):
            s = int(rng.integers(0, 5_000))
            rows.append((lane, s, s + int(rng.integers(1, 400)), f"n{len(rows)}",
                         str(rng.choice(["compute", "comm", "memory"]))))
    tl = _timeline(rows, 6)
    for t0, t1, px in [(0, 5_500, 60), (-100, 900, 17), (2_000, 2_050, 9), (0, 5_500, 1)]:
        want = merge_touching(tl.view(t0, t1, px)).select(
            "lane", "row", "start_ns", "end_ns", "kind", "px0", "px1", "members")
        got, winners = tl.bars(t0, t1, px)
        assert got.equals(want), (t0, t1, px)
        assert winners == tl.view(t0, t1, px).height


def test_bars_of_a_sample_run_equal_merge_touching_of_the_view() -> None:
    frames = analyze([SAMPLES / "cpu" / "dualpipe"], keep_frames=True, workers=1).runs[0].frames
    tl = build_timeline(frames)
    lanes = tl.lanes["lane"].to_list()[:20]
    mid = (tl.t_min + tl.t_max) // 2
    for frac in (1.0, 0.1, 0.001):
        half = max(int((tl.t_max - tl.t_min) * frac / 2), 10)
        want = merge_touching(tl.view(mid - half, mid + half, 500, lanes)).select(
            "lane", "row", "start_ns", "end_ns", "kind", "px0", "px1", "members")
        got, _ = tl.bars(mid - half, mid + half, 500, lanes)
        assert got.height > 0 and got.equals(want), frac
