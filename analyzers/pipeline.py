"""Pipeline schedules seen in a trace: bubbles, activation pressure, conformance.

Reads schedule-op annotations written by overlapscope's pipeline executor (or anyone
using the same grammar)::

    <schedule>:<op>:mb=<i>:stage=<s>                         op in F, B, I, W
    <schedule>:FB:mb_f=<i>:mb_b=<j>:stage_f=<s>:stage_b=<t>  overlapped pair

(key=value fields may come in any order; for FB ``mb``/``stage`` below are the forward
half's). An op's time is the span of the GPU activity launched inside its annotation
(via correlation ids, ``work.annotation_members``) on GPU traces, and the annotation's
own CPU interval on CPU-only traces.

Computed here, per (step, rank):

* bubble: ``bubble_ns`` = |window| - Σ op durations, where the window is the step's
  span over *all* ranks (first op start to last op end), so ranks that start late or
  finish early are charged for it; ``bubble_fraction`` = bubble / |window|; theory from
  the trace-wide mean durations T_F, T_B (full backward; I+W when the trace has none),
  T_W, T_FB: 1f1b (PP-1)(T_F+T_B), zb1p (PP-1)(T_F+T_B-2T_W), dualpipe and dualpipev
  (PP/2-1)(T_FB+T_B-3T_W) with PP = number of distinct stages (2 x devices for V).
* activation pressure: max over the step of forwards done - input backwards done
  (F +1, B/I -1, an FB pair net 0), against PP (1f1b, zb1p) or PP+1 (dualpipe/v).
* conformance: first position where the op sequence differs from the expected one
  (``overlapscope.schedule.sequence`` written by the profiler), null when it conforms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import polars as pl

from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.work import annotation_members, work_items

if TYPE_CHECKING:
    from overlapscope.analyzers.overlap import Prepared

#: Regex of a schedule-op annotation name (schedule, op, then key=value fields).
OP_PATTERN = r"^[A-Za-z0-9_.\-]+:(F|B|I|W|FB)(:[a-z_]+=\d+)+$"
STEP_PATTERN = r"^ProfilerStep#\d+$"

#: Schema of :func:`op_table`.
OPS_SCHEMA: dict[str, pl.DataType] = {
    "step": pl.Int64,
    "rank": pl.Int32,
    "pos": pl.Int64,
    "schedule": pl.Utf8,
    "op": pl.Utf8,
    "mb": pl.Int64,
    "stage": pl.Int64,
    "mb_b": pl.Int64,
    "stage_b": pl.Int64,
    "label": pl.Utf8,
    "start_ns": pl.Int64,
    "end_ns": pl.Int64,
    "dur_ns": pl.Int64,
}


def _field(key: str) -> pl.Expr:
    return pl.col("name").str.extract(rf":{key}=(\d+)(?::|$)", 1).cast(pl.Int64)


def _label() -> pl.Expr:
    """Canonical op label (grammar without the schedule prefix)."""
    fb = pl.format("FB:mb_f={}:mb_b={}:stage_f={}:stage_b={}", "mb", "mb_b", "stage", "stage_b")
    single = pl.format("{}:mb={}:stage={}", "op", "mb", "stage")
    return pl.when(pl.col("op") == "FB").then(fb).otherwise(single)


def parse_op_annotations(annotations: pl.DataFrame) -> pl.DataFrame:
    """Host annotations matching the grammar, parsed: ann_id (row index in
    ``annotations``), rank, pid, schedule, op, mb, stage, mb_b, stage_b, label,
    ts_ns, end_ns (CPU interval, ns)."""
    ann = annotations.with_row_index("ann_id").with_columns(pl.col("ann_id").cast(pl.Int64))
    ops = ann.filter(~pl.col("on_gpu").fill_null(False) & pl.col("name").str.contains(OP_PATTERN))
    parts = pl.col("name").str.split(":")
    is_fb = parts.list.get(1) == "FB"
    ops = ops.with_columns(
        parts.list.get(0).alias("schedule"),
        parts.list.get(1).alias("op"),
        pl.when(is_fb).then(_field("mb_f")).otherwise(_field("mb")).alias("mb"),
        pl.when(is_fb).then(_field("stage_f")).otherwise(_field("stage")).alias("stage"),
        _field("mb_b").alias("mb_b"),
        _field("stage_b").alias("stage_b"),
        (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("end_ns"),
    )
    return ops.with_columns(_label().alias("label")).select(
        "ann_id", "rank", "pid", "schedule", "op", "mb", "stage", "mb_b", "stage_b", "label",
        "ts_ns", "end_ns",
    )


def _gpu_spans(frames: TraceFrames, items: pl.DataFrame) -> pl.DataFrame:
    """Per ann_id, first start / last end of GPU work launched inside the annotation
    (items clipped to a window: only the parts with time inside it count)."""
    members = annotation_members(items, frames, OP_PATTERN)
    return (
        members.join(items.select("item", "start_ns", "end_ns"), on="item")
        .filter(pl.col("end_ns") > pl.col("start_ns"))
        .group_by("ann_id")
        .agg(pl.col("start_ns").min().alias("g0"), pl.col("end_ns").max().alias("g1"))
    )


def _steps(frames: TraceFrames, ops: pl.DataFrame) -> pl.Series:
    """Step index of every op: the enclosing ``ProfilerStep#N`` (-1 outside any) when
    the trace has them, else a counter that advances each time a rank repeats its
    first op (every step of a schedule starts with the same op)."""
    steps = frames.annotations.filter(
        ~pl.col("on_gpu").fill_null(False) & pl.col("name").str.contains(STEP_PATTERN)
    )
    if steps.height:
        windows = steps.select(
            pl.col("rank").alias("s_rank"),
            pl.col("name").str.extract(r"#(\d+)$", 1).cast(pl.Int64).alias("step"),
            pl.col("ts_ns").alias("s0"),
            (pl.col("ts_ns") + pl.col("dur_ns").clip(0)).alias("s1"),
        )
        hit = ops.select("ann_id", "rank", "ts_ns").join_where(
            windows, pl.col("rank") == pl.col("s_rank"),
            pl.col("ts_ns") >= pl.col("s0"), pl.col("ts_ns") < pl.col("s1"),
        ).group_by("ann_id").agg(pl.col("step").min())
        return ops.join(hit, on="ann_id", how="left")["step"].fill_null(-1)
    first = pl.col("label").first().over("rank", order_by="ts_ns")
    return ops.select(
        ((pl.col("label") == first).cast(pl.Int64).cum_sum().over("rank", order_by="ts_ns") - 1)
        .alias("step")
    )["step"]


def op_table(frames: TraceFrames, *, prep: Prepared | None = None) -> pl.DataFrame:
    """Every schedule op of the run with its step, position and time (OPS_SCHEMA).

    ``prep`` (overlap.prepare): honour its analysis window. GPU op spans come from
    the window-clipped work; on CPU-only traces each op's interval is clipped to
    its rank's window. Ops with no time inside the window are dropped.
    """
    ops = parse_op_annotations(frames.annotations).sort("rank", "ts_ns", "ann_id")
    if ops.is_empty():
        return pl.DataFrame(schema=OPS_SCHEMA)
    ops = ops.with_columns(_steps(frames, ops).alias("step"))
    if frames.is_gpu:
        spans = _gpu_spans(frames, prep.items if prep is not None else work_items(frames))
        ops = ops.join(spans, on="ann_id", how="left").with_columns(
            pl.col("g0").alias("start_ns"), pl.col("g1").alias("end_ns")
        ).filter(pl.col("start_ns").is_not_null())
    else:
        ops = ops.with_columns(pl.col("ts_ns").alias("start_ns"))
        if prep is not None:
            hull = prep.windows.group_by("rank").agg(
                pl.col("win_start_ns").min().alias("_w0"), pl.col("win_end_ns").max().alias("_w1")
            )
            ops = (
                ops.join(hull, on="rank", how="left")
                .with_columns(
                    pl.max_horizontal("start_ns", pl.col("_w0").fill_null(pl.col("start_ns")))
                    .alias("start_ns"),
                    pl.min_horizontal("end_ns", pl.col("_w1").fill_null(pl.col("end_ns")))
                    .alias("end_ns"),
                )
                .filter(pl.col("end_ns") > pl.col("start_ns"))
                .drop("_w0", "_w1")
            )
    ops = ops.sort("step", "rank", "start_ns", "ann_id").with_columns(
        (pl.col("end_ns") - pl.col("start_ns")).alias("dur_ns"),
        pl.int_range(pl.len()).over("step", "rank").cast(pl.Int64).alias("pos"),
    )
    return ops.select(list(OPS_SCHEMA)).cast(OPS_SCHEMA)  # type: ignore[arg-type]


def mean_durations(ops: pl.DataFrame) -> dict[str, float]:
    """Trace-wide mean duration (ns) per op kind; ``B`` falls back to I + W."""
    means = {r["op"]: float(r["d"]) for r in
             ops.group_by("op").agg(pl.col("dur_ns").mean().alias("d")).iter_rows(named=True)}
    out = {k: means.get(k, 0.0) for k in ("F", "B", "I", "W", "FB")}
    if "B" not in means and "I" in means:
        out["B"] = out["I"] + out["W"]
    if "FB" not in means:
        out["FB"] = out["F"] + out["B"]
    return out


def theory_bubble_ns(schedule: str, pp: int, t: dict[str, float]) -> float | None:
    """Bubble per device by the schedule's formula from mean durations ``t`` (ns), or None."""
    name = schedule.lower()
    if name == "1f1b":
        return (pp - 1) * (t["F"] + t["B"])
    if name == "zb1p":
        return (pp - 1) * (t["F"] + t["B"] - 2 * t["W"])
    if name in ("dualpipe", "dualpipev"):
        return (pp / 2 - 1) * (t["FB"] + t["B"] - 3 * t["W"])
    return None


def activation_bound(schedule: str, pp: int) -> int | None:
    """Peak in-flight forward chunks per device the schedule promises."""
    name = schedule.lower()
    if name in ("1f1b", "zb1p"):
        return pp
    if name in ("dualpipe", "dualpipev"):
        return pp + 1
    return None


def activation_pressure(ops: pl.DataFrame) -> pl.DataFrame:
    """Per (step, rank): ``peak_activations`` = max of forwards - input backwards done."""
    delta = (pl.when(pl.col("op") == "F").then(1)
             .when(pl.col("op").is_in(["B", "I"])).then(-1).otherwise(0))
    return (
        ops.sort("step", "rank", "pos")
        .with_columns(delta.cum_sum().over("step", "rank").alias("_live"))
        .group_by("step", "rank")
        .agg(pl.col("_live").max().clip(0).alias("peak_activations"))
    )


def expected_sequences(meta: dict[str, Any]) -> pl.DataFrame:
    """Expected op labels per global rank from ``meta["overlapscope"]["schedule"]``:
    [rank, pos, expected]. ``sequence`` is keyed by pipeline rank; ``rank_map`` (global
    rank -> pipeline rank, optional) expands it to every global rank."""
    sched = (meta.get("overlapscope") or {}).get("schedule") or {}
    seqs = sched.get("sequence") or {}
    rank_map = sched.get("rank_map") or list(range(len(seqs)))
    rows = [
        {"rank": g, "pos": i, "expected": lab}
        for g, p in enumerate(rank_map)
        for i, lab in enumerate(seqs.get(str(p), []))
    ]
    schema = {"rank": pl.Int32, "pos": pl.Int64, "expected": pl.Utf8}
    return pl.DataFrame(rows, schema=schema)


def conformance(ops: pl.DataFrame, expected: pl.DataFrame) -> pl.DataFrame:
    """Per (step, rank): first position where observed and expected labels differ
    (``first_divergence``, null when they agree, including length), with both labels."""
    observed = ops.select("step", "rank", "pos", pl.col("label").alias("observed"))
    pairs = observed.select("step", "rank").unique()
    grid = pairs.join(expected, on="rank", how="left").filter(pl.col("pos").is_not_null())
    differ = (pl.col("observed").is_null() | pl.col("expected").is_null()
              | (pl.col("observed") != pl.col("expected")))
    both = observed.join(grid, on=["step", "rank", "pos"], how="full", coalesce=True)
    both = both.filter(differ)
    first = (
        both.sort("step", "rank", "pos")
        .group_by("step", "rank", maintain_order=True)
        .agg(pl.col("pos").first().alias("first_divergence"),
             pl.col("expected").first().alias("expected_op"),
             pl.col("observed").first().alias("observed_op"))
    )
    return pairs.join(first, on=["step", "rank"], how="left").with_columns(
        pl.col("first_divergence").is_null().alias("conforms")
    )


def bubble_table(frames: TraceFrames, *, prep: Prepared | None = None) -> pl.DataFrame:
    """One row per (step, rank): window, busy, bubble and its fraction, theory and
    measured/theory, peak activations vs bound and (when the trace carries the expected
    sequence) the first divergence. Empty when the trace has no schedule ops.

    Columns: step, rank, schedule, pp, n_ops, window_ns, busy_ns, bubble_ns,
    bubble_fraction, t_f_ns, t_b_ns, t_w_ns, t_fb_ns, theory_bubble_ns,
    measured_over_theory, delta_ns, peak_activations, activation_bound, and
    first_divergence / expected_op / observed_op / conforms when available.

    ``prep`` (overlap.prepare): only the schedule ops inside its analysis window
    (see op_table), so the bubble is measured on the same window as the summary.
    """
    ops = op_table(frames, prep=prep)
    if ops.is_empty():
        return pl.DataFrame()
    schedule = ops["schedule"].mode().sort()[0]
    stages = pl.concat([ops["stage"], ops["stage_b"]]).drop_nulls().unique()
    pp = int(stages.len())
    t = mean_durations(ops)
    theory = theory_bubble_ns(schedule, pp, t)
    window = ops.group_by("step").agg(
        (pl.col("end_ns").max() - pl.col("start_ns").min()).alias("window_ns"))
    per_rank = ops.group_by("step", "rank").agg(
        pl.len().cast(pl.Int64).alias("n_ops"), pl.col("dur_ns").sum().alias("busy_ns"))
    out = (
        per_rank.join(window, on="step")
        .with_columns(
            pl.lit(schedule).alias("schedule"),
            pl.lit(pp, dtype=pl.Int64).alias("pp"),
            (pl.col("window_ns") - pl.col("busy_ns")).alias("bubble_ns"),
        )
        .with_columns(
            (pl.col("bubble_ns") / pl.col("window_ns")).alias("bubble_fraction"),
            pl.lit(t["F"]).alias("t_f_ns"), pl.lit(t["B"]).alias("t_b_ns"),
            pl.lit(t["W"]).alias("t_w_ns"), pl.lit(t["FB"]).alias("t_fb_ns"),
            pl.lit(theory, dtype=pl.Float64).alias("theory_bubble_ns"),
        )
        .with_columns(
            pl.when(pl.col("theory_bubble_ns") > 0)
            .then(pl.col("bubble_ns") / pl.col("theory_bubble_ns")).alias("measured_over_theory"),
            (pl.col("bubble_ns") - pl.col("theory_bubble_ns")).alias("delta_ns"),
        )
        .join(activation_pressure(ops), on=["step", "rank"], how="left")
        .with_columns(pl.lit(activation_bound(schedule, pp), dtype=pl.Int64)
                      .alias("activation_bound"))
    )
    expected = expected_sequences(frames.meta)
    if expected.height:
        out = out.join(conformance(ops, expected), on=["step", "rank"], how="left")
    first = ["step", "rank", "schedule", "pp", "n_ops", "window_ns", "busy_ns", "bubble_ns",
             "bubble_fraction"]
    return out.select(*first, pl.exclude(first)).sort("step", "rank")
