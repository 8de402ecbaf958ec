"""Pipeline health of the warp roles: coordinator lag and straggler channels.

*Publish lag* (sender coordinator): per (channel, chunk), the time from the last
sender finishing the chunk to the coordinator finishing publishing it: ring
tails move only when the coordinator gets round to it, so a large lag delays
every consumer. *Forwarder spread* ("max - min forwarder head"): per
(channel, chunk), the time between the first and the last forwarder finishing
that chunk; the RDMA head is released only once the slowest forwarder is done.

A *straggler* channel is one that ends later than the median channel of its rank
by more than ``threshold_frac`` of the kernel span: the kernel waits for it.
"""

from __future__ import annotations

import polars as pl

from overlapscope.analyzers.warps.roles import kernel_spans, role_stage

COORD_LAG_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "channel": pl.Int32,
    "chunk": pl.Int64,
    "senders_done_ns": pl.Int64,
    "published_ns": pl.Int64,
    "publish_lag_ns": pl.Int64,
    "forwarders_first_done_ns": pl.Int64,
    "forwarders_last_done_ns": pl.Int64,
    "forwarder_spread_ns": pl.Int64,
}

STRAGGLERS_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "channel": pl.Int32,
    "end_ns": pl.Int64,
    "lateness_ns": pl.Int64,
    "lateness_frac": pl.Float64,
    "last_role": pl.Utf8,
    "busy_ns": pl.Int64,
    "is_straggler": pl.Boolean,
}


def _busy_with_stage(warp_events: pl.DataFrame) -> pl.DataFrame:
    roles = warp_events["role"].unique().to_list()
    stage = {r: role_stage(r) for r in roles}
    sender_coord = {r: "coord" in r.lower() and "send" in r.lower() for r in roles}
    busy = warp_events.filter(pl.col("state") == "busy", pl.col("chunk").is_not_null())
    return busy.with_columns(
        stage=pl.col("role").replace_strict(stage, return_dtype=pl.Utf8, default="other"),
        sender_coord=pl.col("role").replace_strict(sender_coord, return_dtype=pl.Boolean,
                                                   default=False),
        end_ns=pl.col("ts_ns") + pl.col("dur_ns"),
    )


def coordinator_lag(warp_events: pl.DataFrame) -> pl.DataFrame:
    """Per (rank, channel, chunk): publish lag and forwarder spread (``COORD_LAG_SCHEMA``).

    Columns whose roles are absent from the trace are null.
    """
    busy = _busy_with_stage(warp_events)
    keys = ["rank", "channel", "chunk"]
    senders = busy.filter(pl.col("stage") == "send").group_by(keys).agg(
        senders_done_ns=pl.col("end_ns").max())
    coord = busy.filter(pl.col("sender_coord")).group_by(keys).agg(
        published_ns=pl.col("end_ns").max())
    fwd = (
        busy.filter(pl.col("stage") == "forward")
        .group_by(*keys, "warp").agg(done=pl.col("end_ns").max())
        .group_by(keys).agg(forwarders_first_done_ns=pl.col("done").min(),
                            forwarders_last_done_ns=pl.col("done").max())
    )
    all_keys = pl.concat([f.select(*keys) for f in (senders, coord, fwd)]).unique()
    out = (
        all_keys.join(senders, on=keys, how="left")
        .join(coord, on=keys, how="left")
        .join(fwd, on=keys, how="left")
        .with_columns(
            publish_lag_ns=pl.col("published_ns") - pl.col("senders_done_ns"),
            forwarder_spread_ns=pl.col("forwarders_last_done_ns")
            - pl.col("forwarders_first_done_ns"),
        )
    )
    return out.select([pl.col(k).cast(t) for k, t in COORD_LAG_SCHEMA.items()]).sort(keys)


def stragglers(warp_events: pl.DataFrame, *, threshold_frac: float = 0.05) -> pl.DataFrame:
    """Per (rank, channel): end time, lateness against the rank's median channel end
    (ns and fraction of the kernel span), the role that finished last, total busy ns
    and ``is_straggler`` (lateness_frac > ``threshold_frac``). ``STRAGGLERS_SCHEMA``."""
    ev = warp_events.with_columns(end_ns=pl.col("ts_ns") + pl.col("dur_ns"))
    per = ev.group_by("rank", "channel").agg(
        end_ns=pl.col("end_ns").max(),
        last_role=pl.col("role").sort_by("end_ns").last(),
        busy_ns=pl.col("dur_ns").filter(pl.col("state") == "busy").sum(),
    )
    out = (
        per.join(kernel_spans(warp_events).select("rank", "span_ns"), on="rank", how="left")
        .with_columns(
            lateness_ns=(pl.col("end_ns") - pl.col("end_ns").median().over("rank")).round(0)
            .cast(pl.Int64)
        )
        .with_columns(lateness_frac=pl.col("lateness_ns") / pl.col("span_ns"))
        .with_columns(is_straggler=pl.col("lateness_frac") > threshold_frac)
    )
    return out.select([pl.col(k).cast(t) for k, t in STRAGGLERS_SCHEMA.items()]).sort(
        "rank", "channel")
