"""Vectorised interval-set algebra on polars frames (integer ns, half-open [start, end)).

All functions take frames with ``start_ns``/``end_ns`` columns plus grouping
columns ``by`` (e.g. rank, device) and never loop in Python. Touching intervals
merge; zero-length and negative-length intervals contribute nothing.
"""

from __future__ import annotations

import polars as pl

START, END = "start_ns", "end_ns"


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


def total(df: pl.DataFrame, by: list[str], name: str = "length_ns") -> pl.DataFrame:
    """Total length of the union per group: [*by, name]."""
    u = union(df, by)
    return u.group_by(by, maintain_order=True).agg((pl.col(END) - pl.col(START)).sum().alias(name))


def _sweep(ua: pl.DataFrame, ub: pl.DataFrame, by: list[str], keep: pl.Expr) -> pl.DataFrame:
    """Segments of the timeline where ``keep`` holds for the coverage counts
    ``ca`` (of ``ua``) and ``cb`` (of ``ub``), both already unions, merged into
    disjoint intervals."""
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


def intersect(a: pl.DataFrame, b: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """U(a) ∩ U(b) per group as disjoint intervals: [*by, start_ns, end_ns]."""
    ua, ub = union(a, by), union(b, by)
    if ua.is_empty() or ub.is_empty():
        return _empty(a, by)
    return _sweep(ua, ub, by, (pl.col("ca") > 0) & (pl.col("cb") > 0))


def subtract(a: pl.DataFrame, b: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    """U(a) minus U(b) per group as disjoint intervals."""
    ua = union(a, by)
    if ua.is_empty():
        return _empty(a, by)
    return _sweep(ua, union(b, by), by, (pl.col("ca") > 0) & (pl.col("cb") <= 0))


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
