"""Report: everything the CLI and the dashboard show about one run, as frames.

``build_report(frames)`` runs every analyzer that applies to the trace and
collects the results under stable table names. Renderers (app/) turn a Report
into terminal tables, JSON, CSV, markdown or dashboard views; nothing here
prints or plots.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from overlapscope.analyzers import overlap as ov
from overlapscope.analyzers.classify import RuleSet, classify_frames
from overlapscope.analyzers.frames import TraceFrames

#: Table names in display order, with one line saying what each holds.
TABLES: dict[str, str] = {
    "summary": "Overlap per GPU (BRIEF §4.1-4.4): busy, overlapped and exposed comm, idle",
    "streams": "Per stream: busy time and how much of its comm is hidden",
    "annotations": "Per annotation name: GPU span, comm hidden under compute, pairing",
    "kernels": "Comm kernels by name: share of their time hidden under compute",
    "worst_kernels": "The least hidden comm kernel instances",
    "sm_split": "SMs held by comm kernels vs persistent GEMMs",
    "temporal_breakdown": "Compute / comm / memory / idle time per GPU",
    "kernel_breakdown": "Kernel time by class and name",
    "traffic": "Bytes by link class (IB / NVLink / local) per rank",
    "traffic_by_collective": "Bytes by link class per collective",
    "pipeline": "Pipeline bubbles per rank vs theory",
    "warp_roles": "Per-warp role busy / wait fractions",
    "warp_links": "Bytes and achieved bandwidth per link vs its limit",
    "warp_rings": "Ring full / empty fractions",
    "warp_diagnosis": "The bottleneck role and the remedy",
}


@dataclass
class Report:
    """All result tables of one run plus facts about where they came from."""

    source: str
    tables: dict[str, pl.DataFrame]
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tables as lists of row dicts."""
        return {
            "source": self.source,
            "facts": self.facts,
            "notes": self.notes,
            "tables": {k: v.to_dicts() for k, v in self.tables.items()},
        }


def _optional(module: str, func: str) -> Any | None:
    """An analyzer function that may not exist in this build (optional modules)."""
    try:
        return getattr(importlib.import_module(f"overlapscope.analyzers.{module}"), func)
    except (ImportError, AttributeError):
        return None


def build_report(
    frames: TraceFrames,
    *,
    window: str | None = None,
    rules: RuleSet | None = None,
    top: int = 10,
    hta_compat: bool = False,
) -> Report:
    """Run the analyzers that apply to ``frames`` and collect their tables."""
    notes: list[str] = []
    if hta_compat:
        compat = _optional("hta_compat", "hta_compat_frames")
        if compat is None:
            notes.append("--hta-compat requested but analyzers/hta_compat.py is unavailable")
        else:
            frames = compat(frames)
            notes.append("HTA 0.5.0 compatibility rules applied (see analyzers/hta_compat.py)")
    tables: dict[str, pl.DataFrame] = {}
    frames = classify_frames(frames, rules)  # once: every analyzer below reuses it
    has_work = frames.activities.height > 0 or frames.cpu_ops.height > 0
    if has_work:
        prep = ov.prepare(frames, window=window, rules=rules)
        kw = {"window": window, "rules": rules, "prep": prep}
        tables["summary"] = ov.overlap_summary(frames, **kw)
        tables["streams"] = ov.overlap_by_stream(frames, **kw)
        ann = ov.overlap_by_annotation_name(frames, **kw)
        if ann.height:
            tables["annotations"] = ann
        cov = ov.kernel_coverage(frames, **kw)
        if cov.height:
            tables["kernels"] = ov.coverage_by_name(cov)
            tables["worst_kernels"] = cov.head(top)
        if frames.is_gpu:
            tables["sm_split"] = ov.sm_split(frames, rules=rules, prep=prep)
    elif frames.warp_events.is_empty():
        notes.append("no GPU activities and no host operators: nothing to measure overlap on")
    _add_optional(tables, notes, frames, hta_compat)
    _add_warps(tables, notes, frames)
    _add_traffic(tables, notes, frames)
    if frames.meta.get("skipped_events"):
        notes.append(f"{frames.meta['skipped_events']} malformed events were skipped")
    if not frames.is_gpu and has_work:
        notes.append(
            "CPU-only trace: comm = gloo/c10d ops on any thread plus all work on a declared "
            "comm thread; compute = other operator time outside comm ops"
        )
    summary = tables.get("summary")
    if summary is not None and summary.height and summary["comm_busy_ns"].sum() == 0:
        notes.append("no communication found: check classification rules (--rules)")
    facts = {
        "ranks": frames.ranks.height,
        "gpu_activities": frames.activities.height,
        "host_ops": frames.cpu_ops.height,
        "annotations": frames.annotations.height,
        "origin_ns": frames.meta.get("origin_ns"),
    }
    return Report(
        source=str(frames.meta.get("source", "")), tables=tables, facts=facts, notes=notes
    )


def _add_traffic(tables: dict[str, pl.DataFrame], notes: list[str], frames: TraceFrames) -> None:
    """Bytes by link class per rank and per collective, when the trace records traffic."""
    if frames.comm_meta.is_empty():
        return
    from overlapscope.analyzers.traffic import traffic_summary

    try:
        summary = traffic_summary(frames)
    except Exception as exc:  # noqa: BLE001 - one analyzer must not sink the report
        notes.append(f"traffic: analyzer failed ({type(exc).__name__}: {exc})")
        return
    for name, key in (("traffic", "per_rank"), ("traffic_by_collective", "per_collective")):
        df = summary.get(key)
        if isinstance(df, pl.DataFrame) and df.height:
            tables[name] = df


def _add_warps(tables: dict[str, pl.DataFrame], notes: list[str], frames: TraceFrames) -> None:
    """Per-warp role tables and the bottleneck diagnosis, for instrumented traces."""
    if frames.warp_events.is_empty():
        return
    from overlapscope.analyzers.warps import analyze_warps

    wa = analyze_warps(frames.warp_events, frames.counters, meta=frames.meta)
    for name, df in (
        ("warp_roles", wa.roles),
        ("warp_links", wa.links),
        ("warp_rings", wa.rings),
        ("warp_diagnosis", wa.diagnosis),
    ):
        if df.height:
            tables[name] = df
    if wa.text:
        notes.append(wa.text)


def _add_optional(
    tables: dict[str, pl.DataFrame], notes: list[str], frames: TraceFrames, hta_compat: bool
) -> None:
    """Tables from analyzers that live in their own modules; a failure becomes a note."""
    calls = [
        ("temporal_breakdown", "breakdown", "temporal_breakdown", {"hta_compat": hta_compat}),
        ("kernel_breakdown", "breakdown", "kernel_breakdown", {"hta_compat": hta_compat}),
        ("pipeline", "pipeline", "bubble_table", {}),
    ]
    for table, module, func, kwargs in calls:
        fn = _optional(module, func)
        if fn is None:
            continue
        try:
            out = fn(frames, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one analyzer must not sink the report
            notes.append(f"{table}: analyzer failed ({type(exc).__name__}: {exc})")
            continue
        if isinstance(out, pl.DataFrame) and out.height:
            tables[table] = out
