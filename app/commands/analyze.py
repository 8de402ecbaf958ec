"""`overlapscope analyze PATH...`: the declared Report tables for Kineto traces."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from overlapscope.analyzers.options import ReportOptions
from overlapscope.analyzers.report import TABLES

# The batch API (decoder, analyses) and the renderers are imported when the command
# runs, and the batch API only when some input has no stored Report: a reopened run
# starts in a fraction of the time.
if TYPE_CHECKING:
    from overlapscope.analyzers.batch import Progress
    from overlapscope.analyzers.report import Report

EXIT_BAD_INPUT = 2
EXIT_INCOMPLETE = 3
#: Inputs at least this large (bytes in all) get a progress bar.
PROGRESS_MIN_BYTES = 20 << 20
DEFAULT_TABLES = ",".join(name for name, spec in TABLES.items() if spec.default)


class Format(StrEnum):
    """Output formats of analyze."""

    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


class Align(StrEnum):
    """Clock alignment of multi-rank runs."""

    auto = "auto"
    on = "on"
    none = "none"


class Engine(StrEnum):
    """Where per-run work runs."""

    local = "local"
    ray = "ray"


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return 0


def parse_tables(spec: str) -> list[str]:
    """'all' or a comma list of declared table names; raises ValueError naming unknowns."""
    wanted = list(TABLES) if spec == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in TABLES]
    if unknown:
        raise ValueError(f"unknown table(s): {', '.join(unknown)}; known: {', '.join(TABLES)}")
    return wanted


def json_document(reports: list[Report], errors: list, tables: list[str] | None = None) -> str:
    """The JSON output: every report (facts, metrics, table statuses, the rows of
    ``tables``) and the inputs that could not be analyzed."""
    import msgspec

    doc = {
        "reports": [r.to_dict(tables) for r in reports],
        "errors": [{"path": e.path, "reason": e.reason} for e in errors],
    }
    return msgspec.json.format(msgspec.json.encode(doc), indent=2).decode() + "\n"


EPILOG = (
    "Overlap: communication counts as hidden only under compute kernels (host compute ops "
    "on CPU-only traces); memcpy/memset are not compute, and comm under them alone is "
    "shown as 'under memcpy'. Window: the span of work of the ProfilerStep#N annotations "
    "(or --window), the whole trace when there are none. "
    "Exit status: 0 every input analyzed; 2 some input was bad (the good ones are still "
    "reported, the bad ones listed at the end); 3 a table failed to build (a bug: the "
    "report is incomplete; --keep-going exits 0 then)."
)


def register(app: typer.Typer) -> None:
    """Add the analyze command to the CLI."""

    @app.command(name="analyze", epilog=EPILOG)
    def analyze_cmd(
        paths: Annotated[
            list[Path],
            typer.Argument(
                help="Kineto trace files (.json / .json.gz), run directories of rank files, "
                "or per-warp CSVs.",
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
        ] = DEFAULT_TABLES,
        window: Annotated[
            str | None,
            typer.Option(
                help="Regex of the annotation that bounds the analysis window "
                "(default: ProfilerStep#N; whole trace when absent). A regex that is "
                "invalid or matches nothing is an error."
            ),
        ] = None,
        rules: Annotated[
            str | None,
            typer.Option(help="Extra classification rules (TOML), tried before the built-in ones."),
        ] = None,
        gpus_per_node: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="GPUs per node, for IB/NVLink attribution of traces without topology.",
            ),
        ] = None,
        top: Annotated[int, typer.Option(min=1, help="Rows of the worst_kernels table.")] = 10,
        annotation_detail: Annotated[
            bool,
            typer.Option(
                "--annotation-detail",
                help="One annotations row per distinct name instead of rolling instances "
                "(mb=3, stage=1, #12) up by pattern.",
            ),
        ] = False,
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
        keep_going: Annotated[
            bool,
            typer.Option(
                "--keep-going",
                help="Exit 0 even when a table failed to build (it is still listed).",
            ),
        ] = False,
        align: Annotated[
            Align,
            typer.Option(
                help="Put all ranks on one time axis by estimating each rank's clock offset "
                "and drift from collectives and send/receive pairs: auto = correct when the "
                "skew is significant or causality is violated; on = whenever anchors exist; "
                "none = raw timestamps. The skew table reports the estimate."
            ),
        ] = Align.auto,
        workers: Annotated[
            int | None,
            typer.Option(min=1, help="Worker processes (default: 1 for small inputs, else "
                         "one per CPU)."),
        ] = None,
        engine: Annotated[
            Engine, typer.Option(help="local processes, or Ray tasks (the `ray` extra).")
        ] = Engine.local,
        address: Annotated[
            str | None, typer.Option(help="Ray cluster address (--engine ray).")
        ] = None,
    ) -> None:
        """Measure compute/communication overlap, exposed communication, idle time,
        bubbles, traffic and warp roles.

        Each PATH is one run: a single trace file, or a directory holding one
        trace per rank (rank-<r>.json.gz or any names PyTorch writes).
        """
        from overlapscope.app import render

        try:
            wanted = parse_tables(tables)
        except ValueError as exc:
            render.error(str(exc))
            raise typer.Exit(EXIT_BAD_INPUT) from None
        options = ReportOptions(
            window=window, rules_file=rules, top=top, hta_compat=hta_compat,
            gpus_per_node=gpus_per_node, annotation_detail=annotation_detail,
            align=align.value,
        )
        # Every input reopens from the Report cache: nothing to decode or analyze.
        cached = None
        if cache and engine == Engine.local:
            from overlapscope.analyzers.report_cache import reopen

            cached = reopen(paths, options)
        if cached is not None:
            reports, errors = cached, []
        else:
            reports, errors = _analyze(paths, options, fmt, cache, workers, engine, address)
        if fmt == Format.json:
            sys.stdout.write(json_document(reports, errors, wanted))
        elif fmt == Format.csv:
            render.csv(reports, wanted)
        elif fmt == Format.markdown:
            render.markdown(reports, wanted)
        else:
            render.tables(reports, wanted)
        if errors:
            render.bad_inputs(errors)
        broken = [(r.source, t, e) for r in reports for t, e in sorted(r.failures.items())]
        for source, table, error in broken:
            render.error(f"{source}: table {table} failed to build ({error}); report incomplete")
        if errors:
            raise typer.Exit(EXIT_BAD_INPUT)
        if broken and not keep_going:
            raise typer.Exit(EXIT_INCOMPLETE)


def _analyze(
    paths: list[Path], options: ReportOptions, fmt: Format, cache: bool,
    workers: int | None, engine: Engine, address: str | None,
) -> tuple[list[Report], list]:
    """The batch API with a progress bar: (reports, inputs that could not be analyzed)."""
    from overlapscope.analyzers.batch import analyze
    from overlapscope.analyzers.classify import RuleError
    from overlapscope.app import render

    show = (
        fmt == Format.table
        and sys.stderr.isatty()
        and (len(paths) > 1 or sum(_size(p) for p in paths) >= PROGRESS_MIN_BYTES)
    )
    try:
        with render.progress(enabled=show) as bar:
            task = bar.add_task("analyzing", total=len(paths))

            def on_progress(p: Progress) -> None:
                name = Path(p.path).name
                if p.stage == "decode":
                    bar.update(task, description=f"decoding [{p.done}/{p.total}] {name}")
                else:
                    bar.update(task, completed=p.done, description=f"analyzed {name}")

            result = analyze(
                paths, options=options, cache=cache, progress=on_progress,
                workers=workers, engine=engine.value, address=address,
            )
    except RuleError as exc:
        render.error(str(exc))
        raise typer.Exit(EXIT_BAD_INPUT) from None
    return result.reports, result.errors
