"""What every table of a Report is computed from, prepared once per run.

:class:`Inputs` holds the classified frames and lazily computes (at most once) the
shared intermediates: work items clipped to the analysis window, per-annotation
instances, per-kernel coverage, traffic and warp analyses. Table builders
(:mod:`overlapscope.analyzers.tables`) read these instead of recomputing them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import polars as pl

from overlapscope.analyzers import overlap as ov
from overlapscope.analyzers.classify import RuleSet, classify_frames
from overlapscope.analyzers.errors import WindowError
from overlapscope.analyzers.frames import TraceFrames
from overlapscope.analyzers.hta_compat import hta_compat_frames
from overlapscope.analyzers.options import ReportOptions  # also imported from here

DEFAULT_WINDOW = r"^ProfilerStep#\d+$"


def check_window(pattern: str, annotations: pl.DataFrame, source: str) -> None:
    """Raise WindowError when ``pattern`` is not a valid regex or names no annotation."""
    try:
        hits = annotations.select(pl.col("name").str.contains(pattern).any()).item()
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WindowError(f"--window {pattern!r} is not a valid regex: {first}") from None
    if not hits:
        names = annotations["name"].unique().sort().head(5).to_list()
        seen = f" (e.g. {', '.join(names)})" if names else " (the trace has no annotations)"
        raise WindowError(f"--window {pattern!r} matches no annotation in {source}{seen}")


@dataclass
class Inputs:
    """Classified frames plus the intermediates tables share (computed on first use)."""

    frames: TraceFrames
    options: ReportOptions
    rules: RuleSet
    raw: TraceFrames

    @classmethod
    def create(cls, frames: TraceFrames, options: ReportOptions) -> Inputs:
        """Validate the window, put ranks on one time axis (``options.align``), apply
        HTA compatibility if asked, classify once. ``raw`` keeps the uncorrected frames."""
        from overlapscope.analyzers.skew import aligned_frames

        source = str(frames.meta.get("source", ""))
        if options.window is not None:
            check_window(options.window, frames.annotations, source)
        rules = options.rules()
        raw = frames
        # HTA compat reproduces HTA, which uses raw timestamps.
        align = "none" if options.hta_compat else options.align
        frames, skew = aligned_frames(frames, align)
        if options.hta_compat and frames.is_gpu:
            frames = hta_compat_frames(classify_frames(frames, rules))
        inputs = cls(classify_frames(frames, rules), options, rules, raw)
        if skew is not None:
            inputs.__dict__["skew"] = skew  # computed once: seed the cached property
        return inputs

    @property
    def has_work(self) -> bool:
        """True when there is anything to measure overlap on."""
        return self.frames.activities.height > 0 or self.frames.cpu_ops.height > 0

    @cached_property
    def prep(self) -> ov.Prepared:
        """Work items clipped to the analysis window, and the windows."""
        return ov.prepare(self.frames, window=self.options.window, rules=self.rules)

    @cached_property
    def coverage(self) -> pl.DataFrame:
        """Every comm item with the share of it hidden under compute (kernel_coverage)."""
        return ov.kernel_coverage(self.frames, prep=self.prep)

    @cached_property
    def traffic(self) -> dict[str, Any]:
        """traffic.traffic_summary of the run."""
        from overlapscope.analyzers.traffic import traffic_summary

        return traffic_summary(self.frames, gpus_per_node=self.options.gpus_per_node)

    @cached_property
    def warps(self) -> Any:
        """warps.analyze_warps of the run's warp-role events."""
        from overlapscope.analyzers.warps import analyze_warps

        f = self.frames
        return analyze_warps(f.warp_events, f.counters, meta=f.meta)

    @cached_property
    def pipeline_ops(self) -> pl.DataFrame:
        """pipeline.op_table: one row per schedule op."""
        from overlapscope.analyzers.pipeline import op_table

        return op_table(self.frames, prep=self.prep)

    @cached_property
    def skew(self) -> Any:
        """skew.estimate_skew of the raw frames (None for a single rank)."""
        from overlapscope.analyzers.skew import estimate_skew

        return estimate_skew(self.raw) if self.raw.ranks.height >= 2 else None

    @property
    def aligned(self) -> TraceFrames:
        """The frames on the time axis ``options.align`` chose (classified)."""
        return self.frames

    def facts(self) -> dict[str, Any]:
        """What the report was computed from: ranks, sizes, window, definitions."""
        f = self.frames
        manifest = f.meta.get("manifest") or {}
        workload = (manifest.get("workload") or {}).get("name") if manifest else None
        facts: dict[str, Any] = {
            "ranks": f.ranks.height,
            "rank_ids": f.ranks["rank"].to_list(),
            "trace_kind": "gpu" if f.is_gpu else ("cpu" if f.cpu_ops.height else "other"),
            "workload": workload,
            "gpu_activities": f.activities.height,
            "host_ops": f.cpu_ops.height,
            "annotations": f.annotations.height,
            "origin_ns": f.meta.get("origin_ns"),
            "window": self.options.window or DEFAULT_WINDOW,
            "definition": ov.OVERLAP_DEFINITION if f.is_gpu else ov.HOST_OVERLAP_DEFINITION,
            "rules": list(self.rules.sources),
            "hta_compat": self.options.hta_compat,
            "time_axis": "corrected" if "clock_model" in self.frames.meta else "raw",
        }
        if "prep" in self.__dict__ and self.prep.windows.height:
            w = self.prep.windows
            facts["window_from_annotation"] = bool(w["from_annotation"].all())
        return facts

    def notes(self) -> list[str]:
        """Warnings a user should read, in a fixed order."""
        f = self.frames
        out: list[str] = list(f.meta.get("warnings", []))
        if "prep" in self.__dict__:
            out.extend(ov.window_warnings(self.prep, self.options.window or DEFAULT_WINDOW))
        if f.meta.get("skipped_events"):
            out.append(f"{f.meta['skipped_events']} malformed events were skipped")
        skew = self.__dict__.get("skew")
        if skew is not None:
            out.extend(skew.notes)
        if self.options.hta_compat:
            out.append("HTA 0.5.0 compatibility rules applied: NCCL-only comm, µs rounding, "
                       "last ProfilerStep dropped")
        if not self.has_work and f.warp_events.is_empty():
            out.append("no GPU activities and no host operators: nothing to measure overlap on")
        if self.has_work and "prep" in self.__dict__:
            items = self.prep.items
            if not items.filter(pl.col("kind") == "comm").height:
                out.append("no communication found: check classification rules (--rules)")
        return out


def with_meta(frames: TraceFrames, **meta: Any) -> TraceFrames:
    """``frames`` with extra ``meta`` keys (frames are immutable)."""
    return replace(frames, meta={**frames.meta, **meta})
