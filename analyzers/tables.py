"""Builders of the declared Report tables: Inputs -> frame, or the reason it does not apply.

One function per table of :data:`overlapscope.analyzers.report.TABLES`; each reads
the intermediates :class:`~overlapscope.analyzers.inputs.Inputs` prepared once.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from overlapscope.analyzers import overlap as ov
from overlapscope.analyzers.breakdown import kernel_breakdown, temporal_breakdown
from overlapscope.analyzers.inputs import Inputs
from overlapscope.analyzers.pipeline import bubble_table
from overlapscope.analyzers.routing import routing_table

Built = pl.DataFrame | str
NO_WORK = "the trace has no GPU activities and no host operators"
NO_GPU = "no GPU kernels (CPU-only or warp-only trace)"
NO_COMM = "no communication found in the analysis window"
NO_TRAFFIC = "the trace records no traffic (no comm_traffic or record_param_comms events)"
NO_PIPELINE = "no pipeline schedule annotations (e.g. dualpipe:F:mb=0:stage=0)"
NO_WARPS = "no warp_role events (only instrumented dispatch kernels have them)"

#: Per-instance fields rolled into a pattern: `mb=3` -> `mb=*`, `#12` -> `#*`.
_INSTANCE_FIELDS = r"(=|#)\d+"


def annotation_pattern(name: pl.Expr) -> pl.Expr:
    """``dualpipe:F:mb=3:stage=1`` -> ``dualpipe:F:mb=*:stage=*`` (numbers -> ``*``)."""
    return name.str.replace_all(_INSTANCE_FIELDS, "${1}*")


def _summary(i: Inputs) -> Built:
    if not i.has_work:
        return NO_WORK
    if i.options.hta_compat and i.frames.is_gpu:
        # HTA's own headline: per rank, whole trace, HTA's kernel types and µs.
        return ov.overlap_summary(i.raw, hta_compat=True)
    return ov.overlap_summary(i.frames, prep=i.prep)


def _streams(i: Inputs) -> Built:
    return ov.overlap_by_stream(i.frames, prep=i.prep) if i.has_work else NO_WORK


def _annotations(i: Inputs) -> Built:
    if i.frames.annotations.is_empty():
        return "the trace has no user annotations"
    if not i.has_work:
        return NO_WORK
    per = ov.overlap_by_annotation_name(i.frames, prep=i.prep)
    if per.is_empty() or "gpu_span_ns" not in per.columns:
        return "no work ran inside any annotation"
    if i.options.annotation_detail:
        return per
    return roll_up_annotations(per)


def roll_up_annotations(per_name: pl.DataFrame) -> pl.DataFrame:
    """Aggregate an annotations-per-name table by pattern (instance numbers -> ``*``).

    Sums are summed; ``paired_with`` becomes the pattern of the pairing that hides
    the most comm (ties broken by name); ``overlap_ratio`` is recomputed.
    """
    df = per_name.with_columns(
        annotation_pattern(pl.col("name")).alias("name"),
        annotation_pattern(pl.col("paired_with")).alias("paired_with"),
    )
    key = ["rank", "device", "name"]
    pairing = (
        df.filter(pl.col("paired_with").is_not_null())
        .group_by(*key, "paired_with")
        .agg(pl.col("comm_hidden_ns").sum().alias("_h"))
        .sort([*key, "_h", "paired_with"], descending=[False, False, False, True, False])
        .group_by(key, maintain_order=True)
        .agg(pl.col("paired_with").first())
    )
    sums = ["instances", "cpu_dur_ns", "gpu_span_ns", "comm_busy_ns", "compute_busy_ns",
            "comm_hidden_ns", "exposed_comm_ns"]
    out = (
        df.group_by(key)
        .agg(*[pl.col(c).sum() for c in sums], pl.col("first_start_ns").min())
        .join(pairing, on=key, how="left")
        .with_columns(
            pl.when(pl.col("comm_busy_ns") > 0)
            .then(pl.col("comm_hidden_ns") / pl.col("comm_busy_ns"))
            .alias("overlap_ratio")
        )
    )
    return out.sort("rank", "device", "first_start_ns", "name")


def _kernels(i: Inputs) -> Built:
    if not i.has_work:
        return NO_WORK
    return ov.coverage_by_name(i.coverage) if i.coverage.height else NO_COMM


def _worst_kernels(i: Inputs) -> Built:
    if not i.has_work:
        return NO_WORK
    return i.coverage.head(i.options.top) if i.coverage.height else NO_COMM


def _sm_split(i: Inputs) -> Built:
    if not i.frames.is_gpu:
        return NO_GPU + ": SM split needs kernel grids"
    return ov.sm_split(i.frames, rules=i.rules, prep=i.prep)


def _temporal(i: Inputs) -> Built:
    if not i.frames.is_gpu:
        return NO_GPU + ": the time breakdown needs GPU activities"
    hta = i.options.hta_compat
    return temporal_breakdown(i.frames, hta_compat=hta, prep=None if hta else i.prep)


def _kernel_breakdown(i: Inputs) -> Built:
    if not i.frames.is_gpu:
        return NO_GPU + ": kernel statistics need GPU activities"
    hta = i.options.hta_compat
    return kernel_breakdown(i.frames, hta_compat=hta, prep=None if hta else i.prep)


def _pipeline(i: Inputs) -> Built:
    if i.pipeline_ops.is_empty():
        return NO_PIPELINE
    return bubble_table(i.frames, prep=i.prep)


def _pipeline_ops(i: Inputs) -> Built:
    return i.pipeline_ops if i.pipeline_ops.height else NO_PIPELINE


def _traffic_table(key: str) -> Callable[[Inputs], Built]:
    def build(i: Inputs) -> Built:
        if i.frames.comm_meta.is_empty():
            return NO_TRAFFIC
        df = i.traffic[key]
        return df if df.height else NO_TRAFFIC

    return build


def _traffic_matrix(i: Inputs) -> Built:
    if i.frames.comm_meta.is_empty():
        return NO_TRAFFIC
    pairs = i.traffic["pairs"]
    if pairs.is_empty():
        return NO_TRAFFIC
    return (
        pairs.group_by("src_rank", "dst_rank", "link", "phase")
        .agg(pl.col("bytes").sum())
        .sort("src_rank", "dst_rank", "link", "phase", nulls_last=True)
    )


def _routing(i: Inputs) -> Built:
    table = routing_table(i.frames.meta.get("manifest") or {})
    return table if table.height else (
        "no routing statistics (only overlapscope's MoE workloads record them in run.json)")


def _warp_table(attr: str) -> Callable[[Inputs], Built]:
    def build(i: Inputs) -> Built:
        if i.frames.warp_events.is_empty():
            return NO_WARPS
        return getattr(i.warps, attr)

    return build


def _skew(i: Inputs) -> Built:
    if i.raw.ranks.height < 2:
        return "a single rank: there is no clock skew to estimate"
    res = i.skew
    if res is None or not res.has_anchors:
        return ("no cross-rank anchors (synchronising collectives or matched send/recv "
                "pairs) to estimate clock skew from")
    return res.table


def _stragglers(i: Inputs) -> Built:
    from overlapscope.analyzers.stragglers import straggler_table

    if i.raw.ranks.height < 2:
        return "a single rank: nobody to be late against"
    return straggler_table(i.aligned)


#: table name -> builder (the registry in report.py declares the rest).
BUILDERS: dict[str, Callable[[Inputs], Built]] = {
    "summary": _summary,
    "streams": _streams,
    "annotations": _annotations,
    "kernels": _kernels,
    "worst_kernels": _worst_kernels,
    "sm_split": _sm_split,
    "temporal_breakdown": _temporal,
    "kernel_breakdown": _kernel_breakdown,
    "pipeline": _pipeline,
    "pipeline_ops": _pipeline_ops,
    "traffic": _traffic_table("per_rank"),
    "traffic_by_collective": _traffic_table("per_collective"),
    "traffic_by_phase": _traffic_table("per_phase"),
    "traffic_matrix": _traffic_matrix,
    "routing": _routing,
    "warp_roles": _warp_table("roles"),
    "warp_links": _warp_table("links"),
    "warp_rings": _warp_table("rings"),
    "warp_diagnosis": _warp_table("diagnosis"),
    "skew": _skew,
    "stragglers": _stragglers,
}
