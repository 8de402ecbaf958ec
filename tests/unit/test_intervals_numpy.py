"""The numpy fast path of intervals.py against hand answers, a unit grid and the polars path."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from overlapscope.analyzers import intervals as iv


def frame(g: list[int], s: list[int], e: list[int], dtype: pl.DataType = pl.Int32) -> pl.DataFrame:
    return pl.DataFrame({"g": g, "start_ns": s, "end_ns": e},
                        schema={"g": dtype, "start_ns": pl.Int64, "end_ns": pl.Int64})


def polars_only(fn, *args):
    """``fn(*args)`` with the numpy path switched off (the original polars algorithm)."""
    saved = iv._numpy_ok
    iv._numpy_ok = lambda d, by: False
    try:
        return fn(*args)
    finally:
        iv._numpy_ok = saved


def test_fast_path_taken_for_integer_keys_only() -> None:
    assert iv._numpy_ok(frame([0], [0], [1]), ["g"])
    assert not iv._numpy_ok(frame([0], [0], [1]).with_columns(pl.col("g").cast(pl.Utf8)), ["g"])
    assert not iv._numpy_ok(frame([0], [0], [1]).with_columns(pl.lit(None, pl.Int32).alias("g")),
                            ["g"])


def test_union_by_hand_two_groups_dtype_kept() -> None:
    # g=1: [0,10) + [10,15) touch, [5,7) nested -> [0,15); [20,20) empty; [40,30) negative.
    # g=0: [3,4) and [4,9) touch -> [3,9); [12,13) alone.
    df = frame([1, 1, 1, 1, 1, 0, 0, 0], [0, 10, 5, 20, 40, 4, 3, 12],
               [10, 15, 7, 20, 30, 9, 4, 13])
    u = iv.union(df, ["g"])
    assert u.rows() == [(0, 3, 9), (0, 12, 13), (1, 0, 15)]
    assert u.schema == pl.Schema({"g": pl.Int32, "start_ns": pl.Int64, "end_ns": pl.Int64})
    assert iv.total(df, ["g"]).rows() == [(0, 7), (1, 15)]


def test_intersect_and_subtract_by_hand() -> None:
    a = frame([0, 0, 0, 5], [0, 10, 20, 0], [10, 15, 30, 100])  # g0: [0,15) + [20,30)
    b = frame([0, 0, 5], [12, 25, 50], [22, 40, 60])  # g0: [12,22) + [25,40); g5: [50,60)
    assert iv.intersect(a, b, ["g"]).rows() == [(0, 12, 15), (0, 20, 22), (0, 25, 30),
                                                (5, 50, 60)]
    assert iv.subtract(a, b, ["g"]).rows() == [(0, 0, 12), (0, 22, 25), (5, 0, 50),
                                               (5, 60, 100)]


def test_spread_times_use_per_group_maximum() -> None:
    # Two groups spanning ~2^61 each: lifting one past the other would overflow, so the
    # running maximum restarts per group. g0: [0,2^61) and [2^61, 2^61+1) touch.
    big = 1 << 61
    df = frame([0, 0, 1, 1], [0, big, -big, 5], [big, big + 1, 10, 6])
    assert iv.union(df, ["g"]).rows() == [(0, 0, big + 1), (1, -big, 10)]


@pytest.mark.parametrize("seed", range(8))
def test_matches_unit_grid_and_polars_path(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    a = pl.DataFrame({"g": rng.integers(0, 3, n), "h": rng.integers(0, 2, n).astype(np.int32),
                      "start_ns": rng.integers(0, 80, n), "end_ns": rng.integers(0, 80, n)})
    b = a.sample(n, with_replacement=True, seed=seed).with_columns(pl.col("end_ns") + 3)

    def cells(df: pl.DataFrame, key: tuple[int, int]) -> set[int]:
        rows = df.filter((pl.col("g") == key[0]) & (pl.col("h") == key[1]))
        return {t for s, e in rows.select("start_ns", "end_ns").rows() for t in range(s, e)}

    by = ["g", "h"]
    for fn, want in ((iv.union, lambda k: cells(a, k)),
                     (lambda x, k: iv.intersect(x, b, k), lambda k: cells(a, k) & cells(b, k)),
                     (lambda x, k: iv.subtract(x, b, k), lambda k: cells(a, k) - cells(b, k))):
        got = fn(a, by)
        assert got.equals(polars_only(fn, a, by))
        for key in {(g, h) for g in range(3) for h in range(2)}:
            runs = got.filter((pl.col("g") == key[0]) & (pl.col("h") == key[1]))
            covered = {t for s, e in runs.select("start_ns", "end_ns").rows() for t in range(s, e)}
            assert covered == want(key)
            # disjoint, sorted and not touching: each run ends before the next starts
            spans = runs.select("start_ns", "end_ns").rows()
            assert all(e0 < s1 for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False))


def test_keys_unique_by_hand() -> None:
    from overlapscope.analyzers.ranges import keys_unique

    df = pl.DataFrame({"r": [0, 0, 1], "c": [5, 6, 5]}, schema={"r": pl.Int32, "c": pl.Int64})
    assert keys_unique(df, ["r", "c"])
    assert not keys_unique(df, ["c"])  # 5 twice
    assert not keys_unique(df.with_columns(pl.col("c").cast(pl.Utf8)), ["r", "c"])  # not ints
    assert keys_unique(df.clear(), ["r", "c"])


def test_first_launch_of_duplicated_ids() -> None:
    from overlapscope.analyzers.work import _first_launches

    launches = pl.DataFrame(
        {"rank": [1, 0, 0, 1], "correlation": [7, 9, 7, 3], "launch_pid": ["a", "b", "c", "d"],
         "launch_tid": ["t"] * 4, "launch_ns": [50, 40, 30, 20]},
        schema_overrides={"rank": pl.Int32},
    )
    # unique ids: sorted by (rank, correlation)
    assert _first_launches(launches)["launch_pid"].to_list() == ["c", "b", "d", "a"]
    # rank 0 correlation 7 twice: the earlier launch (ns 10, pid "e") wins
    dup = pl.concat([launches, launches.head(0).vstack(pl.DataFrame(
        {"rank": [0], "correlation": [7], "launch_pid": ["e"], "launch_tid": ["t"],
         "launch_ns": [10]}, schema=launches.schema))])
    got = _first_launches(dup)
    assert got.select("rank", "correlation", "launch_pid").rows() == [
        (0, 7, "e"), (0, 9, "b"), (1, 3, "d"), (1, 7, "a")]
