"""Stragglers: who arrives late at synchronising collectives, why, and what it costs.

Runs on frames whose ranks share one time axis (see :mod:`skew`:
``correct_frames``). For every synchronising collective instance (matched
across ranks by :func:`skew.collective_instances`), a rank's *arrival* is the
start of its part of the collective. Per row of the ``stragglers`` table
(step, rank, collective):

* ``mean_lateness_ns`` / ``max_lateness_ns``: arrival minus the earliest
  arrival of the instance (how much later than the first rank it entered);
* ``waited_ns``: latest arrival minus own arrival, summed (time this rank
  waited for the last one);
* ``others_waited_ns``: sum over the other participants of
  ``max(0, own arrival - their arrival)``, summed over instances (waiting
  this rank imposed on the ranks that were there before it);
* ``times_last``: instances at which the rank arrived last;
* ``cause_phase`` / ``cause_excess_ns``: among the annotations the rank ran
  between its previous collective and a late arrival, the one whose duration
  exceeds the median of the same phase (numbers in names rolled up, e.g.
  ``mb=3`` -> ``mb=*``) on the other ranks by the most, descending into nested
  annotations while an inner one carries at least half of the excess; summed
  over the rank's last arrivals in the row;
* ``step_ns``: the step's span over all ranks (``ProfilerStep#N`` annotations,
  else the collectives' span); ``whatif_step_ns``: the step time had this rank
  arrived together with the second-latest rank wherever it was last (the step
  minus those gaps, summed over the step's collectives);
* ``straggler``: the rank whose what-if saving is the step's largest and at
  least :data:`STRAGGLER_MIN_SAVING` of the step.
"""

from __future__ import annotations

import re
from typing import Any

import polars as pl

from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.skew import collective_instances

#: A rank is named the step's straggler when removing its lateness would save this share.
STRAGGLER_MIN_SAVING = 0.02
STEP_PATTERN = r"^ProfilerStep#(\d+)$"
#: Annotations that are not phases (steps, library ranges).
NOT_A_PHASE = r"^(ProfilerStep#|gloo:|nccl:|c10d::|record_param_comms|pp_send$|pp_recv$)"

STRAGGLERS_SCHEMA: dict[str, pl.DataType] = {
    "step": pl.Int64,
    "rank": pl.Int32,
    "collective": pl.Utf8,
    "n_collectives": pl.Int64,
    "mean_lateness_ns": pl.Float64,
    "max_lateness_ns": pl.Int64,
    "waited_ns": pl.Int64,
    "others_waited_ns": pl.Int64,
    "times_last": pl.Int64,
    "cause_phase": pl.Utf8,
    "cause_excess_ns": pl.Int64,
    "step_ns": pl.Int64,
    "whatif_step_ns": pl.Int64,
    "straggler": pl.Boolean,
}


def phase_pattern(name: pl.Expr) -> pl.Expr:
    """``dualpipe:F:mb=3:stage=1`` -> ``dualpipe:F:mb=*:stage=*``."""
    return name.str.replace_all(r"(=|#)\d+", "${1}*")


def _steps(frames: TraceFrames) -> pl.DataFrame:
    """Step annotations per rank: rank, step, s_ts, s_end (host ranges)."""
    a = frames.annotations.filter(pl.col("name").str.contains(STEP_PATTERN) & ~pl.col("on_gpu"))
    return a.select(
        "rank", pl.col("name").str.extract(STEP_PATTERN, 1).cast(pl.Int64).alias("step"),
        pl.col("ts_ns").alias("s_ts"), (pl.col("ts_ns") + pl.col("dur_ns")).alias("s_end"),
    ).sort("rank", "s_ts")


def arrivals(frames: TraceFrames, coll: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per (collective instance, rank) with arrival statistics.

    Columns: key, instance, rank, collective, step, start_ns, end_ns, prev_end_ns
    (end of the rank's previous collective, or its step start), lateness_ns,
    waited_ns, others_waited_ns, last (arrived last), saving_ns (last arrival
    minus the second-latest, for the last rank; else 0).
    """
    if coll is None:
        coll = collective_instances(frames)
    if coll.is_empty():
        return pl.DataFrame()
    df = coll.rename({"name": "collective"})
    steps = _steps(frames)
    if steps.height:
        df = df.sort("start_ns").join_asof(
            steps.sort("s_ts"), left_on="start_ns", right_on="s_ts", by="rank",
            strategy="backward", check_sortedness=False)
        df = df.with_columns(pl.when(pl.col("start_ns") <= pl.col("s_end"))
                             .then(pl.col("step")).alias("step"))
        # an instance belongs to the step most of its participants were in
        mode = df.group_by("key", "instance").agg(pl.col("step").drop_nulls().mode().min()
                                                  .alias("_st"))
        df = df.join(mode, on=["key", "instance"]).with_columns(pl.col("_st").alias("step"))
        df = df.drop("_st", "s_end")
    else:
        df = df.with_columns(pl.lit(None, dtype=pl.Int64).alias("step"),
                             pl.lit(None, dtype=pl.Int64).alias("s_ts"))
    inst = ["key", "instance"]
    df = df.sort([*inst, "start_ns", "rank"]).with_columns(
        pl.int_range(pl.len()).over(inst).alias("_pos"),
        (pl.col("start_ns").cum_sum().over(inst) - pl.col("start_ns")).alias("_before"),
    )
    n = pl.len().over(inst)
    df = df.with_columns(
        (pl.col("start_ns") - pl.col("start_ns").min().over(inst)).alias("lateness_ns"),
        (pl.col("start_ns").max().over(inst) - pl.col("start_ns")).alias("waited_ns"),
        (pl.col("_pos") * pl.col("start_ns") - pl.col("_before")).alias("others_waited_ns"),
        (pl.col("_pos") == n - 1).alias("last"),
    )
    second = pl.col("start_ns").sort().over(inst)
    df = df.with_columns(
        pl.when(pl.col("last") & (n > 1))
        .then(pl.col("start_ns") - second.shift(1).over(inst)).otherwise(0)
        .alias("saving_ns"))
    # previous collective end on the same rank (any key), else the step start
    df = df.sort("rank", "start_ns").with_columns(
        pl.col("end_ns").shift(1).over("rank").alias("prev_end_ns"))
    df = df.with_columns(
        pl.when(pl.col("prev_end_ns").is_null()
                | (pl.col("s_ts").is_not_null() & (pl.col("prev_end_ns") < pl.col("s_ts"))))
        .then(pl.col("s_ts")).otherwise(pl.col("prev_end_ns")).alias("prev_end_ns"))
    return df.drop("_pos", "_before", "s_ts")


def _phases(frames: TraceFrames) -> pl.DataFrame:
    """Phase annotations (GPU mirrors when present, else host ranges).

    Columns: rank, name, pattern, ts_ns, end_ns, dur_ns.
    """
    a = frames.annotations.filter(~pl.col("name").str.contains(NOT_A_PHASE))
    if a.filter("on_gpu").height:
        a = a.filter("on_gpu")
    return a.select("rank", "name", phase_pattern(pl.col("name")).alias("pattern"),
                    "ts_ns", (pl.col("ts_ns") + pl.col("dur_ns")).alias("end_ns"),
                    "dur_ns")


def _cause(phases: pl.DataFrame, arr: pl.DataFrame) -> pl.DataFrame:
    """Per last arrival: the phase with the largest excess and that excess (ns)."""
    late = arr.filter(pl.col("last") & (pl.col("saving_ns") > 0))
    if late.is_empty() or phases.is_empty():
        return pl.DataFrame(schema={"key": pl.Utf8, "instance": pl.Int64, "rank": pl.Int32,
                                    "cause_phase": pl.Utf8, "cause_excess_ns": pl.Int64})
    # every rank's phases inside its own window [prev_end, start] of each late instance
    win = arr.join(late.select("key", "instance"), on=["key", "instance"], how="semi").select(
        "key", "instance", "rank", pl.col("prev_end_ns").fill_null(0).alias("w0"),
        pl.col("start_ns").alias("w1"))
    inside = win.join(phases, on="rank").filter(
        (pl.col("end_ns") <= pl.col("w1")) & (pl.col("ts_ns") >= pl.col("w0")))
    out: list[dict[str, Any]] = []
    by_inst = inside.partition_by(["key", "instance"], as_dict=True)
    phases_by_rank = phases.partition_by("rank", as_dict=True)
    for row in late.iter_rows(named=True):
        group = by_inst.get((row["key"], row["instance"]))
        if group is None:
            continue
        mine = group.filter(pl.col("rank") == row["rank"])
        others = group.filter(pl.col("rank") != row["rank"])
        if mine.is_empty():
            continue
        ref = others.group_by("pattern").agg(pl.col("dur_ns").median().alias("ref"))
        mine = mine.join(ref, on="pattern", how="left")
        if mine["ref"].null_count():
            # a phase the others did not run in this window: compare with all their runs of it
            pool = pl.concat([v for (r,), v in phases_by_rank.items() if r != row["rank"]]) \
                if len(phases_by_rank) > 1 else phases.head(0)
            allref = pool.group_by("pattern").agg(pl.col("dur_ns").median().alias("ref2"))
            mine = mine.join(allref, on="pattern", how="left").with_columns(
                pl.coalesce("ref", "ref2").alias("ref")).drop("ref2")
        mine = mine.filter(pl.col("ref").is_not_null()).with_columns(
            (pl.col("dur_ns") - pl.col("ref")).alias("excess"))
        if mine.is_empty():
            continue
        cands = mine.sort("excess", descending=True).to_dicts()
        best = cands[0]
        while True:
            inner = [c for c in cands if c is not best and c["ts_ns"] >= best["ts_ns"]
                     and c["end_ns"] <= best["end_ns"] and c["dur_ns"] < best["dur_ns"]
                     and c["excess"] >= 0.5 * best["excess"]]
            if not inner:
                break
            best = max(inner, key=lambda c: c["excess"])
        if best["excess"] > 0:
            out.append({"key": row["key"], "instance": row["instance"], "rank": row["rank"],
                        "cause_phase": best["name"], "cause_excess_ns": int(best["excess"])})
    schema = {"key": pl.Utf8, "instance": pl.Int64, "rank": pl.Int32, "cause_phase": pl.Utf8,
              "cause_excess_ns": pl.Int64}
    return pl.DataFrame(out, schema=schema)


def _step_spans(frames: TraceFrames, arr: pl.DataFrame) -> pl.DataFrame:
    steps = _steps(frames)
    if steps.height:
        return steps.group_by("step").agg((pl.col("s_end").max() - pl.col("s_ts").min())
                                          .alias("step_ns"))
    return arr.group_by("step").agg((pl.col("end_ns").max() - pl.col("start_ns").min())
                                    .alias("step_ns"))


def straggler_table(frames: TraceFrames, coll: pl.DataFrame | None = None) -> pl.DataFrame | str:
    """The ``stragglers`` table (STRAGGLERS_SCHEMA) of frames on one time axis.

    Returns a reason string when no synchronising collective is matched across ranks.
    """
    arr = arrivals(frames, coll)
    if arr.is_empty():
        return "no synchronising collective matched across ranks (nothing to arrive late at)"
    cause = _cause(_phases(frames), arr)
    arr = arr.join(cause, on=["key", "instance", "rank"], how="left")
    keys = ["step", "rank", "collective"]
    per_cause = (arr.filter(pl.col("cause_phase").is_not_null())
                 .group_by([*keys, "cause_phase"]).agg(pl.col("cause_excess_ns").sum())
                 .sort([*keys, "cause_excess_ns"], descending=[False, False, False, True],
                       nulls_last=True)
                 .group_by(keys, maintain_order=True).first())
    rows = arr.group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("n_collectives"),
        pl.col("lateness_ns").mean().alias("mean_lateness_ns"),
        pl.col("lateness_ns").max().alias("max_lateness_ns"),
        pl.col("waited_ns").sum(),
        pl.col("others_waited_ns").sum(),
        pl.col("last").sum().cast(pl.Int64).alias("times_last"),
    ).join(per_cause, on=keys, how="left", nulls_equal=True)
    saving = arr.group_by("step", "rank").agg(pl.col("saving_ns").sum().alias("_save"))
    spans = _step_spans(frames, arr)
    rows = (rows.join(saving, on=["step", "rank"], how="left", nulls_equal=True)
            .join(spans, on="step", how="left", nulls_equal=True)
            .with_columns((pl.col("step_ns") - pl.col("_save")).clip(lower_bound=0)
                          .alias("whatif_step_ns")))
    best = pl.col("_save") == pl.col("_save").max().over("step")
    rows = rows.with_columns(
        (best & (pl.col("_save") > 0)
         & (pl.col("_save") >= STRAGGLER_MIN_SAVING * pl.col("step_ns"))).alias("straggler"))
    return (rows.select(list(STRAGGLERS_SCHEMA)).cast(STRAGGLERS_SCHEMA)
            .sort("step", "rank", "collective", nulls_last=True))


def named_stragglers(table: pl.DataFrame) -> list[tuple[int | None, int, str | None]]:
    """(step, rank, phase) of every step's straggler, the phase with the most excess."""
    if isinstance(table, str) or table.is_empty():
        return []
    s = table.filter("straggler")
    out = []
    for (step, rank), g in s.group_by("step", "rank", maintain_order=True):
        g = g.filter(pl.col("cause_phase").is_not_null())
        phase = (g.group_by("cause_phase").agg(pl.col("cause_excess_ns").sum())
                 .sort("cause_excess_ns", descending=True)["cause_phase"][0]
                 if g.height else None)
        out.append((step, int(rank), phase))
    return sorted(out, key=lambda t: (t[0] is None, t[0] or 0, t[1]))


def precision_recall(named: list[tuple[Any, int, str | None]],
                     injected: dict[str, Any]) -> dict[str, float | None]:
    """Precision / recall of named (rank, phase) against ``inject["delay"]``.

    A name is correct when its rank and phase equal the injected ones (numbers in
    phase names rolled up: ``forward:mb=3`` matches ``forward:mb=*``).
    """
    delay = (injected or {}).get("delay") or {}
    want = (int(delay["rank"]), str(delay.get("phase"))) if "rank" in delay else None
    def roll(phase: str | None) -> str | None:
        return None if phase is None else re.sub(r"(=|#)\d+", r"\1*", phase)

    got = [(r, roll(p)) for _s, r, p in named]
    correct = sum(1 for g in got if want and g[0] == want[0] and g[1] == roll(want[1]))
    precision = correct / len(got) if got else None
    recall = (1.0 if correct else 0.0) if want else None
    return {"precision": precision, "recall": recall, "named": float(len(got)),
            "correct": float(correct)}
