"""`overlapscope export RUN_OR_TRACES... --merged OUT`: one Perfetto trace of all ranks."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from overlapscope.app import render

EXIT_BAD_INPUT = 2
PERFETTO_URL = "https://ui.perfetto.dev"


class Align(StrEnum):
    """Clock alignment of the merged trace (as ``analyze --align``)."""

    auto = "auto"
    on = "on"
    none = "none"


def _say(line: str) -> None:
    """One line on stdout: no markup (paths may hold brackets), never wrapped."""
    render.out.print(line, markup=False, soft_wrap=True)


def _bad(message: str) -> typer.Exit:
    render.error(message)
    return typer.Exit(EXIT_BAD_INPUT)


def register(app: typer.Typer) -> None:
    """Add the export command to the CLI."""

    @app.command()
    def export(
        paths: Annotated[
            list[Path],
            typer.Argument(
                help="One run (a directory of rank traces), or the trace files of one run.",
                metavar="RUN_OR_TRACES...",
                show_default=False,
            ),
        ],
        merged: Annotated[
            Path,
            typer.Option(
                "--merged",
                help="Write one Chrome/Perfetto trace JSON here (gzip when it ends in .gz).",
                show_default=False,
            ),
        ],
        align: Annotated[
            Align,
            typer.Option(
                help="Clock alignment: auto corrects when anchors show causality violations "
                "or a significant offset; on whenever anchors exist; none keeps raw times."
            ),
        ] = Align.auto,
        force: Annotated[bool, typer.Option(help="Overwrite an existing output file.")] = False,
        cache: Annotated[
            bool, typer.Option(help="Reuse cached decoded traces ($OVERLAPSCOPE_CACHE_DIR).")
        ] = True,
    ) -> None:
        """Merge a run's rank traces into one Perfetto trace, clocks aligned.

        Every rank is its own process (pid = rank + 1), on the corrected clock of
        `analyze --align`. Times stay Kineto microseconds (exact to the ns); flow
        ids are made unique per rank; the top-level "overlapscope" object records
        the offsets applied.
        """
        from overlapscope.analyzers.errors import TraceError
        from overlapscope.analyzers.merged_trace import export_merged

        missing = [p for p in paths if not p.exists()]
        if missing:
            raise _bad("no such file or directory: " + ", ".join(map(str, missing)))
        if merged.is_dir():
            raise _bad(f"{merged}: is a directory; give a file name ending in .json or .json.gz")
        if merged.exists() and not force:
            raise _bad(f"{merged}: already exists (use --force to overwrite)")
        inputs = {p.resolve() for p in paths}
        if merged.resolve() in inputs or any(merged.resolve().is_relative_to(d)
                                             for d in inputs if d.is_dir()):
            raise _bad(f"{merged}: would write into the input run; choose another path")
        if not merged.name.endswith((".json", ".json.gz")):
            render.warn(f"{merged}: Perfetto recognises traces named *.json or *.json.gz")
        try:
            with render.progress(enabled=sys.stderr.isatty()) as bar:
                tasks: dict[int | None, int] = {
                    None: bar.add_task("loading run, estimating clocks", total=None)}

                def on_progress(stage: str, rank: int | None, done: int, total: int) -> None:
                    key = None if stage == "load" else rank
                    if key not in tasks:
                        tasks[key] = bar.add_task(f"rank {rank}", total=total)
                    # a finished bar is hidden: a 1000-rank run shows one bar at a time
                    bar.update(tasks[key], completed=done, total=total, visible=done < total)

                summary = export_merged(paths, merged, align=align.value, cache=cache,
                                        progress=on_progress)
        except TraceError as exc:
            raise _bad(f"{exc.path}: {exc.reason}") from None
        except OSError as exc:
            raise _bad(f"{merged}: cannot write ({exc.strerror or exc})") from None
        n = len(summary.ranks)
        _say(f"wrote {summary.out}: {summary.events:,} events ({summary.x_events:,} complete) "
             f"from {n} rank{'s' * (n > 1)}")
        _say(f"clock: {summary.reason}")
        if summary.corrected:
            for r in summary.ranks:
                _say(f"  rank {r.rank} (pid {r.pid}): offset {r.offset_ns / 1e3:+,.3f} µs, "
                     f"drift {r.drift_ppm:+.3f} ppm")
        for note in summary.notes:
            render.warn(note)
        _say(f"open it in {PERFETTO_URL}")
