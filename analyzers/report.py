"""Report: the declared registry of tables and headline metrics, and one Report per run.

Every table the toolkit shows is declared once in :data:`TABLES` (its builder, its
columns, a one-line meaning, and why it may not apply); every headline metric once in
:data:`METRICS` (stable name, unit, which direction is better, how it is computed from
its table). The CLI, the dashboard and ``compare`` read these declarations; nothing
else decides which tables exist.

``build_report(frames, options)`` computes a Report in one pass: the frames are
classified once, work items and the analysis window prepared once (:class:`Inputs`),
and each declared table is built from them. A table that does not apply to the trace
is listed in ``Report.not_applicable`` with the reason; a builder that raises is a bug
and lands in ``Report.failures`` (the CLI exits 3), never silently absent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import polars as pl

from overlapscope.analyzers.columns import column_meaning, column_unit
from overlapscope.analyzers.options import ReportOptions

# The analyses (Inputs, the table builders) are imported where a Report is built, not
# here: the CLI reads the declarations and reopens cached Reports without them.
if TYPE_CHECKING:
    from overlapscope.analyzers.inputs import Inputs

__all__ = [
    "METRICS",
    "TABLES",
    "Inputs",
    "Metric",
    "Report",
    "ReportOptions",
    "TableSpec",
    "build_report",
]

Better = Literal["higher", "lower", "neutral"]


@dataclass(frozen=True)
class TableSpec:
    """One declared table: name, meaning, builder, columns and display choices.

    ``columns``: every column the builder returns, in order (units come from the
    name suffix, meanings from :mod:`overlapscope.analyzers.columns`). ``display``:
    the columns a terminal shows, most important first (narrow terminals drop from
    the end). ``keys``: the columns that identify a row (for compare and joins).
    """

    name: str
    meaning: str
    columns: tuple[str, ...]
    display: tuple[str, ...]
    keys: tuple[str, ...]
    default: bool = False

    @property
    def build(self) -> Callable[[Inputs], pl.DataFrame | str]:
        """The builder: returns the table, or a string saying why it does not apply."""
        from overlapscope.analyzers.tables import BUILDERS

        return BUILDERS[self.name]

    def unit(self, column: str) -> str:
        """Unit of ``column`` (ns, bytes, fraction, count, GB/s, percent, or '')."""
        return column_unit(column)

    def describe(self, column: str) -> str:
        """One-line meaning of ``column``."""
        return column_meaning(column)


def _t(name: str, meaning: str, columns: str, display: str, keys: str, default: bool = False):
    return TableSpec(
        name, meaning, tuple(columns.split()), tuple(display.split()), tuple(keys.split()),
        default,
    )


_DEV = "rank device"
#: Every table, in display order.
TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        _t(
            "summary",
            "Overlap per GPU (per host for CPU traces) inside the analysis window",
            f"{_DEV} span_ns compute_busy_ns comm_busy_ns overlap_ns overlap_ratio "
            "exposed_comm_ns exposed_fraction idle_ns overlap_memory_ns memory_busy_ns "
            "busy_ns win_start_ns win_end_ns from_annotation",
            f"{_DEV} span_ns compute_busy_ns comm_busy_ns overlap_ratio exposed_comm_ns "
            "exposed_fraction idle_ns overlap_memory_ns",
            _DEV,
            default=True,
        ),
        _t(
            "streams",
            "Per stream (thread on CPU): busy time and how much of its comm is hidden",
            f"{_DEV} stream stream_role comm_type n_items n_comm busy_ns comm_busy_ns "
            "overlap_ns overlap_ratio exposed_comm_ns",
            f"{_DEV} stream stream_role comm_type busy_ns comm_busy_ns overlap_ratio "
            "exposed_comm_ns",
            f"{_DEV} stream",
            default=True,
        ),
        _t(
            "annotations",
            "Per annotation (instances rolled up by pattern): its comm and what hides it",
            f"{_DEV} name instances cpu_dur_ns gpu_span_ns comm_busy_ns compute_busy_ns "
            "comm_hidden_ns exposed_comm_ns overlap_ratio paired_with first_start_ns",
            f"{_DEV} name instances comm_busy_ns overlap_ratio exposed_comm_ns gpu_span_ns "
            "paired_with cpu_dur_ns",
            f"{_DEV} name",
            default=True,
        ),
        _t(
            "kernels",
            "Comm kernels (comm ops on CPU) by name: share of their time hidden",
            f"{_DEV} name comm_type count dur_ns hidden_ns coverage worst_coverage",
            f"{_DEV} name count dur_ns coverage worst_coverage comm_type",
            f"{_DEV} name",
            default=True,
        ),
        _t(
            "worst_kernels",
            "The least hidden comm kernel instances",
            f"{_DEV} stream name comm_type start_ns dur_ns hidden_ns coverage",
            f"{_DEV} name dur_ns coverage start_ns stream",
            f"{_DEV} stream start_ns",
        ),
        _t(
            "sm_split",
            "SMs held by comm kernels vs the largest persistent GEMM grid vs the GPU's SMs",
            f"{_DEV} num_sms comm_sms comm_kernel compute_cap_sms comm_share",
            f"{_DEV} num_sms comm_sms compute_cap_sms comm_share comm_kernel",
            _DEV,
            default=True,
        ),
        _t(
            "temporal_breakdown",
            "Window time split into compute / comm / memory / idle (HTA-style)",
            f"{_DEV} window_ns compute_ns comm_ns memory_ns other_ns idle_ns non_compute_ns "
            "compute_pct comm_pct memory_pct other_pct idle_pct non_compute_pct "
            "window_start_ns window_end_ns",
            f"{_DEV} window_ns compute_pct comm_pct memory_pct idle_pct",
            _DEV,
        ),
        _t(
            "kernel_breakdown",
            "GPU time by kind and kernel name (HTA-style kernel statistics)",
            "rank kind name comm_type count sum_ns mean_ns min_ns max_ns std_ns pct_of_kind",
            "rank kind name count sum_ns mean_ns pct_of_kind",
            "rank kind name",
        ),
        _t(
            "pipeline",
            "Pipeline bubble per step and rank, against the schedule's formula",
            "step rank schedule pp n_ops window_ns busy_ns bubble_ns bubble_fraction t_f_ns "
            "t_b_ns t_w_ns t_fb_ns theory_bubble_ns measured_over_theory delta_ns "
            "peak_activations activation_bound first_divergence expected_op observed_op "
            "conforms",
            "step rank schedule bubble_ns bubble_fraction theory_bubble_ns "
            "measured_over_theory peak_activations activation_bound conforms",
            "step rank",
        ),
        _t(
            "pipeline_ops",
            "Every schedule op (F, B, I, W, FB) with its time span, per rank",
            "step rank pos schedule op mb stage mb_b stage_b label start_ns end_ns dur_ns",
            "step rank pos op label start_ns dur_ns",
            "step rank pos",
        ),
        _t(
            "traffic",
            "Bytes sent per source rank by link class (local / NVLink / IB)",
            "src_rank total_bytes ib_bytes nvl_bytes local_bytes unknown_bytes "
            "estimated_bytes ib_fraction",
            "src_rank total_bytes ib_bytes nvl_bytes local_bytes ib_fraction",
            "src_rank",
        ),
        _t(
            "traffic_by_collective",
            "Bytes by link class per collective / exchange kind",
            "collective total_bytes ib_bytes nvl_bytes local_bytes unknown_bytes "
            "estimated_bytes ib_fraction",
            "collective total_bytes ib_bytes nvl_bytes local_bytes ib_fraction",
            "collective",
        ),
        _t(
            "traffic_by_phase",
            "Bytes by link class per source rank and phase (dispatch(F), combine(B), ...)",
            "src_rank phase total_bytes ib_bytes nvl_bytes local_bytes unknown_bytes "
            "estimated_bytes ib_fraction",
            "src_rank phase total_bytes ib_bytes nvl_bytes ib_fraction",
            "src_rank phase",
        ),
        _t(
            "traffic_matrix",
            "Bytes per (source rank, destination rank), link class and phase",
            "src_rank dst_rank link phase bytes",
            "src_rank dst_rank link phase bytes",
            "src_rank dst_rank link phase",
        ),
        _t(
            "routing",
            "Node-limited routing per rank: tokens the node limit redirected, IB bytes saved",
            "rank nodes max_nodes dispatches tokens tokens_redirected redirected_fraction "
            "ib_bytes ib_bytes_unlimited ib_bytes_saved nvl_bytes nvl_bytes_unlimited",
            "rank max_nodes tokens tokens_redirected redirected_fraction ib_bytes "
            "ib_bytes_saved nvl_bytes",
            "rank",
        ),
        _t(
            "warp_roles",
            "Per warp role of instrumented dispatch kernels: busy and wait-reason fractions",
            "rank role stage n_warps start_ns end_ns lifetime_ns busy_ns wait_ns "
            "unrecorded_ns busy_frac wait_frac unrecorded_frac busy_of_span_frac "
            "wait_remote_head_frac wait_tail_frac wait_meta_frac wait_window_lock_frac "
            "idle_sleep_frac",
            "rank role n_warps busy_frac wait_remote_head_frac wait_tail_frac "
            "wait_meta_frac idle_sleep_frac busy_of_span_frac",
            "rank role",
        ),
        _t(
            "warp_links",
            "Bytes and achieved bandwidth per link class against its limit",
            "rank link n_events bytes first_ns last_ns active_ns achieved_gbps span_gbps "
            "limit_gbps util_frac span_util_frac",
            "rank link bytes achieved_gbps limit_gbps util_frac span_util_frac",
            "rank link",
        ),
        _t(
            "warp_rings",
            "Ring buffers: time full / empty and occupancy",
            "rank kind channel peer source window_ns mean_occupancy max_occupancy "
            "full_frac empty_frac",
            "rank kind channel peer full_frac empty_frac mean_occupancy max_occupancy",
            "rank kind channel peer",
        ),
        _t(
            "warp_diagnosis",
            "The bottleneck role or link, in words, with a remedy",
            "rank kind rule subject value_frac primary text remedy",
            "rank subject value_frac text remedy",
            "rank kind subject",
        ),
        _t(
            "skew",
            "Clock offset and drift per rank against the lowest rank, from cross-rank anchors",
            "rank offset_ns drift_ppm uncertainty_ns anchors_used violations_before "
            "violations_after",
            "rank offset_ns drift_ppm uncertainty_ns anchors_used violations_before "
            "violations_after",
            "rank",
        ),
        _t(
            "stragglers",
            "Per step, rank and collective or send/recv peer: arrival lateness, waiting "
            "caused, the phase that made the rank late, and the step time without that "
            "lateness",
            "step rank collective n_collectives mean_lateness_ns max_lateness_ns waited_ns "
            "others_waited_ns times_last cause_phase cause_excess_ns cause_wait_ns step_ns "
            "whatif_step_ns straggler",
            "step rank collective straggler max_lateness_ns others_waited_ns cause_phase "
            "whatif_step_ns step_ns",
            "step rank collective",
        ),
    )
}


@dataclass(frozen=True)
class Metric:
    """A headline metric: a stable name users gate on, with unit and direction.

    ``value`` is a polars aggregation over the rows of ``table`` (the whole run, or
    the rows of one rank for per-rank values).
    """

    name: str
    unit: str
    better: Better
    table: str
    value: pl.Expr
    meaning: str


def _ratio(num: str, den: str) -> pl.Expr:
    d = pl.col(den).sum()
    return pl.when(d > 0).then(pl.col(num).sum() / d)


def _ms(col: str, how: str = "mean") -> pl.Expr:
    e = pl.col(col).cast(pl.Float64)
    return (e.max() if how == "max" else e.sum() if how == "sum" else e.mean()) / 1e6


def _m(name: str, unit: str, better: Better, table: str, value: pl.Expr, meaning: str):
    return Metric(name, unit, better, table, value.alias(name), meaning)


#: Headline metrics, in display order.
METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        _m("overlap_ratio", "fraction", "higher", "summary", _ratio("overlap_ns", "comm_busy_ns"),
           "share of comm busy time hidden under compute kernels (all GPUs pooled)"),
        _m("exposed_comm_ms", "ms", "lower", "summary", _ms("exposed_comm_ns"),
           "comm time not under compute, mean per GPU"),
        _m("exposed_fraction", "fraction", "lower", "summary",
           _ratio("exposed_comm_ns", "span_ns"), "exposed comm / window span (pooled)"),
        _m("comm_busy_ms", "ms", "neutral", "summary", _ms("comm_busy_ns"),
           "time with any comm running, mean per GPU"),
        _m("compute_busy_ms", "ms", "neutral", "summary", _ms("compute_busy_ns"),
           "time with any compute kernel running, mean per GPU"),
        _m("span_ms", "ms", "lower", "summary", _ms("span_ns", "max"),
           "analysis window length, longest GPU"),
        _m("idle_fraction", "fraction", "lower", "summary", _ratio("idle_ns", "span_ns"),
           "window time with nothing running / window span (pooled)"),
        _m("bubble_fraction", "fraction", "lower", "pipeline", _ratio("bubble_ns", "window_ns"),
           "pipeline bubble / step window (all ranks and steps pooled)"),
        _m("bubble_ms", "ms", "lower", "pipeline", _ms("bubble_ns"),
           "pipeline bubble per rank and step, mean"),
        _m("bubble_over_theory", "ratio", "lower", "pipeline",
           pl.col("measured_over_theory").mean(), "measured bubble / formula, mean"),
        _m("ib_bytes", "bytes", "neutral", "traffic", pl.col("ib_bytes").sum(),
           "bytes sent over InfiniBand (all ranks)"),
        _m("nvl_bytes", "bytes", "neutral", "traffic", pl.col("nvl_bytes").sum(),
           "bytes sent over NVLink (all ranks)"),
        _m("ib_fraction", "fraction", "lower", "traffic",
           pl.when((pl.col("ib_bytes").sum() + pl.col("nvl_bytes").sum()) > 0).then(
               pl.col("ib_bytes").sum() / (pl.col("ib_bytes").sum() + pl.col("nvl_bytes").sum())
           ), "IB bytes / (IB + NVLink bytes)"),
        _m("ib_bytes_saved", "bytes", "higher", "routing", pl.col("ib_bytes_saved").sum(),
           "IB bytes the node limit kept off InfiniBand (all ranks)"),
        _m("redirected_fraction", "fraction", "neutral", "routing",
           _ratio("tokens_redirected", "tokens"), "tokens the node limit re-routed / tokens"),
        _m("comm_sms", "count", "lower", "sm_split", pl.col("comm_sms").max(),
           "SMs held by the widest comm kernel"),
        _m("warp_busy_fraction", "fraction", "higher", "warp_roles", pl.col("busy_frac").mean(),
           "busy / lifetime of warp roles, mean over roles"),
    )
}


@dataclass
class Report:
    """One run's tables, the tables that do not apply (with why), failures and facts.

    ``tables``: declared table name -> frame (only those that apply and were built).
    ``not_applicable``: table name -> reason. ``failures``: table name -> error text
    (a bug: the report is incomplete). ``facts``: what the report was computed from
    (ranks, window, definitions). ``notes``: warnings a user should read.
    """

    source: str
    tables: dict[str, pl.DataFrame]
    not_applicable: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """False when some table failed to build."""
        return not self.failures

    def status(self, table: str) -> str:
        """'ok', 'not applicable: <reason>', 'failed: <error>' or 'not computed'."""
        if table in self.tables:
            return "ok"
        if table in self.failures:
            return f"failed: {self.failures[table]}"
        if table in self.not_applicable:
            return f"not applicable: {self.not_applicable[table]}"
        return "not computed"

    def metrics(self, by: Literal["run", "rank"] = "run") -> pl.DataFrame:
        """Headline metrics: one row (``by="run"``) or one row per rank.

        Columns: [rank,] then one Float64 column per metric in :data:`METRICS`
        order; null where the metric's table does not apply.
        """
        parts: list[pl.DataFrame] = []
        rank_col = {"summary": "rank", "pipeline": "rank", "traffic": "src_rank",
                    "routing": "rank",
                    "sm_split": "rank", "warp_roles": "rank"}
        ranks = self._ranks()
        for m in METRICS.values():
            df = self.tables.get(m.table)
            if by == "run":
                val = df.select(m.value.cast(pl.Float64)) if df is not None else None
                parts.append(val if val is not None and val.height else
                             pl.DataFrame({m.name: [None]}, schema={m.name: pl.Float64}))
                continue
            base = pl.DataFrame({"rank": ranks}, schema={"rank": pl.Int32})
            if df is not None and df.height:
                rc = rank_col[m.table]
                vals = (df.group_by(pl.col(rc).cast(pl.Int32).alias("rank"))
                        .agg(m.value.cast(pl.Float64)))
                base = base.join(vals, on="rank", how="left")
            else:
                base = base.with_columns(pl.lit(None, dtype=pl.Float64).alias(m.name))
            parts.append(base.select(m.name) if parts else base)
        return pl.concat(parts, how="horizontal")

    def headline(self) -> dict[str, float | None]:
        """Run-level metrics as a plain dict (metric name -> value or None)."""
        return self.metrics("run").row(0, named=True)

    def _ranks(self) -> list[int]:
        return [int(r) for r in self.facts.get("rank_ids", [])]

    def to_dict(self, tables: list[str] | None = None) -> dict[str, Any]:
        """JSON-ready: facts, notes, headline metrics, table statuses, and the rows of
        ``tables`` (default: every built table)."""
        keep = [k for k in TABLES if k in self.tables and (tables is None or k in tables)]
        return {
            "source": self.source,
            "facts": self.facts,
            "notes": self.notes,
            "metrics": self.headline(),
            "not_applicable": dict(sorted(self.not_applicable.items())),
            "failures": dict(sorted(self.failures.items())),
            "tables": {k: self.tables[k].to_dicts() for k in keep},
        }


def build_report(
    frames: Any, options: ReportOptions | None = None, *, tables: list[str] | None = None
) -> Report:
    """Compute every declared table (or just ``tables``) of one run, in one pass.

    ``frames`` is a :class:`~overlapscope.analyzers.frames.TraceFrames`. Raises
    :class:`~overlapscope.analyzers.errors.WindowError` when ``options.window`` is
    not a valid regex or matches no annotation (bad input, not a bug).
    """
    from overlapscope.analyzers.inputs import Inputs

    inputs = Inputs.create(frames, options or ReportOptions())
    out = Report(source=str(frames.meta.get("source", "")), tables={})
    for name, spec in TABLES.items():
        if tables is not None and name not in tables:
            continue
        try:
            built = spec.build(inputs)
        except Exception as exc:  # noqa: BLE001 - recorded as a failure, never hidden
            out.failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        if isinstance(built, str):
            out.not_applicable[name] = built
        elif built.is_empty():
            out.not_applicable[name] = "no rows for this trace"
        else:
            out.tables[name] = built.select([c for c in spec.columns if c in built.columns]
                                            + [c for c in built.columns if c not in spec.columns])
    out.facts = inputs.facts()
    out.notes = inputs.notes()
    return out


def __getattr__(name: str) -> Any:
    # `Inputs` stays importable from here (it is in __all__) without a top-level import.
    if name == "Inputs":
        from overlapscope.analyzers.inputs import Inputs

        return Inputs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
