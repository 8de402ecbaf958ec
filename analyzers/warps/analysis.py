"""Warp-role analysis of a warp-specialized dispatch kernel: one call, one bundle.

``analyze_warps`` takes a ``warp_events`` frame (``WARP_EVENTS_SCHEMA``, from our
traces' ``warp_role`` events or from the H200 CSVs via ``warps.csv``) and returns
``WarpAnalysis``: busy / wait-reason fractions per role and per (role, channel),
per-warp instances, bytes and bandwidth per link against its limit, ring full /
empty fractions, coordinator lag, straggler channels and a diagnosis in words.
Each piece lives in its own module (``roles``, ``links``,
``rings``, ``health``, ``diagnosis``, ``align``) and is
re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from overlapscope.analyzers.frames import WARP_EVENTS_SCHEMA
from overlapscope.analyzers.warps.align import align_warp_events_to_kernel
from overlapscope.analyzers.warps.diagnosis import Thresholds, diagnose, diagnosis_text
from overlapscope.analyzers.warps.health import coordinator_lag, stragglers
from overlapscope.analyzers.warps.links import link_bandwidth, link_limits
from overlapscope.analyzers.warps.rings import ring_capacity_from, ring_fractions
from overlapscope.analyzers.warps.roles import kernel_spans, role_instances, role_summary

__all__ = [
    "WarpAnalysis", "Thresholds", "analyze_warps", "align_warp_events_to_kernel",
    "coordinator_lag", "diagnose", "diagnosis_text", "kernel_spans", "link_bandwidth",
    "link_limits", "ring_fractions", "role_instances", "role_summary", "stragglers",
]


@dataclass(frozen=True)
class WarpAnalysis:
    """Everything ``analyze_warps`` computes (see each function for the schema).

    ``roles``: ``role_summary`` per (rank, role); ``role_channels``: per (rank, role,
    channel); ``instances``: per warp; ``spans``: kernel span per rank; ``links``:
    ``link_bandwidth``; ``rings``: ``ring_fractions``; ``coordinator_lag``;
    ``stragglers``; ``diagnosis``: rows of ``DIAGNOSIS_SCHEMA``; ``text``: the
    diagnosis as readable text.
    """

    roles: pl.DataFrame
    role_channels: pl.DataFrame
    instances: pl.DataFrame
    spans: pl.DataFrame
    links: pl.DataFrame
    rings: pl.DataFrame
    coordinator_lag: pl.DataFrame
    stragglers: pl.DataFrame
    diagnosis: pl.DataFrame
    text: str

    def bottleneck(self, rank: int | None = None) -> str | None:
        """Subject (role or link name) of the primary finding of ``rank`` (default: lowest)."""
        d = self.diagnosis.filter(pl.col("primary"))
        if rank is not None:
            d = d.filter(pl.col("rank") == rank)
        return d.sort("rank")["subject"][0] if d.height else None


def analyze_warps(
    warp_events: pl.DataFrame,
    counters: pl.DataFrame | None = None,
    *,
    meta: Mapping[str, Any] | None = None,
    ib_gbps: float | None = None,
    nvl_gbps: float | None = None,
    ring_capacity: int | Mapping[str, int] | None = None,
    thresholds: Thresholds | None = None,
) -> WarpAnalysis:
    """Analyze per-warp role events (times in ns).

    ``counters``: the run's ``COUNTERS_SCHEMA`` frame (ring occupancy), optional.
    ``meta``: ``TraceFrames.meta``; link limits come from the arguments, else
    ``meta["overlapscope"]["topology"]``, else IB 50 / NVLink 160 GB/s.
    Missing ``rank`` / ``sm`` columns are filled with 0 / null (an emulator log of one
    rank); other extra columns are ignored. Raises ``ValueError`` if ``warp_events``
    lacks another column of ``WARP_EVENTS_SCHEMA`` or is empty.
    """
    # Frames straight from an emulator log may lack the rank / SM columns.
    if "rank" not in warp_events.columns:
        warp_events = warp_events.with_columns(rank=pl.lit(0, dtype=pl.Int32))
    if "sm" not in warp_events.columns:
        warp_events = warp_events.with_columns(sm=pl.lit(None, dtype=pl.Int32))
    missing = [c for c in WARP_EVENTS_SCHEMA if c not in warp_events.columns]
    if missing:
        raise ValueError(f"warp_events lacks column(s) {', '.join(missing)}")
    if warp_events.height == 0:
        raise ValueError("warp_events is empty: the trace has no warp_role events")
    ev = warp_events.select([pl.col(c).cast(t) for c, t in WARP_EVENTS_SCHEMA.items()])
    roles = role_summary(ev)
    links = link_bandwidth(ev, link_limits(meta, ib_gbps=ib_gbps, nvl_gbps=nvl_gbps))
    n_channels = dict(ev.group_by("rank").agg(pl.col("channel").n_unique()).iter_rows())
    diagnosis = diagnose(roles, links, n_channels, thresholds)
    return WarpAnalysis(
        roles=roles,
        role_channels=role_summary(ev, by_channel=True),
        instances=role_instances(ev),
        spans=kernel_spans(ev),
        links=links,
        rings=ring_fractions(ev, counters, capacity=ring_capacity_from(meta, ring_capacity)),
        coordinator_lag=coordinator_lag(ev),
        stragglers=stragglers(ev),
        diagnosis=diagnosis,
        text=diagnosis_text(diagnosis),
    )
