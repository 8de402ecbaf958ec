"""Ring full / empty fractions, from occupancy counters or inferred from waits.

With counters (``ph:"C"`` events named ``ring <kind> c<channel> <peer>``, series
``occupancy``) each sample holds until the next one; the last holds until the
rank's last warp event. A ring is *empty* at occupancy <= 0 and *full* at
occupancy >= its capacity (argument, or ``meta["overlapscope"]["workload"]
["ring_capacity"]``, an int or ``{kind: int}`` in occupancy units, or the
emulator's ``workload.config.rdma_slots`` / ``nvl_slots``); without a capacity
``full_frac`` is null.

Without counters the fractions are inferred from the waits around each ring kind
(peer ``"*"``: all rings of that kind in the channel): the RDMA ring is full
while a sender waits for space (``*head*`` waits of the send stage) and empty
while a forwarder waits for data (``*tail*`` waits of the forward stage); the NVL
ring likewise between forwarders and receivers. The fraction is the length of
the *union* of those wait intervals over the channel's window (first to last
event of the two roles), i.e. the share of time at least one ring of that kind
was full (or empty) for some warp: an upper bound when a channel has many rings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from overlapscope.analyzers.warps.roles import kernel_spans, role_stage

RINGS_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "kind": pl.Utf8,
    "channel": pl.Int32,
    "peer": pl.Utf8,
    "source": pl.Utf8,
    "window_ns": pl.Int64,
    "full_frac": pl.Float64,
    "empty_frac": pl.Float64,
    "mean_occupancy": pl.Float64,
    "max_occupancy": pl.Float64,
}

#: ring kind -> (producer stage, consumer stage)
RING_STAGES: dict[str, tuple[str, str]] = {
    "rdma": ("send", "forward"),
    "nvl": ("forward", "receive"),
}

_RING_NAME = r"^ring (\w+) c(\d+) (.+)$"


def ring_capacity_from(meta: Mapping[str, Any] | None, capacity: int | Mapping[str, int] | None
                       ) -> dict[str, int]:
    """Ring capacity per kind: the argument, else the trace's workload meta
    (``ring_capacity``, or the emulator's ``config.rdma_slots`` / ``config.nvl_slots``),
    else {} (unknown)."""
    workload = ((meta or {}).get("overlapscope") or {}).get("workload") or {}
    if capacity is None:
        capacity = workload.get("ring_capacity")
    if capacity is None:
        config = workload.get("config") or {}
        slots = {k: config.get(f"{k}_slots") for k in RING_STAGES}
        capacity = {k: v for k, v in slots.items() if isinstance(v, int)} or None
    if capacity is None:
        return {}
    if isinstance(capacity, int | float):
        return {k: int(capacity) for k in RING_STAGES}
    return {str(k): int(v) for k, v in capacity.items()}


def union_length(intervals: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Per ``keys`` group, total length (ns) of the union of ``[ts_ns, ts_ns + dur_ns)``.

    Returns ``keys + ["union_ns"]``. Sort, then open a new segment whenever an
    interval starts after the running maximum end of the earlier ones.
    """
    if intervals.height == 0:
        return intervals.select(*keys).with_columns(union_ns=pl.lit(0, dtype=pl.Int64)).head(0)
    seg = (
        intervals.select(*keys, "ts_ns", end_ns=pl.col("ts_ns") + pl.col("dur_ns"))
        .sort(*keys, "ts_ns")
        .with_columns(prev_end=pl.col("end_ns").cum_max().shift(1).over(keys))
        .with_columns(
            seg=(pl.col("prev_end").is_null() | (pl.col("ts_ns") > pl.col("prev_end")))
            .cast(pl.Int64).cum_sum().over(keys)
        )
        .group_by(*keys, "seg")
        .agg(s=pl.col("ts_ns").min(), e=pl.col("end_ns").max())
    )
    return seg.group_by(keys).agg(union_ns=(pl.col("e") - pl.col("s")).sum())


def rings_from_counters(counters: pl.DataFrame, warp_events: pl.DataFrame,
                        capacity: Mapping[str, int]) -> pl.DataFrame:
    """Time-weighted full/empty fractions per ring from occupancy counter samples."""
    c = counters.filter(pl.col("name").str.contains(_RING_NAME), pl.col("series") == "occupancy")
    if c.height == 0:
        return pl.DataFrame(schema=RINGS_SCHEMA)
    parts = pl.col("name").str.extract_groups(_RING_NAME)
    c = c.with_columns(
        kind=parts.struct.field("1"),
        channel=parts.struct.field("2").cast(pl.Int32),
        peer=parts.struct.field("3"),
    )
    keys = ["rank", "kind", "channel", "peer"]
    spans = kernel_spans(warp_events).select("rank", "span_end_ns")
    cap = pl.DataFrame({"kind": list(capacity), "capacity": [float(v) for v in capacity.values()]},
                       schema={"kind": pl.Utf8, "capacity": pl.Float64})
    timed = (
        c.sort(*keys, "ts_ns")
        .join(spans, on="rank", how="left")
        .with_columns(next_ts=pl.col("ts_ns").shift(-1).over(keys))
        .with_columns(
            hold_ns=(pl.col("next_ts").fill_null(pl.max_horizontal("ts_ns", "span_end_ns"))
                     .fill_null(pl.col("ts_ns")) - pl.col("ts_ns"))
        )
        .join(cap, on="kind", how="left")
    )
    w = pl.col("hold_ns")
    out = timed.group_by(keys).agg(
        window_ns=w.sum(),
        full_ns=w.filter(pl.col("value") >= pl.col("capacity")).sum(),
        has_cap=pl.col("capacity").is_not_null().all(),
        empty_ns=w.filter(pl.col("value") <= 0).sum(),
        occ_ns=(pl.col("value") * w).sum(),
        max_occupancy=pl.col("value").max(),
    )
    win = pl.col("window_ns").cast(pl.Float64)
    return out.with_columns(
        source=pl.lit("counters"),
        full_frac=pl.when(pl.col("has_cap") & (win > 0)).then(pl.col("full_ns") / win),
        empty_frac=pl.when(win > 0).then(pl.col("empty_ns") / win),
        mean_occupancy=pl.when(win > 0).then(pl.col("occ_ns") / win),
    ).select([pl.col(k).cast(t) for k, t in RINGS_SCHEMA.items()]).sort(keys)


def rings_inferred(warp_events: pl.DataFrame) -> pl.DataFrame:
    """Full/empty fractions per (rank, ring kind, channel) inferred from wait reasons."""
    roles = warp_events["role"].unique().to_list()
    stage_of = {r: role_stage(r) for r in roles}
    ev = warp_events.with_columns(
        stage=pl.col("role").replace_strict(stage_of, return_dtype=pl.Utf8, default="other")
    )
    frames = []
    for kind, (producer, consumer) in RING_STAGES.items():
        pair = ev.filter(pl.col("stage").is_in([producer, consumer]))
        if pair.height == 0 or pair["stage"].n_unique() < 2:
            continue  # a ring needs both of its roles in the trace
        keys = ["rank", "channel"]
        window = pair.group_by(keys).agg(
            window_ns=(pl.col("ts_ns") + pl.col("dur_ns")).max() - pl.col("ts_ns").min())
        full = union_length(pair.filter(pl.col("stage") == producer,
                                        pl.col("state").str.starts_with("wait"),
                                        pl.col("state").str.contains("head")), keys)
        empty = union_length(pair.filter(pl.col("stage") == consumer,
                                         pl.col("state").str.starts_with("wait"),
                                         pl.col("state").str.contains("tail")), keys)
        win = pl.col("window_ns").cast(pl.Float64)
        frames.append(
            window.join(full.rename({"union_ns": "full_ns"}), on=keys, how="left")
            .join(empty.rename({"union_ns": "empty_ns"}), on=keys, how="left")
            .with_columns(
                kind=pl.lit(kind), peer=pl.lit("*"), source=pl.lit("inferred"),
                full_frac=pl.col("full_ns").fill_null(0) / win,
                empty_frac=pl.col("empty_ns").fill_null(0) / win,
                mean_occupancy=pl.lit(None, dtype=pl.Float64),
                max_occupancy=pl.lit(None, dtype=pl.Float64),
            )
            .select([pl.col(k).cast(t) for k, t in RINGS_SCHEMA.items()])
        )
    if not frames:
        return pl.DataFrame(schema=RINGS_SCHEMA)
    return pl.concat(frames).sort("rank", "kind", "channel")


def ring_fractions(warp_events: pl.DataFrame, counters: pl.DataFrame | None = None, *,
                   capacity: Mapping[str, int] | None = None) -> pl.DataFrame:
    """``RINGS_SCHEMA`` frame: from counters when the trace has ring counters, else inferred."""
    if counters is not None and counters.height:
        from_counters = rings_from_counters(counters, warp_events, capacity or {})
        if from_counters.height:
            return from_counters
    return rings_inferred(warp_events)
