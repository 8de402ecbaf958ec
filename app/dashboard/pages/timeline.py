"""Timeline: all ranks on one time axis, lanes per stream / thread / annotation depth,
exposed communication shaded; zoom and pan ask the server for the window's rectangles
(``Timeline.view``: at most lanes x pixel columns, never raw events).

Multi-rank runs whose skew estimate has anchors offer a "clock: raw | corrected"
toggle (default: the report's ``facts["time_axis"]``); both timelines are prepared
when the run loads (``state.clock_views``), the toggle only picks one."""

from __future__ import annotations

import time
from typing import Any

import polars as pl
from dash import Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from overlapscope.analyzers.timeline import Timeline
from overlapscope.app.dashboard.components.common import selected
from overlapscope.app.dashboard.components.figures import (
    GRAPH_CONFIG,
    HOVER_NAMES_MAX,
    empty_figure,
    timeline_figure,
    trace_rows,
)
from overlapscope.app.dashboard.components.format import fmt_ns
from overlapscope.app.dashboard.components.tables import message
from overlapscope.app.dashboard.state import DashboardState, RunEntry

PATH = "/timeline"
NAME = "Timeline"
ORDER = 1
#: Ranks shown at first (all of them when the run has no more).
DEFAULT_RANKS = 8
DEFAULT_PIXELS = 1000
GROUPS = {
    "annotation": ["annotation"],
    "work": ["compute", "comm", "thread"],
    "exposed": ["exposed"],
}
CLOCK_OPTIONS = [{"label": " raw", "value": "raw"},
                 {"label": " corrected", "value": "corrected"}]
_HIDDEN = {"display": "none"}


def layout(state: DashboardState, **_query: Any) -> html.Div:
    """The Timeline view."""
    return html.Div([
        html.H2("Timeline"),
        html.P("Drag to zoom into a time range, double-click to zoom out; shift-drag pans. "
               "Each pixel column shows the longest interval of a lane there. "
               "Click a bar for its details.", className="hint"),
        html.Div([
            html.Div([html.Label("Ranks"),
                      dcc.Dropdown(id="tl-ranks", multi=True, placeholder="ranks…")],
                     className="control grow"),
            html.Div([html.Label("Lanes"), dcc.Checklist(
                id="tl-groups",
                options=[{"label": " annotations", "value": "annotation"},
                         {"label": " streams / threads", "value": "work"},
                         {"label": " exposed comm", "value": "exposed"}],
                value=["annotation", "work", "exposed"], inline=True)], className="control"),
            html.Div([html.Label("clock"),
                      dcc.RadioItems(id="tl-clock", options=CLOCK_OPTIONS, value="raw",
                                     inline=True, style=_HIDDEN),
                      html.Span(id="tl-clock-note", className="hint")],
                     className="control", id="tl-clock-box"),
            html.Button("Whole run", id="tl-reset", n_clicks=0, className="button"),
        ], className="controls"),
        html.Div(id="tl-message"),
        dcc.Loading(dcc.Graph(id="tl-graph", figure=empty_figure("Loading…"),
                              config={**GRAPH_CONFIG, "scrollZoom": True}),
                    type="circle", delay_show=400),
        html.Div(id="tl-stats", className="stats"),
        html.Div(id="tl-info", className="info-panel"),
        dcc.Store(id="tl-window"),
        dcc.Store(id="tl-width"),
    ])


def _x_range(relayout: dict[str, Any] | None) -> tuple[float, float] | str | None:
    """(x0, x1) in ms from a relayout event, "full" for autorange, None otherwise."""
    if not relayout:
        return None
    if relayout.get("xaxis.autorange"):
        return "full"
    if "xaxis.range[0]" in relayout and "xaxis.range[1]" in relayout:
        return float(relayout["xaxis.range[0]"]), float(relayout["xaxis.range[1]"])
    if isinstance(relayout.get("xaxis.range"), list):
        a, b = relayout["xaxis.range"][:2]
        return float(a), float(b)
    return None


def window_bars(
    tl: Timeline, ranks: list[int], groups: list[str], t0: int, t1: int, pixels: int,
) -> tuple[pl.DataFrame, pl.DataFrame, int]:
    """(lanes shown, bars drawn, column winners) of one window: the same answer every
    time for the same arguments (a click on a large answer relies on it)."""
    kinds = [g for key in groups for g in GROUPS.get(key, [])]
    lanes = tl.lanes.filter(pl.col("rank").is_in(ranks) & pl.col("group").is_in(kinds))
    bars, n_winners = tl.bars(t0, t1, pixels, lanes["lane"].to_list())
    return lanes, bars, n_winners


def render(
    tl: Timeline, ranks: list[int], groups: list[str], t0: int, t1: int, pixels: int,
    revision: str,
) -> tuple[dict[str, Any], dict[str, int]]:
    """The figure of one window and its counts (used by the page and the benchmark)."""
    lanes, rects, n_winners = window_bars(tl, ranks, groups, t0, t1, pixels)
    if rects.height <= HOVER_NAMES_MAX:  # the hover shows names: fetch just these
        rects = rects.with_columns(tl.intervals["name"].gather(rects["row"]).alias("name"))
    fig = timeline_figure(tl, rects, lanes, t0, t1, pixels, revision=revision)
    return fig, {"rects": rects.height, "winners": n_winners, "lanes": lanes.height,
                 "pixels": pixels}


def clicked_row(tl: Timeline, point: dict[str, Any], window: dict[str, Any] | None,
                rid: str, clock: str | None) -> int | None:
    """Row of ``tl.intervals`` behind a clicked bar: ``customdata[0]`` on small answers;
    on large ones (no customdata) the drawn window's answer recomputed, point
    ``pointNumber`` of trace ``curveNumber``. None when the window is not the one drawn."""
    custom = point.get("customdata")
    if isinstance(custom, list) and custom:
        return int(custom[0])
    if not window or window.get("run") != rid or window.get("clock") != clock:
        return None
    _, rects, _ = window_bars(tl, window["ranks"], window["groups"], int(window["t0"]),
                              int(window["t1"]), int(window["pixels"]))
    rows = trace_rows(rects)
    c, i = point.get("curveNumber"), point.get("pointNumber")
    if not isinstance(c, int) or not isinstance(i, int) or not (0 <= c < len(rows)) or not (
            0 <= i < len(rows[c])):
        return None
    return int(rows[c][i])


def clock_control(
    entry: RunEntry | None, current: str | None = None, keep: bool = False
) -> tuple[dict[str, Any], str, str]:
    """(radio style, value, note) of the clock toggle for ``entry``: shown only when it
    has a raw and a corrected timeline; ``keep`` keeps ``current`` when it exists."""
    if entry is None or not entry.timelines:
        return _HIDDEN, "raw", ""
    if not entry.has_clock_toggle:
        return _HIDDEN, "raw", entry.clock_note or "raw clocks only"
    value = current if keep and current in entry.timelines else entry.clock
    note = f"{entry.clock_note}; the report used {entry.clock} times"
    return {"display": "inline-block"}, value, note


def register(app: Dash, state: DashboardState) -> None:
    """Callbacks of the Timeline view."""

    @app.callback(
        Output("tl-ranks", "options"),
        Output("tl-ranks", "value"),
        Input("run-select", "value"),
        Input("runs-version", "data"),
        State("tl-ranks", "value"),
    )
    def ranks(rid: str | None, _v: int, current: list[int] | None) -> tuple[Any, Any]:
        entry, _ = selected(state, rid)
        if entry is None or entry.timeline is None:
            return [], []
        all_ranks = sorted(entry.timeline.lanes["rank"].unique().to_list())
        keep = [r for r in (current or []) if r in all_ranks]
        value = keep or all_ranks[:DEFAULT_RANKS]
        return [{"label": f"rank {r}", "value": r} for r in all_ranks], value

    @app.callback(
        Output("tl-clock", "style"),
        Output("tl-clock", "value"),
        Output("tl-clock-note", "children"),
        Input("run-select", "value"),
        Input("runs-version", "data"),
        State("tl-clock", "value"),
    )
    def clock(rid: str | None, _v: int, current: str | None) -> tuple[Any, Any, Any]:
        entry, _ = selected(state, rid)
        return clock_control(entry, current, keep=ctx.triggered_id == "runs-version")

    app.clientside_callback(
        """function(_opts) {
            var el = document.getElementById('tl-graph');
            var w = el ? el.offsetWidth : 0;
            return w > 0 ? w : null;
        }""",
        Output("tl-width", "data"),
        Input("tl-ranks", "options"),
    )

    @app.callback(
        Output("tl-graph", "figure"),
        Output("tl-stats", "children"),
        Output("tl-window", "data"),
        Output("tl-message", "children"),
        Input("tl-ranks", "value"),
        Input("tl-groups", "value"),
        Input("tl-graph", "relayoutData"),
        Input("tl-reset", "n_clicks"),
        Input("tl-clock", "value"),
        State("run-select", "value"),
        State("tl-window", "data"),
        State("tl-width", "data"),
    )
    def draw(ranks: list[int] | None, groups: list[str] | None, relayout: Any, _reset: int,
             clock: str | None, rid: str | None, window: dict[str, Any] | None,
             width: int | None) -> tuple:
        started = time.perf_counter()
        entry, msg = selected(state, rid)
        if entry is None:
            return empty_figure("No run loaded."), "", None, msg
        tl = entry.timeline_on(clock)
        if tl is None or tl.index.size == 0:
            reason = entry.result.report.not_applicable.get(  # type: ignore[union-attr]
                "summary", "nothing to draw")
            extra = " Its warp swimlanes are on the Warps page." if entry.warps else ""
            return (empty_figure("Nothing to draw."), "", None,
                    message(f"This run has no timeline: {reason}.{extra}", "warn",
                            id="tl-none"))
        full = (tl.t_min, tl.t_max)
        trig = ctx.triggered_id
        if trig == "tl-graph":
            xr = _x_range(relayout)
            if xr is None:
                raise PreventUpdate
            t0, t1 = full if xr == "full" else (int(xr[0] * 1e6), int(xr[1] * 1e6))
        elif trig == "tl-reset" or not window or window.get("run") != entry.id:
            t0, t1 = full
        else:
            t0, t1 = int(window["t0"]), int(window["t1"])
        if t1 <= t0:
            t1 = t0 + 1
        pixels = int(min(2400, max(200, (width or DEFAULT_PIXELS + 250) - 250)))
        fig, n = render(tl, ranks or [], groups or [], t0, t1, pixels,
                        revision=f"{entry.id}:{clock}:{sorted(ranks or [])}:"
                                 f"{sorted(groups or [])}")
        ms = (time.perf_counter() - started) * 1e3
        stats = html.Span([
            html.Span(str(n["rects"]), id="tl-rect-count"), " bars (",
            html.Span(str(n["winners"]), id="tl-winner-count"),
            " column winners, touching ones of a kind drawn as one) for ",
            html.Span(str(n["lanes"]), id="tl-lane-count"), " lanes × ",
            html.Span(str(n["pixels"]), id="tl-px"), " pixel columns · window ",
            html.Span(fmt_ns(t1 - t0), id="tl-span"), f" · {ms:.0f} ms on the server",
            *([" · clock: ", html.Span(clock, id="tl-clock-shown")]
              if entry.has_clock_toggle and clock in entry.timelines else []),
        ])
        window = {"run": entry.id, "t0": t0, "t1": t1, "pixels": pixels, "clock": clock,
                  "ranks": ranks or [], "groups": groups or []}
        return fig, stats, window, None

    @app.callback(
        Output("tl-info", "children"),
        Input("tl-graph", "clickData"),
        State("run-select", "value"),
        State("tl-clock", "value"),
        State("tl-window", "data"),
        prevent_initial_call=True,
    )
    def click(data: dict[str, Any] | None, rid: str | None, clock: str | None,
              window: dict[str, Any] | None) -> Any:
        entry, _ = selected(state, rid)
        tl = entry.timeline_on(clock) if entry is not None else None
        if tl is None or not data or not data.get("points"):
            return no_update
        row = clicked_row(tl, data["points"][0], window, entry.id, clock)
        if row is None:
            return no_update
        info = tl.describe(row)
        fields = [
            ("name", info.get("name")),
            ("lane", info.get("lane")),
            ("start", fmt_ns(info["start_ns"]) + " from the run's first event"),
            ("end", fmt_ns(info["end_ns"])),
            ("duration", fmt_ns(info["dur_ns"])),
            ("classification", " / ".join(str(x) for x in (info.get("kind"),
                                                           info.get("comm_type"),
                                                           info.get("rule")) if x)),
        ]
        if "stream" in info:
            fields.insert(2, ("stream / thread", str(info["stream"])))
            fields.append(("annotation", info.get("annotation") or "(none)"))
        return html.Table([html.Tr([html.Th(k), html.Td(str(v), id=f"tl-info-{k.split()[0]}")])
                           for k, v in fields], className="facts", id="tl-info-table")
