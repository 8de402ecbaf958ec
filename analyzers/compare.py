"""N runs -> one table of headline metrics and their deltas against a baseline; kernel and
annotation diffs; per-step samples and regression gates that respect noise.

>>> from overlapscope.analyzers.compare import compare, load_runs    # doctest: +SKIP
>>> runs, errors = load_runs(["runs/before", "runs/after"])          # doctest: +SKIP
>>> compare([r.report for r in runs], baseline=0, by="run")          # doctest: +SKIP

Metrics are those declared in :data:`~overlapscope.analyzers.report.METRICS` (same
names, units and directions); per phase (rolled-up annotation names such as
``dispatch(B)`` or ``dualpipe:F:mb=*:stage=*``) and per kernel (comm kernels) only
the subset in :data:`~overlapscope.analyzers.gates.PHASE_METRICS` /
:data:`~overlapscope.analyzers.gates.KERNEL_METRICS` is defined.

Noise: when a run holds several ``ProfilerStep#N`` annotations (and no custom
window was asked), each step is also analyzed alone (``window=^ProfilerStep#N$``,
frames decoded once) and its metrics are one *sample*; changes are then tested
with :func:`~overlapscope.analyzers.stats.significance`.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from overlapscope.analyzers import batch
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.gates import KERNEL_METRICS, PHASE_METRICS, Gate
from overlapscope.analyzers.inputs import ReportOptions
from overlapscope.analyzers.report import METRICS, Report, build_report
from overlapscope.analyzers.stats import significance

By = Literal["run", "rank", "phase", "kernel"]
STEP_RE = r"^ProfilerStep#\d+$"
#: Tables rebuilt for each step (the ones whose metrics follow the analysis window).
STEP_TABLES = ["summary", "annotations", "kernels"]
#: A kernel or annotation diff row changed when its time moved by more than this.
DIFF_REL = 0.05


# --------------------------------------------------------------------------- loading


@dataclass
class RunData:
    """One analyzed run: its Report and, when it holds several steps, one small Report
    per step (``steps``: (step number, Report with summary/annotations/kernels built
    for that step's window and the pipeline rows of that step))."""

    path: str
    report: Report
    steps: list[tuple[int, Report]] = field(default_factory=list)

    @property
    def ranks(self) -> int:
        """Rank traces the run was built from."""
        return int(self.report.facts.get("ranks", 0) or 0)


def step_reports(frames: Any, options: ReportOptions, full: Report) -> list[tuple[int, Report]]:
    """One Report per ``ProfilerStep#N`` of ``frames`` (empty with fewer than 2 steps
    or a custom window): the window-following tables rebuilt on that step alone,
    plus the full report's ``pipeline`` rows of that step."""
    if options.window is not None or frames.annotations.is_empty():
        return []
    names = (frames.annotations.filter(pl.col("name").str.contains(STEP_RE))["name"]
             .unique().to_list())
    steps = sorted(int(n.rsplit("#", 1)[1]) for n in names)
    if len(steps) < 2:
        return []
    pipe = full.tables.get("pipeline")
    out: list[tuple[int, Report]] = []
    for s in steps:
        rep = build_report(frames, replace(options, window=f"^ProfilerStep#{s}$"),
                           tables=STEP_TABLES)
        if pipe is not None and "step" in pipe.columns:
            rows = pipe.filter(pl.col("step") == s)
            if rows.height:
                rep.tables["pipeline"] = rows
        out.append((s, rep))
    return out


def _with_steps(res: batch.RunResult | TraceError, options: ReportOptions,
                samples: bool) -> RunData | TraceError:
    if isinstance(res, TraceError):
        return res
    try:
        steps = step_reports(res.frames, options, res.report) if samples else []
    except TraceError as exc:
        return exc
    return RunData(res.path, res.report, steps)


def load_runs(
    paths: Iterable[str | Path],
    *,
    options: ReportOptions | None = None,
    samples: bool = True,
    cache: bool = True,
    on_error: batch.OnError = "collect",
    progress: batch.ProgressFn | None = None,
    workers: int | None = None,
    engine: batch.Engine = "local",
    address: str | None = None,
) -> tuple[list[RunData], list[TraceError]]:
    """Analyze runs for comparison with the batch API's engines and failure policy.

    Same engines as :func:`overlapscope.analyzers.analyze` (local process pool,
    default workers, or Ray tasks that receive paths); each run is decoded once
    and, with ``samples``, also analyzed per step. Returns (runs in input order,
    errors); ``on_error="raise"`` raises the first TraceError.
    """
    finish = functools.partial(_with_steps, samples=samples)
    return batch.map_runs(
        paths, options or ReportOptions(), finish=finish, cache=cache, keep_frames=samples,
        on_error=on_error, progress=progress, workers=workers, engine=engine, address=address,
    )


# --------------------------------------------------------------------------- metrics


def _ms_mean(col: str) -> pl.Expr:
    return pl.col(col).cast(pl.Float64).mean() / 1e6


def _pooled(num: str, den: str) -> pl.Expr:
    d = pl.col(den).cast(pl.Float64).sum()
    return pl.when(d > 0).then(pl.col(num).cast(pl.Float64).sum() / d)


_PHASE_EXPR = {
    "overlap_ratio": _pooled("comm_hidden_ns", "comm_busy_ns"),
    "exposed_comm_ms": _ms_mean("exposed_comm_ns"),
    "comm_busy_ms": _ms_mean("comm_busy_ns"),
    "compute_busy_ms": _ms_mean("compute_busy_ns"),
}
_KERNEL_EXPR = {
    "overlap_ratio": _pooled("hidden_ns", "dur_ns"),
    "exposed_comm_ms": (pl.col("dur_ns") - pl.col("hidden_ns")).cast(pl.Float64).mean() / 1e6,
    "comm_busy_ms": _ms_mean("dur_ns"),
}
assert set(_PHASE_EXPR) == set(PHASE_METRICS) and set(_KERNEL_EXPR) == set(KERNEL_METRICS)


def metric_names(by: str) -> list[str]:
    """Metrics defined at level ``by`` (run, rank, phase, kernel), in METRICS order."""
    allowed = {"phase": PHASE_METRICS, "kernel": KERNEL_METRICS}.get(by)
    return [m for m in METRICS if allowed is None or m in allowed]


def key_columns(by: str, per_rank: bool = False) -> list[str]:
    """Columns identifying a row at level ``by`` (``per_rank`` adds rank to phase/kernel)."""
    if by == "run":
        return []
    if by == "rank":
        return ["rank"]
    return ["rank", by] if per_rank else [by]


def level_metrics(report: Report, by: str = "run", per_rank: bool = False) -> pl.DataFrame:
    """Headline metrics of one report at level ``by``: key columns then one Float64
    column per metric of :func:`metric_names` (units as in METRICS; ms = mean per GPU).

    ``phase``: rows of the annotations table (rolled-up names) pooled over ranks
    (per rank with ``per_rank``); ``kernel``: rows of the kernels table (comm kernels).
    """
    if by in ("run", "rank"):
        return report.metrics(by)  # type: ignore[arg-type]
    table, exprs = ("annotations", _PHASE_EXPR) if by == "phase" else ("kernels", _KERNEL_EXPR)
    keys = key_columns(by, per_rank)
    schema = {k: (pl.Int32 if k == "rank" else pl.Utf8) for k in keys}
    schema.update({m: pl.Float64 for m in metric_names(by)})
    df = report.tables.get(table)
    if df is None or df.is_empty():
        return pl.DataFrame(schema=schema)
    df = df.rename({"name": by}).with_columns(pl.col("rank").cast(pl.Int32))
    out = df.group_by(keys).agg(e.alias(m) for m, e in exprs.items())
    return out.select(list(schema)).cast(schema).sort(keys)  # type: ignore[arg-type]


def step_samples(steps: Sequence[tuple[int, Report]], by: str = "run",
                 per_rank: bool = False) -> pl.DataFrame:
    """Metrics of each step report at level ``by``, with a leading ``step`` column."""
    parts = [level_metrics(r, by, per_rank).with_columns(pl.lit(s, pl.Int64).alias("step"))
             for s, r in steps]
    if not parts:
        return pl.DataFrame()
    df = pl.concat(parts, how="diagonal_relaxed")
    return df.select("step", *[c for c in df.columns if c != "step"])


# --------------------------------------------------------------------------- compare


def run_labels(paths: Sequence[str]) -> list[str]:
    """Short, unique labels: the shortest trailing path parts that tell runs apart."""
    parts = [Path(p).parts or (p,) for p in paths]
    for k in range(1, max((len(x) for x in parts), default=1) + 1):
        labels = ["/".join(x[-k:]) for x in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{p}#{i}" for i, p in enumerate(paths)]


def compare(
    reports: Sequence[Report],
    *,
    baseline: int = 0,
    by: By = "run",
    steps: Sequence[Sequence[tuple[int, Report]]] | None = None,
    labels: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> pl.DataFrame:
    """One row per run (and per rank / phase / kernel) with every metric and its delta.

    Columns: ``run`` (label), ``is_baseline``, ``ranks`` (rank traces used),
    ``steps`` (per-step samples, 0 when none), the key column for ``by``, then for
    each metric ``m``: ``m`` (value, METRICS unit), ``m_delta`` (value - baseline's),
    ``m_rel`` (delta / |baseline|, null when the baseline is 0 or missing) and, when
    ``steps`` are given, ``m_p`` (two-sided p-value of the step samples' difference,
    null when not assessable). A row present in only one of the two runs has nulls
    on the other side (appeared / disappeared phases or kernels).
    """
    if not reports:
        raise ValueError("compare needs at least one report")
    if not 0 <= baseline < len(reports):
        raise ValueError(f"baseline {baseline} out of range for {len(reports)} reports")
    labels = list(labels) if labels is not None else run_labels([r.source for r in reports])
    keys = key_columns(by)
    names = metric_names(by)
    base = level_metrics(reports[baseline], by)
    base_samples = _sample_lists(steps[baseline], by, keys, names) if steps else None
    frames = []
    for i, rep in enumerate(reports):
        cur = level_metrics(rep, by)
        if keys:
            joined = cur.join(base, on=keys, how="full", suffix="_base", coalesce=True)
        else:
            joined = cur.join(base, how="cross", suffix="_base")
        cols: list[pl.Expr] = []
        for m in names:
            b = pl.col(f"{m}_base")
            cols += [pl.col(m), (pl.col(m) - b).alias(f"{m}_delta"),
                     pl.when(b != 0).then((pl.col(m) - b) / b.abs()).alias(f"{m}_rel")]
        n_steps = len(steps[i]) if steps else 0
        row = joined.select(
            pl.lit(labels[i]).alias("run"), pl.lit(i == baseline).alias("is_baseline"),
            pl.lit(int(rep.facts.get("ranks", 0) or 0), pl.Int64).alias("ranks"),
            pl.lit(n_steps, pl.Int64).alias("steps"), *[pl.col(k) for k in keys], *cols,
        )
        if steps is not None and base_samples is not None:
            row = _add_p_values(row, base_samples, _sample_lists(steps[i], by, keys, names),
                                keys, names, alpha)
        frames.append(row.sort(keys) if keys else row)
    return pl.concat(frames, how="diagonal_relaxed")


def _sample_lists(steps: Sequence[tuple[int, Report]], by: str, keys: list[str],
                  names: list[str]) -> pl.DataFrame | None:
    df = step_samples(steps, by)
    if df.is_empty():
        return None
    agg = [pl.col(m).drop_nulls().alias(m) for m in names if m in df.columns]
    if keys:
        return df.group_by(keys).agg(agg)
    return df.select(e.implode() for e in agg)


def _add_p_values(row: pl.DataFrame, base: pl.DataFrame | None, cur: pl.DataFrame | None,
                  keys: list[str], names: list[str], alpha: float) -> pl.DataFrame:
    if base is None or cur is None:
        return row.with_columns(pl.lit(None, pl.Float64).alias(f"{m}_p") for m in names)
    both = (cur.join(base, on=keys, how="left", suffix="_b") if keys
            else cur.join(base, how="cross", suffix="_b"))
    lookup = {tuple(r[k] for k in keys): r for r in both.iter_rows(named=True)}
    out: dict[str, list[float | None]] = {f"{m}_p": [] for m in names}
    for r in row.select(keys).iter_rows(named=True) if keys else [{}] * row.height:
        s = lookup.get(tuple(r[k] for k in keys))
        for m in names:
            a = (s or {}).get(f"{m}_b") or []
            b = (s or {}).get(m) or []
            out[f"{m}_p"].append(significance(a, b, alpha=alpha).p_value)
    return row.with_columns(pl.Series(k, v, pl.Float64) for k, v in out.items())


# --------------------------------------------------------------------------- diffs


def _family(name: str) -> str:
    """A kernel name's family: the part before template/argument lists, numbers -> '*'."""
    stem = re.split(r"[<(]", name, maxsplit=1)[0]
    return re.sub(r"\d+", "*", stem).strip()


def _times(report: Report) -> tuple[pl.DataFrame, pl.DataFrame]:
    ranks = max(1, int(report.facts.get("ranks", 1) or 1))
    kb = report.tables.get("kernel_breakdown")
    if kb is not None and kb.height:
        k = kb.group_by("name").agg(pl.col("count").sum(), pl.col("sum_ns").sum().alias("t"))
    elif (kt := report.tables.get("kernels")) is not None and kt.height:
        k = kt.group_by("name").agg(pl.col("count").sum(), pl.col("dur_ns").sum().alias("t"))
    else:
        k = pl.DataFrame(schema={"name": pl.Utf8, "count": pl.Int64, "t": pl.Int64})
    an = report.tables.get("annotations")
    if an is not None and an.height:
        t = pl.coalesce(pl.col("gpu_span_ns"), pl.col("cpu_dur_ns"))
        a = an.group_by("name").agg(pl.col("instances").sum().alias("count"), t.sum().alias("t"))
    else:
        a = pl.DataFrame(schema={"name": pl.Utf8, "count": pl.Int64, "t": pl.Int64})

    def norm(df: pl.DataFrame) -> pl.DataFrame:
        return df.select(pl.col("name").cast(pl.Utf8), pl.col("count").cast(pl.Int64),
                         (pl.col("t").cast(pl.Float64) / 1e6 / ranks).alias("ms"))

    return norm(k), norm(a)


def _diff(kind: str, base: pl.DataFrame, cur: pl.DataFrame, rel: float) -> pl.DataFrame:
    j = base.join(cur, on="name", how="full", suffix="_new", coalesce=True)
    j = j.with_columns(pl.lit("name").alias("matched_by"))
    if kind == "kernel":  # unmatched names: pair by family when it is unique on both sides
        gone = j.filter(pl.col("ms_new").is_null())
        new = j.filter(pl.col("ms").is_null())
        fam_g = gone.with_columns(pl.col("name").map_elements(_family, pl.Utf8).alias("fam"))
        fam_n = new.with_columns(pl.col("name").map_elements(_family, pl.Utf8).alias("fam"))
        uniq_g = fam_g.filter(pl.col("fam").is_unique())
        uniq_n = fam_n.filter(pl.col("fam").is_unique())
        pairs = uniq_g.select("fam", "name", "count", "ms").join(
            uniq_n.select("fam", pl.col("name").alias("name_new"),
                          pl.col("count_new"), pl.col("ms_new")), on="fam")
        if pairs.height:
            used = set(pairs["name"]) | set(pairs["name_new"])
            paired = pairs.select(
                (pl.col("name") + " -> " + pl.col("name_new")).alias("name"), "count", "ms",
                "count_new", "ms_new", pl.lit("family").alias("matched_by"))
            j = pl.concat([j.filter(~pl.col("name").is_in(list(used))), paired],
                          how="diagonal_relaxed")
    d = pl.col("ms_new") - pl.col("ms")
    status = (pl.when(pl.col("ms").is_null()).then(pl.lit("appeared"))
              .when(pl.col("ms_new").is_null()).then(pl.lit("disappeared"))
              .when(d > rel * pl.col("ms").abs()).then(pl.lit("slower"))
              .when(d < -rel * pl.col("ms").abs()).then(pl.lit("faster"))
              .otherwise(pl.lit("same")))
    # A name found on one side only was not matched at all.
    matched = pl.when(pl.col("ms").is_null() | pl.col("ms_new").is_null()).then(None).otherwise(
        pl.col("matched_by"))
    return j.select(
        pl.lit(kind).alias("kind"), "name", status.alias("status"), matched.alias("matched_by"),
        pl.col("count").alias("base_count"), "count_new", pl.col("ms").alias("base_ms"),
        "ms_new", d.alias("delta_ms"),
        pl.when(pl.col("ms") != 0).then(d / pl.col("ms").abs()).alias("rel"),
    ).rename({"count_new": "count", "ms_new": "ms"})


def diff_kernels(base: Report, other: Report, *, rel: float = DIFF_REL) -> pl.DataFrame:
    """What appeared, disappeared, got slower or faster from ``base`` to ``other``.

    Rows for kernels (all GPU kernels from ``kernel_breakdown`` when present, else
    the comm kernels / host comm ops of ``kernels``) and for annotations (rolled-up
    names; time = GPU span, else host time). Times are ms per rank (total / rank
    traces). Kernels are matched by name; names left unmatched on both sides are
    paired by family (name before ``<``/``(``, digits as ``*``) when that family is
    unique on each side (``matched_by="family"``). ``status``: appeared,
    disappeared, slower / faster (time moved by more than ``rel`` of the base) or
    same. Sorted by kind, then |delta| (appeared/disappeared by their time).
    """
    kb, ab = _times(base)
    ko, ao = _times(other)
    out = pl.concat([_diff("kernel", kb, ko, rel), _diff("annotation", ab, ao, rel)],
                    how="diagonal_relaxed")
    size = pl.coalesce(pl.col("delta_ms").abs(), pl.col("ms"), pl.col("base_ms"))
    return (out.with_columns(size.alias("_s"))
            .sort(["kind", "_s", "name"], descending=[True, True, False]).drop("_s"))


# --------------------------------------------------------------------------- gates


@dataclass
class GateRow:
    """One checked row of a gate: the run, its key (e.g. rank=3), the value, the
    baseline's value, the change (fraction for %, fraction for pp, or None) and the
    outcome: pass, fail, not significant or no data; ``detail`` says why."""

    run: str
    key: str
    value: float | None
    base: float | None
    change: float | None
    outcome: str
    detail: str = ""


@dataclass
class GateResult:
    """A gate's verdict over every compared run: ``status`` is fail when any row
    fails; else not significant when any row is; else no data when no row had a
    value; else pass."""

    gate: Gate
    status: str
    rows: list[GateRow]

    @property
    def failing(self) -> list[GateRow]:
        """The rows that fail."""
        return [r for r in self.rows if r.outcome == "fail"]


def _match(pattern: str, value: Any) -> bool:
    if pattern == "*":
        return True
    s = str(value)
    return s == pattern or fnmatch.fnmatchcase(s, pattern)


def _select(df: pl.DataFrame, gate: Gate, keys: list[str]) -> pl.DataFrame:
    if df.is_empty():
        return df
    for k in keys:
        pat = gate.selectors.get(k, "*")
        if pat != "*":
            exact = df.filter(pl.col(k).cast(pl.Utf8) == pat)
            df = exact if exact.height else df.filter(
                pl.col(k).map_elements(lambda v, p=pat: _match(p, v), pl.Boolean))
    return df


def check_gate(gate: Gate, runs: Sequence[RunData], *, baseline: int = 0,
               alpha: float = 0.05, labels: Sequence[str] | None = None) -> GateResult:
    """Evaluate ``gate`` on every run but the baseline (on the run, when only one).

    Absolute gates fail where the value meets the condition. Relative (``%``: change
    / |baseline|) and pp (change x 100 of a fraction) gates compare against the
    baseline run's matching row; when both runs hold per-step samples a change that
    meets the condition fails only if it is also significant at ``alpha``
    (Mann-Whitney U, or bootstrap CI with fewer than 5 steps a side); otherwise it is
    "not significant". Without samples (one step) the condition alone decides.
    """
    labels = list(labels) if labels is not None else run_labels([r.path for r in runs])
    level, per_rank = gate.level, gate.per_rank
    keys = key_columns(level, per_rank)
    m = gate.metric
    base_run = runs[baseline]
    base = _select(level_metrics(base_run.report, level, per_rank), gate, keys)
    base_s = step_samples(base_run.steps, level, per_rank) if gate.compared else pl.DataFrame()
    rows: list[GateRow] = []
    for i, run in enumerate(runs):
        if i == baseline and len(runs) > 1:
            continue
        cur = _select(level_metrics(run.report, level, per_rank), gate, keys)
        cur_s = step_samples(run.steps, level, per_rank) if gate.compared else pl.DataFrame()
        if gate.selectors and cur.is_empty():
            rows.append(GateRow(labels[i], _key_text(gate.selectors), None, None, None,
                                "no data", "no row matches the selector"))
            continue
        bmap = {tuple(r[k] for k in keys): r[m] for r in base.iter_rows(named=True)}
        for r in cur.iter_rows(named=True):
            k = tuple(r[c] for c in keys)
            key = ",".join(f"{c}={v}" for c, v in zip(keys, k, strict=True)) or "run"
            rows.append(_check_row(gate, labels[i], key, r[m], bmap.get(k),
                                   _samples(base_s, keys, k, m), _samples(cur_s, keys, k, m),
                                   alpha))
    outcomes = {r.outcome for r in rows}
    status = ("fail" if "fail" in outcomes else "not significant" if "not significant" in outcomes
              else "pass" if "pass" in outcomes else "no data")
    return GateResult(gate, status, rows)


def _key_text(sel: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sel.items())


def _samples(df: pl.DataFrame, keys: list[str], key: tuple[Any, ...], m: str) -> list[float]:
    if df.is_empty() or m not in df.columns:
        return []
    for c, v in zip(keys, key, strict=True):
        df = df.filter(pl.col(c) == v)
    return df[m].drop_nulls().to_list()


def _check_row(gate: Gate, run: str, key: str, value: float | None, base: float | None,
               base_s: list[float], cur_s: list[float], alpha: float) -> GateRow:
    if value is None:
        return GateRow(run, key, None, base, None, "no data", f"{gate.metric} has no value")
    if not gate.compared:
        out = "fail" if gate.holds(value) else "pass"
        return GateRow(run, key, value, base, None, out)
    if base is None:
        return GateRow(run, key, value, None, None, "no data", "no baseline value")
    if gate.kind == "relative":
        if base == 0:
            return GateRow(run, key, value, base, None, "no data", "baseline is 0")
        change = (value - base) / abs(base)
    else:
        change = value - base
    if not gate.holds(change):
        return GateRow(run, key, value, base, change, "pass")
    sig = significance(base_s, cur_s, alpha=alpha)
    if sig.significant is None:
        return GateRow(run, key, value, base, change, "fail", sig.detail)
    step_diff = float(np.median(cur_s) - np.median(base_s))
    if sig.significant and step_diff * (value - base) > 0:
        return GateRow(run, key, value, base, change, "fail", sig.detail)
    if sig.significant:  # the steps moved the other way: an outlier step drives the total
        return GateRow(run, key, value, base, change, "not significant",
                       f"{sig.detail}; median step moved the other way ({step_diff:+.4g})")
    return GateRow(run, key, value, base, change, "not significant", sig.detail)
