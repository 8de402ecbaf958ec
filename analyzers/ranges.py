"""Range joins that stay linear in their output: which intervals contain a point,
and which intervals overlap.

polars' ``join_where`` with equality and two inequality predicates can fall back
to a cross join, which on a trace with 10^4 annotations and 10^5 launches needs
more memory than a machine has. Here each group is sorted once and the matches
of every interval are found with binary search, so the cost is
O(n log n + matches).
"""

from __future__ import annotations

import numpy as np
import polars as pl


def take(df: pl.DataFrame, rows: pl.Series | np.ndarray) -> pl.DataFrame:
    """Rows of ``df`` at the given positions, in that order."""
    return df.select(pl.all().gather(pl.Series(np.asarray(rows), dtype=pl.Int64)))


def keys_unique(df: pl.DataFrame, cols: list[str]) -> bool:
    """True when no two rows share the values of ``cols`` (integer columns without
    nulls; anything else answers False, so callers take their general path)."""
    if any(not df.schema[c].is_integer() or df[c].has_nulls() for c in cols):
        return False
    keys = [df[c].to_numpy() for c in cols]
    order = np.lexsort(keys[::-1])
    same = np.ones(max(df.height - 1, 0), dtype=bool)
    for k in keys:
        k = k[order]
        same &= k[1:] == k[:-1]
    return not same.any()


def _ranges_to_pairs(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows i with ranges [lo_i, hi_i): (row index repeated, positions)."""
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    if total == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    rows = np.repeat(np.arange(lo.size, dtype=np.int64), counts)
    starts = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    pos = starts + np.arange(total, dtype=np.int64)
    return rows, pos


def _groups(df: pl.DataFrame, by: list[str]) -> dict[tuple, np.ndarray]:
    if not by:
        return {(): np.arange(df.height, dtype=np.int64)}
    idx = df.select(by).with_row_index("_i").group_by(by).agg(pl.col("_i"))
    if idx.is_empty():
        return {}
    # Row numbers leave polars as one array (not as Python ints), split per group.
    flat = idx["_i"].explode().to_numpy().astype(np.int64)
    bounds = np.cumsum(idx["_i"].list.len().to_numpy())[:-1]
    return dict(zip(idx.select(by).rows(), np.split(flat, bounds), strict=True))


def points_in_intervals(
    points: pl.DataFrame,
    intervals: pl.DataFrame,
    *,
    by: list[str],
    point: str,
    start: str,
    end: str,
    left_by: list[str] | None = None,
) -> pl.DataFrame:
    """Pairs (point_row, interval_row) with start <= point <= end, within equal ``by``.

    ``left_by`` names the grouping columns in ``points`` when they differ from
    ``by`` (the interval frame's names). Row numbers are positions in the inputs.
    """
    left_by = left_by or by
    p_groups = _groups(points, left_by)
    i_groups = _groups(intervals, by)
    pts = points[point].to_numpy()
    st = intervals[start].to_numpy()
    en = intervals[end].to_numpy()
    out_p, out_i = [], []
    for key, p_idx in p_groups.items():
        i_idx = i_groups.get(key)
        if i_idx is None:
            continue
        p_vals = pts[p_idx]
        order = np.argsort(p_vals, kind="stable")
        sorted_vals = p_vals[order]
        lo = np.searchsorted(sorted_vals, st[i_idx], side="left")
        hi = np.searchsorted(sorted_vals, en[i_idx], side="right")
        rows, pos = _ranges_to_pairs(lo, hi)
        out_i.append(i_idx[rows])
        out_p.append(p_idx[order[pos]])
    if not out_p:
        return pl.DataFrame(schema={"point_row": pl.Int64, "interval_row": pl.Int64})
    return pl.DataFrame({"point_row": np.concatenate(out_p), "interval_row": np.concatenate(out_i)})


def overlapping_pairs(
    a: pl.DataFrame,
    b: pl.DataFrame,
    *,
    by: list[str],
    start: str = "start_ns",
    end: str = "end_ns",
    max_pairs: int = 50_000_000,
) -> pl.DataFrame | None:
    """Pairs (a_row, b_row) of intervals that overlap (a.start < b.end and b.start < a.end).

    Candidates come from b sorted by start with a running maximum of its ends;
    they are filtered exactly afterwards. Returns None if more than ``max_pairs``
    candidates would be produced (the caller then skips the metric).
    """
    a_groups, b_groups = _groups(a, by), _groups(b, by)
    a_s, a_e = a[start].to_numpy(), a[end].to_numpy()
    b_s, b_e = b[start].to_numpy(), b[end].to_numpy()
    out_a, out_b = [], []
    budget = max_pairs
    for key, ai in a_groups.items():
        bi = b_groups.get(key)
        if bi is None:
            continue
        order = bi[np.argsort(b_s[bi], kind="stable")]
        bs, be = b_s[order], np.maximum.accumulate(b_e[order])
        hi = np.searchsorted(bs, a_e[ai], side="left")  # b.start < a.end
        lo = np.searchsorted(be, a_s[ai], side="right")  # running max end > a.start
        if int(np.maximum(hi - lo, 0).sum()) > budget:
            return None
        rows, pos = _ranges_to_pairs(lo, hi)
        budget -= rows.size
        ar, br = ai[rows], order[pos]
        keep = (a_s[ar] < b_e[br]) & (b_s[br] < a_e[ar])
        out_a.append(ar[keep])
        out_b.append(br[keep])
    if not out_a:
        return pl.DataFrame(schema={"a_row": pl.Int64, "b_row": pl.Int64})
    return pl.DataFrame({"a_row": np.concatenate(out_a), "b_row": np.concatenate(out_b)})
