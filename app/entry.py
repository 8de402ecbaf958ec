"""The ``overlapscope`` console script.

Kept free of heavy imports so that Ctrl-C while the CLI is still importing (polars,
typer, the command modules) also ends with one line "interrupted" and exit status 130.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Import the CLI and run it; see :func:`overlapscope.app.cli.main`."""
    try:
        from overlapscope.app.cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    cli_main()
