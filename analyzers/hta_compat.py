"""HTA 0.5.0 compatibility: reproduce Holistic Trace Analysis' rules on TraceFrames.

``hta_compat_frames(frames)`` returns frames whose activities are what HTA's
``TraceAnalysis`` would analyse (its kernel filter, its whole-microsecond times,
its kernel types); the breakdown functions called with ``hta_compat=True`` then
also group and aggregate as HTA does. tests/integration/test_hta_parity.py checks
the result against HTA itself.

Every rule where HTA 0.5.0 and overlapscope differ (paths are inside the ``hta``
package; line numbers of the 0.5.0 wheel):

1. **Communication is NCCL kernels only.** A GPU event is communication when its
   name matches ``^nccl.*Kernel`` (``utils/utils.py``: ``NCCL_KERNEL_RE`` and
   ``is_comm_kernel``, l.56-69), case-sensitive, anchored at the start. DeepEP,
   NVSHMEM, RCCL and peer memcpy kernels, and NCCL's own ``Memcpy DtoD`` for a
   world-size-1 all-to-all, are not communication for HTA. overlapscope:
   classify.py (name rules for NCCL/RCCL/DeepEP/NVSHMEM/peer copies, then launch
   context and communication streams).
2. **Memory is a name prefix.** ``^Memcpy|^Memset|^dma`` (``utils/utils.py``:
   ``MEMORY_KERNEL_RE``, ``is_memory_kernel``, l.72-85); overlapscope decides by
   Kineto category (``gpu_memcpy``/``gpu_memset``) and counts peer copies as comm.
3. **A fourth type, OTHER.** A kernel is computation only if its name matches none
   of ``^nccl.*Kernel``, ``.*Memcpy``, ``^Memset``, ``.*Sync``
   (``utils/utils.py``: ``NCCL_COMPUTE_KERNEL_RE``, ``is_compute_kernel``,
   l.88-100; precedence comm > memory > compute > other in ``get_kernel_type``,
   l.109-117). So ``ncclFoo`` without "Kernel" is computation, and a kernel whose
   name contains "Sync" or "Memcpy" (not at the start) is OTHER: busy but neither
   compute nor comm. Compat frames carry ``kind == "other"`` for those.
4. **Whole microseconds.** When ``ts`` parses as float, HTA rounds every event's
   start up and its end (ts + dur) down to an integer microsecond, dur = end - ts
   (``common/trace_parser.py``: ``round_down_time_stamps``, l.319-336, called by
   ``_parse_trace_dataframe_json``; disabled only by the environment variable
   ``HTA_DISABLE_NS_ROUNDING=1``, ``configs/env_options.py``). An event shorter
   than 1 us that crosses no microsecond boundary gets dur -1, one that crosses
   exactly one gets 0. overlapscope keeps exact integer nanoseconds. HTA reads
   ``ts``/``dur`` with ``json.loads`` (float64) and adds ts + dur in float64, so
   compat mode does the same arithmetic: it rebuilds each value as the float64
   ``json.loads`` would give (correctly rounded from the exact ns) and rounds
   that. On epoch-scale traces without ``baseTimeNanoseconds`` (ts ~1.8e15 us,
   float64 spacing 0.25 us) this moves starts and ends by whole microseconds,
   as in HTA.
5. **The last ProfilerStep is dropped, by launch time.** If the symbol table of
   all ranks holds at least two distinct names containing "ProfilerStep", each
   rank keeps only GPU events whose ``correlation`` matches a host event that
   starts strictly before the rank's last ProfilerStep start, compared in rounded
   microseconds (``common/trace.py``: ``Trace._filter_irrelevant_gpu_kernels``,
   l.705-744, via ``align_and_filter_trace`` from ``load_traces``;
   ``TraceAnalysis.__init__`` defaults ``include_last_profiler_step=False``,
   ``trace_analysis.py`` l.31-39). Consequences: "last start" is the maximum over
   every host-side row named ``*ProfilerStep*``, including the
   ``gpu_user_annotation`` mirror, which starts later than the CPU annotation;
   kernels launched in earlier steps but running in the last one stay, and so do
   kernels launched before the first step; a GPU event with no launch in the
   trace is dropped; a host event sharing a correlation id with another one
   duplicates the kernel (a plain inner merge). With fewer than two step names
   nothing is filtered. overlapscope analyses every activity.
6. **What is a GPU event.** Rows with an integer ``args.stream`` (others get -1,
   ``utils/utils.py``: ``normalize_gpu_stream_numbers``, l.227-245) and a
   correlation >= 0, plus CUDA "Event Sync"/"Context Sync" events
   (``common/trace_filter.py``: ``_filter_gpu_kernels_with_cuda_sync``,
   l.320-332); the breakdowns then take every row with stream != -1. So
   ``cuda_sync`` waits count as busy GPU time (type OTHER). overlapscope's loader
   keeps only kernel/memcpy/memset categories, so compat frames cannot show sync
   events: traces with ``cuda_sync`` events differ by that time.
7. **Per rank, not per device.** HTA merges all GPUs of one trace file
   (``analyzers/breakdown_analysis.py``: ``get_temporal_breakdown``,
   ``idle_time_per_rank``); overlapscope reports per (rank, device). In compat
   mode the breakdowns group by rank and leave ``device`` null.
8. **Temporal breakdown has three buckets.** ``kernel_time`` = end of the last
   merged GPU interval - start of the first; ``idle`` = kernel_time - |union of
   all GPU events|; ``compute`` = |union of COMPUTATION|; ``non_compute`` = the
   rest, i.e. comm, memory and OTHER together (``breakdown_analysis.py``:
   ``_get_idle_time_for_kernels``, l.625-640, ``get_temporal_breakdown``,
   l.642-727); percentages rounded to 2 decimals. overlapscope splits the busy
   time compute > comm > memory (> other) and keeps exact percentages; its
   ``non_compute_ns`` column equals HTA's non_compute.
9. **Interval merging.** ``merge_kernel_intervals`` (``utils/utils.py``,
   l.130-144) sorts by start and opens a new group where a start exceeds the
   running maximum of previous ends; touching intervals merge, and a
   negative-length interval from rule 4 that opens a group subtracts 1 us.
   overlapscope's intervals.py merges the same way (see breakdown.py).
10. **Overlap ratio.** ``get_comm_comp_overlap``
    (``analyzers/communication_analysis.py``, l.24-105): per rank, over all kept
    events (no iteration or annotation window), |U(comm) & U(compute)| /
    |U(comm)|, memory and OTHER ignored; NaN (0/0) when a rank has no NCCL
    kernel; reported as ``comp_comm_overlap_pctg`` rounded to 2 decimals.
    overlapscope: communication per classify.py (so DeepEP traces get a number).
11. **Kernel breakdown.** ``get_gpu_kernel_breakdown``
    (``breakdown_analysis.py``, l.37-213): per rank and type (COMPUTATION,
    COMMUNICATION, and MEMORY when ``include_memory_kernels``, default True in
    ``TraceAnalysis``), per name sum/max/min/mean/std (ddof 1, NaN -> 0) of
    rounded durations, no count column. ``_aggr_gpu_kernel_time`` (l.564-623)
    lumps names beyond ``num_kernels`` (10) or beyond the ``duration_ratio``
    quantile of the cumulative sum into "others" and then recomputes the
    statistics of every row from per-name sums (max = min = mean = sum). The
    kernel-type table (``_get_gpu_kernel_type_time``, l.495-561) adds over all
    ranks the time each combination of types runs ("COMPUTATION overlapping
    COMMUNICATION"), percentages of their total rounded to 1 decimal; with
    timestamps tied between types, its unstable sort can emit 0-us rows.
    overlapscope: per rank, never lumped, with a count and % of the class; parity
    holds for ``num_kernels`` >= the number of distinct names.
12. **Rank of a file.** The first match of ``"rank":\\s+(\\d+)`` in the file's
    text, else 0, and every ``*.json``/``*.gz`` file of the folder is a trace
    (``common/trace_file.py``: ``create_rank_to_trace_dict``, l.43-75): a compact
    JSON ``"rank":3`` is read as rank 0, and a ``run.json`` manifest would be
    parsed as a trace. overlapscope: ``distributedInfo.rank``, the file name,
    then file order; ``run.json`` is the manifest.
13. **Time origin.** HTA shifts all ranks so that the earliest event is 0
    (``common/trace.py``: ``Trace._align_all_ranks``, l.696-703); overlapscope
    also uses one origin per run. Durations and overlaps do not depend on it.
    The shift moves ``ts`` but not the ``end`` column computed earlier, which is
    why ``include_last_profiler_step=True`` (compared against that stale end)
    keeps every launched GPU event (see ``_kept_through_last_step``).

Compat frames implement rules 1-6 on the activities; rules 7-11 are applied by
the ``hta_compat=True`` paths of breakdown.py.
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from overlapscope.analyzers.frames import TraceFrames

#: HTA's communication kernel pattern (rule 1), matched at the start of the name.
HTA_COMM_RE = r"^nccl.*Kernel"
#: HTA's memory pattern (rule 2).
HTA_MEMORY_RE = r"^(Memcpy|Memset|dma)"
#: Names HTA refuses to call computation (rule 3); Python ``re.match`` semantics.
HTA_NOT_COMPUTE_RE = r"^(nccl.*Kernel|.*Memcpy|Memset|.*Sync)"
STEP_MARK = "ProfilerStep"


def hta_kind(name: pl.Expr) -> pl.Expr:
    """HTA's kernel type of a name as overlapscope kinds: comm, memory, compute, other."""
    return (
        pl.when(name.str.contains(HTA_COMM_RE)).then(pl.lit("comm"))
        .when(name.str.contains(HTA_MEMORY_RE)).then(pl.lit("memory"))
        .when(~name.str.contains(HTA_NOT_COMPUTE_RE)).then(pl.lit("compute"))
        .otherwise(pl.lit("other"))
    )


def _json_offset_ns(frames: TraceFrames) -> pl.DataFrame:
    """Per rank, the ns to add to ``ts_ns`` to get the file's own ``ts`` (in ns).

    HTA rounds the file's ``ts`` values, so the rounding grid is the file's
    microsecond grid: frame time + run origin - the file's baseTimeNanoseconds.
    When the loader does not record the base (column ``base_time_ns`` of
    ``frames.ranks``), a base that is a whole number of microseconds is assumed,
    as Kineto writes it.
    """
    origin = int(frames.meta.get("origin_ns", 0) or 0)
    ranks = frames.ranks
    base = (
        pl.col("base_time_ns").fill_null(0)
        if "base_time_ns" in ranks.columns
        else pl.lit(0, dtype=pl.Int64)
    )
    return ranks.select(
        pl.col("rank").cast(pl.Int32), (pl.lit(origin, dtype=pl.Int64) - base).alias("_off")
    ).unique("rank")


def _as_json_float_us(ns: pl.Expr) -> pl.Expr:
    """Integer ns -> the float64 microseconds ``json.loads`` gives for its decimal text.

    whole + frac/1000 rounds once more than the text does, but the result is still
    the correctly rounded value: a float64 tie lies on a multiple of 2**-3 us or
    finer, never within half an ulp of frac/1000 unless equal to it.
    """
    whole = ns // 1000
    return whole.cast(pl.Float64) + (ns - whole * 1000).cast(pl.Float64) / 1000.0


def _ceil_us(ns: pl.Expr) -> pl.Expr:
    """HTA's start: ``math.ceil`` of the float64 timestamp, as integer microseconds."""
    return _as_json_float_us(ns).ceil().cast(pl.Int64)


def _floor_end_us(ts_ns: pl.Expr, dur_ns: pl.Expr) -> pl.Expr:
    """HTA's end: ``math.floor(ts + dur)`` with both as float64, as integer microseconds."""
    return (_as_json_float_us(ts_ns) + _as_json_float_us(dur_ns)).floor().cast(pl.Int64)


def _with_offset(df: pl.DataFrame, offsets: pl.DataFrame) -> pl.DataFrame:
    return df.join(offsets, on="rank", how="left").with_columns(pl.col("_off").fill_null(0))


def _last_step_start_us(frames: TraceFrames, offsets: pl.DataFrame) -> pl.DataFrame | None:
    """Per rank, the rounded start (us) of its latest ProfilerStep row; None: no filter.

    HTA filters only when at least two distinct step names exist over all ranks.
    """
    host = pl.concat(
        [
            frames.annotations.select("rank", "name", "ts_ns"),
            frames.cpu_ops.select("rank", "name", "ts_ns"),
        ],
        how="vertical",
    ).filter(pl.col("name").str.contains(STEP_MARK, literal=True))
    if host["name"].n_unique() < 2:
        return None
    return (
        _with_offset(host, offsets)
        .group_by("rank")
        .agg(_ceil_us(pl.col("ts_ns") + pl.col("_off")).max().alias("_last_us"))
    )


def _kept_activities(frames: TraceFrames, offsets: pl.DataFrame) -> pl.DataFrame:
    """Rule 5: activities launched before the last ProfilerStep (duplicates kept)."""
    acts = frames.activities
    last = _last_step_start_us(frames, offsets)
    if last is None:
        return acts
    launches = (
        _with_offset(frames.cpu_ops.filter(pl.col("correlation").is_not_null()), offsets)
        .join(last, on="rank", how="inner")
        .filter(_ceil_us(pl.col("ts_ns") + pl.col("_off")) < pl.col("_last_us"))
        .select("rank", "correlation")
    )
    launched = acts.filter(pl.col("correlation") >= 0).join(
        launches, on=["rank", "correlation"], how="inner"
    )
    # HTA files GPU rows without a correlation among the host rows; those that
    # start before the last step survive its filter and still count as GPU time.
    orphans = (
        _with_offset(acts.filter(pl.col("correlation").fill_null(-1) < 0), offsets)
        .join(last, on="rank", how="inner")
        .filter(_ceil_us(pl.col("ts_ns") + pl.col("_off")) < pl.col("_last_us"))
        .select(acts.columns)
    )
    return pl.concat([launched.select(acts.columns), orphans], how="vertical")


def _round_like_hta(acts: pl.DataFrame, offsets: pl.DataFrame) -> pl.DataFrame:
    """Rule 4: start up, end down to whole microseconds of the file's own clock."""
    cols = acts.columns
    file_ns = pl.col("ts_ns") + pl.col("_off")
    start_us = _ceil_us(file_ns)
    end_us = _floor_end_us(file_ns, pl.col("dur_ns"))
    return (
        _with_offset(acts, offsets)
        .with_columns(
            (start_us * 1000 - pl.col("_off")).alias("ts_ns"),
            ((end_us - start_us) * 1000).alias("dur_ns"),
        )
        .select(cols)
    )


def hta_compat_frames(
    frames: TraceFrames, *, include_last_profiler_step: bool = False
) -> TraceFrames:
    """Frames whose activities are exactly the GPU events HTA 0.5.0 would analyse.

    Applies rules 1-6 of the module docstring: drops activities HTA's
    last-ProfilerStep filter drops (``include_last_profiler_step`` mirrors HTA's
    flag of that name: see ``_kept_through_last_step``), rounds
    start/end to whole microseconds on each file's own clock (``ts_ns``/``dur_ns``
    stay in ns, now multiples of 1000 apart; ``dur_ns`` can be 0 or -1000), and
    replaces ``kind``/``comm_type`` with HTA's kernel types (``kind`` in compute,
    comm, memory, other; ``comm_type`` "nccl" for comm). Other frames are kept.
    """
    offsets = _json_offset_ns(frames)
    if include_last_profiler_step:
        acts = _kept_through_last_step(frames)
    else:
        acts = _kept_activities(frames, offsets)
    acts = _round_like_hta(acts, offsets).drop(
        [c for c in ("kind", "comm_type", "rule") if c in acts.columns]
    )
    kind = hta_kind(pl.col("name"))
    acts = acts.with_columns(
        kind.alias("kind"),
        pl.when(kind == "comm").then(pl.lit("nccl")).otherwise(None).cast(pl.Utf8)
        .alias("comm_type"),
        pl.lit("hta-0.5.0").alias("rule"),
    )
    return replace(frames, activities=acts, meta={**frames.meta, "hta_compat": True})


def _kept_through_last_step(frames: TraceFrames) -> pl.DataFrame:
    """HTA's ``include_last_profiler_step=True``: every activity whose launch is in the trace.

    HTA compares launch starts with the last step's ``end`` column, which
    ``_align_all_ranks`` does not shift along with ``ts``; the bound therefore
    never bites and only the correlation match (and the orphan rule) remains.
    """
    acts = frames.activities
    host = pl.concat(
        [frames.annotations.select("name"), frames.cpu_ops.select("name")], how="vertical"
    ).filter(pl.col("name").str.contains(STEP_MARK, literal=True))
    if host["name"].n_unique() < 2:
        return acts
    launches = frames.cpu_ops.filter(pl.col("correlation").is_not_null()).select(
        "rank", "correlation"
    )
    launched = acts.filter(pl.col("correlation") >= 0).join(
        launches, on=["rank", "correlation"], how="inner"
    )
    orphans = acts.filter(pl.col("correlation").fill_null(-1) < 0)
    return pl.concat([launched.select(acts.columns), orphans], how="vertical")
