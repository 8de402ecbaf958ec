"""Bytes and achieved bandwidth per link class of the warp-role events.

``bytes`` of a ``warp_role`` event are the bytes that interval moved on its
``link`` ("ib", "nvl", "local"). Achieved bandwidth is measured over the link's
*active window* (first start to last end of an interval that moved bytes on it),
not over the whole kernel: the IB hop ends long before the receivers finish, and
dividing by the kernel span would hide an IB link that was saturated while used.
Both are reported. 1 byte/ns = 1 GB/s, so no unit factor is needed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

from overlapscope.analyzers.warps.roles import kernel_spans

#: Link limits used when neither the caller nor the trace gives any (GB/s per GPU).
DEFAULT_LINK_GBPS: dict[str, float] = {"ib": 50.0, "nvl": 160.0}

LINKS_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "link": pl.Utf8,
    "bytes": pl.Int64,
    "n_events": pl.Int64,
    "first_ns": pl.Int64,
    "last_ns": pl.Int64,
    "active_ns": pl.Int64,
    "achieved_gbps": pl.Float64,
    "span_gbps": pl.Float64,
    "limit_gbps": pl.Float64,
    "util_frac": pl.Float64,
    "span_util_frac": pl.Float64,
}


def link_limits(
    meta: Mapping[str, Any] | None = None,
    *,
    ib_gbps: float | None = None,
    nvl_gbps: float | None = None,
) -> dict[str, float]:
    """Link limits in GB/s: explicit arguments, else ``meta["overlapscope"]["topology"]``
    (``ib_gbps`` / ``nvl_gbps``), else IB 50 / NVLink 160. A zero or negative value in
    the trace means "unlimited" and is skipped (no utilisation is computed for it)."""
    limits = dict(DEFAULT_LINK_GBPS)
    topo = ((meta or {}).get("overlapscope") or {}).get("topology") or {}
    for link, key in (("ib", "ib_gbps"), ("nvl", "nvl_gbps")):
        value = topo.get(key)
        if isinstance(value, int | float):
            if value > 0:
                limits[link] = float(value)
            else:
                limits.pop(link)
    if ib_gbps is not None:
        limits["ib"] = float(ib_gbps)
    if nvl_gbps is not None:
        limits["nvl"] = float(nvl_gbps)
    return limits


def link_bandwidth(warp_events: pl.DataFrame, limits: Mapping[str, float]) -> pl.DataFrame:
    """Per (rank, link): bytes moved, active window, achieved and span-average GB/s,
    the link limit, ``util_frac = achieved_gbps / limit_gbps`` (how hard the link ran
    while in use) and ``span_util_frac = span_gbps / limit_gbps`` (the share of the
    kernel span the link must have been busy) (``LINKS_SCHEMA``; limit and
    utilisations are null for links without a limit, e.g. "local")."""
    ev = warp_events.filter(pl.col("link").is_not_null())
    if ev.height == 0:
        return pl.DataFrame(schema=LINKS_SCHEMA)
    moving = pl.col("bytes") > 0
    limit_map = pl.DataFrame(
        {"link": list(limits), "limit_gbps": [float(v) for v in limits.values()]},
        schema={"link": pl.Utf8, "limit_gbps": pl.Float64},
    )
    out = (
        ev.group_by("rank", "link")
        .agg(
            bytes=pl.col("bytes").sum(),
            n_events=pl.len().cast(pl.Int64),
            first_ns=pl.col("ts_ns").filter(moving).min(),
            last_ns=(pl.col("ts_ns") + pl.col("dur_ns")).filter(moving).max(),
        )
        .with_columns(active_ns=pl.col("last_ns") - pl.col("first_ns"))
        .join(kernel_spans(warp_events).select("rank", "span_ns"), on="rank", how="left")
        .join(limit_map, on="link", how="left")
        .with_columns(
            achieved_gbps=pl.when(pl.col("active_ns") > 0)
            .then(pl.col("bytes") / pl.col("active_ns")),
            span_gbps=pl.when(pl.col("span_ns") > 0).then(pl.col("bytes") / pl.col("span_ns")),
        )
        .with_columns(
            util_frac=pl.col("achieved_gbps") / pl.col("limit_gbps"),
            span_util_frac=pl.col("span_gbps") / pl.col("limit_gbps"),
        )
    )
    return out.select([pl.col(c).cast(t) for c, t in LINKS_SCHEMA.items()]).sort("rank", "link")
