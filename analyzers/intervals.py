"""Vectorised interval-set algebra on polars frames (integer ns, half-open [start, end)).

All functions take frames with ``start_ns``/``end_ns`` columns plus grouping
columns ``by`` (e.g. rank, device) and never loop in Python. Touching intervals
merge; zero-length and negative-length intervals contribute nothing.
"""

from __future__ import annotations

import numpy as np
import polars as pl

START, END = "start_ns", "end_ns"
#: Keys sorted and grouped in numpy (fast path); any other key, or a null key, takes
#: the polars path. Both give the same frame.
_NUMPY_KEYS = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32)


def _empty(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    return df.select(*by, START, END).clear()


def union(df: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Merge intervals into disjoint sorted runs per group: [*by, start_ns, end_ns].

    Rows are sorted by (group, start); a run starts where a start exceeds the
    running maximum of earlier ends in the same group. The running maximum is
    taken once over the whole frame, with each group's times lifted by
    ``group index x span`` so that groups cannot reach into each other: this
    avoids one window per group, which is slow when there are 10^5 groups.
    """
    d = df.select(*by, START, END).filter(pl.col(END) > pl.col(START))
    if d.is_empty():
        return _empty(df, by)
    if _numpy_ok(d, by):
        # Tens of small polars calls per union add up over the ~30 unions of a report.
        keys, s, e = _sorted_arrays(d, by)
        return _union_sorted(d, by, keys, s, e)
    d = d.sort([*by, START])
    if by:
        lo, hi = d[START].min(), d[END].max()
        span = int(hi) - int(lo) + 1  # type: ignore[arg-type]
        changed = pl.any_horizontal([pl.col(c).ne_missing(pl.col(c).shift(1)) for c in by])
        gid = changed.fill_null(True).cast(pl.Int64).cum_sum() - 1
        d = d.with_columns(gid.alias("_g"))
        n_groups = int(d["_g"].max()) + 1  # type: ignore[arg-type]
        if n_groups * span < (1 << 62):
            lift = pl.col("_g") * span - lo
            s, e = pl.col(START) + lift, pl.col(END) + lift
            new_run = (s > e.cum_max().shift(1)).fill_null(True)
        else:  # times too spread for lifting: one window per group
            new_run = (pl.col(START) > pl.col(END).cum_max().shift(1).over("_g")).fill_null(True)
        d = d.with_columns(new_run.cum_sum().alias("_run")).drop("_g")
    else:
        new_run = (pl.col(START) > pl.col(END).cum_max().shift(1)).fill_null(True)
        d = d.with_columns(new_run.cum_sum().alias("_run"))
    return (
        d.group_by("_run", maintain_order=True)
        .agg(*[pl.col(c).first() for c in by], pl.col(START).min(), pl.col(END).max())
        .drop("_run")
    )


def _numpy_ok(d: pl.DataFrame, by: list[str]) -> bool:
    """True when every key is an integer column without nulls (and times are Int64)."""
    return (
        all(d.schema[c] in _NUMPY_KEYS and not d[c].has_nulls() for c in by)
        and d.schema[START] == pl.Int64 and d.schema[END] == pl.Int64
    )


def _sorted_arrays(
    d: pl.DataFrame, by: list[str]
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Keys, starts and ends of ``d`` as numpy arrays sorted by (*by, start)."""
    keys = [d[c].to_numpy() for c in by]
    s, e = d[START].to_numpy(), d[END].to_numpy()
    order = np.lexsort((s, *reversed(keys)))
    return [k[order] for k in keys], s[order], e[order]


def _group_starts(keys: list[np.ndarray], n: int) -> np.ndarray:
    """Rows where the (sorted) key changes; row 0 always."""
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    return new


def _union_sorted(
    d: pl.DataFrame, by: list[str], keys: list[np.ndarray], s: np.ndarray, e: np.ndarray
) -> pl.DataFrame:
    """union() of intervals already sorted by (*by, start), all lengths > 0, in numpy.

    Same lifting as the polars path: a group's running maximum of ends cannot
    reach into the next group, so one running maximum serves the whole frame.
    """
    n = s.size
    start, end = s, e
    new_group = _group_starts(keys, n)
    gid = np.cumsum(new_group) - 1
    lo, hi = int(s.min()), int(e.max())
    span = hi - lo + 1
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    if (int(gid[-1]) + 1) * span >= (1 << 62):
        # Times too spread to lift: lift their ranks among all starts and ends
        # instead (same order, so the same comparisons, and a span of at most 2n).
        _, rank = np.unique(np.concatenate([s, e]), return_inverse=True)
        s, e, lo, span = rank[:n], rank[n:], 0, 2 * n
    lift = gid * span - lo
    cmax = np.maximum.accumulate(e + lift)
    new_run[1:] = (s[1:] + lift[1:]) > cmax[:-1]
    first = np.flatnonzero(new_run)
    cols = {c: k[first] for c, k in zip(by, keys, strict=True)}
    cols[START] = start[first]
    cols[END] = np.maximum.reduceat(end, first)
    return pl.DataFrame(cols, schema={**{c: d.schema[c] for c in by}, START: pl.Int64,
                                      END: pl.Int64})


def total(df: pl.DataFrame, by: list[str], name: str = "length_ns") -> pl.DataFrame:
    """Total length of the union per group: [*by, name]."""
    u = union(df, by)
    if u.height and _numpy_ok(u, by):
        # The union is sorted by group: sum each group's run lengths in one pass.
        keys = [u[c].to_numpy() for c in by]
        first = np.flatnonzero(_group_starts(keys, u.height))
        length = u[END].to_numpy() - u[START].to_numpy()
        cols = {c: k[first] for c, k in zip(by, keys, strict=True)}
        cols[name] = np.add.reduceat(length, first)
        return pl.DataFrame(cols, schema={**{c: u.schema[c] for c in by}, name: pl.Int64})
    return u.group_by(by, maintain_order=True).agg((pl.col(END) - pl.col(START)).sum().alias(name))


def _sweep(
    ua: pl.DataFrame, ub: pl.DataFrame, by: list[str], keep: pl.Expr, both: bool
) -> pl.DataFrame:
    """Segments of the timeline where ``keep`` holds for the coverage counts
    ``ca`` (of ``ua``) and ``cb`` (of ``ub``), both already unions, merged into
    disjoint intervals. ``both``: ``keep`` is ca > 0 & cb > 0 (else ca > 0 & cb <= 0),
    for the numpy path."""
    if _numpy_ok(ua, by) and _numpy_ok(ub, by) and all(
        ua.schema[c] == ub.schema[c] for c in by
    ):
        return _sweep_numpy(ua, ub, by, both)
    cols = [*by, "t", "da", "db"]
    parts = [
        ua.select(*by, pl.col(START).alias("t"), pl.lit(1).alias("da"), pl.lit(0).alias("db")),
        ua.select(*by, pl.col(END).alias("t"), pl.lit(-1).alias("da"), pl.lit(0).alias("db")),
        ub.select(*by, pl.col(START).alias("t"), pl.lit(0).alias("da"), pl.lit(1).alias("db")),
        ub.select(*by, pl.col(END).alias("t"), pl.lit(0).alias("da"), pl.lit(-1).alias("db")),
    ]
    ev = pl.concat([p.select(cols) for p in parts])
    ev = ev.group_by([*by, "t"]).agg(pl.col("da").sum(), pl.col("db").sum()).sort([*by, "t"])

    def over(e: pl.Expr) -> pl.Expr:
        return e.over(by) if by else e

    ev = ev.with_columns(
        over(pl.col("da").cum_sum()).alias("ca"),
        over(pl.col("db").cum_sum()).alias("cb"),
        over(pl.col("t").shift(-1)).alias("t_next"),
    )
    seg = ev.filter(keep & pl.col("t_next").is_not_null())
    return union(seg.select(*by, pl.col("t").alias(START), pl.col("t_next").alias(END)), by)


def _sweep_numpy(ua: pl.DataFrame, ub: pl.DataFrame, by: list[str], both: bool) -> pl.DataFrame:
    """_sweep with integer keys, in numpy. Every +1 of a union has its -1 in the same
    group, so one running sum over all groups equals the per-group running sums."""
    na, nb = ua.height, ub.height
    keys = [np.concatenate([ua[c].to_numpy()] * 2 + [ub[c].to_numpy()] * 2) for c in by]
    t = np.concatenate([ua[START].to_numpy(), ua[END].to_numpy(),
                        ub[START].to_numpy(), ub[END].to_numpy()])
    da = np.concatenate([np.ones(na, np.int64), -np.ones(na, np.int64),
                         np.zeros(2 * nb, np.int64)])
    db = np.concatenate([np.zeros(2 * na, np.int64), np.ones(nb, np.int64),
                         -np.ones(nb, np.int64)])
    order = np.lexsort((t, *reversed(keys)))
    keys, t, da, db = [k[order] for k in keys], t[order], da[order], db[order]
    n = t.size
    new_group = _group_starts(keys, n)
    first = np.flatnonzero(new_group | np.r_[True, t[1:] != t[:-1]])  # one row per (key, t)
    keys, t = [k[first] for k in keys], t[first]
    ca, cb = np.cumsum(np.add.reduceat(da, first)), np.cumsum(np.add.reduceat(db, first))
    last_of_group = np.r_[_group_starts(keys, t.size)[1:], True]
    sel = (ca > 0) & ((cb > 0) if both else (cb <= 0)) & ~last_of_group
    seg_s, seg_e = t[sel], t[1:][sel[:-1]] if t.size > 1 else t[:0]
    seg_keys = [k[sel] for k in keys]
    # Segments of one group are sorted and disjoint: merge the touching ones.
    if not seg_s.size:
        return _empty(ua, by)
    seg = pl.DataFrame({**{c: k for c, k in zip(by, seg_keys, strict=True)},
                        START: seg_s, END: seg_e},
                       schema={**{c: ua.schema[c] for c in by}, START: pl.Int64, END: pl.Int64})
    return _union_sorted(seg, by, seg_keys, seg_s, seg_e)


def intersect(a: pl.DataFrame, b: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """U(a) ∩ U(b) per group as disjoint intervals: [*by, start_ns, end_ns]."""
    ua, ub = union(a, by), union(b, by)
    if ua.is_empty() or ub.is_empty():
        return _empty(a, by)
    return _sweep(ua, ub, by, (pl.col("ca") > 0) & (pl.col("cb") > 0), both=True)


def subtract(a: pl.DataFrame, b: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """U(a) minus U(b) per group as disjoint intervals."""
    ua = union(a, by)
    if ua.is_empty():
        return _empty(a, by)
    return _sweep(ua, union(b, by), by, (pl.col("ca") > 0) & (pl.col("cb") <= 0), both=False)


def clip(df: pl.DataFrame, window: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """Clip each interval to its group's window (window: [*by, win_start_ns, win_end_ns]).

    Rows of groups without a window are kept unclipped; rows falling outside
    become empty (zero length) and drop out of later unions.
    """
    out = df.join(window, on=by, how="left")
    return out.with_columns(
        pl.max_horizontal(START, pl.col("win_start_ns").fill_null(pl.col(START))).alias(START),
        pl.min_horizontal(END, pl.col("win_end_ns").fill_null(pl.col(END))).alias(END),
    ).drop("win_start_ns", "win_end_ns")


def covered(rows: pl.DataFrame, cover: pl.DataFrame, by: list[str]) -> pl.Series:
    """For each row [start_ns, end_ns): its length covered by U(cover), in ns.

    Uses the cumulative covered length F(t) = |U ∩ (-inf, t)| so that each row
    costs two as-of joins instead of a pairwise comparison.
    """
    if rows.is_empty():
        return pl.Series("covered_ns", [], dtype=pl.Int64)
    u = union(cover, by)
    if u.is_empty():
        return pl.Series("covered_ns", [0] * rows.height, dtype=pl.Int64)
    over = (lambda e: e.over(by)) if by else (lambda e: e)
    u = u.sort([*by, START]).with_columns(
        over((pl.col(END) - pl.col(START)).cum_sum().shift(1, fill_value=0)).alias("_before")
    )

    def cum_at(col: str) -> pl.Series:
        pts = rows.select(*by, pl.col(col).alias("_t")).with_row_index("_i").sort("_t")
        j = pts.join_asof(
            u.sort(START),
            left_on="_t",
            right_on=START,
            by=by or None,
            strategy="backward",
            check_sortedness=False,
        )
        val = (
            pl.col("_before")
            + (pl.min_horizontal(pl.col("_t"), pl.col(END)) - pl.col(START)).clip(0)
        ).fill_null(0)
        return j.sort("_i").select(val)["_before"]

    lo, hi = cum_at(START), cum_at(END)
    return (hi - lo).clip(0).alias("covered_ns")
