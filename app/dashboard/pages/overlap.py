"""Overlap: per rank, per stream, per phase (annotation) and per kernel coverage;
exposed communication. Every number comes from the Report's declared tables."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, dcc, html

from overlapscope.app.dashboard.components.common import rank_options, section, selected
from overlapscope.app.dashboard.components.figures import (
    GRAPH_CONFIG,
    overlap_by_annotation,
    overlap_by_rank,
)
from overlapscope.app.dashboard.components.tables import metric_cards, registry_table, unavailable
from overlapscope.app.dashboard.state import DashboardState

PATH = "/overlap"
NAME = "Overlap"
ORDER = 2
#: Rows per table (largest first); pick a rank to see one GPU's rows.
ROWS = 20


def layout(state: DashboardState, **_query: Any) -> html.Div:
    """The Overlap view."""
    return html.Div([
        html.H2("Overlap"),
        html.Div([html.Div([html.Label("Rank"),
                            dcc.Dropdown(id="ov-rank", clearable=False, value=-1,
                                         options=rank_options([]))],
                           className="control")], className="controls"),
        html.Div(id="ov-body"),
    ])


def body(state: DashboardState, rid: str | None, rank: int | None) -> Any:
    """The view's content for run ``rid`` and ``rank`` (None: all ranks)."""
    entry, msg = selected(state, rid)
    if entry is None:
        return msg
    report = entry.result.report  # type: ignore[union-attr]
    if "summary" not in report.tables:
        return unavailable(report, "summary")
    parts: list[Any] = [
        section("Headline" + (f" (rank {rank})" if rank is not None else " (all ranks)"),
                metric_cards(report, rank=rank, prefix="ov-metric",
                             tables=("summary", "sm_split"))),
        dcc.Graph(id="ov-by-rank", figure=overlap_by_rank(report), config=GRAPH_CONFIG),
        registry_table(report, "summary", rank=rank),
        section("Per stream (thread on CPU)",
                registry_table(report, "streams", rank=rank, sort="comm_busy_ns",
                               show_title=False, max_rows=ROWS)),
    ]
    if "annotations" in report.tables:
        parts.append(section(
            "Per phase (annotation)",
            dcc.Graph(id="ov-by-annotation", figure=overlap_by_annotation(report, rank),
                      config=GRAPH_CONFIG),
            registry_table(report, "annotations", rank=rank, sort="comm_busy_ns",
                           show_title=False, max_rows=ROWS)))
    else:
        parts.append(section("Per phase (annotation)", unavailable(report, "annotations")))
    parts.append(section(
        "Per kernel coverage",
        registry_table(report, "kernels", rank=rank, sort="dur_ns", max_rows=ROWS),
        registry_table(report, "worst_kernels", rank=rank, max_rows=ROWS),
    ))
    parts.append(section("SMs and time split",
                         registry_table(report, "sm_split", rank=rank),
                         registry_table(report, "temporal_breakdown", rank=rank)))
    return html.Div(parts)


def register(app: Dash, state: DashboardState) -> None:
    """Callbacks of the Overlap view."""

    @app.callback(
        Output("ov-rank", "options"),
        Input("run-select", "value"),
        Input("runs-version", "data"),
    )
    def ranks(rid: str | None, _v: int) -> list[dict[str, Any]]:
        entry, _ = selected(state, rid)
        if entry is None:
            return rank_options([])
        return rank_options(entry.result.report.facts.get("rank_ids", []))  # type: ignore

    @app.callback(
        Output("ov-body", "children"),
        Input("run-select", "value"),
        Input("runs-version", "data"),
        Input("ov-rank", "value"),
    )
    def show(rid: str | None, _v: int, rank: int | None) -> Any:
        return body(state, rid, None if rank is None or rank < 0 else int(rank))
