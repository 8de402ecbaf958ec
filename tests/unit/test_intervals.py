"""Interval algebra against answers worked out by hand on a number line."""

from __future__ import annotations

import polars as pl
import pytest

from overlapscope.analyzers import intervals as iv
from overlapscope.analyzers.ranges import overlapping_pairs, points_in_intervals


def frame(g: list[int], s: list[int], e: list[int]) -> pl.DataFrame:
    return pl.DataFrame({"g": g, "start_ns": s, "end_ns": e})


def test_union_merges_touching_nested_and_drops_empty() -> None:
    # [0,10) touches [10,15) -> one run; [5,7) nested; [20,20) empty; [30,25) negative.
    df = frame([0] * 5, [0, 10, 5, 20, 30], [10, 15, 7, 20, 25])
    u = iv.union(df, ["g"])
    assert u.select("start_ns", "end_ns").rows() == [(0, 15)]


def test_union_keeps_groups_apart() -> None:
    df = frame([0, 1], [0, 5], [10, 15])
    assert sorted(iv.union(df, ["g"]).rows()) == [(0, 0, 10), (1, 5, 15)]


def test_total_and_intersection_by_hand() -> None:
    a = frame([0, 0, 0], [0, 10, 20], [10, 15, 30])  # U = [0,15) + [20,30): 25
    b = frame([0, 0], [12, 25], [22, 40])  # U = [12,22) + [25,40): 25
    assert iv.total(a, ["g"])["length_ns"].to_list() == [25]
    inter = iv.intersect(a, b, ["g"])
    # [12,15) + [20,22) + [25,30) = 3 + 2 + 5
    assert inter.select("start_ns", "end_ns").rows() == [(12, 15), (20, 22), (25, 30)]
    diff = iv.subtract(a, b, ["g"])
    assert diff.select("start_ns", "end_ns").rows() == [(0, 12), (22, 25)]


def test_intersection_of_disjoint_groups_is_empty() -> None:
    a = frame([0], [0], [10])
    b = frame([1], [0], [10])
    assert iv.intersect(a, b, ["g"]).is_empty()


def test_covered_length_of_each_row() -> None:
    cover = frame([0, 0, 1], [12, 25, 3], [22, 40, 4])
    rows = frame([0, 0, 1, 0, 0], [0, 11, 0, 50, 30], [30, 13, 5, 60, 30])
    # [0,30) ∩ ([12,22) ∪ [25,40)) = 10 + 5; [11,13) -> 1; [0,5) ∩ [3,4) -> 1; none; empty.
    assert iv.covered(rows, cover, ["g"]).to_list() == [15, 1, 1, 0, 0]


def test_clip_to_window() -> None:
    df = frame([0, 0, 1], [0, 50, 0], [20, 60, 5])
    win = pl.DataFrame({"g": [0], "win_start_ns": [10], "win_end_ns": [55]})
    out = iv.clip(df, win, ["g"]).sort("g", "start_ns")
    assert out.select("start_ns", "end_ns").rows() == [(10, 20), (50, 55), (0, 5)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_union_matches_a_unit_grid(seed: int) -> None:
    """Second method: paint every integer ns of a small grid and count."""
    import random

    rng = random.Random(seed)
    s = [rng.randrange(0, 200) for _ in range(40)]
    e = [x + rng.randrange(-5, 30) for x in s]
    t = [rng.randrange(0, 200) for _ in range(40)]
    f = [x + rng.randrange(0, 30) for x in t]
    grid_a = {x for a, b in zip(s, e, strict=True) for x in range(a, b)}
    grid_b = {x for a, b in zip(t, f, strict=True) for x in range(a, b)}
    a, b = frame([0] * 40, s, e), frame([0] * 40, t, f)
    assert iv.total(a, ["g"])["length_ns"].item() == len(grid_a)
    inter = iv.intersect(a, b, ["g"])
    assert int((inter["end_ns"] - inter["start_ns"]).sum()) == len(grid_a & grid_b)
    diff = iv.subtract(a, b, ["g"])
    assert int((diff["end_ns"] - diff["start_ns"]).sum()) == len(grid_a - grid_b)
    cov = iv.covered(b, a, ["g"]).to_list()
    assert cov == [len(set(range(x, y)) & grid_a) for x, y in zip(t, f, strict=True)]


def test_points_in_intervals_and_overlapping_pairs() -> None:
    pts = pl.DataFrame({"k": [0, 0, 0, 1], "t": [5, 10, 15, 5]})
    ivs = pl.DataFrame({"k": [0, 0, 1], "s": [0, 10, 6], "e": [10, 20, 9]})
    pairs = points_in_intervals(pts, ivs, by=["k"], point="t", start="s", end="e")
    # closed intervals: 5 in [0,10]; 10 in both; 15 in [10,20]; (k=1) 5 not in [6,9]
    assert sorted(pairs.rows()) == [(0, 0), (1, 0), (1, 1), (2, 1)]
    a = pl.DataFrame({"k": [0, 0], "start_ns": [0, 100], "end_ns": [50, 110]})
    b = pl.DataFrame({"k": [0, 0, 0], "start_ns": [0, 50, 40], "end_ns": [200, 60, 45]})
    got = overlapping_pairs(a, b, by=["k"])
    assert got is not None
    # [0,50) overlaps [0,200) and [40,45) but only touches [50,60); [100,110) overlaps [0,200).
    assert sorted(got.rows()) == [(0, 0), (0, 2), (1, 0)]
