"""Per-warp-role time split: busy vs waiting (by reason) vs unrecorded.

Input is a ``warp_events`` frame (``WARP_EVENTS_SCHEMA``): one row per busy or
wait interval of one warp. A *role instance* is one warp of one channel of one
rank, ``(rank, role, channel, warp)``.

Fractions are taken over the **instance lifetime** (first event start to last
event end of that warp), because warps of a role that finishes early (senders
stop after their last chunk while receivers still drain the rings) would otherwise
look idle for a reason that has nothing to do with their role.
``busy_of_span_frac`` divides the same busy time by ``n_warps x kernel span``
(span = first to last event of the rank): that one ranks roles for the
bottleneck, because the bottleneck is the role whose work fills the whole kernel.

Time not covered by any event inside a lifetime is ``unrecorded`` (the H200
fixture drops waits under 200 ns), reported on its own so the busy and wait
fractions are never inflated by guesses: busy + waits + unrecorded = 1.
"""

from __future__ import annotations

import polars as pl

#: Wait reasons of the warp_role contract; always present as ``<reason>_frac`` columns.
STANDARD_WAITS: tuple[str, ...] = (
    "wait_remote_head", "wait_tail", "wait_window_lock", "wait_meta", "idle_sleep",
)

#: Pipeline position of each role: data flows send -> forward -> receive.
STAGES: tuple[str, ...] = ("send", "forward", "receive")


#: Leading columns of ``role_instances``; the per-state ``<state>_ns`` columns follow.
_INSTANCE_FIXED: tuple[str, ...] = (
    "rank", "role", "channel", "warp", "start_ns", "end_ns", "lifetime_ns", "busy_ns",
    "wait_ns", "unrecorded_ns",
)


def role_stage(role: str) -> str:
    """Pipeline stage of a role name: "send", "forward", "receive", "coordinate" or "other".

    Works for dispatch names (rdma_sender, forwarder, nvl_receiver) and for the
    reversed combine path (nvl_sender, forwarder, rdma_receiver) alike.
    """
    name = role.lower()
    if "coord" in name:
        return "coordinate"
    if "receiv" in name:
        return "receive"
    if "forward" in name:
        return "forward"
    if "send" in name:
        return "send"
    return "other"


def is_space_wait(state: str) -> bool:
    """A wait for free ring space (backpressure from the consumer): ``*head*``."""
    return state.startswith("wait") and "head" in state


def is_data_wait(state: str) -> bool:
    """A wait for data to arrive (starvation by the producer): ``*tail*``."""
    return state.startswith("wait") and "tail" in state


def kernel_spans(warp_events: pl.DataFrame) -> pl.DataFrame:
    """Per rank: ``span_start_ns``, ``span_end_ns``, ``span_ns`` (first start to last end)."""
    return (
        warp_events.group_by("rank")
        .agg(
            span_start_ns=pl.col("ts_ns").min(),
            span_end_ns=(pl.col("ts_ns") + pl.col("dur_ns")).max(),
        )
        .with_columns(span_ns=pl.col("span_end_ns") - pl.col("span_start_ns"))
        .sort("rank")
    )


def _state_columns(warp_events: pl.DataFrame) -> list[str]:
    """Wait states to report: the standard ones plus any other found in the data."""
    found = sorted(s for s in warp_events["state"].unique().to_list() if s and s != "busy")
    return list(STANDARD_WAITS) + [s for s in found if s not in STANDARD_WAITS]


def role_instances(warp_events: pl.DataFrame) -> pl.DataFrame:
    """One row per warp: ``rank, role, channel, warp, start_ns, end_ns, lifetime_ns,
    busy_ns, wait_ns, unrecorded_ns`` and one ``<wait state>_ns`` column per wait state
    (all int64 ns)."""
    keys = ["rank", "role", "channel", "warp"]
    states = _state_columns(warp_events)
    ev = warp_events.with_columns(end_ns=pl.col("ts_ns") + pl.col("dur_ns"))
    base = ev.group_by(keys).agg(
        pl.col("ts_ns").min().alias("start_ns"),
        pl.col("end_ns").max(),
        pl.col("dur_ns").filter(pl.col("state") == "busy").sum().alias("busy_ns"),
        pl.col("dur_ns").filter(pl.col("state") != "busy").sum().alias("wait_ns"),
        *[pl.col("dur_ns").filter(pl.col("state") == s).sum().alias(f"{s}_ns") for s in states],
    )
    return (
        base.with_columns(lifetime_ns=pl.col("end_ns") - pl.col("start_ns"))
        .with_columns(
            # Overlapping events (not expected) must not make this negative.
            unrecorded_ns=(pl.col("lifetime_ns") - pl.col("busy_ns") - pl.col("wait_ns")).clip(0)
        )
        .select(*_INSTANCE_FIXED, *[f"{s}_ns" for s in states])
        .sort(keys)
    )


def role_summary(warp_events: pl.DataFrame, *, by_channel: bool = False) -> pl.DataFrame:
    """Busy / wait / unrecorded fractions per role (and per channel if ``by_channel``).

    Columns: ``rank, role, [channel,] stage, n_warps, start_ns, end_ns, lifetime_ns,
    busy_ns, wait_ns, unrecorded_ns, busy_frac, wait_frac, unrecorded_frac,
    busy_of_span_frac`` and ``<wait state>_frac`` for each wait state. ``*_frac`` are
    sums over the role's warps divided by the summed lifetimes (so a role's
    fractions add to 1); ``busy_of_span_frac = busy_ns / (n_warps * span_ns)``.
    """
    inst = role_instances(warp_events)
    states = [c.removesuffix("_ns") for c in inst.columns[len(_INSTANCE_FIXED):]]
    keys = ["rank", "role"] + (["channel"] if by_channel else [])
    sums = ["lifetime_ns", "busy_ns", "wait_ns", "unrecorded_ns"] + [f"{s}_ns" for s in states]
    out = (
        inst.group_by(keys)
        .agg(pl.len().cast(pl.Int64).alias("n_warps"), pl.col("start_ns").min(),
             pl.col("end_ns").max(), *[pl.col(c).sum() for c in sums])
        .join(kernel_spans(warp_events).select("rank", "span_ns"), on="rank", how="left")
    )
    life = pl.col("lifetime_ns").cast(pl.Float64)
    fracs = [(pl.col(c) / life).alias(c.removesuffix("_ns") + "_frac")
             for c in ["busy_ns", "wait_ns", "unrecorded_ns"] + [f"{s}_ns" for s in states]]
    return (
        out.with_columns(
            pl.col("role").map_elements(role_stage, return_dtype=pl.Utf8).alias("stage"),
            *fracs,
            (pl.col("busy_ns") / (pl.col("n_warps") * pl.col("span_ns"))).alias(
                "busy_of_span_frac"),
        )
        .select(*keys, "stage", "n_warps", "start_ns", "end_ns", *sums[:4], "busy_frac",
                "wait_frac", "unrecorded_frac", "busy_of_span_frac",
                *[f"{s}_frac" for s in states])
        .sort(keys)
    )
