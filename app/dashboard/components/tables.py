"""Tables, headline metrics and messages built from the Report registry.

Table titles, column meanings and units come from ``TABLES`` (and the column
glossary behind ``TableSpec.describe``), metrics from ``METRICS``: nothing about a
table is written here.
"""

from __future__ import annotations

from typing import Any

import polars as pl
from dash import html

from overlapscope.analyzers.report import METRICS, TABLES, Report
from overlapscope.app import render
from overlapscope.app.dashboard.components.format import (
    column_header,
    column_tooltip,
    fmt_cell,
    fmt_value,
    title_of,
)

#: Rows shown before a table says how many more there are.
MAX_ROWS = 60
_RANK_COLS = ("rank", "src_rank")


def message(text: str, kind: str = "info", **kw: Any) -> html.Div:
    """A message box: kind is info, warn (not applicable), error or ok."""
    return html.Div(text, className=f"msg msg-{kind}", role="status", **kw)


def unavailable(report: Report, name: str) -> html.Div:
    """Why table ``name`` is not shown for this run, in words from the Report."""
    status = report.status(name)
    if status.startswith("not applicable: "):
        reason = status.removeprefix("not applicable: ")
        text = f"{title_of(name)}: not available for this run — {reason}."
        kind = "warn"
    elif status.startswith("failed: "):
        text = f"{title_of(name)} could not be computed (a bug, please report it): {status[8:]}"
        kind = "error"
    else:
        text = f"{title_of(name)}: not computed for this run."
        kind = "warn"
    return message(text, kind, id=f"na-{name}")


def rank_filter(df: pl.DataFrame, rank: int | None) -> pl.DataFrame:
    """Rows of one rank (by the table's rank column) or all rows when rank is None."""
    if rank is None:
        return df
    for c in _RANK_COLS:
        if c in df.columns:
            return df.filter(pl.col(c) == rank)
    return df


def registry_table(
    report: Report,
    name: str,
    *,
    rank: int | None = None,
    columns: list[str] | None = None,
    sort: str | None = None,
    descending: bool = True,
    max_rows: int = MAX_ROWS,
    show_title: bool = True,
) -> html.Div:
    """Table ``name`` of ``report`` with the registry's display columns, units and meanings.

    ``rank`` keeps one rank's rows; ``columns`` overrides the display columns.
    A table the run lacks shows the Report's reason instead.
    """
    spec = TABLES[name]
    if name not in report.tables:
        return unavailable(report, name)
    df = rank_filter(report.tables[name], rank)
    cols = [c for c in (columns or list(spec.display)) if c in df.columns]
    if sort and sort in df.columns:
        df = df.sort(sort, descending=descending, nulls_last=True)
    head = [
        html.Th(column_header(c), title=column_tooltip(c),
                className="num" if spec.unit(c) else None)
        for c in cols
    ]
    body = []
    for row in df.head(max_rows).select(cols).iter_rows():
        body.append(html.Tr([
            html.Td(fmt_cell(c, v), className="num" if _numeric(v) else None)
            for c, v in zip(cols, row, strict=True)
        ]))
    parts: list[Any] = []
    if show_title:
        parts.append(html.H4(title_of(name), className="table-title"))
        parts.append(html.P(spec.meaning, className="table-meaning"))
    if df.is_empty():
        parts.append(message("No rows for this selection.", "warn"))
    else:
        parts.append(html.Div(html.Table([html.Thead(html.Tr(head)), html.Tbody(body)],
                                         className="data"), className="table-wrap"))
        if df.height > max_rows:
            parts.append(html.P(f"{df.height - max_rows} more rows not shown "
                                "(overlapscope analyze --tables shows them all).",
                                className="table-more"))
    return html.Div(parts, className="registry-table", id=f"table-{name}")


def _numeric(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def metric_label(name: str) -> str:
    """A metric's display name, with the CLI's header scheme (``render.label``):
    'bubble %', 'IB bytes', 'hidden %'; a metric already in ms keeps its 'ms'."""
    return render.label(name)


def metric_cards(
    report: Report,
    rank: int | None = None,
    prefix: str = "metric",
    tables: tuple[str, ...] | None = None,
) -> html.Div:
    """One card per headline metric of METRICS that applies (value, unit, meaning).

    ``rank``: the per-rank values (``Report.metrics(by="rank")``) instead of the
    run's. ``tables``: only the metrics computed from these tables. Metrics whose
    table does not apply are listed in one line below.
    """
    if rank is None:
        values = report.headline()
    else:
        per = report.metrics(by="rank").filter(pl.col("rank") == rank)
        values = per.row(0, named=True) if per.height else {}
    cards, missing = [], []
    for m in METRICS.values():
        if tables is not None and m.table not in tables:
            continue
        v = values.get(m.name)
        if v is None:
            missing.append(metric_label(m.name))
            continue
        better = {"higher": "higher is better", "lower": "lower is better"}.get(m.better, "")
        cards.append(html.Div([
            html.Div(metric_label(m.name), className="metric-name"),
            html.Div(fmt_value(v, m.unit), className="metric-value", id=f"{prefix}-{m.name}"),
            html.Div(m.meaning, className="metric-meaning"),
        ], className="metric", title=f"{m.meaning} ({m.unit}; {better})".replace("; )", ")")))
    out: list[Any] = [html.Div(cards, className="metrics")]
    if missing:
        out.append(html.P("Not available for this run: " + ", ".join(missing) + ".",
                          className="metrics-missing"))
    return html.Div(out)
