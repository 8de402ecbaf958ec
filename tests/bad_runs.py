"""Damaged copies of sample runs, for failure-policy tests."""

from __future__ import annotations

import shutil
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"


def half_bad_run(tmp_path: Path) -> tuple[Path, Path]:
    """The handmade run with rank 1 cut in half: (the run, its bad file). Analyzing it
    fails, naming rank-1."""
    run = tmp_path / "half-bad"
    shutil.copytree(SAMPLES / "handmade", run)
    good = (SAMPLES / "handmade" / "rank-1.json.gz").read_bytes()
    (run / "rank-1.json.gz").write_bytes(good[: len(good) // 2])
    return run, run / "rank-1.json.gz"
