"""Work items: the classified intervals every overlap metric is computed on.

On GPU traces a work item is a GPU activity (kernel, memcpy, memset) on a
(rank, device, stream). On CPU-only traces it is host work: ``device`` is -1 and
``stream`` is the thread. Host communication = what the host rules of
classify_rules.toml call comm, on any thread: the gloo/c10d operators and gloo's
``gloo:*`` ranges (annotations that stay open while a send/recv is in flight).
Host compute = every other operator's time on its thread outside that thread's
comm operators (parents such as an autograd node enclosing a ``c10d::send``, and
gloo's own copies inside it, drop out). A thread is never comm because of what
it is: a profiler's declared comm thread computes when it runs ``aten::add_``.

Schema of ``work_items``: rank i32, device i32, stream i64, name str, cat str,
kind str (comm|compute|memory), comm_type str, rule str, start_ns i64, end_ns i64,
dur_ns i64, correlation i64, grid_blocks i64, launch_pid str, launch_tid str
(thread of the launch; the item's own thread for host work), launch_ns i64,
item i64 (row id).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from overlapscope.analyzers import intervals as iv
from overlapscope.analyzers.classify import (
    RuleSet,
    classify_cpu_ops,
    classify_frames,
    load_rules,
    regex_problem,
)
from overlapscope.analyzers.errors import WindowError
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.ranges import keys_unique, points_in_intervals, take

DEVICE_KEY = ["rank", "device"]
HOST_DEVICE = -1
#: Annotation regex of the default analysis window.
DEFAULT_WINDOW = r"^ProfilerStep#\d+$"


def _first_launches(launches: pl.DataFrame) -> pl.DataFrame:
    """One launch per (rank, correlation), sorted by them: the earliest of a duplicated
    correlation id, whatever the row order."""
    if keys_unique(launches, ["rank", "correlation"]):
        # Ids are unique (the usual case): the key order alone decides, no text sort.
        return take(launches, np.lexsort((launches["correlation"].to_numpy(),
                                          launches["rank"].to_numpy())))
    return launches.sort(
        "rank", "correlation", "launch_ns", "launch_pid", "launch_tid", nulls_last=True
    ).unique(subset=["rank", "correlation"], keep="first", maintain_order=True)


def _gpu_items(frames: TraceFrames) -> pl.DataFrame:
    acts = frames.activities
    launches = _first_launches(
        frames.cpu_ops.filter(pl.col("correlation").is_not_null())
        .filter(
            pl.col("cat").is_in(["cuda_runtime", "cuda_driver", "hip_runtime", "runtime"])
            | pl.col("cat").str.contains("runtime|driver")
        )
        .select(
            "rank",
            "correlation",
            pl.col("pid").alias("launch_pid"),
            pl.col("tid").alias("launch_tid"),
            pl.col("ts_ns").alias("launch_ns"),
        )
    )
    blocks = (
        pl.col("grid_x").fill_null(1)
        * pl.col("grid_y").fill_null(1)
        * pl.col("grid_z").fill_null(1)
    )
    items = acts.with_columns(
        pl.col("ts_ns").alias("start_ns"),
        (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("end_ns"),
        pl.col("dur_ns").clip(0).alias("dur_ns"),
        pl.when(pl.col("grid_x").is_not_null()).then(blocks).alias("grid_blocks"),
    ).join(launches, on=["rank", "correlation"], how="left")
    return items


def _tid_as_int(tid: pl.Expr) -> pl.Expr:
    # Non-numeric thread labels get a stable 62-bit id (hash is u64: keep it in range).
    return tid.cast(pl.Int64, strict=False).fill_null((tid.hash() % (1 << 62)).cast(pl.Int64))


def _host_comm_ranges(frames: TraceFrames, rules: RuleSet) -> pl.DataFrame:
    """Host annotations that the host comm rules call comm (gloo's ``gloo:send`` ...),
    shaped like classified cpu_ops rows: the time a send/recv is in flight."""
    ann = frames.annotations.filter(~pl.col("on_gpu").fill_null(False)).select(
        "rank", "pid", "tid", pl.lit("user_annotation").alias("cat"), "name", "ts_ns", "dur_ns"
    )
    if ann.is_empty():
        return ann.with_columns(
            pl.lit(None, dtype=pl.Utf8).alias(c) for c in ("kind", "comm_type", "rule")
        )
    return classify_cpu_ops(ann, rules).filter(pl.col("kind") == "comm")


def _host_items(frames: TraceFrames, rules: RuleSet) -> pl.DataFrame:
    cols = ["rank", "pid", "tid", "cat", "name", "ts_ns", "dur_ns", "kind", "comm_type", "rule"]
    span = [
        pl.col("ts_ns").alias("start_ns"),
        (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("end_ns"),
    ]
    ops = frames.cpu_ops.filter(pl.col("kind").is_in(["comm", "compute"])).select(cols)
    comm_ops = ops.filter(pl.col("kind") == "comm").with_columns(span)
    ranges = _host_comm_ranges(frames, rules).select(cols).with_columns(span)
    comm = pl.concat([comm_ops, ranges])
    # A thread inside a comm operator is communicating, not computing: its compute is
    # operator time outside that thread's comm operators. gloo ranges are not
    # subtracted: an isend stays in flight while its thread computes.
    key = ["rank", "pid", "tid"]
    compute_ops = ops.filter(pl.col("kind") == "compute").with_columns(span)
    pieces = iv.subtract(compute_ops, comm_ops, key)
    compute = pieces.with_columns(
        pl.lit("cpu_op").alias("cat"),
        pl.lit("(host compute)").alias("name"),
        pl.col("start_ns").alias("ts_ns"),
        (pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns"),
        pl.lit("compute").alias("kind"),
        pl.lit(None, dtype=pl.Utf8).alias("comm_type"),
        pl.lit("host-compute").alias("rule"),
    )
    both = pl.concat([comm.select(*cols, "start_ns", "end_ns"),
                      compute.select(*cols, "start_ns", "end_ns")])
    return both.select(
        "rank",
        pl.lit(HOST_DEVICE, dtype=pl.Int32).alias("device"),
        _tid_as_int(pl.col("tid")).alias("stream"),
        "name",
        "cat",
        "kind",
        "comm_type",
        "rule",
        "start_ns",
        "end_ns",
        (pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns"),
        pl.lit(None, dtype=pl.Int64).alias("correlation"),
        pl.lit(None, dtype=pl.Int64).alias("grid_blocks"),
        pl.col("pid").alias("launch_pid"),
        pl.col("tid").alias("launch_tid"),
        pl.col("start_ns").alias("launch_ns"),
    )


def work_items(frames: TraceFrames, rules: RuleSet | None = None) -> pl.DataFrame:
    """Classified work intervals of the run (GPU activities, else host work).

    Rows are in a fixed order (device, stream, start, end, name) so that row ids,
    and every tie broken by them, are the same on every run.
    """
    rules = rules or load_rules()
    frames = classify_frames(frames, rules)
    items = _gpu_items(frames) if frames.is_gpu else _host_items(frames, rules)
    if "rule" not in items.columns:
        items = items.with_columns(pl.lit(None, dtype=pl.Utf8).alias("rule"))
    cols = [
        "rank",
        "device",
        "stream",
        "name",
        "cat",
        "kind",
        "comm_type",
        "rule",
        "start_ns",
        "end_ns",
        "dur_ns",
        "correlation",
        "grid_blocks",
        "launch_pid",
        "launch_tid",
        "launch_ns",
    ]
    order = ["rank", "device", "stream", "start_ns", "end_ns", "name", "kind", "correlation"]
    return (
        items.select(cols)
        .sort(order, nulls_last=True, maintain_order=True)
        .with_row_index("item")
        .with_columns(pl.col("item").cast(pl.Int64))
    )


def check_window_pattern(pattern: str, annotations: pl.DataFrame, *, must_match: bool) -> bool:
    """True when some host annotation matches ``pattern``.

    Raises WindowError (one line) when ``pattern`` is not a valid regex, or when
    ``must_match`` (a window the user asked for) and no annotation matches it.
    """
    if (why := regex_problem(pattern)) is not None:
        raise WindowError(f"--window {pattern!r} is not a valid regex: {why}")
    hits = annotations.select(pl.col("name").str.contains(pattern).fill_null(False).any())
    found = bool(hits.item()) if annotations.height else False
    if must_match and not found:
        names = annotations["name"].unique().sort().head(5).to_list()
        seen = f"; annotations include {', '.join(names)}" if names else "; the trace has none"
        raise WindowError(f"--window {pattern!r} matches no annotation{seen}")
    return found


def step_windows(
    items: pl.DataFrame, frames: TraceFrames, window: str | None = None
) -> pl.DataFrame:
    """Analysis window per (rank, device), and how much of the work it holds.

    ``window`` is a regex on annotation names (default DEFAULT_WINDOW, the
    ``ProfilerStep#N`` ranges). On each (rank, device) the window is the hull of

    1. every work item launched inside a matching annotation (any thread of the
       process; GPU work through its correlation id, or a ``gpu_user_annotation``
       mirror for work without a launch record), whole; and
    2. the part inside [A0, A1] of every GPU item that has no launch record at all
       (queued before profiling started), where [A0, A1] is the hull of the rank's
       matching host annotations: work that runs during the step belongs to it.

    A device with neither uses its whole span (``from_annotation`` false). An
    explicit ``window`` that is not a valid regex or matches no annotation raises
    WindowError; the default pattern matching nothing is not an error.

    Columns: rank, device, win_start_ns, win_end_ns, from_annotation,
    window_pattern (the regex used), n_items_in (items with time inside the
    window), n_items_total, busy_in_ns (|U(all items) ∩ window|), busy_total_ns
    (|U(all items)| over the whole trace). ``window_warnings`` in overlap.py turns
    the last four into a sentence when the window holds little of the work.
    """
    pattern = window or DEFAULT_WINDOW
    check_window_pattern(pattern, frames.annotations, must_match=window is not None)
    member = annotation_members(items, frames, pattern, by_thread=False)
    spans = items.group_by(DEVICE_KEY).agg(
        pl.col("start_ns").min().alias("all_start"), pl.col("end_ns").max().alias("all_end")
    )
    inside = (
        items.join(member.select("item").unique(), on="item", how="semi")
        .group_by(DEVICE_KEY)
        .agg(pl.col("start_ns").min().alias("w0"), pl.col("end_ns").max().alias("w1"))
    )
    steps = (
        frames.annotations.filter(
            ~pl.col("on_gpu").fill_null(False) & pl.col("name").str.contains(pattern)
        )
        .group_by("rank")
        .agg(
            pl.col("ts_ns").min().alias("a0"),
            (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).max().alias("a1"),
        )
    )
    queued = (
        items.filter(pl.col("launch_ns").is_null() & (pl.col("device") != HOST_DEVICE))
        .join(steps, on="rank", how="inner")
        .filter((pl.col("start_ns") < pl.col("a1")) & (pl.col("end_ns") > pl.col("a0")))
        .group_by(DEVICE_KEY)
        .agg(
            pl.max_horizontal("start_ns", "a0").min().alias("q0"),
            pl.min_horizontal("end_ns", "a1").max().alias("q1"),
        )
    )
    both = (
        spans.join(inside, on=DEVICE_KEY, how="left")
        .join(queued, on=DEVICE_KEY, how="left")
        .with_columns(
            pl.min_horizontal("w0", "q0").alias("w0"), pl.max_horizontal("w1", "q1").alias("w1")
        )
    )
    out = both.select(
        *DEVICE_KEY,
        pl.col("w0").fill_null(pl.col("all_start")).alias("win_start_ns"),
        pl.col("w1").fill_null(pl.col("all_end")).alias("win_end_ns"),
        pl.col("w0").is_not_null().alias("from_annotation"),
        pl.lit(pattern).alias("window_pattern"),
    )
    return _window_coverage(items, out).sort(DEVICE_KEY)


def _window_coverage(items: pl.DataFrame, windows: pl.DataFrame) -> pl.DataFrame:
    """Add n_items_in, n_items_total, busy_in_ns, busy_total_ns to ``windows``."""
    w = items.join(windows.select(*DEVICE_KEY, "win_start_ns", "win_end_ns"), on=DEVICE_KEY)
    w0, w1 = pl.col("win_start_ns"), pl.col("win_end_ns")
    s, e = pl.col("start_ns"), pl.col("end_ns")
    # Zero-length items count when they lie inside; others when they share time with it.
    is_in = ((s < w1) & (e > w0)) | ((e <= s) & (s >= w0) & (s <= w1))
    counts = w.group_by(DEVICE_KEY).agg(
        is_in.sum().cast(pl.Int64).alias("n_items_in"),
        pl.len().cast(pl.Int64).alias("n_items_total"),
    )
    busy_total = iv.total(items, DEVICE_KEY, "busy_total_ns")
    busy_in = iv.total(windowed(items, windows), DEVICE_KEY, "busy_in_ns")
    return (
        windows.join(counts, on=DEVICE_KEY, how="left")
        .join(busy_in, on=DEVICE_KEY, how="left")
        .join(busy_total, on=DEVICE_KEY, how="left")
        .with_columns(
            pl.col("n_items_in", "n_items_total", "busy_in_ns", "busy_total_ns").fill_null(0)
        )
    )


def _empty_members() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "item": pl.Int64,
            "ann_id": pl.Int64,
            "ann_name": pl.Utf8,
            "ann_start_ns": pl.Int64,
            "ann_end_ns": pl.Int64,
            "ann_tid": pl.Utf8,
        }
    )


def annotation_members(
    items: pl.DataFrame,
    frames: TraceFrames,
    pattern: str | None = None,
    *,
    by_thread: bool = True,
    rules: RuleSet | None = None,
) -> pl.DataFrame:
    """Which annotation instances each work item belongs to.

    A GPU activity belongs to every CPU annotation of its process whose interval
    encloses its *launch* (found through the correlation id), on any thread:
    backward kernels are launched by the autograd thread under annotations of
    the main thread. Activities without a launch record fall back to Kineto's
    ``gpu_user_annotation`` rows on the same device and stream.

    Host work (CPU-only traces) belongs to the annotations of its OWN thread that
    enclose its start (``by_thread``; False: any thread of the process, used for
    the step window): an annotation on the comm thread never captures the main
    thread's compute. An annotation that is itself a host comm range (``gloo:*``,
    per the host comm rules) holds only its own range.

    Returns [item, ann_id, ann_name, ann_start_ns, ann_end_ns, ann_tid], sorted.
    """
    ann = frames.annotations.with_row_index("ann_id").with_columns(pl.col("ann_id").cast(pl.Int64))
    if pattern:
        ann = ann.filter(pl.col("name").str.contains(pattern))
    cols = ["item", "ann_id", "ann_name", "ann_start_ns", "ann_end_ns", "ann_tid"]
    if ann.is_empty() or items.is_empty():
        return _empty_members()
    cpu_ann = ann.filter(~pl.col("on_gpu").fill_null(False)).select(
        "rank",
        pl.col("pid").alias("a_pid"),
        "ann_id",
        pl.col("name").alias("ann_name"),
        pl.col("ts_ns").alias("ann_start_ns"),
        (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("ann_end_ns"),
        pl.col("tid").alias("ann_tid"),
    )
    launched = items.filter(pl.col("launch_ns").is_not_null()).select(
        "item", "rank", "device", "kind", "name", "launch_pid", "launch_tid", "launch_ns"
    )
    parts = []
    for host in (False, True):
        pts = launched.filter((pl.col("device") == HOST_DEVICE) == host)
        same_thread = host and by_thread
        by = ["rank", "a_pid", "ann_tid"] if same_thread else ["rank", "a_pid"]
        left_by = ["rank", "launch_pid", "launch_tid"] if same_thread else ["rank", "launch_pid"]
        pairs = points_in_intervals(
            pts, cpu_ann, by=by, left_by=left_by,
            point="launch_ns", start="ann_start_ns", end="ann_end_ns",
        )
        # Only host work by thread needs its own name and launch (the filter below):
        # pairs run to several per item, so gather no more columns than are read.
        own = [pl.col("name").alias("_name"), "launch_ns"] if same_thread else []
        got = pl.concat(
            [
                take(pts.select("item", *own), pairs["point_row"]),
                take(cpu_ann, pairs["interval_row"]).drop("rank", "a_pid"),
            ],
            how="horizontal",
        )
        if same_thread and got.height:
            # A gloo:* range is an in-flight send/recv, not a scope: it holds itself
            # only (ranges of one thread overlap without nesting).
            comm_range = pl.col("ann_name").str.contains(
                (rules or load_rules()).host_comm_pattern)
            itself = (pl.col("_name") == pl.col("ann_name")) & (
                pl.col("launch_ns") == pl.col("ann_start_ns")
            )
            got = got.filter(~comm_range | itself)
        parts.append(got.select(cols))
    by_launch = pl.concat(parts)
    gpu_ann = ann.filter(pl.col("on_gpu").fill_null(False)).select(
        "rank",
        "device",
        "stream",
        "ann_id",
        pl.col("name").alias("ann_name"),
        pl.col("ts_ns").alias("ann_start_ns"),
        (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("ann_end_ns"),
        pl.col("tid").alias("ann_tid"),
    )
    unlaunched = items.filter(pl.col("launch_ns").is_null()).select(
        "item", "rank", "device", "stream", "start_ns"
    )
    gpairs = points_in_intervals(
        unlaunched,
        gpu_ann,
        by=["rank", "device", "stream"],
        point="start_ns",
        start="ann_start_ns",
        end="ann_end_ns",
    )
    by_gpu = (
        pl.concat(
            [
                take(unlaunched, gpairs["point_row"]).select("item", "start_ns"),
                take(gpu_ann, gpairs["interval_row"]).drop("rank", "device", "stream"),
            ],
            how="horizontal",
        )
        .filter(pl.col("start_ns") < pl.col("ann_end_ns"))
        .select(cols)
    )
    out = pl.concat([by_launch, by_gpu]) if not by_gpu.is_empty() else by_launch
    return out.sort("item", "ann_id")


def windowed(items: pl.DataFrame, windows: pl.DataFrame) -> pl.DataFrame:
    """Items clipped to their device's window (items outside become zero-length)."""
    return iv.clip(items, windows.select(*DEVICE_KEY, "win_start_ns", "win_end_ns"), DEVICE_KEY)
