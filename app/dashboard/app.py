"""The app factory: ``create_app(paths, roots)`` builds one Dash app with its own state.

Views are Dash Pages registered from ``pages/`` (one module per view, each with
``PATH``, ``NAME``, ``ORDER``, ``layout(state, **query)`` and
``register(app, state)``); the shell around them holds the run picker, the
navigation and the loading progress, polled while runs load in the background.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import dash
from dash import Dash, Input, Output, State, dcc, html, no_update

from overlapscope.analyzers import ReportOptions
from overlapscope.app.dashboard.paths import bundled_samples, default_roots
from overlapscope.app.dashboard.state import DashboardState

ASSETS = Path(__file__).with_name("assets")
#: How often the page asks for loading progress while runs load, ms.
POLL_MS = 500


def _pages() -> list[Any]:
    from overlapscope.app.dashboard.pages import PAGES

    return PAGES


def create_app(
    paths: list[Path] | tuple[Path, ...] = (),
    roots: list[Path] | None = None,
    *,
    max_upload_mb: float = 100,
    cache: bool = True,
    workers: int | None = None,
    options: ReportOptions | None = None,
    state: DashboardState | None = None,
) -> Dash:
    """A dashboard serving ``paths`` (runs or trace files), loading them in the background.

    ``roots``: the only folders whose files the page may open (default: the
    folders of ``paths``, or the bundled ``sample_traces/`` when no path is
    given). The state is ``app.overlapscope_state`` (a :class:`DashboardState`);
    pass a ready one as ``state`` to share loaded runs between apps (tests).
    """
    paths = [Path(p) for p in paths]
    if roots is None:
        samples = bundled_samples()
        roots = default_roots(paths) if paths else ([samples] if samples else [])
    if state is None:
        state = DashboardState(roots, max_upload_mb=max_upload_mb, cache=cache,
                               workers=workers, options=options)
    max_upload_mb = state.max_upload_bytes / (1 << 20)
    app = Dash(
        __name__,
        use_pages=True,
        pages_folder="",
        assets_folder=str(ASSETS),
        title="overlapscope",
        update_title=None,
        suppress_callback_exceptions=True,
    )
    # base64 makes uploads 4/3 larger; anything past twice the limit is refused unread.
    app.server.config["MAX_CONTENT_LENGTH"] = int(2 * max_upload_mb * (1 << 20)) + (1 << 20)
    pages = _pages()
    for page in pages:
        dash.register_page(
            page.__name__, path=page.PATH, name=page.NAME, order=page.ORDER,
            title=f"{page.NAME} · overlapscope", layout=partial(page.layout, state),
        )
    app.layout = _shell(pages)
    _register_shell(app, state)
    for page in pages:
        page.register(app, state)
    app.overlapscope_state = state  # type: ignore[attr-defined]
    for p in paths:
        state.open(p)
    return app


def _shell(pages: list[Any]) -> html.Div:
    nav = [dcc.Link(p.NAME, href=p.PATH, className="nav-link", id=f"nav-{p.NAME.lower()}")
           for p in pages]
    return html.Div([
        html.Header([
            html.Div([html.Span("overlapscope", className="brand"), html.Nav(nav)],
                     className="header-left"),
            html.Div([
                html.Label("Run", htmlFor="run-select"),
                dcc.Dropdown(id="run-select", clearable=False, searchable=True,
                             placeholder="loading…", className="run-dropdown"),
            ], className="run-picker"),
        ], className="header"),
        html.Div(id="load-status", className="load-status"),
        dcc.Interval(id="load-poll", interval=POLL_MS, disabled=False),
        dcc.Store(id="runs-version", data=-1),
        html.Main(dash.page_container, className="page"),
    ])


def _register_shell(app: Dash, state: DashboardState) -> None:
    @app.callback(
        Output("load-status", "children"),
        Output("run-select", "options"),
        Output("run-select", "value"),
        Output("runs-version", "data"),
        Output("load-poll", "disabled"),
        Input("load-poll", "n_intervals"),
        State("runs-version", "data"),
        State("run-select", "value"),
    )
    def poll(_n: int | None, version: int, current: str | None) -> tuple[Any, ...]:
        seen = state.version
        pending = state.pending()
        if version == seen:
            return no_update, no_update, no_update, no_update, not pending
        entries = list(state.runs.values())
        options = [
            {"label": e.label if e.ready else f"{e.label} (loading…)", "value": e.id,
             "disabled": not e.ready}
            for e in entries if e.status != "error"
        ]
        value = current
        wanted = state.get(state.extra.get("select"))
        if wanted is not None and wanted.ready:
            value = wanted.id
            state.extra.pop("select", None)
        elif state.get(current) is None or not state.get(current).ready:  # type: ignore[union-attr]
            ready = state.ready_runs()
            value = ready[0].id if ready else None
        busy = [e for e in entries if e.status in ("queued", "loading")]
        status: list[Any] = []
        for e in busy:
            status.append(html.Div([
                html.Progress(value=str(e.done) if e.total else None,
                              max=str(e.total) if e.total else None),
                html.Span(e.progress_text(), className="progress-text"),
            ], className="progress-row"))
        # keep polling until a poll has seen the final version
        done = not pending and state.version == seen
        return status, options, value, seen, done
