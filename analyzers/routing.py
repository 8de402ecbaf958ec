"""Node-limited routing statistics recorded by overlapscope's profiler.

The MoE workloads count, per rank, how the V3 node limit (each token's experts on at
most ``max_nodes`` nodes) changed routing: tokens whose unconstrained top-k would have
touched more nodes (redirected), and the IB / NVLink bytes with and without the limit.
They are written to ``run.json`` (``ranks[r].routing`` or ``ranks[r].facts.routing``);
traces from other jobs have none, so the table does not apply to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

#: Schema of :func:`routing_table` (bytes summed over the rank's dispatches).
ROUTING_SCHEMA: dict[str, pl.DataType] = {
    "rank": pl.Int32,
    "nodes": pl.Int64,
    "max_nodes": pl.Int64,
    "dispatches": pl.Int64,
    "tokens": pl.Int64,
    "tokens_redirected": pl.Int64,
    "redirected_fraction": pl.Float64,
    "ib_bytes": pl.Int64,
    "ib_bytes_unlimited": pl.Int64,
    "ib_bytes_saved": pl.Int64,
    "nvl_bytes": pl.Int64,
    "nvl_bytes_unlimited": pl.Int64,
}


def _stats(entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
    stats = entry.get("routing") or (entry.get("facts") or {}).get("routing")
    return stats if isinstance(stats, Mapping) else None


def routing_table(manifest: Mapping[str, Any]) -> pl.DataFrame:
    """One row per rank with routing statistics (ROUTING_SCHEMA); empty when none.

    ``redirected_fraction`` = tokens_redirected / tokens; ``ib_bytes_saved`` =
    ib_bytes_unlimited - ib_bytes (what the node limit kept off InfiniBand).
    """
    rows = []
    for entry in manifest.get("ranks") or []:
        if not isinstance(entry, Mapping) or "rank" not in entry:
            continue
        stats = _stats(entry)
        if stats is None:
            continue
        tokens = int(stats.get("tokens", 0))
        redirected = int(stats.get("tokens_redirected", 0))
        ib, ib_free = int(stats.get("ib_bytes", 0)), int(stats.get("ib_bytes_unlimited", 0))
        rows.append({
            "rank": int(entry["rank"]),
            "nodes": stats.get("nodes"),
            "max_nodes": stats.get("max_nodes"),
            "dispatches": stats.get("dispatches"),
            "tokens": tokens,
            "tokens_redirected": redirected,
            "redirected_fraction": redirected / tokens if tokens else None,
            "ib_bytes": ib,
            "ib_bytes_unlimited": ib_free,
            "ib_bytes_saved": ib_free - ib,
            "nvl_bytes": stats.get("nvl_bytes"),
            "nvl_bytes_unlimited": stats.get("nvl_bytes_unlimited"),
        })
    return pl.DataFrame(rows, schema=ROUTING_SCHEMA).sort("rank")
