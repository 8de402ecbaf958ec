"""Compute/communication overlap: busy, hidden and exposed time per GPU, stream, annotation, kernel.

Per (rank, device) — never merging two GPUs of one file — with C = comm work
items, P = compute work items (compute *kernels*; host compute on CPU-only
traces) and M = memory items (memcpy/memset that no comm op issued):

- ``comm_busy_ns`` Tc = |U(C)|, ``compute_busy_ns`` Tp = |U(P)|,
  ``memory_busy_ns`` = |U(M)|
- ``overlap_ns`` O = |U(C) ∩ U(P)|, ``overlap_ratio`` = O / Tc (null when Tc = 0)
- ``overlap_memory_ns`` = |(U(C) ∩ U(M)) minus U(P)|: comm that only a copy or memset
  runs beside. It is NOT hidden: a copy does not hide communication (HTA/Nsight).
- ``exposed_comm_ns`` E = Tc - O, ``exposed_fraction`` = E / |window|
- ``idle_ns`` = |window| - |U(K)|, ``span_ns`` = |window|

all measured inside the analysis window (work_items.step_windows). Every
function takes TraceFrames and returns a polars DataFrame; none prints. Every
output is sorted on a full key, so equal inputs give byte-identical outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from overlapscope.analyzers import intervals as iv
from overlapscope.analyzers.classify import RuleSet, load_rules
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.ranges import overlapping_pairs, take
from overlapscope.analyzers.work import (
    DEFAULT_WINDOW,
    DEVICE_KEY,
    HOST_DEVICE,
    annotation_members,
    step_windows,
    windowed,
    work_items,
)

GEMM_NAME = r"(?i)gemm|nvjet|cutlass|xmma|cublas|matmul|wgmma"

#: What "hidden" means on GPU traces, in one sentence a user reads.
OVERLAP_DEFINITION = (
    "hidden = communication time while a compute kernel runs on the same GPU; "
    "memcpy/memset are not compute (HTA/Nsight convention): comm beside only a copy "
    "is exposed and reported as overlap_memory_ns"
)
#: The same for CPU-only (gloo) traces.
HOST_OVERLAP_DEFINITION = (
    "CPU-only trace: comm = gloo/c10d operators and gloo:* in-flight ranges on any "
    "thread; compute = other operator time on each thread outside its comm operators; "
    "hidden = comm time while some thread of the rank computes"
)
#: A window holding less than this share of the busy time gets a warning.
WINDOW_WARN_SHARE = 0.5
#: A stream whose comm time is at least this share of its busy time is a comm stream.
COMM_STREAM_SHARE = 0.5


@dataclass(frozen=True)
class Prepared:
    """Work items clipped to the analysis window, and the windows: computed once per
    report and shared by every metric here (pass it as ``prep=``)."""

    items: pl.DataFrame
    windows: pl.DataFrame


def prepare(
    frames: TraceFrames, *, window: str | None = None, rules: RuleSet | None = None
) -> Prepared:
    """Classify, build work items and clip them to the analysis window.

    Raises WindowError for an explicit ``window`` that is not a valid regex or
    matches no annotation.
    """
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


def _fmt_ns(ns: int) -> str:
    """A duration in the largest unit that keeps it >= 1 (ns, µs, ms, s), 3 digits."""
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("µs", 10**3)):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns} ns"


def window_warnings(prep: Prepared, pattern: str | None = None) -> list[str]:
    """Sentences about the analysis window a user should read, in a fixed order.

    One line when the window pattern matched no annotation (the whole trace was
    used), and one per (rank, device) whose window holds less than
    WINDOW_WARN_SHARE of that device's busy time, with the numbers, e.g.
    ``rank 0 device 0: window '^ProfilerStep#\\d+$' holds 1 of 17 GPU activities
    (4 µs of 1.7 ms busy); pass --window to choose another annotation``.
    """
    w = prep.windows
    if w.is_empty():
        return []
    pat = pattern or (w["window_pattern"][0] if "window_pattern" in w.columns else DEFAULT_WINDOW)
    out: list[str] = []
    whole = w.filter(~pl.col("from_annotation"))
    if whole.height:
        where = ", ".join(f"rank {r} device {d}" for r, d in whole.select(DEVICE_KEY).iter_rows())
        if whole.height == w.height:
            where = "any device"
        out.append(f"window: no annotation matching '{pat}' holds work on {where}: "
                   "the whole trace is the window")
    if "busy_total_ns" not in w.columns:
        return out
    low = w.filter(
        pl.col("from_annotation")
        & (pl.col("busy_in_ns") < WINDOW_WARN_SHARE * pl.col("busy_total_ns"))
    )
    for r in low.iter_rows(named=True):
        what = "host work items" if r["device"] == HOST_DEVICE else "GPU activities"
        out.append(
            f"rank {r['rank']} device {r['device']}: window '{pat}' holds "
            f"{r['n_items_in']} of {r['n_items_total']} {what} "
            f"({_fmt_ns(r['busy_in_ns'])} of {_fmt_ns(r['busy_total_ns'])} busy); "
            "pass --window to choose another annotation"
        )
    return out


def _length(df: pl.DataFrame, by: list[str], name: str) -> pl.DataFrame:
    return iv.total(df, by, name)


def _kinds(items: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(comm, compute, memory) items: the three sets of the module docstring."""
    kind = pl.col("kind")
    return (items.filter(kind == "comm"), items.filter(kind == "compute"),
            items.filter(kind == "memory"))


SUMMARY_COLUMNS = [
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
    "overlap_memory_ns",
    "memory_busy_ns",
    "busy_ns",
    "win_start_ns",
    "win_end_ns",
    "from_annotation",
]


def overlap_summary(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    prep: Prepared | None = None,
    hta_compat: bool = False,
) -> pl.DataFrame:
    """One row per (rank, device): span, busy times, overlap, exposed comm, idle (ns).

    Columns (SUMMARY_COLUMNS; definitions in the module docstring and
    OVERLAP_DEFINITION): span_ns, compute_busy_ns (|U(compute kernels)|),
    comm_busy_ns, overlap_ns (comm under compute), overlap_ratio, exposed_comm_ns,
    exposed_fraction, idle_ns, overlap_memory_ns (comm under memcpy/memset but no
    compute kernel: not hidden), memory_busy_ns, busy_ns (|U(all)|), win_start_ns, win_end_ns,
    from_annotation.

    ``hta_compat``: HTA 0.5.0's headline instead (breakdown.hta_overlap_summary:
    per rank over the whole trace, HTA's kernels, types and microseconds).
    """
    if hta_compat:
        from overlapscope.analyzers.breakdown import hta_overlap_summary

        return hta_overlap_summary(frames)
    items, windows = prepared(frames, window=window, rules=rules, prep=prep)
    by = DEVICE_KEY
    comm, compute, memory = _kinds(items)
    comm_memory = iv.intersect(comm, memory, by)
    parts = [
        _length(comm, by, "comm_busy_ns"),
        _length(compute, by, "compute_busy_ns"),
        _length(memory, by, "memory_busy_ns"),
        _length(iv.intersect(comm, compute, by), by, "overlap_ns"),
        _length(iv.subtract(comm_memory, compute, by), by, "overlap_memory_ns"),
        _length(items, by, "busy_ns"),
    ]
    out = windows.select(
        *by,
        (pl.col("win_end_ns") - pl.col("win_start_ns")).alias("span_ns"),
        "win_start_ns",
        "win_end_ns",
        "from_annotation",
    )
    for part in parts:
        out = out.join(part, on=by, how="left")
    zero = ["comm_busy_ns", "compute_busy_ns", "memory_busy_ns", "overlap_ns",
            "overlap_memory_ns", "busy_ns"]
    out = out.with_columns(pl.col(zero).fill_null(0))
    return (
        out.with_columns(
            pl.when(pl.col("comm_busy_ns") > 0)
            .then(pl.col("overlap_ns") / pl.col("comm_busy_ns"))
            .alias("overlap_ratio"),
            (pl.col("comm_busy_ns") - pl.col("overlap_ns")).alias("exposed_comm_ns"),
            pl.when(pl.col("span_ns") > 0)
            .then((pl.col("comm_busy_ns") - pl.col("overlap_ns")) / pl.col("span_ns"))
            .alias("exposed_fraction"),
            (pl.col("span_ns") - pl.col("busy_ns")).alias("idle_ns"),
        )
        .select(SUMMARY_COLUMNS)
        .sort(by)
    )


def _top_comm_type(items: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """Per group, the comm_type with the most comm time (ties: alphabetical)."""
    per = (
        items.filter(pl.col("comm_type").is_not_null())
        .group_by(*key, "comm_type")
        .agg((pl.col("end_ns") - pl.col("start_ns")).clip(0).sum().alias("_t"))
        .sort([*key, "_t", "comm_type"], descending=[False] * len(key) + [True, False])
    )
    return per.group_by(key, maintain_order=True).agg(pl.col("comm_type").first())


def overlap_by_stream(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    prep: Prepared | None = None,
) -> pl.DataFrame:
    """Per (rank, device, stream) — thread on CPU-only traces — busy time, comm busy
    time and how much of that stream's comm is hidden under compute anywhere on the
    same device (ns).

    Columns: rank, device, stream, busy_ns, comm_busy_ns, overlap_ns, n_items,
    n_comm, comm_type (the type with the most comm time), overlap_ratio,
    exposed_comm_ns, stream_role ("comm" when comm_busy_ns >= COMM_STREAM_SHARE
    (half) of busy_ns, else "compute"). The role is a fact about the stream; it
    never changes how its activities are classified.
    """
    items, _ = prepared(frames, window=window, rules=rules, prep=prep)
    key = [*DEVICE_KEY, "stream"]
    comm, compute, _ = _kinds(items)
    busy = _length(items, key, "busy_ns")
    cb = _length(comm, key, "comm_busy_ns")
    # Hidden part of each stream's comm: its runs against device-wide compute.
    runs = iv.union(comm, key)
    hidden = (
        runs.with_columns(iv.covered(runs, compute, DEVICE_KEY).alias("_h"))
        .group_by(key)
        .agg(pl.col("_h").sum().alias("overlap_ns"))
    )
    counts = items.group_by(key).agg(
        pl.len().alias("n_items"), (pl.col("kind") == "comm").sum().alias("n_comm")
    )
    out = (
        busy.join(cb, on=key, how="left")
        .join(hidden, on=key, how="left")
        .join(counts, on=key, how="left")
        .join(_top_comm_type(comm, key), on=key, how="left")
        .with_columns(pl.col("comm_busy_ns").fill_null(0), pl.col("overlap_ns").fill_null(0))
    )
    return out.with_columns(
        pl.when(pl.col("comm_busy_ns") > 0)
        .then(pl.col("overlap_ns") / pl.col("comm_busy_ns"))
        .alias("overlap_ratio"),
        (pl.col("comm_busy_ns") - pl.col("overlap_ns")).alias("exposed_comm_ns"),
        pl.when(
            (pl.col("comm_busy_ns") > 0)
            & (pl.col("comm_busy_ns") >= COMM_STREAM_SHARE * pl.col("busy_ns"))
        )
        .then(pl.lit("comm"))
        .otherwise(pl.lit("compute"))
        .alias("stream_role"),
    ).select(
        *key, "busy_ns", "comm_busy_ns", "overlap_ns", "n_items", "n_comm", "comm_type",
        "overlap_ratio", "exposed_comm_ns", "stream_role",
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

    Columns: rank, device, ann_id, name, cpu_start_ns, cpu_dur_ns, gpu_start_ns,
    gpu_end_ns, gpu_span_ns (on CPU-only traces: first start to last end of the
    annotation's host work), n_items, comm_busy_ns, compute_busy_ns (its compute
    kernels / host compute), comm_hidden_ns (the annotation's comm under ANY
    compute of its device), exposed_comm_ns, overlap_ratio, paired_with (the
    compute annotation whose compute hides most of this one's comm),
    paired_overlap_ns. Membership: work_items.annotation_members (host work by
    thread). Sorted by rank, device, cpu_start_ns, ann_id.
    """
    rules = rules or load_rules()
    items, _ = prepared(frames, window=window, rules=rules, prep=prep)
    members = annotation_members(items, frames, pattern, rules=rules)
    if members.is_empty():
        return pl.DataFrame(schema={"rank": pl.Int32, "ann_id": pl.Int64, "name": pl.Utf8})
    m = _with_items(members, items)
    key = ["rank", "device", "ann_id"]
    comm = m.filter(pl.col("kind") == "comm")
    compute_all = items.filter(pl.col("kind") == "compute")
    # Each annotation's comm runs, measured against the device's compute with the
    # cumulative-coverage lookup (linear; no per-annotation copies of the work).
    runs = iv.union(comm, key)
    hidden = (
        runs.with_columns(iv.covered(runs, compute_all, DEVICE_KEY).alias("_h"))
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
            _length(m.filter(pl.col("kind") == "compute"), key, "compute_busy_ns"),
            on=key,
            how="left",
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
    pairs = _pairing(m, comm, rules.host_comm_pattern)
    return out.join(pairs, on=key, how="left").sort("rank", "device", "cpu_start_ns", "ann_id")


def _with_items(members: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """``members`` joined with their work items (inner join on ``item``). Item ids are
    row numbers (work_items), so when they still are, rows are fetched by position."""
    ids = items["item"]
    if ids.has_nulls() or not ids.equals(pl.int_range(items.height, dtype=ids.dtype, eager=True),
                                         check_names=False):
        return members.join(items, on="item", how="inner")
    return members.hstack(take(items.drop("item"), members["item"]))


def _pairing(m: pl.DataFrame, comm: pl.DataFrame, comm_names: str) -> pl.DataFrame:
    """For each annotation with comm: the compute annotation whose compute covers most
    of it. Candidates hold compute and no comm, and are not named like a host comm op
    (``gloo:*``, ``nccl:*``): "hidden under" always names compute. Ties on the
    overlap go to the alphabetically first name, then the earliest annotation."""
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
    names = m.group_by("ann_id").agg(pl.col("ann_name").first(), pl.col("ann_start_ns").first())
    # An annotation's name is the same on all its rows: match the regex once per
    # annotation, not once per member item.
    allowed = names.filter(
        ~pl.col("ann_name").str.contains(comm_names)
        & ~pl.col("ann_id").is_in(comm["ann_id"].unique().implode())
    )["ann_id"]
    candidates = m.filter(
        (pl.col("kind") == "compute") & pl.col("ann_id").is_in(allowed.implode())
    )
    pu = iv.union(candidates, key)
    if pu.is_empty():
        return pl.DataFrame(schema=schema)
    cu = cu.sort([*key, "start_ns"])
    pu = pu.sort([*key, "start_ns"])
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
        .join(names.rename({"ann_id": "ann_id_right"}), on="ann_id_right", how="left")
        .sort(
            [*key, "ov", "ann_name", "ann_start_ns", "ann_id_right"],
            descending=[False, False, False, True, False, False, False],
        )
        .group_by(key, maintain_order=True)
        .agg(pl.col("ann_name").first(), pl.col("ov").first())
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
    """overlap_by_annotation aggregated over instances of each name, per rank.

    ``paired_with`` is the partner with the most summed paired_overlap_ns over the
    instances (ties: alphabetical). Sorted by rank, device, first_start_ns, name.
    """
    per = overlap_by_annotation(frames, window=window, rules=rules, pattern=pattern, prep=prep)
    if per.is_empty() or "gpu_span_ns" not in per.columns:
        return per
    gkey = ["rank", "device", "name"]
    partner = (
        per.filter(pl.col("paired_with").is_not_null())
        .group_by(*gkey, "paired_with")
        .agg(pl.col("paired_overlap_ns").sum())
        .sort([*gkey, "paired_overlap_ns", "paired_with"],
              descending=[False, False, False, True, False])
        .group_by(gkey, maintain_order=True)
        .agg(pl.col("paired_with").first())
    )
    return (
        per.group_by(gkey)
        .agg(
            pl.len().alias("instances"),
            pl.col("cpu_dur_ns").sum(),
            pl.col("gpu_span_ns").sum(),
            pl.col("comm_busy_ns").sum(),
            pl.col("compute_busy_ns").sum(),
            pl.col("comm_hidden_ns").sum(),
            pl.col("exposed_comm_ns").sum(),
            pl.col("cpu_start_ns").min().alias("first_start_ns"),
        )
        .join(partner, on=gkey, how="left")
        .with_columns(
            pl.when(pl.col("comm_busy_ns") > 0)
            .then(pl.col("comm_hidden_ns") / pl.col("comm_busy_ns"))
            .alias("overlap_ratio")
        )
        .select(
            *gkey, "instances", "cpu_dur_ns", "gpu_span_ns", "comm_busy_ns", "compute_busy_ns",
            "comm_hidden_ns", "exposed_comm_ns", "paired_with", "first_start_ns",
            "overlap_ratio",
        )
        .sort("rank", "device", "first_start_ns", "name")
    )


def kernel_coverage(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    prep: Prepared | None = None,
) -> pl.DataFrame:
    """Every comm item with the fraction of it hidden under compute.

    Only comm items are listed (comm kernels, comm ops and the copies they issue).
    Columns: rank, device, stream, name, comm_type, start_ns, dur_ns, hidden_ns
    (under compute kernels / host compute; copies do not hide), coverage
    (hidden/dur; null for zero-length items). Sorted worst first, then by
    duration (longest first), rank, device, stream, start, name.
    """
    items, _ = prepared(frames, window=window, rules=rules, prep=prep)
    comm = items.filter((pl.col("kind") == "comm") & (pl.col("end_ns") > pl.col("start_ns")))
    compute = items.filter(pl.col("kind") == "compute")
    hidden = iv.covered(comm, compute, DEVICE_KEY)
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
    ).sort(
        ["coverage", "dur_ns", "rank", "device", "stream", "start_ns", "name"],
        descending=[False, True, False, False, False, False, False],
        nulls_last=True,
    )


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
    """Aggregate a kernel_coverage frame per (rank, device, name, comm_type).

    Sorted by coverage (worst first, nulls last), then rank, device, name, comm_type.
    """
    return (
        per.group_by("rank", "device", "name", "comm_type")
        .agg(
            pl.len().alias("count"),
            pl.col("dur_ns").sum(),
            pl.col("hidden_ns").sum(),
            pl.col("coverage").min().alias("worst_coverage"),
        )
        .with_columns(
            pl.when(pl.col("dur_ns") > 0)
            .then(pl.col("hidden_ns") / pl.col("dur_ns"))
            .alias("coverage")
        )
        .sort(["coverage", "rank", "device", "name", "comm_type"], nulls_last=True)
    )


def sm_split(
    frames: TraceFrames, *, rules: RuleSet | None = None, prep: Prepared | None = None
) -> pl.DataFrame:
    """SMs used by comm kernels vs persistent GEMMs, against numSms.

    comm_sms = largest grid (blocks) of a comm kernel; compute_cap_sms = largest
    grid of a GEMM-like kernel that fits on the device (persistent kernels launch
    at most one CTA per SM); comm_share = comm_sms / num_sms. Clipping to the
    window keeps every item, so ``prep.items`` serves as well as fresh items.
    """
    items = prep.items if prep is not None else work_items(frames, rules)
    num_sms = frames.ranks.select("rank", "num_sms")
    kernels = items.filter(pl.col("cat") == "kernel").join(num_sms, on="rank", how="left")
    # Only kernels that are communication by their own name: a kernel that is comm
    # because a host comm op launched it (a reduction NCCL-over-gloo runs) is not
    # one of the persistent comm kernels.
    by_name = pl.col("rule").fill_null("") != "launched-in-comm-op"
    comm = (
        kernels.filter((pl.col("kind") == "comm") & by_name)
        .group_by(DEVICE_KEY)
        .agg(
            pl.col("grid_blocks").max().alias("comm_sms"),
            pl.col("name")
            .sort_by(["grid_blocks", "name"], descending=[True, False], nulls_last=True)
            .first()
            .alias("comm_kernel"),
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
