"""`overlapscope analyze PATH...`: overlap and breakdown tables for Kineto traces."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from overlapscope.analyzers.classify import RuleError, load_rules
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.report import TABLES, Report, build_report
from overlapscope.app import render

EXIT_BAD_INPUT = 2
#: Inputs at least this large (bytes in all) get a progress bar.
PROGRESS_MIN_BYTES = 20 << 20


class Format(StrEnum):
    """Output formats of analyze."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return 0


def analyze_paths(
    paths: list[Path],
    *,
    cache: bool,
    window: str | None,
    rules_file: str | None,
    gpus_per_node: int | None,
    top: int,
    hta_compat: bool,
    show_progress: bool,
) -> tuple[list[Report], list[TraceError]]:
    """Load and analyze each path; bad inputs are collected, not raised."""
    rules = load_rules(rules_file)
    reports: list[Report] = []
    errors: list[TraceError] = []
    with render.progress(enabled=show_progress) as bar:
        task = bar.add_task("analyzing", total=len(paths))
        for path in paths:
            bar.update(task, description=f"loading {path.name}")

            def on_file(file: Path, i: int, n: int, _p: Path = path) -> None:
                bar.update(task, description=f"loading {_p.name} [{i + 1}/{n}] {file.name}")

            try:
                frames = load_run(path, cache=cache, gpus_per_node=gpus_per_node, progress=on_file)
                bar.update(task, description=f"analyzing {path.name}")
                reports.append(
                    build_report(frames, window=window, rules=rules, top=top, hta_compat=hta_compat)
                )
            except TraceError as exc:
                errors.append(exc)
            bar.advance(task)
    return reports, errors


def register(app: typer.Typer) -> None:
    """Add the analyze command to the CLI."""

    @app.command(
        epilog=(
            "Exit status: 0 all inputs analyzed; 2 some input was bad (the good ones are "
            "still reported, the bad ones listed at the end)."
        )
    )
    def analyze(
        paths: Annotated[
            list[Path],
            typer.Argument(
                help="Kineto trace files (.json / .json.gz) or run directories of rank files.",
                show_default=False,
            ),
        ],
        fmt: Annotated[
            Format, typer.Option("--format", "-f", help="Output format.")
        ] = Format.table,
        tables: Annotated[
            str,
            typer.Option(
                "--tables",
                "-t",
                help="Comma-separated tables to show, or 'all'. Known: " + ", ".join(TABLES),
            ),
        ] = "summary,streams,annotations,kernels,sm_split",
        window: Annotated[
            str | None,
            typer.Option(
                help="Regex of the annotation that bounds the analysis window "
                "(default: ProfilerStep#N; whole trace when absent)."
            ),
        ] = None,
        rules: Annotated[
            str | None,
            typer.Option(help="Extra classification rules (TOML), tried before the built-in ones."),
        ] = None,
        gpus_per_node: Annotated[
            int | None,
            typer.Option(
                help="GPUs per node, for IB/NVLink attribution of traces without topology."
            ),
        ] = None,
        top: Annotated[int, typer.Option(help="Rows of the worst-kernels table.")] = 10,
        cache: Annotated[
            bool,
            typer.Option(
                help="Reuse decoded traces from the parquet cache ($OVERLAPSCOPE_CACHE_DIR)."
            ),
        ] = True,
        hta_compat: Annotated[
            bool,
            typer.Option(
                "--hta-compat",
                help="Reproduce HTA 0.5.0's rules (NCCL-only comm, µs rounding, "
                "last ProfilerStep dropped) to compare with HTA.",
            ),
        ] = False,
    ) -> None:
        """Measure compute/communication overlap, exposed communication and idle time.

        Each PATH is one run: a single trace file, or a directory holding one
        trace per rank (rank-<r>.json.gz or any names PyTorch writes).
        """
        wanted = list(TABLES) if tables == "all" else [t.strip() for t in tables.split(",")]
        unknown = [t for t in wanted if t not in TABLES]
        if unknown:
            render.error(f"unknown table(s): {', '.join(unknown)}; known: {', '.join(TABLES)}")
            raise typer.Exit(EXIT_BAD_INPUT)
        try:
            load_rules(rules)
        except RuleError as exc:
            render.error(str(exc))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        show_progress = (
            fmt == Format.table
            and sys.stderr.isatty()
            and (len(paths) > 1 or sum(_size(p) for p in paths) >= PROGRESS_MIN_BYTES)
        )
        reports, errors = analyze_paths(
            paths,
            cache=cache,
            window=window,
            rules_file=rules,
            gpus_per_node=gpus_per_node,
            top=top,
            hta_compat=hta_compat,
            show_progress=show_progress,
        )
        if fmt == Format.json:
            doc = {
                "reports": [r.to_dict() for r in reports],
                "errors": [{"path": e.path, "reason": e.reason} for e in errors],
            }
            sys.stdout.write(
                msgspec.json.format(msgspec.json.encode(doc), indent=2).decode() + "\n"
            )
        elif fmt == Format.csv:
            render.csv(reports, wanted)
        elif fmt == Format.markdown:
            render.markdown(reports, wanted)
        else:
            render.tables(reports, wanted)
        if errors:
            render.bad_inputs(errors)
            raise typer.Exit(EXIT_BAD_INPUT)
