"""`overlapscope compare RUN_OR_TRACE ...`: headline metrics and deltas against a baseline,
kernel/annotation diffs and regression gates (``--fail-if``) fit for CI."""

from __future__ import annotations

import math
import sys
import xml.etree.ElementTree as ET
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import msgspec
import polars as pl
import typer
from rich import box
from rich.table import Table
from rich.text import Text

from overlapscope.analyzers import batch
from overlapscope.analyzers.batch_ray import RayEngineError
from overlapscope.analyzers.classify import RuleError
from overlapscope.analyzers.compare import (
    GateResult,
    RunData,
    check_gate,
    compare,
    diff_kernels,
    key_columns,
    load_runs,
    metric_names,
    run_labels,
)
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.gates import GateError, parse_gates
from overlapscope.analyzers.inputs import ReportOptions
from overlapscope.analyzers.report import METRICS
from overlapscope.app import render

#: Same look as analyze's tables: no vertical rules, so piped logs stay clean.
TABLE_STYLE = {"box": box.SIMPLE_HEAD, "show_edge": False, "pad_edge": False}

EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
#: Diff rows shown per compared run in table/markdown output (json has them all).
DIFF_ROWS = 8
#: Metrics shown first when a per-rank/phase/kernel table must drop columns.
PRIORITY = ("overlap_ratio", "exposed_comm_ms", "bubble_fraction", "comm_busy_ms",
            "exposed_fraction", "span_ms", "idle_fraction", "compute_busy_ms")
MARK = {"fail": "FAIL", "pass": "pass", "not significant": "not significant",
        "no data": "no data"}


class Format(StrEnum):
    """Output formats of compare."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"
    junit = "junit"


class By(StrEnum):
    """Row granularity of compare."""

    run = "run"
    rank = "rank"
    phase = "phase"
    kernel = "kernel"


class EngineOpt(StrEnum):
    """Where per-run work runs."""

    local = "local"
    ray = "ray"


# ------------------------------------------------------------------------ formatting


def fmt_value(metric: str, v: float | None) -> str:
    """A metric value in its unit: fractions in %, ms with 3 significant digits."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    unit = METRICS[metric].unit if metric in METRICS else ""
    if v == 0:
        return "0"
    if unit == "fraction":
        return f"{100 * v:.1f}%"
    if unit == "bytes":
        return f"{v / 1e6:,.2f} MB"
    if unit == "count":
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:,.1f}"
    return f"{v:.3g}" if abs(v) >= 0.001 else f"{v:.2e}"


def fmt_change(metric: str, delta: float | None, rel: float | None) -> str:
    """The change: pp for fractions, else relative % (absolute delta when base is 0)."""
    if delta is None:
        return "–"
    if METRICS.get(metric) is not None and METRICS[metric].unit == "fraction":
        return f"{100 * delta:+.1f}pp"
    if rel is None:
        return f"{delta:+.3g}"
    return f"{100 * rel:+.1f}%"


def fmt_p(p: float | None) -> str:
    """A p-value: '–' when not assessed, '<0.001' for tiny ones."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _used_metrics(df: pl.DataFrame, names: list[str]) -> list[str]:
    return [m for m in names if m in df.columns and df[m].null_count() < df.height]


# ------------------------------------------------------------------------ terminal


def _header_lines(runs: list[RunData], labels: list[str], baseline: int, by: str,
                  window: str | None) -> list[str]:
    lines = [f"compare by {by}, baseline: {labels[baseline]}"
             + (f", window {window!r}" if window else "")]
    for i, r in enumerate(runs):
        steps = f", {len(r.steps)} steps as samples" if r.steps else ", 1 sample (no steps)"
        lines.append(f"  {labels[i]}: {r.ranks} rank traces{steps}"
                     + ("  (baseline)" if i == baseline else ""))
    return lines


def _run_table(df: pl.DataFrame, labels: list[str], baseline: int) -> list[Table]:
    """by=run: one table per compared run: metric | baseline | run | change | p."""
    names = _used_metrics(df, metric_names("run"))
    rows = {r["run"]: r for r in df.iter_rows(named=True)}
    base = rows[labels[baseline]]
    others = [lb for i, lb in enumerate(labels) if i != baseline] or [labels[baseline]]
    out = []
    for lb in others:
        r = rows[lb]
        t = Table(title=f"{lb} vs {labels[baseline]}", title_justify="left", **TABLE_STYLE)
        t.add_column("metric", no_wrap=True)
        for c in ("baseline", "this run", "change", "p"):
            t.add_column(c, justify="right", no_wrap=True)
        for m in names:
            t.add_row(m, fmt_value(m, base[m]), fmt_value(m, r[m]),
                      fmt_change(m, r[f"{m}_delta"], r[f"{m}_rel"]), fmt_p(r.get(f"{m}_p")))
        out.append(t)
    return out


def _level_table(df: pl.DataFrame, by: str, width: int) -> tuple[Table, list[str]]:
    """by=rank|phase|kernel: key columns + (value, change) per metric that fits ``width``."""
    keys = ["run", *key_columns(by)]
    names = _used_metrics(df, metric_names(by))
    names = sorted(names, key=lambda m: PRIORITY.index(m) if m in PRIORITY else len(PRIORITY))
    key_w = sum(min(32, max([len(k)] + [len(str(v)) for v in df[k].to_list()])) + 3
                for k in keys)
    per_metric = 22  # value (9) + change (9) + padding
    fit = max(1, (width - key_w) // per_metric)
    shown, dropped = names[:fit], names[fit:]
    t = Table(title=f"by {by}: value and change against the baseline", title_justify="left",
              **TABLE_STYLE)
    for k in keys:
        t.add_column(k, overflow="ellipsis", no_wrap=True, max_width=32)
    for m in shown:
        t.add_column(_short(m), justify="right", no_wrap=True)
        t.add_column("Δ", justify="right", no_wrap=True)
    for r in df.iter_rows(named=True):
        cells = [Text(str(r[k])) for k in keys]
        for m in shown:
            cells += [Text(fmt_value(m, r[m])), Text(fmt_change(m, r[f"{m}_delta"], r[f"{m}_rel"]))]
        t.add_row(*cells)
    return t, dropped


def _short(metric: str) -> str:
    return {"overlap_ratio": "hidden", "exposed_comm_ms": "exposed ms",
            "bubble_fraction": "bubble", "comm_busy_ms": "comm ms",
            "exposed_fraction": "exposed", "compute_busy_ms": "compute ms"}.get(metric, metric)


def _gate_lines(results: list[GateResult]) -> list[tuple[str, str]]:
    """(style, line) pairs: one head line per gate, then its failing / undecided rows."""
    lines: list[tuple[str, str]] = []
    style = {"fail": "bold red", "pass": "green", "not significant": "yellow", "no data": "dim"}
    for g in results:
        lines.append((style[g.status], f"{MARK[g.status]:>15}  {g.gate.text}"))
        shown = [r for r in g.rows if r.outcome in ("fail", "not significant", "no data")]
        for r in shown:
            lines.append(("", "                 " + _row_text(g, r)))
    return lines


def _row_text(g: GateResult, r: Any) -> str:
    m = g.gate.metric
    where = r.run + ("" if r.key == "run" else f" {r.key}")
    if r.value is None:
        return f"{where}: {r.outcome} ({r.detail})"
    if g.gate.compared:
        ch = (f"{100 * r.change:+.1f}%" if g.gate.kind == "relative" and r.change is not None
              else f"{100 * r.change:+.1f}pp" if r.change is not None else "–")
        text = f"{where}: {fmt_value(m, r.base)} -> {fmt_value(m, r.value)} ({ch})"
    else:
        text = f"{where}: {fmt_value(m, r.value)}"
    return text + (f"; {r.detail}" if r.detail else "") + f" [{r.outcome}]"


def _diff_rows(diff: pl.DataFrame) -> pl.DataFrame:
    return diff.filter(pl.col("status") != "same").head(DIFF_ROWS)


def print_table(ctx: dict[str, Any]) -> None:
    """The terminal view: header, metrics table(s), diffs, gates; fits the terminal."""
    out = render.out
    width = out.width
    for line in _header_lines(ctx["runs"], ctx["labels"], ctx["baseline"], ctx["by"],
                              ctx["window"]):
        out.print(Text(line))
    df = ctx["frame"]
    if ctx["by"] == "run":
        for t in _run_table(df, ctx["labels"], ctx["baseline"]):
            out.print(t)
    else:
        t, dropped = _level_table(df, ctx["by"], width)
        out.print(t)
        if dropped:
            out.print(Text(f"({len(dropped)} more metric(s) not shown at width {width}: "
                           f"{', '.join(dropped)}; use --format csv|json|markdown)",
                           style="dim"))
    for label, diff in ctx["diffs"].items():
        rows = _diff_rows(diff)
        if rows.is_empty():
            continue
        t = Table(title=f"what changed: {label} (ms per rank)", title_justify="left",
                  **TABLE_STYLE)
        t.add_column("status", no_wrap=True)
        t.add_column("kind", no_wrap=True)
        t.add_column("name", overflow="ellipsis", no_wrap=True, max_width=max(16, width - 52))
        for c in ("base ms", "ms", "Δ%"):
            t.add_column(c, justify="right", no_wrap=True)
        for r in rows.iter_rows(named=True):
            t.add_row(r["status"], r["kind"], Text(r["name"]), _ms(r["base_ms"]), _ms(r["ms"]),
                      "–" if r["rel"] is None else f"{100 * r['rel']:+.0f}%")
        out.print(t)
    if ctx["gates"]:
        out.print(Text("gates:", style="bold"))
        for style, line in _gate_lines(ctx["gates"]):
            out.print(Text(line, style=style), soft_wrap=True)


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:,.3f}"


# ------------------------------------------------------------------------ other formats


def print_markdown(ctx: dict[str, Any]) -> None:
    """GitHub markdown (a pull-request comment): runs, metrics, gates, diffs."""
    w = sys.stdout.write
    labels, base = ctx["labels"], ctx["baseline"]
    gates: list[GateResult] = ctx["gates"]
    if gates:
        failed = sum(g.status == "fail" for g in gates)
        verdict = f"❌ {failed} gate(s) failed" if failed else "✅ gates passed"
        w(f"## overlapscope compare: {verdict}\n\n")
    else:
        w("## overlapscope compare\n\n")
    w(f"Baseline **{labels[base]}**, by {ctx['by']}.\n\n")
    w("| run | rank traces | steps |\n|---|---:|---:|\n")
    for i, r in enumerate(ctx["runs"]):
        w(f"| {labels[i]}{' (baseline)' if i == base else ''} | {r.ranks} | {len(r.steps)} |\n")
    w("\n")
    df = ctx["frame"]
    keys = ["run", *key_columns(ctx["by"])]
    names = _used_metrics(df, metric_names(ctx["by"]))
    w("| " + " | ".join(keys + [f"{m} | Δ" for m in names]) + " |\n")
    w("|" + "---|" * (len(keys) + 2 * len(names)) + "\n")
    for r in df.iter_rows(named=True):
        cells = [str(r[k]).replace("|", "\\|") for k in keys]
        for m in names:
            cells += [fmt_value(m, r[m]), fmt_change(m, r[f"{m}_delta"], r[f"{m}_rel"])]
        w("| " + " | ".join(cells) + " |\n")
    w("\n")
    if gates:
        w("### Gates\n\n")
        icon = {"fail": "❌", "pass": "✅", "not significant": "⚠️ not significant",
                "no data": "➖ no data"}
        for g in gates:
            w(f"- {icon[g.status]} `{g.gate.text}`\n")
            for r in g.rows:
                if r.outcome != "pass":
                    w(f"  - {_row_text(g, r)}\n")
        w("\n")
    for label, diff in ctx["diffs"].items():
        rows = _diff_rows(diff)
        if rows.is_empty():
            continue
        w(f"### What changed: {label}\n\n| status | kind | name | base ms | ms | Δ% |\n"
          "|---|---|---|---:|---:|---:|\n")
        for r in rows.iter_rows(named=True):
            rel = "–" if r["rel"] is None else f"{100 * r['rel']:+.0f}%"
            name = r["name"].replace("|", "\\|")
            w(f"| {r['status']} | {r['kind']} | `{name}` | {_ms(r['base_ms'])} | "
              f"{_ms(r['ms'])} | {rel} |\n")
        w("\n")
    for e in ctx["errors"]:
        w(f"> ✗ could not analyze `{e.path}`: {e.reason}\n")


def junit_xml(ctx: dict[str, Any]) -> str:
    """JUnit XML: one testcase per gate (failure = gate failed; skipped = not
    significant or no data); bad inputs in the suite's system-err."""
    gates: list[GateResult] = ctx["gates"]
    suite = ET.Element("testsuite", name="overlapscope compare", tests=str(len(gates)),
                       failures=str(sum(g.status == "fail" for g in gates)),
                       errors="0",
                       skipped=str(sum(g.status in ("not significant", "no data")
                                       for g in gates)))
    props = ET.SubElement(suite, "properties")
    for i, r in enumerate(ctx["runs"]):
        ET.SubElement(props, "property", name=f"run.{ctx['labels'][i]}",
                      value=f"{r.path}; {r.ranks} rank traces; {len(r.steps)} steps")
    for g in gates:
        case = ET.SubElement(suite, "testcase", classname="overlapscope.gates", name=g.gate.text)
        detail = "\n".join(_row_text(g, r) for r in g.rows)
        if g.status == "fail":
            f = ET.SubElement(case, "failure", message=f"{len(g.failing)} row(s) fail",
                              type="RegressionGate")
            f.text = "\n".join(_row_text(g, r) for r in g.failing)
        elif g.status in ("not significant", "no data"):
            ET.SubElement(case, "skipped", message=g.status)
        out = ET.SubElement(case, "system-out")
        out.text = detail
    if ctx["errors"]:
        se = ET.SubElement(suite, "system-err")
        se.text = "\n".join(f"could not analyze {e.path}: {e.reason}" for e in ctx["errors"])
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def json_doc(ctx: dict[str, Any]) -> dict[str, Any]:
    """Everything as plain data: runs, rows, gates with rows, diffs, errors."""
    return {
        "baseline": ctx["labels"][ctx["baseline"]],
        "by": ctx["by"],
        "runs": [{"label": ctx["labels"][i], "path": r.path, "ranks": r.ranks,
                  "steps": len(r.steps)} for i, r in enumerate(ctx["runs"])],
        "rows": ctx["frame"].to_dicts(),
        "gates": [{"gate": g.gate.text, "status": g.status,
                   "rows": [vars(r) for r in g.rows]} for g in ctx["gates"]],
        "diffs": {k: v.to_dicts() for k, v in ctx["diffs"].items()},
        "errors": [{"path": e.path, "reason": e.reason} for e in ctx["errors"]],
    }


# ------------------------------------------------------------------------ command


def _pick_baseline(choice: str | None, paths: list[Path], runs: list[RunData],
                   labels: list[str]) -> int:
    """Index into ``runs`` of --baseline (an input path, a label or a 0-based index)."""
    if choice is None:
        return 0
    for i, r in enumerate(runs):
        if choice in (r.path, labels[i]) or Path(choice).resolve() == Path(r.path).resolve():
            return i
    if choice.isdigit() and int(choice) < len(paths):
        target = str(paths[int(choice)])
        for i, r in enumerate(runs):
            if r.path == target:
                return i
    raise ValueError(f"--baseline {choice!r} is not one of the analyzed runs: "
                     + ", ".join(labels))


def register(app: typer.Typer) -> None:
    """Add the compare command to the CLI."""

    @app.command(
        "compare",
        epilog=(
            "Exit status: 0 no gate failed and every input was analyzed; 1 a --fail-if "
            "gate failed (failing rows shown); 2 bad gate syntax, unknown metric, or some "
            "input could not be analyzed (the rest are still compared)."
        )
    )
    def compare_cmd(
        paths: Annotated[list[Path], typer.Argument(
            help="Run directories or trace files; the first is the baseline unless "
                 "--baseline says otherwise.", show_default=False)],
        baseline: Annotated[str | None, typer.Option(
            help="The baseline run: one of the inputs (path or label) or its 0-based index.")]
        = None,
        by: Annotated[By, typer.Option(help="One row per run, rank, phase or kernel.")]
        = By.run,
        fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")]
        = Format.table,
        fail_if: Annotated[list[str] | None, typer.Option(
            "--fail-if",
            help="Regression gate, repeatable: 'overlap_ratio < 0.9', "
                 "'exposed_comm_ms > +5%', 'bubble_fraction > +2pp', "
                 "'overlap_ratio[phase=dispatch(B)] < 0.95', "
                 "'exposed_comm_ms[rank=*] > +10%'. Metrics: " + ", ".join(METRICS))] = None,
        alpha: Annotated[float, typer.Option(
            help="Significance level for relative gates on per-step samples.")] = 0.05,
        per_step: Annotated[bool, typer.Option(
            help="Analyze each ProfilerStep alone too, so changes are tested against "
                 "step-to-step noise.")] = True,
        strict: Annotated[bool, typer.Option(
            "--strict", help="Stop at the first input that cannot be analyzed.")] = False,
        engine: Annotated[EngineOpt, typer.Option(
            help="local: process pool here; ray: Ray tasks (pip install 'overlapscope[ray]').")]
        = EngineOpt.local,
        address: Annotated[str | None, typer.Option(
            help="Ray cluster address (default: start a local instance).")] = None,
        workers: Annotated[int | None, typer.Option(
            help="Worker processes / Ray tasks in flight (default: by input size and CPUs).")]
        = None,
        window: Annotated[str | None, typer.Option(
            help="Regex of the annotation bounding the analysis window (default: "
                 "ProfilerStep#N). A custom window turns per-step samples off.")] = None,
        rules: Annotated[str | None, typer.Option(
            help="Extra classification rules (TOML).")] = None,
        gpus_per_node: Annotated[int | None, typer.Option(
            help="GPUs per node for traces without topology.")] = None,
        cache: Annotated[bool, typer.Option(
            help="Reuse decoded traces from the parquet cache.")] = True,
    ) -> None:
        """Compare runs: every headline metric and its change against a baseline.

        Relative gates (+5%, +2pp) fail only when the change is beyond the threshold
        and significant against step-to-step noise (Mann-Whitney U with >= 5 steps a
        side, else a bootstrap interval); otherwise they show "not significant".
        """
        try:
            gates = parse_gates(fail_if or [])
        except GateError as exc:
            render.error(str(exc))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        if not 0 < alpha < 1:
            render.error(f"--alpha must be between 0 and 1, not {alpha}")
            raise typer.Exit(EXIT_BAD_INPUT)
        options = ReportOptions(window=window, rules_file=rules, gpus_per_node=gpus_per_node)
        show = sys.stderr.isatty()
        try:
            with render.progress(enabled=show) as bar:
                task = bar.add_task("comparing", total=len(paths))

                def on_progress(ev: batch.Progress) -> None:
                    if ev.stage == "analyze":
                        bar.update(task, completed=ev.done,
                                   description=f"analyzed {Path(ev.path).name}")
                    else:
                        bar.update(task, description=f"decoding {Path(ev.path).name} "
                                                     f"[{ev.done}/{ev.total}]")

                runs, errors = load_runs(
                    paths, options=options, samples=per_step, cache=cache,
                    on_error="raise" if strict else "collect", progress=on_progress,
                    workers=workers, engine=engine.value, address=address,
                )
        except RuleError as exc:
            render.error(str(exc))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except TraceError as exc:
            render.error(f"{exc.path}: {exc.reason} (--strict: stopped at the first bad input)")
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except RayEngineError as exc:
            render.error(str(exc))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        if not runs:
            render.bad_inputs(errors)
            render.error("no input could be analyzed")
            raise typer.Exit(EXIT_BAD_INPUT)
        labels = run_labels([r.path for r in runs])
        try:
            base = _pick_baseline(baseline, paths, runs, labels)
        except ValueError as exc:
            if errors:
                render.bad_inputs(errors)
            render.error(str(exc))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        reports = [r.report for r in runs]
        steps = [r.steps for r in runs] if any(r.steps for r in runs) else None
        frame = compare(reports, baseline=base, by=by.value, steps=steps, labels=labels,
                        alpha=alpha)
        results = [check_gate(g, runs, baseline=base, alpha=alpha, labels=labels) for g in gates]
        diffs = {f"{labels[base]} -> {labels[i]}": diff_kernels(reports[base], rep)
                 for i, rep in enumerate(reports) if i != base}
        ctx = {"runs": runs, "labels": labels, "baseline": base, "by": by.value,
               "window": window, "frame": frame, "gates": results, "diffs": diffs,
               "errors": errors}
        if fmt == Format.json:
            sys.stdout.write(msgspec.json.format(msgspec.json.encode(json_doc(ctx)),
                                                 indent=2).decode() + "\n")
        elif fmt == Format.csv:
            sys.stdout.write(frame.write_csv())
        elif fmt == Format.markdown:
            print_markdown(ctx)
        elif fmt == Format.junit:
            sys.stdout.write(junit_xml(ctx))
        else:
            print_table(ctx)
        if errors:
            render.bad_inputs(errors)
        if any(g.status == "fail" for g in results):
            raise typer.Exit(EXIT_GATE_FAILED)
        if errors:
            raise typer.Exit(EXIT_BAD_INPUT)
