"""`overlapscope` command line: analyze | profile | tune-dispatch.

Each sub-command lives in its own module under app/commands and is registered
here. Exit status: 0 success, 2 bad input, 1 failed regression threshold.
"""

from __future__ import annotations

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


@app.callback()
def _root() -> None:
    """overlapscope: communication/computation overlap analysis for Kineto traces."""


def _register() -> None:
    # Each module defines `register(app)`; one line per sub-command module.
    from overlapscope.app.commands import analyze

    analyze.register(app)
    from overlapscope.app.commands import profile

    profile.register(app)
    from overlapscope.app.commands import tune_dispatch

    tune_dispatch.register(app)


_register()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
