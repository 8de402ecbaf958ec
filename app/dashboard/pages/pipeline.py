"""Pipeline: the per-rank Gantt of the reconstructed schedule (F / B / I / W / F&B,
micro-batch labels, bubbles as gaps) and measured vs theoretical bubble."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, dcc, html

from overlapscope.app.dashboard.components.common import section, selected
from overlapscope.app.dashboard.components.figures import (
    GRAPH_CONFIG,
    bubble_vs_theory,
    pipeline_gantt,
)
from overlapscope.app.dashboard.components.tables import metric_cards, registry_table, unavailable
from overlapscope.app.dashboard.state import DashboardState

PATH = "/pipeline"
NAME = "Pipeline"
ORDER = 3


def layout(state: DashboardState, **_query: Any) -> html.Div:
    """The Pipeline view."""
    return html.Div([html.H2("Pipeline"), html.Div(id="pp-body")])


def body(state: DashboardState, rid: str | None) -> Any:
    """The view's content for run ``rid``."""
    entry, msg = selected(state, rid)
    if entry is None:
        return msg
    report = entry.result.report  # type: ignore[union-attr]
    if "pipeline_ops" not in report.tables:
        return unavailable(report, "pipeline_ops")
    parts: list[Any] = [
        dcc.Graph(id="pp-gantt", figure=pipeline_gantt(report), config=GRAPH_CONFIG),
    ]
    if "pipeline" in report.tables:
        parts += [
            section("Bubble", metric_cards(report, prefix="pp-metric", tables=("pipeline",)),
                    dcc.Graph(id="pp-bubble", figure=bubble_vs_theory(report),
                              config=GRAPH_CONFIG)),
            registry_table(report, "pipeline"),
        ]
    else:
        parts.append(unavailable(report, "pipeline"))
    return html.Div(parts)


def register(app: Dash, state: DashboardState) -> None:
    """Callbacks of the Pipeline view."""

    @app.callback(
        Output("pp-body", "children"),
        Input("run-select", "value"),
        Input("runs-version", "data"),
    )
    def show(rid: str | None, _v: int) -> Any:
        return body(state, rid)
