"""Warps: per-channel swimlanes of warp roles (busy and each wait reason coloured),
per-role fractions, ring occupancy, link bandwidth and the diagnosis in words."""

from __future__ import annotations

from typing import Any

import polars as pl
from dash import Dash, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from overlapscope.app.dashboard.components.common import section, selected
from overlapscope.app.dashboard.components.figures import (
    GRAPH_CONFIG,
    empty_figure,
    ring_occupancy,
    timeline_figure,
    warp_role_fractions,
)
from overlapscope.app.dashboard.components.tables import message, registry_table, unavailable
from overlapscope.app.dashboard.pages.timeline import _x_range
from overlapscope.app.dashboard.state import DashboardState

PATH = "/warps"
NAME = "Warps"
ORDER = 5
PIXELS = 900


def layout(state: DashboardState, **_query: Any) -> html.Div:
    """The Warps view."""
    return html.Div([
        html.H2("Warps"),
        html.Div(id="wp-body"),
        html.Div([
            html.Div([html.Label("Channel"), dcc.Dropdown(id="wp-channel", clearable=False)],
                     className="control"),
        ], className="controls", id="wp-controls"),
        dcc.Graph(id="wp-lanes", figure=empty_figure("Loading…"), config=GRAPH_CONFIG),
        html.Div(id="wp-tables"),
    ])


def _diagnosis(report: Any) -> Any:
    if "warp_diagnosis" not in report.tables:
        return unavailable(report, "warp_diagnosis")
    items = []
    for row in report.tables["warp_diagnosis"].iter_rows(named=True):
        items.append(html.Li([html.B(row["text"]), html.Br(),
                              html.Span("Remedy: " + (row.get("remedy") or "—"),
                                        className="remedy")],
                             className="primary" if row.get("primary") else None))
    return html.Ul(items, className="diagnosis", id="wp-diagnosis")


def register(app: Dash, state: DashboardState) -> None:
    """Callbacks of the Warps view."""

    @app.callback(
        Output("wp-body", "children"),
        Output("wp-tables", "children"),
        Output("wp-channel", "options"),
        Output("wp-channel", "value"),
        Output("wp-controls", "style"),
        Input("run-select", "value"),
        Input("runs-version", "data"),
    )
    def show(rid: str | None, _v: int) -> tuple[Any, ...]:
        hide = {"display": "none"}
        entry, msg = selected(state, rid)
        if entry is None:
            return msg, None, [], None, hide
        report = entry.result.report  # type: ignore[union-attr]
        if "warp_roles" in report.tables and entry.extra.get("details") == "loading":
            return (message("Loading the per-warp swimlanes (the run's frames)…", "info"),
                    None, [], None, hide)
        if "warp_roles" not in report.tables or entry.warps is None:
            return unavailable(report, "warp_roles"), None, [], None, hide
        head = section("Diagnosis", _diagnosis(report))
        figs = html.Div([
            dcc.Graph(id="wp-roles", figure=warp_role_fractions(report), config=GRAPH_CONFIG,
                      className="half"),
            dcc.Graph(id="wp-rings", figure=ring_occupancy(report), config=GRAPH_CONFIG,
                      className="half") if "warp_rings" in report.tables
            else unavailable(report, "warp_rings"),
        ], className="row")
        tables = html.Div([
            figs,
            registry_table(report, "warp_roles"),
            registry_table(report, "warp_links"),
            registry_table(report, "warp_rings"),
        ])
        lanes = entry.warps.lanes
        chans = sorted(lanes["device"].unique().to_list())
        opts = [{"label": f"channel {c}", "value": c} for c in chans]
        return head, tables, opts, chans[0] if chans else None, {}

    @app.callback(
        Output("wp-lanes", "figure"),
        Input("wp-channel", "value"),
        Input("wp-lanes", "relayoutData"),
        State("run-select", "value"),
    )
    def lanes(channel: int | None, relayout: Any, rid: str | None) -> Any:
        entry, _ = selected(state, rid)
        if entry is None or entry.warps is None or channel is None:
            return empty_figure("No warp events in this run.")
        wt = entry.warps
        t0, t1 = wt.t_min, wt.t_max
        if ctx.triggered_id == "wp-lanes":
            xr = _x_range(relayout)
            if xr is None:
                raise PreventUpdate
            if xr != "full":
                t0, t1 = int(xr[0] * 1e6), max(int(xr[1] * 1e6), int(xr[0] * 1e6) + 1)
        shown = wt.lanes.filter(pl.col("device") == channel)
        if shown.is_empty():
            return empty_figure(f"No warps on channel {channel}.")
        rects = wt.view(t0, t1, PIXELS, shown["lane"].to_list())
        fig = timeline_figure(wt, rects, shown, t0, t1, PIXELS, revision=f"{rid}:{channel}",
                              title=f"Channel {channel}: warp states over time")
        fig["layout"]["xaxis"]["title"] = {"text": "time (ms from the kernel's first event)"}
        return fig


