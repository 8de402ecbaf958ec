"""Stragglers: who arrives late at collectives or sends late to a waiting peer, why, and
what it costs.

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
* ``cause_phase`` / ``cause_excess_ns``: among the annotations that ended on the
  rank between its previous collective's end and a late arrival (they may have
  started earlier, overlapping that collective, as compute overlaps comm; the
  previous collective may lie in the previous step), the one whose duration
  exceeds the median of the same phase (numbers in names rolled up, e.g.
  ``mb=3`` -> ``mb=*``) on the other ranks by the most, descending into nested
  annotations while an inner one carries at least half of the excess; summed
  over the rank's last arrivals in the row; ``cause_wait_ns``: the waiting it
  explains (the what-if saving of those arrivals); a row names the cause that
  explains the most waiting, then the most excess;
* ``step_ns``: the step's span over all ranks (``ProfilerStep#N`` annotations,
  else the collectives' span); ``whatif_step_ns``: the step time had this rank
  arrived together with the second-latest rank wherever it was last (the step
  minus those gaps, summed over the step's collectives);
* ``straggler``: the rank whose what-if saving is the step's largest and at
  least :data:`STRAGGLER_MIN_SAVING` of the step.

Point-to-point messages (gloo send -> receive, matched by :func:`skew.p2p_pairs`)
are read too: pipelines and expert-parallel exchanges may have no synchronising
collective at all. Per message from A to B (see :func:`p2p_waits`):

* B is *ready* when its receiving thread has nothing left to do: the last end,
  before the receive's end, of a host op or phase on that thread (at least the
  receive op's own end). A receive's end is when its thread waited for it, so
  a receive posted early and waited for only when needed counts from then;
* ``imposed``: ``min(send start, receive end) - ready`` (>= 0): B was blocked
  because A had not sent yet;
* ``inherited``: the part of ``[ready, send start]`` during which A was itself
  blocked in one of its own receives (any thread): A was late because someone
  else was; ``own = imposed - inherited``;
* the cause is searched as for collectives, among A's phases that ended in
  ``(min(A's previous send start or receive end, ready), send start]``, against
  the median over the other ranks of their per-rank median of the phase; the
  message's *saving* is ``min(own, that excess)``: a wait counts only as far as
  a phase ran longer than on the other ranks, so the normal dependency waits of
  a pipeline (a stage waiting for the previous one) name nobody.

Rows ``p2p:send:to=B`` (on A) and ``p2p:recv:from=A`` (on B) per step (the
sender's step): ``n_collectives`` = messages; lateness = ``max(0, send start -
ready)`` on the send row and ``max(0, ready - send start)`` on the receive row;
``waited_ns`` (receive rows) and ``others_waited_ns`` (send rows) = ``imposed``
summed; ``times_last`` = sends that B blocked on; ``cause_*`` as above, each
annotation counted once per row. A rank's p2p saving in a step is the length of
the union of ``[send start - saving, send start]`` over its sends (two ranks
waiting on the same late stretch count it once), added to its collective saving.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import polars as pl

from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.skew import RECV_OP, collective_instances, p2p_pairs

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
    "cause_wait_ns": pl.Int64,
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
    (end of the rank's previous collective, in any step; its step start for the
    rank's first collective), lateness_ns,
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
    # previous collective end on the same rank (any key, any step: the tail of the
    # previous step delays the first arrival of the next), else the step start
    df = df.sort("rank", "start_ns").with_columns(
        pl.col("end_ns").shift(1).over("rank").alias("prev_end_ns"))
    df = df.with_columns(pl.coalesce("prev_end_ns", "s_ts").alias("prev_end_ns"))
    return df.drop("_pos", "_before", "s_ts")


def _phases(frames: TraceFrames) -> pl.DataFrame:
    """Phase annotations (GPU mirrors when present, else host ranges).

    Columns: rank, tid, name, pattern, ts_ns, end_ns, dur_ns.
    """
    a = frames.annotations.filter(~pl.col("name").str.contains(NOT_A_PHASE))
    if a.filter("on_gpu").height:
        a = a.filter("on_gpu")
    return a.select("rank", "tid", "name", phase_pattern(pl.col("name")).alias("pattern"),
                    "ts_ns", (pl.col("ts_ns") + pl.col("dur_ns")).alias("end_ns"),
                    "dur_ns")


def _cause(phases: pl.DataFrame, arr: pl.DataFrame) -> pl.DataFrame:
    """Per last arrival: the phase with the largest excess and that excess (ns)."""
    late = arr.filter(pl.col("last") & (pl.col("saving_ns") > 0))
    if late.is_empty() or phases.is_empty():
        return pl.DataFrame(schema={"key": pl.Utf8, "instance": pl.Int64, "rank": pl.Int32,
                                    "cause_phase": pl.Utf8, "cause_excess_ns": pl.Int64})
    # every rank's phases that ended in its own window (prev_end, start] of each late
    # instance: what it was still busy with after its previous collective ended
    win = arr.join(late.select("key", "instance"), on=["key", "instance"], how="semi").select(
        "key", "instance", "rank", pl.col("prev_end_ns").fill_null(0).alias("w0"),
        pl.col("start_ns").alias("w1"))
    inside = win.join(phases, on="rank").filter(
        (pl.col("end_ns") <= pl.col("w1")) & (pl.col("end_ns") > pl.col("w0")))
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


def _union_length(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the union of intervals [a_i, b_i]."""
    if not len(a):
        return 0
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    reach = np.maximum.accumulate(b)
    # an interval adds what sticks out beyond everything before it
    prev = np.concatenate([[np.iinfo(np.int64).min], reach[:-1]])
    return int(np.clip(b - np.maximum(a, prev), 0, None).sum())


def _covered(starts: np.ndarray, ends: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Measure of the union of disjoint sorted intervals that lies before each x."""
    if not len(starts):
        return np.zeros(len(x), np.int64)
    cum = np.concatenate([[0], np.cumsum(ends - starts)])
    i = np.searchsorted(starts, x, side="right")  # intervals starting at or before x
    last = np.clip(i - 1, 0, None)
    part = np.where(i > 0, np.clip(np.minimum(x, ends[last]) - starts[last], 0, None), 0)
    return cum[last] * (i > 0) + part


def _merge(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted union of intervals [a_i, b_i]."""
    order = np.argsort(a, kind="stable")
    out_a: list[int] = []
    out_b: list[int] = []
    for x, y in zip(a[order].tolist(), b[order].tolist(), strict=True):
        if out_b and x <= out_b[-1]:
            out_b[-1] = max(out_b[-1], y)
        elif y > x:
            out_a.append(x)
            out_b.append(y)
    return np.asarray(out_a, np.int64), np.asarray(out_b, np.int64)


def _ready(frames: TraceFrames, pairs: pl.DataFrame) -> pl.DataFrame:
    """Pairs with ``ready_ns``: when the receiving thread had nothing left to do."""
    recv_ops = frames.cpu_ops.filter(pl.col("name") == RECV_OP).select(
        pl.col("rank").alias("dst_rank"), pl.col("ts_ns").alias("recv_start_ns"), "tid",
        (pl.col("ts_ns") + pl.col("dur_ns")).alias("op_end"),
    ).unique(["dst_rank", "recv_start_ns"], keep="first")
    df = pairs.join(recv_ops, on=["dst_rank", "recv_start_ns"], how="left")
    df = df.with_columns(pl.coalesce("op_end", "recv_start_ns").alias("op_end"))
    busy = pl.concat([
        frames.cpu_ops.filter(~pl.col("name").str.starts_with("c10d::"))
        .select("rank", "tid", (pl.col("ts_ns") + pl.col("dur_ns")).alias("b_end")),
        frames.annotations.filter(~pl.col("on_gpu") & ~pl.col("name").str.contains(NOT_A_PHASE))
        .select("rank", "tid", (pl.col("ts_ns") + pl.col("dur_ns")).alias("b_end")),
    ]).rename({"rank": "dst_rank"}).sort("b_end")
    # the thread's last piece of work that ended before the receive did
    df = df.sort("recv_end_ns").join_asof(
        busy, left_on="recv_end_ns", right_on="b_end", by=["dst_rank", "tid"],
        strategy="backward", check_sortedness=False)
    return df.with_columns(
        pl.max_horizontal("op_end", pl.coalesce("b_end", "op_end")).alias("ready_ns")
    ).rename({"tid": "recv_tid"}).drop("op_end", "b_end")


def p2p_waits(frames: TraceFrames, pairs: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row per matched message with who waited for whom (module docstring).

    Columns: src_rank, dst_rank, tag, seq, step (the sender's), send_start_ns,
    recv_end_ns, ready_ns, imposed_ns, inherited_ns, own_ns, w0_ns (the start of the
    sender's cause window), recv_tid (the receiving thread).
    """
    if pairs is None:
        pairs = p2p_pairs(frames)
    if pairs.is_empty():
        return pl.DataFrame()
    df = _ready(frames, pairs).with_columns(
        (pl.min_horizontal("send_start_ns", "recv_end_ns") - pl.col("ready_ns"))
        .clip(lower_bound=0).alias("imposed_ns"))
    steps = _steps(frames)
    if steps.height:
        df = df.sort("send_start_ns").join_asof(
            steps.rename({"rank": "src_rank"}).sort("s_ts"), left_on="send_start_ns",
            right_on="s_ts", by="src_rank", strategy="backward", check_sortedness=False)
        df = df.with_columns(pl.when(pl.col("send_start_ns") <= pl.col("s_end"))
                             .then(pl.col("step")).alias("step")).drop("s_end")
    else:
        df = df.with_columns(pl.lit(None, dtype=pl.Int64).alias("step"),
                             pl.lit(None, dtype=pl.Int64).alias("s_ts"))
    df = df.sort("src_rank", "send_start_ns", "dst_rank", "tag", "seq")
    src = df["src_rank"].to_numpy()
    send = df["send_start_ns"].to_numpy()
    ready = df["ready_ns"].to_numpy()
    inherited = np.zeros(df.height, np.int64)
    w0 = np.minimum(ready, df["s_ts"].fill_null(np.iinfo(np.int64).max).to_numpy())
    for r in np.unique(src):
        mine = np.flatnonzero(src == r)
        as_dst = df.filter(pl.col("dst_rank") == int(r))
        # blocked: [ready, end] of every receive of the sender, any thread
        bs, be = _merge(as_dst["ready_ns"].to_numpy(), as_dst["recv_end_ns"].to_numpy())
        a, b = ready[mine], np.maximum(send[mine], ready[mine])
        inherited[mine] = _covered(bs, be, b) - _covered(bs, be, a)
        # the sender's previous communication: its other sends' starts, receives' ends
        ev = np.sort(np.concatenate([send[mine], as_dst["recv_end_ns"].to_numpy()]))
        i = np.searchsorted(ev, send[mine], side="left") - 1
        prev = np.where(i >= 0, ev[np.clip(i, 0, None)], w0[mine])
        w0[mine] = np.minimum(prev, ready[mine])
    return df.with_columns(
        pl.Series("inherited_ns", inherited),
        (pl.col("imposed_ns") - pl.Series(inherited)).clip(lower_bound=0).alias("own_ns"),
        pl.Series("w0_ns", w0),
    ).select("src_rank", "dst_rank", "tag", "seq", "step", "send_start_ns", "recv_end_ns",
             "ready_ns", "imposed_ns", "inherited_ns", "own_ns", "w0_ns", "recv_tid")


def _busy(phases: pl.DataFrame, msgs: pl.DataFrame) -> pl.DataFrame:
    """Phases with ``busy_ns``: duration less the time their thread was blocked in a receive."""
    busy = phases["dur_ns"].to_numpy().copy()
    blocked = msgs.filter(pl.col("recv_tid").is_not_null()).partition_by(
        "dst_rank", "recv_tid", as_dict=True)
    for (rank, tid), g in blocked.items():
        idx = np.flatnonzero(((phases["rank"] == rank) & (phases["tid"] == tid)).to_numpy())
        if not len(idx):
            continue
        bs, be = _merge(g["ready_ns"].to_numpy(), g["recv_end_ns"].to_numpy())
        t0, t1 = phases["ts_ns"].to_numpy()[idx], phases["end_ns"].to_numpy()[idx]
        busy[idx] -= _covered(bs, be, t1) - _covered(bs, be, t0)
    return phases.with_columns(pl.Series("busy_ns", busy))


def _reference(frames: TraceFrames, phases: pl.DataFrame, msgs: pl.DataFrame) -> pl.DataFrame:
    """Phases with ``excess``: busy time minus the same phase's median on the other ranks.

    Busy time leaves out the phase's thread's blocked receives (a phase that waited
    for a late peer is not slow itself). The median is over the other ranks' runs of
    the phase in the same step (the step whose range holds the phase's start), else
    over all their runs: a slow step (warm-up, a noisy neighbour) slows every rank
    and is no one's fault.
    """
    steps = _steps(frames)
    ph = _busy(phases, msgs).sort("ts_ns")
    if steps.height:
        ph = ph.join_asof(steps.drop("s_end").sort("s_ts"), left_on="ts_ns", right_on="s_ts",
                          by="rank", strategy="backward", check_sortedness=False).drop("s_ts")
    else:
        ph = ph.with_columns(pl.lit(None, dtype=pl.Int64).alias("step"))
    ranks = ph.select(pl.col("rank").unique().alias("_me"))

    def others(keys: list[str], name: str) -> pl.DataFrame:
        # every rank x every run of the pattern on another rank
        return (ranks.join(ph.select(*keys, "rank", "busy_ns"), how="cross")
                .filter(pl.col("rank") != pl.col("_me"))
                .group_by("_me", *keys).agg(pl.col("busy_ns").median().alias(name))
                .rename({"_me": "rank"}))

    ph = (ph.join(others(["step", "pattern"], "_ref_step"), on=["rank", "step", "pattern"],
                  how="left", nulls_equal=True)
          .join(others(["pattern"], "_ref_all"), on=["rank", "pattern"], how="left"))
    ref = pl.coalesce("_ref_step", "_ref_all")
    return (ph.filter(ref.is_not_null())
            .with_columns((pl.col("busy_ns") - ref).alias("excess"))
            .drop("_ref_step", "_ref_all"))


def _p2p_causes(frames: TraceFrames, phases: pl.DataFrame, msgs: pl.DataFrame) -> pl.DataFrame:
    """Per message with own waiting: the cause phase, its excess, its id and the saving."""
    schema = {"i": pl.Int64, "cause_phase": pl.Utf8, "cause_excess_ns": pl.Int64,
              "cause_id": pl.Int64, "saving_ns": pl.Int64, "late_end_ns": pl.Int64,
              "late_step": pl.Int64}
    late = msgs.with_row_index("i").filter(pl.col("own_ns") > 0)
    if late.is_empty() or phases.is_empty():
        return pl.DataFrame(schema=schema)
    ph = _reference(frames, phases, msgs).sort("rank", "end_ns").with_row_index("pid")
    by_rank = {int(r): g for (r,), g in ph.partition_by("rank", as_dict=True).items()}
    out: list[dict[str, Any]] = []
    for row in late.iter_rows(named=True):
        g = by_rank.get(int(row["src_rank"]))
        if g is None:
            continue
        end = g["end_ns"].to_numpy()
        lo = np.searchsorted(end, row["w0_ns"], side="right")
        hi = np.searchsorted(end, row["send_start_ns"], side="right")
        if hi <= lo:
            continue
        exc = g["excess"].to_numpy()
        k = int(lo + np.argmax(exc[lo:hi]))
        top, top_end, top_step = float(exc[k]), int(end[k]), g["step"][k]
        if top <= 0:
            continue
        ts, du = g["ts_ns"].to_numpy(), g["dur_ns"].to_numpy()
        # descend into annotations nested in it (anywhere) carrying half of its excess
        while True:
            inner = np.flatnonzero((ts >= ts[k]) & (end <= end[k]) & (du < du[k])
                                   & (exc >= 0.5 * exc[k]))
            if not len(inner):
                break
            k = int(inner[np.argmax(exc[inner])])
        out.append({"i": row["i"], "cause_phase": g["name"][k],
                    "cause_excess_ns": int(exc[k]), "cause_id": int(g["pid"][k]),
                    "saving_ns": int(min(row["own_ns"], top)), "late_end_ns": top_end,
                    "late_step": top_step})
    return pl.DataFrame(out, schema=schema)


def _p2p_rows(frames: TraceFrames, phases: pl.DataFrame,
              msgs: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(send and receive rows, per (step, rank) saving) of the p2p messages."""
    cause = _p2p_causes(frames, phases, msgs)
    m = msgs.with_row_index("i").join(cause, on="i", how="left").with_columns(
        pl.col("saving_ns").fill_null(0))
    late = pl.col("send_start_ns") - pl.col("ready_ns")
    send = m.select("step", pl.col("src_rank").alias("rank"),
                    (pl.lit("p2p:send:to=") + pl.col("dst_rank").cast(pl.Utf8)).alias("collective"),
                    late.clip(lower_bound=0).alias("lateness_ns"), pl.lit(0).alias("waited_ns"),
                    pl.col("imposed_ns").alias("others_waited_ns"),
                    (pl.col("imposed_ns") > 0).alias("last"),
                    "cause_phase", "cause_excess_ns", "cause_id",
                    pl.col("saving_ns").alias("cause_wait_ns"))
    recv = m.select("step", pl.col("dst_rank").alias("rank"),
                    (pl.lit("p2p:recv:from=") + pl.col("src_rank").cast(pl.Utf8))
                    .alias("collective"),
                    (-late).clip(lower_bound=0).alias("lateness_ns"),
                    pl.col("imposed_ns").alias("waited_ns"), pl.lit(0).alias("others_waited_ns"),
                    pl.lit(False).alias("last"), pl.lit(None, dtype=pl.Utf8).alias("cause_phase"),
                    pl.lit(None, dtype=pl.Int64).alias("cause_excess_ns"),
                    pl.lit(None, dtype=pl.Int64).alias("cause_id"),
                    pl.lit(None, dtype=pl.Int64).alias("cause_wait_ns"))
    both = pl.concat([send, recv], how="vertical_relaxed")
    keys = ["step", "rank", "collective"]
    # an annotation that made several messages of a row late counts once (the messages
    # of one batch wait together)
    per_cause = _top_cause(
        both.filter(pl.col("cause_phase").is_not_null())
        .group_by([*keys, "cause_id", "cause_phase"])
        .agg(pl.col("cause_excess_ns").first(), pl.col("cause_wait_ns").max()), keys)
    rows = both.group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("n_collectives"),
        pl.col("lateness_ns").mean().alias("mean_lateness_ns"),
        pl.col("lateness_ns").max().alias("max_lateness_ns"),
        pl.col("waited_ns").sum(), pl.col("others_waited_ns").sum(),
        pl.col("last").sum().cast(pl.Int64).alias("times_last"),
    ).join(per_cause, on=keys, how="left", nulls_equal=True)
    saved = m.filter(pl.col("saving_ns") > 0)
    # the late stretch sits at the end of the slow phase, in the phase's step: messages
    # it delayed through other ranks (a chain that comes back, the next step's first
    # send) count it once
    save = [{"step": step, "rank": int(rank), "_save": _union_length(
        (g["late_end_ns"] - g["saving_ns"]).to_numpy(), g["late_end_ns"].to_numpy())}
        for (step, rank), g in saved.group_by("late_step", "src_rank")]
    return rows, pl.DataFrame(save, schema={"step": pl.Int64, "rank": pl.Int32,
                                            "_save": pl.Int64})


def _step_spans(frames: TraceFrames, spans: list[pl.DataFrame]) -> pl.DataFrame:
    steps = _steps(frames)
    if steps.height:
        return steps.group_by("step").agg((pl.col("s_end").max() - pl.col("s_ts").min())
                                          .alias("step_ns"))
    ev = pl.concat(spans, how="vertical_relaxed")
    return ev.group_by("step").agg((pl.col("end_ns").max() - pl.col("start_ns").min())
                                   .alias("step_ns"))


def _top_cause(causes: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per row: the cause phase that explains the most waiting (then the most excess)."""
    return (causes.group_by([*keys, "cause_phase"])
            .agg(pl.col("cause_excess_ns").sum(), pl.col("cause_wait_ns").sum())
            .sort([*keys, "cause_wait_ns", "cause_excess_ns", "cause_phase"],
                  descending=[False, False, False, True, True, False], nulls_last=True)
            .group_by(keys, maintain_order=True).first())


def _collective_rows(frames: TraceFrames, arr: pl.DataFrame,
                     phases: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows, per (step, rank) saving) of the synchronising collectives."""
    cause = _cause(phases, arr)
    arr = arr.join(cause, on=["key", "instance", "rank"], how="left")
    keys = ["step", "rank", "collective"]
    per_cause = _top_cause(arr.filter(pl.col("cause_phase").is_not_null())
                           .with_columns(pl.col("saving_ns").alias("cause_wait_ns")), keys)
    rows = arr.group_by(keys).agg(
        pl.len().cast(pl.Int64).alias("n_collectives"),
        pl.col("lateness_ns").mean().alias("mean_lateness_ns"),
        pl.col("lateness_ns").max().alias("max_lateness_ns"),
        pl.col("waited_ns").sum(),
        pl.col("others_waited_ns").sum(),
        pl.col("last").sum().cast(pl.Int64).alias("times_last"),
    ).join(per_cause, on=keys, how="left", nulls_equal=True)
    saving = arr.group_by("step", "rank").agg(pl.col("saving_ns").sum().alias("_save"))
    return rows, saving


def straggler_table(frames: TraceFrames, coll: pl.DataFrame | None = None) -> pl.DataFrame | str:
    """The ``stragglers`` table (STRAGGLERS_SCHEMA) of frames on one time axis.

    Returns a reason string when neither a synchronising collective nor a send/receive
    pair is matched across ranks.
    """
    arr = arrivals(frames, coll)
    msgs = p2p_waits(frames)
    if arr.is_empty() and msgs.is_empty():
        return ("no synchronising collective or send/receive pair matched across ranks "
                "(nothing to arrive late at)")
    phases = _phases(frames)
    rows, saves, spans = [], [], []
    if not arr.is_empty():
        r, sv = _collective_rows(frames, arr, phases)
        rows.append(r)
        saves.append(sv)
        spans.append(arr.select("step", "start_ns", "end_ns"))
    if not msgs.is_empty():
        r, sv = _p2p_rows(frames, phases, msgs)
        rows.append(r)
        saves.append(sv)
        spans.append(msgs.select("step", pl.col("send_start_ns").alias("start_ns"),
                                 pl.col("recv_end_ns").alias("end_ns")))
    cols = list(STRAGGLERS_SCHEMA)[:12]
    table = pl.concat([r.select(cols).cast({c: STRAGGLERS_SCHEMA[c] for c in cols})
                       for r in rows])
    saving = (pl.concat([s.cast({"step": pl.Int64, "rank": pl.Int32, "_save": pl.Int64})
                         for s in saves])
              .group_by("step", "rank").agg(pl.col("_save").sum()))
    table = (table.join(saving, on=["step", "rank"], how="left", nulls_equal=True)
             .with_columns(pl.col("_save").fill_null(0))
             .join(_step_spans(frames, spans), on="step", how="left", nulls_equal=True)
             .with_columns((pl.col("step_ns") - pl.col("_save")).clip(lower_bound=0)
                           .alias("whatif_step_ns")))
    best = pl.col("_save") == pl.col("_save").max().over("step")
    table = table.with_columns(
        (best & (pl.col("_save") > 0)
         & (pl.col("_save") >= STRAGGLER_MIN_SAVING * pl.col("step_ns"))).alias("straggler"))
    return (table.select(list(STRAGGLERS_SCHEMA)).cast(STRAGGLERS_SCHEMA)
            .sort("step", "rank", "collective", nulls_last=True))


def named_stragglers(table: pl.DataFrame) -> list[tuple[int | None, int, str | None]]:
    """(step, rank, phase) of every step's straggler; the phase explains the most waiting."""
    if isinstance(table, str) or table.is_empty():
        return []
    s = table.filter("straggler")
    out = []
    for (step, rank), g in s.group_by("step", "rank", maintain_order=True):
        g = g.filter(pl.col("cause_phase").is_not_null())
        phase = (g.group_by("cause_phase").agg(pl.col("cause_wait_ns").sum(),
                                                 pl.col("cause_excess_ns").sum())
                 .sort("cause_wait_ns", "cause_excess_ns", "cause_phase",
                       descending=[True, True, False])["cause_phase"][0]
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
