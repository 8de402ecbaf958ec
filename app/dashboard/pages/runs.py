"""Runs: the runs opened, their ranks, workload and topology, headline metrics;
open another run by path (under the allowed folders) or by upload; HTML export."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from overlapscope.analyzers.report import METRICS
from overlapscope.app.dashboard.components.common import section, selected
from overlapscope.app.dashboard.components.format import fmt_metric_cell
from overlapscope.app.dashboard.components.tables import message, metric_cards, metric_label
from overlapscope.app.dashboard.paths import PathError, candidates
from overlapscope.app.dashboard.state import DashboardState, RunEntry, UploadError

PATH = "/"
NAME = "Runs"
ORDER = 0


def layout(state: DashboardState, **_query: Any) -> html.Div:
    """The Runs view."""
    roots = [{"label": str(r), "value": i} for i, r in enumerate(state.roots)]
    suggestions = [html.Option(value=rel, label=f"{state.roots[i].name}/{rel}")
                   for i, rel in candidates(state.roots)]
    limit = state.max_upload_bytes / (1 << 20)
    return html.Div([
        html.H2("Runs"),
        html.Div(id="runs-list"),
        html.Div(id="run-details"),
        section(
            "Open another run",
            html.P("A run directory (one trace per rank), a .json/.json.gz trace or a warp CSV, "
                   "relative to one of the folders the dashboard was started with.",
                   className="hint"),
            html.Div([
                dcc.Dropdown(id="open-root", options=roots, value=0 if roots else None,
                             clearable=False, className="open-root"),
                dcc.Input(id="open-path", type="text", list="open-suggest",
                          placeholder="e.g. cpu/dualpipe", className="open-path",
                          debounce=False, autoComplete="off"),
                html.Datalist(id="open-suggest", children=suggestions),
                html.Button("Open", id="open-button", n_clicks=0, className="button"),
            ], className="open-row"),
            html.Div(id="open-message"),
            dcc.Upload(
                id="upload",
                children=html.Div([f"Drop a .json or .json.gz trace here (at most {limit:.0f} MB)"
                                   " or ", html.A("choose a file")]),
                className="upload", multiple=False,
            ),
            html.Div(id="upload-message"),
        ),
        section(
            "Export",
            html.P("A single HTML file with this run's views (plotly.js inside, opens offline). "
                   "Each figure's camera button saves it as PNG.", className="hint"),
            html.Button("Download HTML snapshot", id="export-button", n_clicks=0,
                        className="button"),
            dcc.Download(id="export-download"),
            html.Div(id="export-message"),
        ),
    ])


def _runs_table(state: DashboardState, current: str | None) -> html.Div:
    rows = []
    for e in state.runs.values():
        facts = e.result.report.facts if e.ready and e.result else {}
        status = {"ready": "ready", "error": "failed"}.get(e.status, "loading")
        rows.append(html.Tr([
            html.Td(e.label, title=str(e.path)),
            html.Td(status if e.status != "error" else f"failed: {e.error}",
                    className=f"status status-{e.status}"),
            html.Td(facts.get("trace_kind", "")),
            html.Td(str(facts.get("ranks", "")), className="num"),
            html.Td(facts.get("workload") or ""),
            html.Td(e.source),
        ], className="selected-row" if e.id == current else None, id=f"run-row-{e.id}"))
    if not rows:
        return message("No run is open: open one below.", "info")
    head = html.Tr([html.Th(h) for h in ("run", "status", "kind", "ranks", "workload", "opened")])
    return html.Div(html.Table([html.Thead(head), html.Tbody(rows)], className="data runs"),
                    className="table-wrap")


def topology_text(entry: RunEntry) -> str:
    """Topology and schedule in words, from the run's manifest or trace augmentation."""
    f = entry.result.frames if entry.result else None
    if f is None:
        return ""
    ours = f.meta.get("overlapscope") or {}
    manifest = f.meta.get("manifest") or {}
    topo = manifest.get("topology") or ours.get("topology") or {}
    parts = []
    if topo.get("nodes") and topo.get("gpus_per_node"):
        parts.append(f"{topo['nodes']} nodes × {topo['gpus_per_node']} GPUs")
    elif f.meta.get("gpus_per_node"):
        parts.append(f"{f.meta['gpus_per_node']} GPUs per node")
    if topo.get("ib_gbps") and topo.get("nvl_gbps"):
        parts.append(f"IB {topo['ib_gbps']:g} GB/s, NVLink {topo['nvl_gbps']:g} GB/s")
    sched = manifest.get("schedule") or ours.get("schedule") or {}
    if isinstance(sched, dict) and sched.get("name"):
        extra = ", ".join(f"{k} {sched[k]}" for k in ("pp", "ep", "micro_batches") if k in sched)
        parts.append(f"schedule {sched['name']} ({extra})" if extra else sched["name"])
    devices = f.ranks["device_name"].drop_nulls().unique().to_list()
    if devices:
        parts.append(", ".join(devices))
    backends = f.ranks["backend"].drop_nulls().unique().to_list()
    if backends:
        parts.append("backend " + ", ".join(backends))
    return "; ".join(parts) or "no topology recorded in the trace"


def _per_rank(entry: RunEntry) -> html.Div:
    report = entry.result.report  # type: ignore[union-attr]
    df = report.metrics(by="rank")
    cols = [m for m in METRICS if m in df.columns and df[m].null_count() < df.height]
    if not cols or df.height < 2:
        return html.Div()
    head = html.Tr([html.Th("rank")] + [
        html.Th(metric_label(c), title=f"{METRICS[c].meaning} ({c})", className="num")
        for c in cols])
    body = [html.Tr([html.Td(str(r["rank"]))] + [
        html.Td(fmt_metric_cell(r[c], METRICS[c].unit), className="num") for c in cols])
        for r in df.iter_rows(named=True)]
    return section("Per rank", html.Div(html.Table([html.Thead(head), html.Tbody(body)],
                                                   className="data"), className="table-wrap"))


def _details(entry: RunEntry) -> html.Div:
    report = entry.result.report  # type: ignore[union-attr]
    facts = report.facts
    window = facts.get("window", "")
    rows = [
        ("path", str(entry.path)),
        ("ranks", f"{facts.get('ranks')} ({facts.get('trace_kind')} trace)"),
        ("workload", facts.get("workload") or "not recorded"),
        ("topology", topology_text(entry)),
        ("analysis window", f"{window}" + ("" if facts.get("window_from_annotation", True)
                                           else " (not found: whole trace used)")),
        ("loaded in", f"{entry.seconds:.2f} s" if entry.seconds else ""),
    ]
    notes = [html.Li(n) for n in report.notes]
    return html.Div([
        html.H3(entry.label, id="run-title"),
        html.Table([html.Tr([html.Th(k), html.Td(v)]) for k, v in rows], className="facts"),
        html.Ul(notes, className="notes") if notes else None,
        section("Headline metrics", metric_cards(report)),
        _per_rank(entry),
    ])


def register(app: Dash, state: DashboardState) -> None:
    """Callbacks of the Runs view."""

    @app.callback(
        Output("runs-list", "children"),
        Output("run-details", "children"),
        Input("run-select", "value"),
        Input("runs-version", "data"),
    )
    def show(rid: str | None, _v: int) -> tuple[Any, Any]:
        entry, msg = selected(state, rid)
        return _runs_table(state, rid), (_details(entry) if entry else msg)

    @app.callback(
        Output("open-message", "children"),
        Output("load-poll", "disabled", allow_duplicate=True),
        Input("open-button", "n_clicks"),
        Input("open-path", "n_submit"),
        State("open-path", "value"),
        State("open-root", "value"),
        prevent_initial_call=True,
    )
    def open_path(n: int, s: int | None, value: str | None, root: int | None) -> tuple[Any, Any]:
        if not n and not s:  # the view was just drawn: nothing asked yet
            raise PreventUpdate
        try:
            if root is not None and not (0 <= int(root) < len(state.roots)):
                raise PathError("unknown folder")
            entry = state.open_relative(value or "", root)
        except PathError as exc:
            return message(f"Not opened: {exc}", "error", id="open-error"), no_update
        state.extra["select"] = entry.id
        return message(f"Opening {entry.label}… it appears in the run list when ready.", "ok",
                       id="open-ok"), False

    @app.callback(
        Output("upload-message", "children"),
        Output("load-poll", "disabled", allow_duplicate=True),
        Input("upload", "contents"),
        State("upload", "filename"),
        prevent_initial_call=True,
    )
    def upload(contents: str | None, filename: str | None) -> tuple[Any, Any]:
        if contents is None and filename is None:  # the view was just drawn
            raise PreventUpdate
        try:
            path = state.save_upload(filename, contents)
        except UploadError as exc:
            return message(f"Upload refused: {exc}", "error", id="upload-error"), no_update
        entry = state.open(path, source="uploaded")
        state.extra["select"] = entry.id
        return message(f"Uploaded {path.name}: analyzing… (a trace that cannot be analyzed is "
                       "listed above with the reason)", "ok", id="upload-ok"), False

    @app.callback(
        Output("export-download", "data"),
        Output("export-message", "children"),
        Input("export-button", "n_clicks"),
        State("run-select", "value"),
        prevent_initial_call=True,
    )
    def export(n: int, rid: str | None) -> tuple[Any, Any]:
        if not n:
            raise PreventUpdate
        from overlapscope.app.dashboard.export import snapshot_html

        entry, msg = selected(state, rid)
        if entry is None:
            return no_update, msg
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in entry.label)
        return dcc.send_string(snapshot_html(entry), f"overlapscope-{name}.html"), message(
            f"Snapshot of {entry.label} downloaded.", "ok")


__all__ = ["NAME", "ORDER", "PATH", "layout", "register", "topology_text"]
