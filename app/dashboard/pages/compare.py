"""Compare: two or more runs side by side, headline metrics with deltas against a
baseline (from ``overlapscope.analyzers.compare.compare``)."""

from __future__ import annotations

from inspect import signature
from typing import Any

import polars as pl
from dash import Dash, Input, Output, dcc, html

from overlapscope.analyzers.report import METRICS
from overlapscope.app.dashboard.components.common import section
from overlapscope.app.dashboard.components.format import fmt_value
from overlapscope.app.dashboard.components.tables import message, metric_label
from overlapscope.app.dashboard.state import DashboardState

try:
    from overlapscope.analyzers.compare import compare
except ImportError:  # the compare library function has not landed yet
    compare = None

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


def _side_by_side(entries: list[Any]) -> html.Div:
    heads = [html.Th("metric")] + [html.Th(e.label) for e in entries]
    rows = []
    values = [e.result.report.headline() for e in entries]
    for m in METRICS.values():
        vals = [v.get(m.name) for v in values]
        if all(x is None for x in vals):
            continue
        rows.append(html.Tr([html.Th(metric_label(m.name), title=m.meaning)]
                            + [html.Td(fmt_value(x, m.unit), className="num") for x in vals]))
    return html.Div(html.Table([html.Thead(html.Tr(heads)), html.Tbody(rows)],
                               className="data"), className="table-wrap")


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
            tone = ""
            if not r.get("is_baseline") and delta and m.better != "neutral":
                good = (delta > 0) == (m.better == "higher")
                tone = "better" if good else "worse"
            text = fmt_value(r.get(m.name), m.unit)
            if not r.get("is_baseline"):
                text += _delta_text(delta, rel, m.unit)
            cells.append(html.Td(text, className=f"num {tone}".strip(),
                                 id=f"cmp-{m.name}-{i}"))
        rows.append(html.Tr(cells))
    return html.Div(html.Table([html.Thead(head), html.Tbody(rows)], className="data"),
                    className="table-wrap", id="cmp-table")


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
        parts: list[Any] = [section("Headline metrics side by side", _side_by_side(entries))]
        if compare is None:
            parts.insert(0, message("compare is not available yet: the deltas appear here once "
                                    "overlapscope.analyzers.compare lands.", "warn",
                                    id="cmp-unavailable"))
            return html.Div(parts)
        b = next((k for k, e in enumerate(entries) if e.id == base), 0)
        try:
            kw = {"labels": [e.label for e in entries]} if "labels" in signature(
                compare).parameters else {}
            df = compare([e.result.report for e in entries], baseline=b, by="run", **kw)
        except Exception as exc:  # noqa: BLE001 - shown in the page, never a server crash
            parts.append(message(f"compare failed: {type(exc).__name__}: {exc}", "error"))
            return html.Div(parts)
        return html.Div([section(f"Headline metrics, deltas against {entries[b].label}",
                                 _deltas_table(df))])
