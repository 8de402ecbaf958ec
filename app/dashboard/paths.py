"""Which files the dashboard may open: only paths under the roots given on the command line.

Paths typed into the page (or sent by a tampered request) are always *relative* to
a root: absolute paths, ``~``, ``..`` components, backslashes and NUL bytes are
refused, and the resolved path (symlinks followed) must still lie under the root.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

#: Files the dashboard opens (Kineto traces and per-warp CSVs).
OPENABLE_SUFFIXES = (".json", ".json.gz", ".csv", ".csv.gz")
#: Files a user may upload.
UPLOAD_SUFFIXES = (".json", ".json.gz")
#: Sub-directories searched for runs below a root.
SCAN_DEPTH = 3
SCAN_LIMIT = 300


class PathError(ValueError):
    """A path the dashboard refuses to open, with the reason in words."""


def bundled_samples() -> Path | None:
    """The repository's ``sample_traces/`` (present in a source checkout), else None."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        cand = parent / "sample_traces"
        if cand.is_dir() and (cand / "README.md").is_file():
            return cand
    return None


def sample_runs(samples: Path) -> list[Path]:
    """The bundled runs opened when the dashboard gets no argument."""
    out: list[Path] = []
    cpu = samples / "cpu"
    if cpu.is_dir():
        out.extend(sorted(p for p in cpu.iterdir() if p.is_dir()))
    h200 = samples / "h200"
    if h200.is_dir():
        out.extend(sorted(h200.glob("*.json.gz")))
    if (samples / "handmade").is_dir():
        out.append(samples / "handmade")
    warp = h200 / "warp_events_M4_NS4_NR4.csv.gz"
    if warp.is_file():
        out.append(warp)
    return out


def default_roots(paths: list[Path]) -> list[Path]:
    """The directories of the given paths (each path's parent), without repeats."""
    roots: list[Path] = []
    for p in paths:
        root = p.resolve().parent
        if root not in roots:
            roots.append(root)
    return roots


def check_relative(value: str) -> PurePosixPath:
    """The relative path ``value`` names, or PathError saying why it is refused."""
    text = (value or "").strip()
    if not text:
        raise PathError("enter a path relative to one of the allowed folders")
    if "\x00" in text or "\\" in text:
        raise PathError(f"{text!r}: backslashes and NUL bytes are not allowed in paths")
    if text.startswith("~") or PurePosixPath(text).is_absolute() or (len(text) > 1
                                                                      and text[1] == ":"):
        raise PathError(
            f"{text!r}: absolute paths are not accepted; give a path relative to an allowed folder"
        )
    rel = PurePosixPath(text)
    if ".." in rel.parts:
        raise PathError(f"{text!r}: '..' is not allowed in paths")
    return rel


def resolve_under(value: str, roots: list[Path]) -> Path:
    """Resolve the relative path ``value`` under the first root that holds it.

    Raises PathError for absolute paths, ``..``, paths that do not exist under
    any root, and paths whose resolution (through symlinks) leaves the root.
    """
    rel = check_relative(value)
    for root in roots:
        real_root = root.resolve()
        cand = real_root / rel
        if not (cand.exists() or cand.is_symlink()):
            continue
        try:
            real = cand.resolve(strict=True)
        except (OSError, RuntimeError):
            raise PathError(f"{value!r}: the link cannot be followed") from None
        if not real.is_relative_to(real_root):
            raise PathError(f"{value!r} leads outside the allowed folders (through a link)")
        return real
    names = ", ".join(str(r) for r in roots) or "(none)"
    raise PathError(f"{value!r} was not found under the allowed folders: {names}")


def is_openable(path: Path) -> bool:
    """A trace file, a warp CSV, or a directory holding trace files."""
    if path.is_file():
        return path.name.endswith(OPENABLE_SUFFIXES)
    if path.is_dir():
        try:
            return any(p.name.endswith((".json.gz", ".json")) and p.name != "run.json"
                       for p in path.iterdir() if p.is_file())
        except OSError:
            return False
    return False


def candidates(roots: list[Path]) -> list[tuple[int, str]]:
    """Runs and trace files under the roots, as (root index, relative path).

    Run directories are listed once (not their rank files); symlinks are not
    followed; at most :data:`SCAN_LIMIT` entries, :data:`SCAN_DEPTH` levels deep.
    """
    out: list[tuple[int, str]] = []
    for i, root in enumerate(roots):
        base = root.resolve()
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            d = Path(dirpath)
            depth = len(d.relative_to(base).parts)
            dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
            if depth >= SCAN_DEPTH:
                dirnames[:] = []
            rank_files = [f for f in filenames if f.endswith((".json", ".json.gz"))
                          and f != "run.json"]
            if d != base and (rank_files and ("run.json" in filenames or len(rank_files) > 1)):
                out.append((i, d.relative_to(base).as_posix()))
                continue  # a run directory: its files are not listed one by one
            for f in sorted(filenames):
                if f.endswith(OPENABLE_SUFFIXES) and f != "run.json":
                    out.append((i, (d / f).relative_to(base).as_posix()))
            if len(out) >= SCAN_LIMIT:
                return out[:SCAN_LIMIT]
    return out
