"""`overlapscope` command line: analyze | profile | tune-dispatch.

Each sub-command lives in its own module under app/commands and is registered
here. Exit status: 0 success, 2 bad input, 1 failed regression threshold.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

app = typer.Typer(
    name="overlapscope",
    help=(
        "Measure how much communication is hidden under compute in PyTorch Profiler "
        "(Kineto) traces of MoE training: overlap, exposed communication, pipeline "
        "bubbles, IB vs NVLink traffic and per-warp roles."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130


def package_version() -> str:
    """The installed distribution's version (``unknown`` when run from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("overlapscope")
    except PackageNotFoundError:
        return "unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"overlapscope {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """overlapscope: communication/computation overlap analysis for Kineto traces."""


def _register() -> None:
    # Each module defines `register(app)`; one line per sub-command module.
    from overlapscope.app.commands import analyze

    analyze.register(app)
    from overlapscope.app.commands import profile

    profile.register(app)
    from overlapscope.app.commands import tune_dispatch

    tune_dispatch.register(app)
    from overlapscope.app.commands import compare; compare.register(app)  # noqa: E702, I001
    from overlapscope.app.commands import dashboard; dashboard.register(app)  # noqa: E702, I001


_register()


def interrupted() -> None:
    """Ctrl-C: one line on stderr, exit 130 (no traceback)."""
    try:
        print("interrupted", file=sys.stderr, flush=True)
    finally:
        sys.exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the CLI; Ctrl-C at any moment ends with "interrupted".

    Typer turns a KeyboardInterrupt inside a command into exit status 130 without a word;
    one raised outside the command (while parsing, or by a progress bar's refresh thread
    at exit) arrives here as KeyboardInterrupt. Both print the same single line.
    """
    try:
        app(args=argv)
    except KeyboardInterrupt:
        interrupted()
    except SystemExit as exc:
        if exc.code == EXIT_INTERRUPTED:
            interrupted()
        raise


if __name__ == "__main__":
    main()
