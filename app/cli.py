"""`overlapscope` command line: analyze | profile | tune-dispatch | compare | dashboard | export.

Each sub-command lives in its own module under app/commands (``register(app)``) and is
named in :data:`COMMANDS`. A module is imported only when its command runs (the root
``--help`` imports them all to list them), so start-up costs only what the invoked
command needs. Exit status: 0 success, 2 bad input, 1 failed regression threshold.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, MutableMapping
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

#: Sub-command -> module under app/commands that registers it, in `--help` order.
#: One line per sub-command module; nothing else to edit when adding one.
COMMANDS = {
    "analyze": "analyze",
    "profile": "profile",
    "tune-dispatch": "tune_dispatch",
    "compare": "compare",
    "dashboard": "dashboard",
    "export": "export",
}


class _Commands(MutableMapping[str, Any]):
    """Sub-commands by name, each built on first lookup (``load(name)``)."""

    def __init__(self, names: list[str], load: Callable[[str], Any]) -> None:
        self._names = list(names)
        self._built: dict[str, Any] = {}
        self._load = load

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in self._names:
                raise KeyError(name)
            self._built[name] = self._load(name)
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._names:
            self._names.append(name)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        self._names.remove(name)
        self._built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names))

    def __len__(self) -> int:
        return len(self._names)


def _build(name: str) -> Any:
    """The click command of ``name``: its module registers it on a scratch Typer with
    the root's settings, then typer turns it into a command exactly as it would have."""
    scratch = typer.Typer(
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode,
    )
    importlib.import_module(f"overlapscope.app.commands.{COMMANDS[name]}").register(scratch)
    return typer.main.get_group(scratch).commands[name]


class LazyGroup(TyperGroup):
    """The root group: lists every name in COMMANDS, imports a module when used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        eager = dict(self.commands)
        self.commands = _Commands([*COMMANDS, *(n for n in eager if n not in COMMANDS)], _build)
        for name, command in eager.items():
            self.commands[name] = command

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # names only: listing builds nothing


app = typer.Typer(
    cls=LazyGroup,
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
