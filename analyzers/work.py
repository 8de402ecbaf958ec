"""Work items: the classified intervals every overlap metric is computed on.

On GPU traces a work item is a GPU activity (kernel, memcpy, memset) on a
(rank, device, stream). On CPU-only traces it is a host operator: ``device`` is
-1 and ``stream`` is the thread, communication = gloo/c10d ops on any thread,
compute = other operators not nested inside a communication op.

Schema of ``work_items``: rank i32, device i32, stream i64, name str, cat str,
kind str (comm|compute|memory), comm_type str, rule str, start_ns i64, end_ns i64,
dur_ns i64, correlation i64, grid_blocks i64, launch_pid str, launch_ns i64,
item i64 (row id).
"""

from __future__ import annotations

import polars as pl

from overlapscope.analyzers import intervals as iv
from overlapscope.analyzers.classify import RuleSet, classify_frames
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.ranges import points_in_intervals, take

DEVICE_KEY = ["rank", "device"]
HOST_DEVICE = -1


def _gpu_items(frames: TraceFrames) -> pl.DataFrame:
    acts = frames.activities
    launches = (
        frames.cpu_ops.filter(pl.col("correlation").is_not_null())
        .filter(
            pl.col("cat").is_in(["cuda_runtime", "cuda_driver", "hip_runtime", "runtime"])
            | pl.col("cat").str.contains("runtime|driver")
        )
        .select(
            "rank",
            "correlation",
            pl.col("pid").alias("launch_pid"),
            pl.col("ts_ns").alias("launch_ns"),
        )
        .unique(subset=["rank", "correlation"], keep="first")
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


def _host_items(frames: TraceFrames) -> pl.DataFrame:
    ops = frames.cpu_ops.filter(pl.col("kind").is_in(["comm", "compute"])).with_columns(
        pl.col("ts_ns").alias("start_ns"),
        (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("end_ns"),
    )
    comm = ops.filter(pl.col("kind") == "comm")
    # A thread inside a communication op is busy communicating: its compute is the
    # operator time outside comm ops on the same thread (parents like an autograd
    # node that encloses a c10d call, and children like gloo's own copies, drop out).
    key = ["rank", "pid", "tid"]
    # A thread the profiler declared as its communication thread does nothing but
    # communication (packing, exchanges, unpacking), like a GPU comm stream.
    comm_threads = frames.ranks.filter(pl.col("comm_tid").is_not_null()).select(
        "rank", pl.col("comm_tid").alias("tid")
    )
    if comm_threads.height:
        on_comm = ops.join(comm_threads, on=["rank", "tid"], how="semi")
        comm = pl.concat(
            [
                comm,
                on_comm.filter(pl.col("kind") != "comm").with_columns(
                    pl.lit("comm").alias("kind"), pl.lit("comm_thread").alias("comm_type")
                ),
            ]
        )
        ops = ops.join(comm_threads, on=["rank", "tid"], how="anti")
    pieces = iv.subtract(ops.filter(pl.col("kind") == "compute"), comm, key)
    compute = pieces.with_columns(
        pl.lit("(host compute)").alias("name"),
        pl.lit("cpu_op").alias("cat"),
        pl.lit("compute").alias("kind"),
        pl.lit(None, dtype=pl.Utf8).alias("comm_type"),
        pl.lit(None, dtype=pl.Int64).alias("correlation"),
        pl.col("start_ns").alias("ts_ns"),
    )
    comm = comm.select(compute.columns)
    both = pl.concat([comm, compute.select(comm.columns)])
    return both.select(
        "rank",
        pl.lit(HOST_DEVICE, dtype=pl.Int32).alias("device"),
        _tid_as_int(pl.col("tid")).alias("stream"),
        "name",
        "cat",
        "kind",
        "comm_type",
        "start_ns",
        "end_ns",
        (pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns"),
        "correlation",
        pl.lit(None, dtype=pl.Int64).alias("grid_blocks"),
        pl.col("pid").alias("launch_pid"),
        pl.col("ts_ns").alias("launch_ns"),
    )


def work_items(frames: TraceFrames, rules: RuleSet | None = None) -> pl.DataFrame:
    """Classified work intervals of the run (GPU activities, else host ops)."""
    frames = classify_frames(frames, rules)
    items = _gpu_items(frames) if frames.is_gpu else _host_items(frames)
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
        "launch_ns",
    ]
    return items.select(cols).with_row_index("item").with_columns(pl.col("item").cast(pl.Int64))


def step_windows(
    items: pl.DataFrame, frames: TraceFrames, window: str | None = None
) -> pl.DataFrame:
    """Analysis window per (rank, device): [win_start_ns, win_end_ns].

    ``window`` is a regex on annotation names (default: ``ProfilerStep#N``); the
    window spans the first start to the last end of work launched inside any
    matching annotation. Devices with no such work use their whole span.
    """
    pattern = window or r"^ProfilerStep#\d+$"
    member = annotation_members(items, frames, pattern)
    spans = items.group_by(DEVICE_KEY).agg(
        pl.col("start_ns").min().alias("all_start"), pl.col("end_ns").max().alias("all_end")
    )
    inside = (
        items.join(member.select("item").unique(), on="item", how="semi")
        .group_by(DEVICE_KEY)
        .agg(pl.col("start_ns").min().alias("w0"), pl.col("end_ns").max().alias("w1"))
    )
    out = spans.join(inside, on=DEVICE_KEY, how="left").select(
        *DEVICE_KEY,
        pl.col("w0").fill_null(pl.col("all_start")).alias("win_start_ns"),
        pl.col("w1").fill_null(pl.col("all_end")).alias("win_end_ns"),
        pl.col("w0").is_not_null().alias("from_annotation"),
    )
    return out.sort(DEVICE_KEY)


def annotation_members(
    items: pl.DataFrame, frames: TraceFrames, pattern: str | None = None
) -> pl.DataFrame:
    """Which annotation instances each work item belongs to.

    A GPU activity belongs to every CPU annotation of its process whose interval
    encloses its *launch* (found through the correlation id), on any thread:
    backward kernels are launched by the autograd thread under annotations of
    the main thread. Activities without a launch record fall back to Kineto's
    ``gpu_user_annotation`` rows on the same device and stream.

    Returns [item, ann_id, ann_name, ann_start_ns, ann_end_ns, ann_tid].
    """
    ann = frames.annotations.with_row_index("ann_id").with_columns(pl.col("ann_id").cast(pl.Int64))
    if pattern:
        ann = ann.filter(pl.col("name").str.contains(pattern))
    cols = ["item", "ann_id", "ann_name", "ann_start_ns", "ann_end_ns", "ann_tid"]
    empty = pl.DataFrame(
        schema={
            "item": pl.Int64,
            "ann_id": pl.Int64,
            "ann_name": pl.Utf8,
            "ann_start_ns": pl.Int64,
            "ann_end_ns": pl.Int64,
            "ann_tid": pl.Utf8,
        }
    )
    if ann.is_empty() or items.is_empty():
        return empty
    cpu_ann = ann.filter(~pl.col("on_gpu")).select(
        "rank",
        pl.col("pid").alias("a_pid"),
        "ann_id",
        pl.col("name").alias("ann_name"),
        pl.col("ts_ns").alias("ann_start_ns"),
        (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("ann_end_ns"),
        pl.col("tid").alias("ann_tid"),
    )
    launched = items.filter(pl.col("launch_ns").is_not_null()).select(
        "item", "rank", "launch_pid", "launch_ns"
    )
    pairs = points_in_intervals(
        launched,
        cpu_ann,
        by=["rank", "a_pid"],
        left_by=["rank", "launch_pid"],
        point="launch_ns",
        start="ann_start_ns",
        end="ann_end_ns",
    )
    by_launch = pl.concat(
        [
            take(launched, pairs["point_row"]).select("item"),
            take(cpu_ann, pairs["interval_row"]).drop("rank", "a_pid"),
        ],
        how="horizontal",
    ).select(cols)
    gpu_ann = ann.filter(pl.col("on_gpu")).select(
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
    return pl.concat([by_launch, by_gpu]) if not by_gpu.is_empty() else by_launch


def windowed(items: pl.DataFrame, windows: pl.DataFrame) -> pl.DataFrame:
    """Items clipped to their device's window (items outside become zero-length)."""
    return iv.clip(items, windows.select(*DEVICE_KEY, "win_start_ns", "win_end_ns"), DEVICE_KEY)
