"""Temporal and kernel breakdowns of GPU time (HTA-style, with an HTA-parity mode).

Default mode classifies activities with classify.py (the one classifier) and
works in exact integer nanoseconds. ``hta_compat=True`` first applies
hta_compat.py (HTA 0.5.0's kernel filter, rounding and kernel types) and groups
and aggregates exactly as HTA does; the rule differences are listed in
hta_compat.py's docstring.

A note on rounding artefacts: HTA's rounding turns a sub-microsecond event into
the interval [k+1, k) (duration -1 us). HTA's interval merge then subtracts that
microsecond whenever no event of the merged set covers [k, k+1). intervals.py
drops such intervals, so the compat path adds their effect back explicitly
(``_lost_units``) instead of keeping a second interval algorithm.
"""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING

import polars as pl

from overlapscope.analyzers import intervals
from overlapscope.analyzers.classify import classify_frames
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.hta_compat import hta_compat_frames

if TYPE_CHECKING:
    from overlapscope.analyzers.overlap import Prepared

#: Kinds in the order HTA names combinations ("COMPUTATION overlapping COMMUNICATION").
KINDS = ("compute", "comm", "memory")
#: HTA's bit value of each kernel type in its sweep (_get_gpu_kernel_type_time).
_HTA_BIT = {"compute": 1, "comm": 2, "memory": 4}
#: HTA's label of each kind.
HTA_TYPE = {"compute": "COMPUTATION", "comm": "COMMUNICATION", "memory": "MEMORY",
            "other": "OTHER"}
_US = 1000

TEMPORAL_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "device": pl.Int32,
    "window_start_ns": pl.Int64,
    "window_end_ns": pl.Int64,
    "window_ns": pl.Int64,
    "compute_ns": pl.Int64,
    "comm_ns": pl.Int64,
    "memory_ns": pl.Int64,
    "other_ns": pl.Int64,
    "idle_ns": pl.Int64,
    "non_compute_ns": pl.Int64,
    "compute_pct": pl.Float64,
    "comm_pct": pl.Float64,
    "memory_pct": pl.Float64,
    "other_pct": pl.Float64,
    "idle_pct": pl.Float64,
    "non_compute_pct": pl.Float64,
}

KERNEL_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "kind": pl.Utf8,
    "comm_type": pl.Utf8,
    "name": pl.Utf8,
    "count": pl.Int64,
    "sum_ns": pl.Int64,
    "mean_ns": pl.Float64,
    "min_ns": pl.Int64,
    "max_ns": pl.Int64,
    "std_ns": pl.Float64,
    "pct_of_kind": pl.Float64,
}

KIND_COMBO_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "kinds": pl.Utf8,
    "time_ns": pl.Int64,
    "pct": pl.Float64,
}

OVERLAP_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "comm_ns": pl.Int64,
    "overlapped_ns": pl.Int64,
    "overlap_ratio": pl.Float64,
    "overlap_pct": pl.Float64,
}


def _windowed_activities(prep: Prepared) -> pl.DataFrame:
    """GPU work items of ``prep`` with time inside the window, clipped to it."""
    return prep.items.filter(
        (pl.col("device") >= 0) & (pl.col("end_ns") > pl.col("start_ns"))
    ).with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns"))


def _activities(frames: TraceFrames, hta_compat: bool) -> pl.DataFrame:
    """Classified activities with start_ns/end_ns (end < start only in compat mode)."""
    if hta_compat:
        if not frames.meta.get("hta_compat"):
            frames = hta_compat_frames(frames)
    else:
        frames = classify_frames(frames)
    acts = frames.activities
    if not hta_compat:
        acts = acts.filter(pl.col("dur_ns") >= 0)
    return acts.with_columns(
        pl.col("ts_ns").alias("start_ns"), (pl.col("ts_ns") + pl.col("dur_ns")).alias("end_ns")
    )


def _keys(hta_compat: bool) -> list[str]:
    # HTA merges all GPUs of a file (rule 7 of hta_compat.py).
    return ["rank"] if hta_compat else ["rank", "device"]


def _union_ns(acts: pl.DataFrame, kinds: tuple[str, ...], keys: list[str], name: str
              ) -> pl.DataFrame:
    """|U(activities of these kinds)| per group, minus HTA's lost microseconds."""
    sub = acts.filter(pl.col("kind").is_in(list(kinds)))
    length = intervals.total(sub, keys, name)
    lost = _lost_units(sub, keys)
    if lost.height:
        length = (
            length.join(lost, on=keys, how="full", coalesce=True)
            .with_columns(
                (pl.col(name).fill_null(0) - pl.col("_lost").fill_null(0) * _US).alias(name)
            )
            .drop("_lost")
        )
    return length


def _degenerate_units(acts: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Distinct microseconds [end, start) of HTA's negative-length events, per group."""
    return (
        acts.filter(pl.col("end_ns") < pl.col("start_ns"))
        .select(*keys, pl.col("end_ns").alias("start_ns"), pl.col("start_ns").alias("end_ns"))
        .unique()
    )


def _uncovered(units: pl.DataFrame, cover: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """The units that no positive-length interval of ``cover`` contains."""
    if units.is_empty():
        return units
    got = intervals.covered(units, cover.filter(pl.col("end_ns") > pl.col("start_ns")), keys)
    return units.with_columns(got).filter(
        pl.col("covered_ns") < pl.col("end_ns") - pl.col("start_ns")
    ).drop("covered_ns")


def _lost_units(acts: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per group, how many 1-us negative intervals open a group of their own in HTA's merge.

    Such an interval [k+1, k) opens a group exactly when no positive interval of
    the same merge covers [k, k+1); that group then has length -1 us.
    """
    units = _uncovered(_degenerate_units(acts, keys), acts, keys)
    if units.is_empty():
        return pl.DataFrame(schema={**{k: acts.schema[k] for k in keys}, "_lost": pl.Int64})
    return units.group_by(keys).agg(pl.len().cast(pl.Int64).alias("_lost"))


def _pct(part: str, whole: str) -> pl.Expr:
    return (
        pl.when(pl.col(whole) > 0)
        .then(100.0 * pl.col(part) / pl.col(whole))
        .otherwise(None)
        .cast(pl.Float64)
    )


def temporal_breakdown(
    frames: TraceFrames, *, hta_compat: bool = False, prep: Prepared | None = None
) -> pl.DataFrame:
    """Where GPU time goes per (rank, device): compute, comm, memory, other, idle.

    Window = [first activity start, last activity end) of the group. Within it
    every nanosecond is counted once, by precedence: compute if any compute
    activity runs, else comm if any communication runs, else memory, else other
    (only HTA's OTHER type in compat mode), else idle. ``non_compute_ns`` =
    comm + memory + other (HTA's ``non_compute_time``). Percentages are of the
    window and not rounded.

    Schema (TEMPORAL_SCHEMA): rank, device, window_start_ns, window_end_ns,
    window_ns, compute_ns, comm_ns, memory_ns, other_ns, idle_ns, non_compute_ns
    (Int64, ns), then compute_pct, comm_pct, memory_pct, other_pct, idle_pct,
    non_compute_pct (Float64, % of window). With ``hta_compat`` rows are per rank
    (device null) and times are whole microseconds, so that
    ``idle_ns/1000, compute_ns/1000, non_compute_ns/1000, window_ns/1000`` equal
    HTA's ``idle_time(us), compute_time(us), non_compute_time(us), kernel_time(us)``.

    ``prep`` (overlap.prepare, default mode only): the analysis window instead —
    window = each GPU's [win_start_ns, win_end_ns], activities clipped to it, so
    window_ns, compute_ns and idle_ns agree with overlap_summary's span_ns,
    compute_busy_ns and idle_ns. Compat mode ignores it (HTA has no window).
    """
    use_window = prep is not None and not hta_compat
    if use_window:
        acts = _windowed_activities(prep)
    else:
        acts = _activities(frames, hta_compat)
    keys = _keys(hta_compat)
    if acts.is_empty():
        return pl.DataFrame(schema=TEMPORAL_SCHEMA)
    if use_window:
        window = prep.windows.filter(pl.col("device") >= 0).select(
            *keys,
            pl.col("win_start_ns").alias("window_start_ns"),
            pl.col("win_end_ns").alias("_max_end"),
            pl.col("win_end_ns").alias("_hta_end"),
        )
    else:
        window = acts.group_by(keys).agg(
            pl.col("start_ns").min().alias("window_start_ns"),
            pl.max_horizontal("end_ns", "start_ns").max().alias("_max_end"),
            pl.col("end_ns").max().alias("_hta_end"),
        )
    # HTA's window ends at the end of its last merged group, i.e. the largest
    # end of any row (a trailing negative interval included); exact mode uses
    # the last real end.
    end_col = "_hta_end" if hta_compat else "_max_end"
    out = window.with_columns(pl.col(end_col).alias("window_end_ns")).drop("_max_end", "_hta_end")
    cumulative = {
        "_c": ("compute",),
        "_cc": ("compute", "comm"),
        "_ccm": ("compute", "comm", "memory"),
        "_all": ("compute", "comm", "memory", "other"),
    }
    for name, kinds in cumulative.items():
        out = out.join(_union_ns(acts, kinds, keys, name), on=keys, how="left")
    out = out.with_columns(pl.col(list(cumulative)).fill_null(0)).with_columns(
        (pl.col("window_end_ns") - pl.col("window_start_ns")).alias("window_ns"),
        pl.col("_c").alias("compute_ns"),
        (pl.col("_cc") - pl.col("_c")).alias("comm_ns"),
        (pl.col("_ccm") - pl.col("_cc")).alias("memory_ns"),
        (pl.col("_all") - pl.col("_ccm")).alias("other_ns"),
        (pl.col("_all") - pl.col("_c")).alias("non_compute_ns"),
    ).with_columns((pl.col("window_ns") - pl.col("_all")).alias("idle_ns"))
    if hta_compat:
        out = out.with_columns(pl.lit(None, dtype=pl.Int32).alias("device"))
    pcts = ["compute", "comm", "memory", "other", "idle", "non_compute"]
    out = out.with_columns(_pct(f"{p}_ns", "window_ns").alias(f"{p}_pct") for p in pcts)
    return out.select(
        [pl.col(c).cast(t) for c, t in TEMPORAL_SCHEMA.items()]
    ).sort(["rank", "device"], nulls_last=True)


def kernel_breakdown(
    frames: TraceFrames, *, hta_compat: bool = False, prep: Prepared | None = None
) -> pl.DataFrame:
    """Per rank, kind and kernel name: count and duration statistics.

    Schema (KERNEL_SCHEMA): rank, kind ("compute" | "comm" | "memory", plus
    "other" in compat mode), comm_type (first non-null of the name), name, count,
    sum_ns, mean_ns, min_ns, max_ns, std_ns (sample standard deviation, 0 for a
    single instance, as HTA), pct_of_kind (sum_ns as % of the rank's summed
    durations of that kind). Sorted by rank, kind, sum_ns descending. With
    ``hta_compat`` durations are HTA's rounded ones and HTA's own table
    (``get_gpu_kernel_breakdown``) equals these rows divided by 1000 whenever
    its ``num_kernels`` is at least the number of names (no "others" lumping).

    ``prep`` (overlap.prepare, default mode only): only activities with time inside
    the analysis window, their durations clipped to it (zero-length activities
    drop out). Compat mode ignores it.
    """
    if prep is not None and not hta_compat:
        acts = _windowed_activities(prep)
    else:
        acts = _activities(frames, hta_compat)
    if acts.is_empty():
        return pl.DataFrame(schema=KERNEL_SCHEMA)
    per_name = acts.group_by("rank", "kind", "name").agg(
        pl.col("comm_type").drop_nulls().min().alias("comm_type"),
        pl.len().cast(pl.Int64).alias("count"),
        pl.col("dur_ns").sum().alias("sum_ns"),
        pl.col("dur_ns").mean().alias("mean_ns"),
        pl.col("dur_ns").min().alias("min_ns"),
        pl.col("dur_ns").max().alias("max_ns"),
        pl.col("dur_ns").std(ddof=1).fill_null(0.0).fill_nan(0.0).alias("std_ns"),
    )
    kind_ns = pl.col("sum_ns").sum().over("rank", "kind")
    per_name = per_name.with_columns(
        pl.when(kind_ns != 0).then(100.0 * pl.col("sum_ns") / kind_ns).otherwise(None)
        .alias("pct_of_kind")
    )
    return per_name.select(
        [pl.col(c).cast(t) for c, t in KERNEL_SCHEMA.items()]
    ).sort(["rank", "kind", "sum_ns", "name", "comm_type"],
           descending=[False, False, True, False, False], nulls_last=True)


def _combo_label(kinds: tuple[str, ...]) -> str:
    return "+".join(k for k in KINDS if k in kinds)


def kind_combination_breakdown(frames: TraceFrames, *, hta_compat: bool = False
                               ) -> pl.DataFrame:
    """Per rank, how long each combination of kinds runs at once (exclusive times).

    ``kinds`` is e.g. "compute", "comm", "compute+comm", "compute+comm+memory"
    (order compute, comm, memory); the time where exactly that set of kinds is
    active, in ns, and its % of the rank's busy time (union of all three kinds).
    Rows with zero time are omitted. Computed by inclusion-exclusion over union
    lengths: the time where the active set is a non-empty subset of T is
    |U(all)| - |U(kinds outside T)|.

    This is HTA's kernel-type table (``get_gpu_kernel_breakdown``'s first frame)
    per rank: in compat mode, summing ``time_ns`` over ranks and dividing by 1000
    gives its ``sum`` column (label "COMPUTATION overlapping COMMUNICATION" =
    "compute+comm"); OTHER kernels take part in neither.
    """
    acts = _activities(frames, hta_compat).filter(pl.col("kind").is_in(list(KINDS)))
    if acts.is_empty():
        return pl.DataFrame(schema=KIND_COMBO_SCHEMA)
    keys = ["rank"]
    # Exact union lengths (HTA's degenerate intervals are handled below).
    def length(kinds: tuple[str, ...]) -> pl.DataFrame:
        sub = acts.filter(pl.col("kind").is_in(list(kinds)))
        return intervals.total(sub, keys, _combo_label(kinds) or "_none")

    ranks = acts.select("rank").unique()
    lens = {(): ranks.with_columns(pl.lit(0, dtype=pl.Int64).alias("_none"))}
    subsets = [c for n in range(1, 4) for c in combinations(KINDS, n)]
    for s in subsets:
        lens[s] = ranks.join(length(s), on="rank", how="left").fill_null(0)
    full = lens[KINDS].rename({_combo_label(KINDS): "_u"})

    def g(t: tuple[str, ...]) -> pl.Series:  # active set non-empty and inside t
        rest = tuple(k for k in KINDS if k not in t)
        col = _combo_label(rest) or "_none"
        return full["_u"] - lens[rest][col]

    rows = []
    for s in subsets:
        acc = pl.Series([0] * ranks.height, dtype=pl.Int64)
        for n in range(0, len(s) + 1):
            for t in combinations(s, n):
                sign = -1 if (len(s) - n) % 2 else 1
                acc = acc + sign * (g(t) if t else pl.Series([0] * ranks.height, dtype=pl.Int64))
        rows.append(ranks.with_columns(
            pl.lit(_combo_label(s)).alias("kinds"), acc.alias("time_ns"), full["_u"].alias("_busy")
        ))
    out = pl.concat(rows, how="vertical")
    if hta_compat:
        out = _hta_sweep_artefacts(out, acts)
    return (
        out.filter(pl.col("time_ns") != 0)
        .with_columns(_pct("time_ns", "_busy").alias("pct"))
        .select([pl.col(c).cast(t) for c, t in KIND_COMBO_SCHEMA.items()])
        .sort(["rank", "time_ns"], descending=[False, True])
    )


def _hta_sweep_artefacts(table: pl.DataFrame, acts: pl.DataFrame) -> pl.DataFrame:
    """Move the microseconds that HTA's type sweep misattributes (compat mode only).

    In ``_get_gpu_kernel_type_time`` each type's merged intervals add +bit at
    start and -bit at end. A type's negative interval [k+1, k) left standing by
    its merge makes the running sum over [k, k+1) equal bits(active) - bits(neg):
    HTA files that microsecond under the combination those bits spell, or drops
    it when the sum is not positive.
    """
    neg_rows = []
    for kind in KINDS:
        sub = acts.filter(pl.col("kind") == kind)
        units = _uncovered(_degenerate_units(sub, ["rank"]), sub, ["rank"])
        neg_rows.append(units.with_columns(pl.lit(_HTA_BIT[kind]).alias("_neg")))
    neg = pl.concat(neg_rows, how="vertical")
    if neg.is_empty():
        return table
    units = neg.group_by("rank", "start_ns", "end_ns").agg(pl.col("_neg").sum())
    active = pl.lit(0)
    for kind in KINDS:
        sub = acts.filter(pl.col("kind") == kind)
        got = intervals.covered(units, sub.filter(pl.col("end_ns") > pl.col("start_ns")), ["rank"])
        units = units.with_columns(got.alias(f"_cov_{kind}"))
        active = active + pl.when(pl.col(f"_cov_{kind}") > 0).then(_HTA_BIT[kind]).otherwise(0)
    units = units.with_columns(active.alias("_act")).with_columns(
        (pl.col("_act") - pl.col("_neg")).alias("_now")
    )
    label = {bits: _combo_label(tuple(k for k in KINDS if bits & _HTA_BIT[k]))
             for bits in range(1, 8)}
    moves = pl.concat([
        units.filter(pl.col("_act") > 0).select(
            "rank", pl.col("_act").replace_strict(label, return_dtype=pl.Utf8).alias("kinds"),
            pl.lit(-_US, dtype=pl.Int64).alias("delta")),
        units.filter(pl.col("_now") > 0).select(
            "rank", pl.col("_now").replace_strict(label, return_dtype=pl.Utf8).alias("kinds"),
            pl.lit(_US, dtype=pl.Int64).alias("delta")),
    ]).group_by("rank", "kinds").agg(pl.col("delta").sum())
    busy = table.select("rank", "_busy").unique("rank")
    return (
        table.join(moves, on=["rank", "kinds"], how="full", coalesce=True)
        .drop("_busy").join(busy, on="rank", how="left")
        .with_columns((pl.col("time_ns").fill_null(0) + pl.col("delta").fill_null(0))
                      .alias("time_ns"))
        .drop("delta")
    )


def comm_comp_overlap(frames: TraceFrames, *, hta_compat: bool = False) -> pl.DataFrame:
    """Per rank, the share of communication time that compute covers (whole trace).

    comm_ns = |U(comm)|, overlapped_ns = |U(comm) & U(compute)|, overlap_ratio =
    overlapped/comm (Float64; NaN when a rank has no communication, as HTA's 0/0),
    overlap_pct = 100 * ratio, unrounded (HTA rounds its ``comp_comm_overlap_pctg``
    to 2 decimals). Memory activities take no part. This is HTA's
    ``get_comm_comp_overlap`` definition; overlap.py has the windowed,
    per-annotation metrics. In default mode communication is what classify.py
    says (e.g. DeepEP kernels), in compat mode only NCCL kernels.
    """
    acts = _activities(frames, hta_compat)
    if acts.is_empty():
        return pl.DataFrame(schema=OVERLAP_SCHEMA)
    keys = ["rank"]
    comm = acts.filter(pl.col("kind") == "comm")
    comp = acts.filter(pl.col("kind") == "compute")
    ranks = acts.select("rank").unique()
    comm_len = _union_ns(comm, ("comm",), keys, "comm_ns")
    both = intervals.intersect(comm, comp, keys)
    over = both.group_by(keys).agg((pl.col("end_ns") - pl.col("start_ns")).sum()
                                   .alias("overlapped_ns"))
    out = (
        ranks.join(comm_len, on=keys, how="left").join(over, on=keys, how="left")
        .with_columns(pl.col("comm_ns", "overlapped_ns").fill_null(0))
        .with_columns(
            pl.when(pl.col("comm_ns") != 0)
            .then(pl.col("overlapped_ns") / pl.col("comm_ns"))
            .otherwise(float("nan"))
            .alias("overlap_ratio")
        )
        .with_columns((100.0 * pl.col("overlap_ratio")).alias("overlap_pct"))
    )
    return out.select([pl.col(c).cast(t) for c, t in OVERLAP_SCHEMA.items()]).sort("rank")


def hta_overlap_summary(frames: TraceFrames) -> pl.DataFrame:
    """HTA 0.5.0's headline, in overlap_summary's columns (overlap.SUMMARY_COLUMNS).

    One row per rank (``device`` null: HTA merges a file's GPUs), over every event
    HTA keeps (no analysis window: ``from_annotation`` false, win_* = HTA's kernel
    window), with HTA's kernel types and whole microseconds (hta_compat.py):
    comm_busy_ns, overlap_ns and overlap_ratio are ``get_comm_comp_overlap``'s
    (comp_comm_overlap_pctg = round(100 * overlap_ratio, 2); a rank without NCCL
    kernels gets a null ratio where HTA prints nan); span_ns, compute_busy_ns and
    idle_ns are ``get_temporal_breakdown``'s kernel_time, compute_time and
    idle_time. memory_busy_ns and overlap_memory_ns are measured on the same
    events. Empty (with the schema) when the trace has no GPU activity.
    """
    from overlapscope.analyzers.overlap import SUMMARY_COLUMNS

    keys = ["rank"]
    acts = _activities(frames, True)
    t = temporal_breakdown(frames, hta_compat=True)
    o = comm_comp_overlap(frames, hta_compat=True)
    schema = {c: t.schema.get(c, pl.Int64) for c in SUMMARY_COLUMNS}
    schema.update(rank=pl.Int32, device=pl.Int32, overlap_ratio=pl.Float64,
                  exposed_fraction=pl.Float64, from_annotation=pl.Boolean)
    if t.is_empty():
        return pl.DataFrame(schema=schema)
    pos = acts.filter(pl.col("end_ns") > pl.col("start_ns"))
    comm, compute, memory = (pos.filter(pl.col("kind") == k) for k in ("comm", "compute", "memory"))
    memory_len = intervals.total(memory, keys, "memory_busy_ns")
    mem_only = intervals.total(
        intervals.subtract(intervals.intersect(comm, memory, keys), compute, keys),
        keys, "overlap_memory_ns",
    )
    out = (
        t.select(
            "rank", "device", pl.col("window_ns").alias("span_ns"),
            pl.col("compute_ns").alias("compute_busy_ns"), "idle_ns",
            (pl.col("window_ns") - pl.col("idle_ns")).alias("busy_ns"),
            pl.col("window_start_ns").alias("win_start_ns"),
            pl.col("window_end_ns").alias("win_end_ns"),
        )
        .join(o.select("rank", pl.col("comm_ns").alias("comm_busy_ns"),
                       pl.col("overlapped_ns").alias("overlap_ns")), on=keys, how="left")
        .join(memory_len, on=keys, how="left")
        .join(mem_only, on=keys, how="left")
        .with_columns(
            pl.col("comm_busy_ns", "overlap_ns", "memory_busy_ns", "overlap_memory_ns")
            .fill_null(0),
            pl.lit(False).alias("from_annotation"),
        )
        .with_columns(
            pl.when(pl.col("comm_busy_ns") != 0)
            .then(pl.col("overlap_ns") / pl.col("comm_busy_ns")).alias("overlap_ratio"),
            (pl.col("comm_busy_ns") - pl.col("overlap_ns")).alias("exposed_comm_ns"),
        )
        .with_columns(
            pl.when(pl.col("span_ns") > 0)
            .then(pl.col("exposed_comm_ns") / pl.col("span_ns")).alias("exposed_fraction")
        )
    )
    return out.select([pl.col(c).cast(schema[c]) for c in SUMMARY_COLUMNS]).sort("rank")
