"""Terminal rendering of Reports: rich tables, CSV, markdown, errors, progress."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.report import TABLES, Report

# No emoji codes (":B:" in "dualpipe:B:mb=1") and no markup in data cells.
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)
#: Columns hidden in terminal and markdown tables (all columns stay in JSON/CSV).
HIDDEN = {"win_start_ns", "win_end_ns", "from_annotation", "first_start_ns", "ann_id"}
#: The columns a terminal table shows, when a table has a curated view.
DISPLAY: dict[str, list[str]] = {
    "summary": [
        "rank",
        "device",
        "span_ns",
        "compute_busy_ns",
        "comm_busy_ns",
        "overlap_ns",
        "overlap_ratio",
        "exposed_comm_ns",
        "exposed_fraction",
        "idle_ns",
    ],
    "streams": [
        "rank",
        "device",
        "stream",
        "role",
        "comm_type",
        "busy_ns",
        "comm_busy_ns",
        "overlap_ratio",
        "exposed_comm_ns",
    ],
    "annotations": [
        "rank",
        "device",
        "name",
        "instances",
        "cpu_dur_ns",
        "gpu_span_ns",
        "comm_busy_ns",
        "overlap_ratio",
        "exposed_comm_ns",
        "paired_with",
    ],
    "kernels": [
        "rank",
        "device",
        "name",
        "comm_type",
        "count",
        "dur_ns",
        "coverage",
        "worst_coverage",
    ],
    "temporal_breakdown": [
        "rank",
        "device",
        "window_ns",
        "compute_ns",
        "comm_ns",
        "memory_ns",
        "idle_ns",
        "compute_pct",
        "comm_pct",
        "memory_pct",
        "idle_pct",
    ],
    "kernel_breakdown": ["rank", "kind", "name", "count", "sum_ns", "mean_ns", "pct_of_kind"],
    "pipeline": ["step", "rank", "schedule", "pp", "window_ns", "bubble_ns", "bubble_fraction",
                 "theory_bubble_ns", "measured_over_theory", "peak_activations",
                 "activation_bound", "conforms"],
    "warp_roles": ["rank", "role", "n_warps", "busy_frac", "busy_of_span_frac",
                   "wait_remote_head_frac", "wait_tail_frac", "wait_meta_frac", "idle_sleep_frac"],
    "warp_links": ["rank", "link", "bytes", "achieved_gbps", "limit_gbps", "util_frac",
                   "span_util_frac"],
    "warp_diagnosis": ["rank", "subject", "value_frac", "text", "remedy"],
    "worst_kernels": ["rank", "device", "stream", "name", "start_ns", "dur_ns", "coverage"],
}
#: Short headers for the terminal.
SHORT = {
    "span_ns": "span ms",
    "compute_busy_ns": "compute ms",
    "comm_busy_ns": "comm ms",
    "overlap_ns": "overlap ms",
    "overlap_ratio": "hidden %",
    "exposed_comm_ns": "exposed ms",
    "exposed_fraction": "exposed %",
    "idle_ns": "idle ms",
    "busy_ns": "busy ms",
    "cpu_dur_ns": "cpu ms",
    "gpu_span_ns": "gpu span ms",
    "worst_coverage": "worst %",
    "coverage": "hidden %",
    "dur_ns": "total ms",
    "start_ns": "start ms",
    "instances": "n",
    "comm_type": "comm type",
    "paired_with": "hidden under",
}


def error(message: str) -> None:
    """One-line error on stderr."""
    err.print(Text.assemble(("error: ", "bold red"), message))


def bad_inputs(errors: list[TraceError]) -> None:
    """The list of inputs that could not be analyzed, one per line."""
    err.print(f"[bold red]{len(errors)} input(s) could not be analyzed:[/]")
    for e in errors:
        err.print(Text.assemble(("  ✗ ", "red"), f"{e.path}: {e.reason}"), soft_wrap=True)


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[Progress]:
    """A rich progress bar on stderr (a no-op display when disabled)."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err,
        disable=not enabled,
        transient=True,
    )
    with bar:
        yield bar


def _fmt(col: str, value: object) -> str:
    if value is None:
        return "–"
    if col.endswith("_ns") and isinstance(value, int | float):
        return f"{value / 1e6:,.3f}"
    if col.endswith("_bytes") and isinstance(value, int | float):
        return f"{value / 1e6:,.2f}"
    if isinstance(value, float):
        if col.endswith(("ratio", "fraction", "coverage", "share", "_frac")):
            return f"{100 * value:.1f}%"
        return f"{value:,.3f}"
    text = str(value)
    limit = 160 if col in ("text", "remedy") else 48
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _header(col: str) -> str:
    if col in SHORT:
        return SHORT[col]
    if col.endswith("_ns"):
        return col[:-3] + " ms"
    if col.endswith("_bytes"):
        return col[:-6] + " MB"
    return col


def tables(reports: list[Report], wanted: list[str]) -> None:
    """Rich tables, one group per run; times shown in ms, ratios in %."""
    for rep in reports:
        out.rule(f"[bold]{rep.source}[/]")
        for name in wanted:
            df = rep.tables.get(name)
            if df is None or df.is_empty():
                continue
            cols = [c for c in DISPLAY.get(name, df.columns) if c in df.columns]
            cols = [c for c in cols if c not in HIDDEN]
            t = Table(title=f"{name}: {TABLES[name]}", title_justify="left", show_lines=False)
            for c in cols:
                t.add_column(
                    _header(c),
                    overflow="fold",
                    justify="right" if df.schema[c].is_numeric() else "left",
                )
            for row in df.select(cols).iter_rows():
                t.add_row(*(Text(_fmt(c, v)) for c, v in zip(cols, row, strict=True)))
            out.print(t)
        for note in rep.notes:
            out.print(Text.assemble(("note: ", "yellow"), note))


def _flat(df: pl.DataFrame) -> pl.DataFrame:
    nested = [c for c, t in df.schema.items() if isinstance(t, pl.List | pl.Struct)]
    return df.with_columns(pl.col(c).cast(pl.Utf8, strict=False) for c in nested) if nested else df


def csv(reports: list[Report], wanted: list[str]) -> None:
    """CSV of the requested tables, each row tagged with ``source`` and ``table``."""
    frames = []
    for rep in reports:
        for name in wanted:
            df = rep.tables.get(name)
            if df is not None and df.height:
                frames.append(
                    _flat(df).with_columns(
                        pl.lit(rep.source).alias("source"), pl.lit(name).alias("table")
                    )
                )
    if not frames:
        return
    if len({tuple(f.columns) for f in frames}) == 1:
        sys.stdout.write(pl.concat(frames).write_csv())
        return
    for f in frames:  # different tables: one CSV block each, separated by a blank line
        sys.stdout.write(f.write_csv() + "\n")


def markdown(reports: list[Report], wanted: list[str]) -> None:
    """GitHub-flavoured markdown tables."""
    for rep in reports:
        sys.stdout.write(f"## {rep.source}\n\n")
        for name in wanted:
            df = rep.tables.get(name)
            if df is None or df.is_empty():
                continue
            cols = [c for c in df.columns if c not in HIDDEN]
            sys.stdout.write(f"### {name}\n\n{TABLES[name]}\n\n")
            sys.stdout.write("| " + " | ".join(_header(c) for c in cols) + " |\n")
            sys.stdout.write("|" + "---|" * len(cols) + "\n")
            for row in df.select(cols).iter_rows():
                cells = (_fmt(c, v).replace("|", "\\|") for c, v in zip(cols, row, strict=True))
                sys.stdout.write("| " + " | ".join(cells) + " |\n")
            sys.stdout.write("\n")
        for note in rep.notes:
            sys.stdout.write(f"> note: {note}\n")
        sys.stdout.write("\n")
