"""Compare: two or more runs against a baseline: a chart of every headline metric's
relative change, the values with their deltas, and what changed among kernels and
annotations (``overlapscope.analyzers.compare``: ``compare`` and ``diff_kernels``, the
functions behind ``overlapscope compare``)."""

from __future__ import annotations

from typing import Any

import polars as pl
from dash import Dash, Input, Output, dcc, html

from overlapscope.analyzers.compare import compare, diff_kernels
from overlapscope.analyzers.report import METRICS
from overlapscope.app.dashboard.components.common import section
from overlapscope.app.dashboard.components.figures import (
    GRAPH_CONFIG,
    change_tone,
    compare_changes,
)
from overlapscope.app.dashboard.components.format import fmt_value
from overlapscope.app.dashboard.components.tables import message, metric_label
from overlapscope.app.dashboard.state import DashboardState

#: Rows of the kernel / annotation changes shown per compared run (largest first).
DIFF_ROWS = 15

PATH = "/compare"
NAME = "Compare"
ORDER = 6


def layout(state: DashboardState, **_query: Any) -> html.Div:
    """The Compare view."""
    return html.Div([
        html.H2("Compare"),
        html.Div([
            html.Div([html.Label("Runs"), dcc.Dropdown(id="cmp-runs", multi=True,
                                                       placeholder="pick two or more runs")],
                     className="control grow"),
            html.Div([html.Label("Baseline"), dcc.Dropdown(id="cmp-baseline", clearable=False)],
                     className="control"),
        ], className="controls"),
        html.Div(id="cmp-body"),
    ])


def _delta_text(delta: Any, rel: Any, unit: str) -> str:
    if delta is None:
        return ""
    sign = "+" if delta > 0 else ""
    d = fmt_value(delta, unit)
    if unit == "fraction":  # a difference of fractions reads best in percentage points
        d = f"{100 * float(delta):.1f} pp"
    r = f", {100 * float(rel):+.1f} %" if rel is not None else ""
    return f" ({sign}{d}{r})"


def _deltas_table(df: pl.DataFrame) -> html.Div:
    """compare()'s wide frame as one row per metric, one column per run, with deltas
    coloured by the metric's better direction."""
    runs = df.to_dicts()
    head = html.Tr([html.Th("metric")] + [
        html.Th(r["run"] + (" (baseline)" if r.get("is_baseline") else "")) for r in runs])
    rows = []
    for m in METRICS.values():
        if m.name not in df.columns or df[m.name].null_count() == df.height:
            continue
        cells = [html.Th(metric_label(m.name), title=m.meaning)]
        for i, r in enumerate(runs):
            delta, rel = r.get(f"{m.name}_delta"), r.get(f"{m.name}_rel")
            tone = "" if r.get("is_baseline") else change_tone(delta, m.better)
            tone = "" if tone == "neutral" else tone
            text = fmt_value(r.get(m.name), m.unit)
            if not r.get("is_baseline"):
                text += _delta_text(delta, rel, m.unit)
            cells.append(html.Td(text, className=f"num {tone}".strip(),
                                 id=f"cmp-{m.name}-{i}"))
        rows.append(html.Tr(cells))
    return html.Div(html.Table([html.Thead(head), html.Tbody(rows)], className="data"),
                    className="table-wrap", id="cmp-table")


def _ms(v: Any) -> str:
    return "" if v is None else f"{v:,.3f}"


def _diff_table(diff: pl.DataFrame, k: int) -> html.Div:
    """Kernels and annotations that appeared, disappeared, got slower or faster."""
    moved = diff.filter(pl.col("status") != "same")
    if moved.is_empty():
        return message("No kernel or annotation appeared, disappeared or moved by more "
                       "than the threshold.", "info", id=f"cmp-diff-{k}")
    head = html.Tr([html.Th(h) for h in ("kind", "name", "status", "matched by")]
                   + [html.Th(h, className="num") for h in
                      ("baseline ms", "ms", "delta ms", "change %")])
    body = []
    for r in moved.head(DIFF_ROWS).iter_rows(named=True):
        tone = {"slower": "worse", "faster": "better"}.get(r["status"], "")
        rel = r.get("rel")
        body.append(html.Tr([
            html.Td(r["kind"]), html.Td(r["name"], className="name"),
            html.Td(r["status"], className=tone or None), html.Td(r.get("matched_by") or ""),
            html.Td(_ms(r.get("base_ms")), className="num"),
            html.Td(_ms(r.get("ms")), className="num"),
            html.Td(_ms(r.get("delta_ms")), className=f"num {tone}".strip()),
            html.Td("" if rel is None else f"{100 * rel:+.1f} %", className="num"),
        ]))
    parts: list[Any] = [
        html.P("Times are ms per rank trace; matched by name, then by family (the name "
               "before its template arguments).", className="table-meaning"),
        html.Div(html.Table([html.Thead(head), html.Tbody(body)], className="data"),
                 className="table-wrap", id=f"cmp-diff-{k}"),
    ]
    if moved.height > DIFF_ROWS:
        parts.append(html.P(f"{moved.height - DIFF_ROWS} more rows not shown "
                            "(overlapscope compare --format json lists them all).",
                            className="table-more"))
    return html.Div(parts)


def register(app: Dash, state: DashboardState) -> None:
    """Callbacks of the Compare view."""

    @app.callback(
        Output("cmp-runs", "options"),
        Input("runs-version", "data"),
    )
    def runs(_v: int) -> list[dict[str, Any]]:
        return [{"label": e.label, "value": e.id} for e in state.ready_runs()]

    @app.callback(
        Output("cmp-baseline", "options"),
        Output("cmp-baseline", "value"),
        Input("cmp-runs", "value"),
    )
    def baseline(ids: list[str] | None) -> tuple[Any, Any]:
        ids = ids or []
        opts = [{"label": state.runs[i].label, "value": i} for i in ids if i in state.runs]
        return opts, (ids[0] if ids else None)

    @app.callback(
        Output("cmp-body", "children"),
        Input("cmp-runs", "value"),
        Input("cmp-baseline", "value"),
    )
    def show(ids: list[str] | None, base: str | None) -> Any:
        entries = [state.runs[i] for i in (ids or []) if i in state.runs and state.runs[i].ready]
        if len(entries) < 2:
            return message("Pick two or more runs to compare.", "info", id="cmp-hint")
        b = next((k for k, e in enumerate(entries) if e.id == base), 0)
        reports = [e.result.report for e in entries]
        try:
            df = compare(reports, baseline=b, by="run", labels=[e.label for e in entries])
        except Exception as exc:  # noqa: BLE001 - shown in the page, never a server crash
            return message(f"compare failed: {type(exc).__name__}: {exc}", "error")
        label = entries[b].label
        parts: list[Any] = [
            section(f"Headline metrics against {label}",
                    dcc.Graph(id="cmp-chart", figure=compare_changes(df, list(METRICS.values())),
                              config=GRAPH_CONFIG),
                    _deltas_table(df)),
        ]
        for k, e in enumerate(entries):
            if k != b:
                parts.append(section(f"What changed: {e.label} against {label}",
                                     _diff_table(diff_kernels(reports[b], reports[k]), k)))
        return html.Div(parts)
