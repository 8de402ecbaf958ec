"""Errors users can act on: each names the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class TraceError(Exception):
    """A trace (or run directory) that cannot be analyzed.

    ``path`` is the offending file or directory, ``reason`` one sentence a user
    can act on (no traceback is shown to users).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        # Rebuilt from (path, reason) when sent back from a worker process.
        return (type(self), (self.path, self.reason))


class WindowError(ValueError):
    """An analysis-window regex that is invalid or matches no annotation (bad input)."""
