"""Compute/communication overlap (BRIEF.md §4, items 1-7).

Per (rank, device) — never merging two GPUs of one file — with C = comm work
items and P = all other work items (compute and memory, P = K \\ C):

- ``comm_busy_ns`` Tc = |U(C)|, ``compute_busy_ns`` Tp = |U(P)|
- ``overlap_ns`` O = |U(C) ∩ U(P)|, ``overlap_ratio`` = O / Tc (null when Tc = 0)
- ``exposed_comm_ns`` E = Tc - O, ``exposed_fraction`` = E / |window|
- ``idle_ns`` = |window| - |U(K)|, ``span_ns`` = |window|

all measured inside the analysis window (work_items.step_windows). Every
function takes TraceFrames and returns a polars DataFrame; none prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from overlapscope.analyzers import intervals as iv
from overlapscope.analyzers.classify import RuleSet
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.ranges import overlapping_pairs, take
from overlapscope.analyzers.work import (
    DEVICE_KEY,
    annotation_members,
    step_windows,
    windowed,
    work_items,
)

GEMM_NAME = r"(?i)gemm|nvjet|cutlass|xmma|cublas|matmul|wgmma"


@dataclass(frozen=True)
class Prepared:
    """Work items clipped to the analysis window, and the windows: computed once per
    report and shared by every metric here (pass it as ``prep=``)."""

    items: pl.DataFrame
    windows: pl.DataFrame


def prepare(
    frames: TraceFrames, *, window: str | None = None, rules: RuleSet | None = None
) -> Prepared:
    """Classify, build work items and clip them to the analysis window."""
    items = work_items(frames, rules)
    windows = step_windows(items, frames, window)
    return Prepared(windowed(items, windows), windows)


def prepared(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    prep: Prepared | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(work items clipped to the window, windows), reusing ``prep`` when given."""
    prep = prep or prepare(frames, window=window, rules=rules)
    return prep.items, prep.windows


def _length(df: pl.DataFrame, by: list[str], name: str) -> pl.DataFrame:
    return iv.total(df, by, name)


def overlap_summary(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    prep: Prepared | None = None,
) -> pl.DataFrame:
    """One row per (rank, device): span, busy times, overlap, exposed comm, idle (ns)."""
    items, windows = prepared(frames, window=window, rules=rules, prep=prep)
    by = DEVICE_KEY
    comm = items.filter(pl.col("kind") == "comm")
    other = items.filter(pl.col("kind") != "comm")
    compute_only = items.filter(pl.col("kind") == "compute")
    memory = items.filter(pl.col("kind") == "memory")
    parts = [
        _length(comm, by, "comm_busy_ns"),
        _length(other, by, "compute_busy_ns"),
        _length(compute_only, by, "kernel_compute_ns"),
        _length(memory, by, "memory_busy_ns"),
        _length(iv.intersect(comm, other, by), by, "overlap_ns"),
        _length(items, by, "busy_ns"),
    ]
    out = windows.select(
        *by,
        (pl.col("win_end_ns") - pl.col("win_start_ns")).alias("span_ns"),
        "win_start_ns",
        "win_end_ns",
        "from_annotation",
    )
    for p in parts:
        out = out.join(p, on=by, how="left")
    zero = [
        "comm_busy_ns",
        "compute_busy_ns",
        "kernel_compute_ns",
        "memory_busy_ns",
        "overlap_ns",
        "busy_ns",
    ]
    out = out.with_columns([pl.col(c).fill_null(0) for c in zero])
    return (
        out.with_columns(
            (pl.col("overlap_ns") / pl.col("comm_busy_ns")).fill_nan(None).alias("overlap_ratio"),
            (pl.col("comm_busy_ns") - pl.col("overlap_ns")).alias("exposed_comm_ns"),
            ((pl.col("comm_busy_ns") - pl.col("overlap_ns")) / pl.col("span_ns"))
            .fill_nan(None)
            .alias("exposed_fraction"),
            (pl.col("span_ns") - pl.col("busy_ns")).alias("idle_ns"),
        )
        .with_columns(
            pl.when(pl.col("comm_busy_ns") > 0)
            .then(pl.col("overlap_ratio"))
            .alias("overlap_ratio"),
            pl.when(pl.col("span_ns") > 0)
            .then(pl.col("exposed_fraction"))
            .alias("exposed_fraction"),
        )
        .select(
            "rank",
            "device",
            "span_ns",
            "compute_busy_ns",
            "comm_busy_ns",
            "overlap_ns",
            "overlap_ratio",
            "exposed_comm_ns",
            "exposed_fraction",
            "idle_ns",
            "kernel_compute_ns",
            "memory_busy_ns",
            "busy_ns",
            "win_start_ns",
            "win_end_ns",
            "from_annotation",
        )
        .sort(by)
    )


def overlap_by_stream(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    prep: Prepared | None = None,
) -> pl.DataFrame:
    """Per (rank, device, stream): busy, comm busy, and how much of that stream's comm
    is hidden under non-comm work anywhere on the same device (ns)."""
    items, _ = prepared(frames, window=window, rules=rules, prep=prep)
    key = [*DEVICE_KEY, "stream"]
    other = items.filter(pl.col("kind") != "comm")
    comm = items.filter(pl.col("kind") == "comm")
    busy = _length(items, key, "busy_ns")
    cb = _length(comm, key, "comm_busy_ns")
    # Hidden part of each stream's comm: intersect per stream against device-wide other work.
    runs = iv.union(comm, key)
    hidden = (
        runs.with_columns(iv.covered(runs, other, DEVICE_KEY).alias("_h"))
        .group_by(key)
        .agg(pl.col("_h").sum().alias("overlap_ns"))
    )
    counts = items.group_by(key).agg(
        pl.len().alias("n_items"),
        (pl.col("kind") == "comm").sum().alias("n_comm"),
        pl.col("comm_type").drop_nulls().mode().first().alias("comm_type"),
    )
    out = (
        busy.join(cb, on=key, how="left")
        .join(hidden, on=key, how="left")
        .join(counts, on=key, how="left")
        .with_columns(pl.col("comm_busy_ns").fill_null(0), pl.col("overlap_ns").fill_null(0))
    )
    return out.with_columns(
        pl.when(pl.col("comm_busy_ns") > 0)
        .then(pl.col("overlap_ns") / pl.col("comm_busy_ns"))
        .alias("overlap_ratio"),
        (pl.col("comm_busy_ns") - pl.col("overlap_ns")).alias("exposed_comm_ns"),
        pl.when(pl.col("n_comm") > pl.col("n_items") / 2)
        .then(pl.lit("comm"))
        .otherwise(pl.lit("compute"))
        .alias("role"),
    ).sort(key)


def overlap_by_annotation(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    pattern: str | None = None,
    prep: Prepared | None = None,
) -> pl.DataFrame:
    """Per annotation instance: the work launched inside it and how hidden its comm is.

    Columns: rank, ann_id, name, cpu_start_ns, cpu_dur_ns, gpu_start_ns, gpu_end_ns,
    gpu_span_ns, n_items, comm_busy_ns, compute_busy_ns, comm_hidden_ns (the
    annotation's comm under ANY non-comm work of its device), exposed_comm_ns,
    overlap_ratio, paired_with (the annotation whose non-comm work hides most of
    this one's comm, BRIEF §4.6).
    """
    items, _ = prepared(frames, window=window, rules=rules, prep=prep)
    members = annotation_members(items, frames, pattern)
    if members.is_empty():
        return pl.DataFrame(schema={"rank": pl.Int32, "ann_id": pl.Int64, "name": pl.Utf8})
    m = members.join(items, on="item", how="inner")
    key = ["rank", "device", "ann_id"]
    comm = m.filter(pl.col("kind") == "comm")
    other_all = items.filter(pl.col("kind") != "comm")
    # Each annotation's comm runs, measured against the device's non-comm work with
    # the cumulative-coverage lookup (linear; no per-annotation copies of the work).
    runs = iv.union(comm, key)
    hidden = (
        runs.with_columns(iv.covered(runs, other_all, DEVICE_KEY).alias("_h"))
        .group_by(key)
        .agg(pl.col("_h").sum().alias("comm_hidden_ns"))
    )
    base = m.group_by(key).agg(
        pl.col("ann_name").first().alias("name"),
        pl.col("ann_start_ns").first().alias("cpu_start_ns"),
        (pl.col("ann_end_ns") - pl.col("ann_start_ns")).first().alias("cpu_dur_ns"),
        pl.col("start_ns").min().alias("gpu_start_ns"),
        pl.col("end_ns").max().alias("gpu_end_ns"),
        pl.len().alias("n_items"),
    )
    out = (
        base.join(_length(comm, key, "comm_busy_ns"), on=key, how="left")
        .join(
            _length(m.filter(pl.col("kind") != "comm"), key, "compute_busy_ns"), on=key, how="left"
        )
        .join(hidden, on=key, how="left")
        .with_columns(
            pl.col("comm_busy_ns").fill_null(0),
            pl.col("compute_busy_ns").fill_null(0),
            pl.col("comm_hidden_ns").fill_null(0),
            (pl.col("gpu_end_ns") - pl.col("gpu_start_ns")).alias("gpu_span_ns"),
        )
        .with_columns(
            (pl.col("comm_busy_ns") - pl.col("comm_hidden_ns")).alias("exposed_comm_ns"),
            pl.when(pl.col("comm_busy_ns") > 0)
            .then(pl.col("comm_hidden_ns") / pl.col("comm_busy_ns"))
            .alias("overlap_ratio"),
        )
    )
    return out.join(_pairing(m, comm), on=key, how="left").sort("rank", "device", "cpu_start_ns")


def _pairing(m: pl.DataFrame, comm: pl.DataFrame) -> pl.DataFrame:
    """For each annotation with comm: the annotation whose non-comm work covers most of it."""
    key = ["rank", "device", "ann_id"]
    schema = {
        "rank": pl.Int32,
        "device": pl.Int32,
        "ann_id": pl.Int64,
        "paired_with": pl.Utf8,
        "paired_overlap_ns": pl.Int64,
    }
    if comm.is_empty():
        return pl.DataFrame(schema=schema)
    cu = iv.union(comm, key)
    # Only "leaf-ish" compute annotations: those holding no comm themselves.
    comm_anns = comm.select("ann_id").unique()
    pu = iv.union(m.filter(pl.col("kind") != "comm").join(comm_anns, on="ann_id", how="anti"), key)
    if pu.is_empty():
        return pl.DataFrame(schema=schema)
    names = m.group_by("ann_id").agg(pl.col("ann_name").first())
    cu = cu.with_row_index("_a")
    pu = pu.with_row_index("_b")
    rows = overlapping_pairs(cu, pu, by=DEVICE_KEY)
    if rows is None:  # pathological nesting: too many candidates to pair cheaply
        return pl.DataFrame(schema=schema)
    left = take(cu, rows["a_row"])
    right = take(pu, rows["b_row"]).select(
        pl.col("ann_id").alias("ann_id_right"),
        pl.col("start_ns").alias("start_ns_right"),
        pl.col("end_ns").alias("end_ns_right"),
    )
    pairs = pl.concat([left, right], how="horizontal").with_columns(
        (
            pl.min_horizontal("end_ns", "end_ns_right")
            - pl.max_horizontal("start_ns", "start_ns_right")
        ).alias("ov")
    )
    best = (
        pairs.group_by(*key, "ann_id_right")
        .agg(pl.col("ov").sum())
        .sort("ov", descending=True)
        .group_by(key)
        .agg(pl.col("ann_id_right").first(), pl.col("ov").first())
        .join(names.rename({"ann_id": "ann_id_right"}), on="ann_id_right", how="left")
    )
    return best.select(
        *key, pl.col("ann_name").alias("paired_with"), pl.col("ov").alias("paired_overlap_ns")
    )


def overlap_by_annotation_name(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    pattern: str | None = None,
    prep: Prepared | None = None,
) -> pl.DataFrame:
    """overlap_by_annotation aggregated over instances of each name, per rank."""
    per = overlap_by_annotation(frames, window=window, rules=rules, pattern=pattern, prep=prep)
    if per.is_empty() or "gpu_span_ns" not in per.columns:
        return per
    return (
        per.group_by("rank", "device", "name")
        .agg(
            pl.len().alias("instances"),
            pl.col("cpu_dur_ns").sum(),
            pl.col("gpu_span_ns").sum(),
            pl.col("comm_busy_ns").sum(),
            pl.col("compute_busy_ns").sum(),
            pl.col("comm_hidden_ns").sum(),
            pl.col("exposed_comm_ns").sum(),
            pl.col("paired_with").drop_nulls().mode().first(),
            pl.col("cpu_start_ns").min().alias("first_start_ns"),
        )
        .with_columns(
            pl.when(pl.col("comm_busy_ns") > 0)
            .then(pl.col("comm_hidden_ns") / pl.col("comm_busy_ns"))
            .alias("overlap_ratio")
        )
        .sort("rank", "device", "first_start_ns")
    )


def kernel_coverage(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    prep: Prepared | None = None,
) -> pl.DataFrame:
    """Every comm item with the fraction of it hidden under non-comm work (BRIEF §4.5).

    Columns: rank, device, stream, name, comm_type, start_ns, dur_ns, hidden_ns,
    coverage (hidden/dur; null for zero-length items). Sorted worst first.
    """
    items, _ = prepared(frames, window=window, rules=rules, prep=prep)
    comm = items.filter((pl.col("kind") == "comm") & (pl.col("end_ns") > pl.col("start_ns")))
    other = items.filter(pl.col("kind") != "comm")
    hidden = iv.covered(comm, other, DEVICE_KEY)
    out = (
        comm.with_columns(hidden.alias("hidden_ns"))
        .with_columns((pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns"))
        .with_columns(
            pl.when(pl.col("dur_ns") > 0)
            .then(pl.col("hidden_ns") / pl.col("dur_ns"))
            .alias("coverage")
        )
    )
    return out.select(
        "rank",
        "device",
        "stream",
        "name",
        "comm_type",
        "start_ns",
        "dur_ns",
        "hidden_ns",
        "coverage",
    ).sort("coverage", "dur_ns", descending=[False, True], nulls_last=True)


def kernel_coverage_by_name(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    prep: Prepared | None = None,
) -> pl.DataFrame:
    """kernel_coverage aggregated per (rank, device, name): count, total, hidden, coverage."""
    return coverage_by_name(kernel_coverage(frames, window=window, rules=rules, prep=prep))


def coverage_by_name(per: pl.DataFrame) -> pl.DataFrame:
    """Aggregate a kernel_coverage frame per (rank, device, name, comm_type)."""
    return (
        per.group_by("rank", "device", "name", "comm_type")
        .agg(
            pl.len().alias("count"),
            pl.col("dur_ns").sum(),
            pl.col("hidden_ns").sum(),
            pl.col("coverage").min().alias("worst_coverage"),
        )
        .with_columns((pl.col("hidden_ns") / pl.col("dur_ns")).alias("coverage"))
        .sort("coverage", nulls_last=True)
    )


def sm_split(
    frames: TraceFrames, *, rules: RuleSet | None = None, prep: Prepared | None = None
) -> pl.DataFrame:
    """SMs used by comm kernels vs persistent GEMMs, against numSms (BRIEF §4.7).

    comm_sms = largest grid (blocks) of a comm kernel; compute_cap_sms = largest
    grid of a GEMM-like kernel that fits on the device (persistent kernels launch
    at most one CTA per SM); comm_share = comm_sms / num_sms. Clipping to the
    window keeps every item, so ``prep.items`` serves as well as fresh items.
    """
    items = prep.items if prep is not None else work_items(frames, rules)
    num_sms = frames.ranks.select("rank", "num_sms")
    kernels = items.filter(pl.col("cat") == "kernel").join(num_sms, on="rank", how="left")
    # Only kernels that are communication by their own name: helpers promoted by the
    # stream rule (casts, layout) are not the persistent comm kernels.
    by_name = ~pl.col("rule").is_in(["on-comm-stream", "copy-on-comm-stream"])
    comm = (
        kernels.filter((pl.col("kind") == "comm") & by_name)
        .group_by(DEVICE_KEY)
        .agg(
            pl.col("grid_blocks").max().alias("comm_sms"),
            pl.col("name").sort_by("grid_blocks", descending=True).first().alias("comm_kernel"),
        )
    )
    gemm = (
        kernels.filter(
            (pl.col("kind") == "compute")
            & pl.col("name").str.contains(GEMM_NAME)
            & (pl.col("num_sms").is_null() | (pl.col("grid_blocks") <= pl.col("num_sms")))
        )
        .group_by(DEVICE_KEY)
        .agg(pl.col("grid_blocks").max().alias("compute_cap_sms"))
    )
    devices = items.select(DEVICE_KEY).unique().join(num_sms, on="rank", how="left")
    return (
        devices.join(comm, on=DEVICE_KEY, how="left")
        .join(gemm, on=DEVICE_KEY, how="left")
        .with_columns((pl.col("comm_sms") / pl.col("num_sms")).alias("comm_share"))
        .sort(DEVICE_KEY)
    )
