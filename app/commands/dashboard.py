"""`overlapscope dashboard [RUN_OR_TRACE ...]`: serve the web dashboard."""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import Annotated

import typer

from overlapscope.app import render

EXIT_BAD_INPUT = 2
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    """Add the dashboard command to the CLI."""

    @app.command()
    def dashboard(
        paths: Annotated[
            list[Path] | None,
            typer.Argument(
                help="Runs (directories of rank traces), trace files or warp CSVs to open. "
                "None: the bundled sample_traces/.",
                show_default=False,
            ),
        ] = None,
        host: Annotated[
            str, typer.Option(help="Interface to listen on (other hosts can connect when not "
                                   "127.0.0.1: there is no authentication).")
        ] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8050,
        root: Annotated[
            list[Path] | None,
            typer.Option(
                "--root",
                help="A folder whose runs the page may open (repeatable). Default: the "
                "folders of the given paths, or sample_traces/.",
            ),
        ] = None,
        max_upload_mb: Annotated[
            float, typer.Option(help="Largest trace the page accepts as an upload, MB.")
        ] = 100,
        cache: Annotated[
            bool,
            typer.Option(
                help="Reuse cached decoded traces, reports and timeline indexes "
                "($OVERLAPSCOPE_CACHE_DIR)."
            ),
        ] = True,
        debug: Annotated[bool, typer.Option(help="Dash debug mode (developers).")] = False,
    ) -> None:
        """Open runs in a web dashboard: timeline of all ranks, overlap, pipeline,
        traffic, warps and compare views.

        Only files under the --root folders can be opened from the page.
        """
        from overlapscope.app.dashboard import create_app
        from overlapscope.app.dashboard.paths import bundled_samples, sample_runs

        paths = list(paths or [])
        missing = [p for p in paths if not p.exists()]
        if missing:
            render.error("no such file or directory: " + ", ".join(map(str, missing)))
            raise typer.Exit(EXIT_BAD_INPUT)
        roots = list(root or [])
        bad_roots = [r for r in roots if not r.is_dir()]
        if bad_roots:
            render.error("--root must be a folder: " + ", ".join(map(str, bad_roots)))
            raise typer.Exit(EXIT_BAD_INPUT)
        if not paths:
            samples = bundled_samples()
            if samples is None:
                render.error("no run given and no bundled sample_traces/ found: "
                             "pass a run directory or trace file")
                raise typer.Exit(EXIT_BAD_INPUT)
            paths = sample_runs(samples)
            roots = roots or [samples]
        if host not in LOCAL_HOSTS:
            render.err.print(
                f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine "
                "on port {port} can read the runs under the allowed folders (no "
                "authentication). Use --host 127.0.0.1 and an SSH tunnel instead.".replace(
                    "{port}", str(port)), highlight=False)
        app = create_app(paths, roots or None, max_upload_mb=max_upload_mb, cache=cache)
        atexit.register(app.overlapscope_state.close)  # removes uploaded files
        shown = "localhost" if host in LOCAL_HOSTS else host
        render.err.print(f"overlapscope dashboard: http://{shown}:{port}/  "
                         f"({len(paths)} runs loading in the background; Ctrl-C stops)",
                         highlight=False)
        app.run(host=host, port=port, debug=debug)
