"""Which trace files a path stands for: itself, or a run directory's rank files.

Kept apart from load.py (and free of polars and the decoder) so the Report cache key
of a run can be computed without importing the loading machinery.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from overlapscope.analyzers.errors import TraceError

TRACE_SUFFIXES = (".json", ".json.gz")
MANIFEST = "run.json"


def run_files(path: str | Path) -> list[Path]:
    """The trace files a path stands for: itself, or a run directory's rank files."""
    path = Path(path)
    if not path.exists():
        raise TraceError(path, "no such file or directory")
    return discover_rank_files(path) if path.is_dir() else [path]


def discover_rank_files(run_dir: Path) -> list[Path]:
    """Trace files of a run directory, in manifest order when ``run.json`` lists them."""
    manifest = _read_manifest(run_dir)
    listed = manifest.get("rank_files") if manifest else None
    if isinstance(listed, list) and listed:
        files = [run_dir / str(name) for name in listed]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise TraceError(run_dir, f"run.json lists missing trace files: {', '.join(missing)}")
        return files
    files = sorted(
        p
        for p in run_dir.iterdir()
        if p.is_file() and p.name != MANIFEST and p.name.endswith(TRACE_SUFFIXES)
    )
    if not files:
        raise TraceError(run_dir, "directory holds no trace files (*.json or *.json.gz)")
    return files


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TraceError(path, f"run manifest is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}
