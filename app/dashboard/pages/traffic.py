"""Traffic: rank x rank heatmaps of InfiniBand and NVLink bytes, bytes per phase,
per source rank and per collective."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, dcc, html

from overlapscope.app.dashboard.components.common import section, selected
from overlapscope.app.dashboard.components.figures import (
    GRAPH_CONFIG,
    traffic_by_phase,
    traffic_heatmap,
)
from overlapscope.app.dashboard.components.tables import registry_table, unavailable
from overlapscope.app.dashboard.state import DashboardState

PATH = "/traffic"
NAME = "Traffic"
ORDER = 4


def layout(state: DashboardState, **_query: Any) -> html.Div:
    """The Traffic view."""
    return html.Div([html.H2("Traffic"), html.Div(id="tr-body")])


def body(state: DashboardState, rid: str | None) -> Any:
    """The view's content for run ``rid``."""
    entry, msg = selected(state, rid)
    if entry is None:
        return msg
    report = entry.result.report  # type: ignore[union-attr]
    if "traffic_matrix" not in report.tables:
        return unavailable(report, "traffic_matrix")
    parts: list[Any] = [
        html.Div([
            dcc.Graph(id="tr-ib", figure=traffic_heatmap(report, "ib"), config=GRAPH_CONFIG,
                      className="half"),
            dcc.Graph(id="tr-nvl", figure=traffic_heatmap(report, "nvl"), config=GRAPH_CONFIG,
                      className="half"),
        ], className="row"),
    ]
    if "traffic_by_phase" in report.tables:
        parts.append(dcc.Graph(id="tr-phase", figure=traffic_by_phase(report),
                               config=GRAPH_CONFIG))
    else:
        parts.append(unavailable(report, "traffic_by_phase"))
    parts.append(section("Per source rank", registry_table(report, "traffic", show_title=False)))
    parts.append(section("Node limit", registry_table(report, "routing", show_title=False)))
    parts.append(registry_table(report, "traffic_by_collective"))
    parts.append(registry_table(report, "traffic_by_phase", sort="total_bytes", max_rows=24))
    return html.Div(parts)


def register(app: Dash, state: DashboardState) -> None:
    """Callbacks of the Traffic view."""

    @app.callback(
        Output("tr-body", "children"),
        Input("run-select", "value"),
        Input("runs-version", "data"),
    )
    def show(rid: str | None, _v: int) -> Any:
        return body(state, rid)
