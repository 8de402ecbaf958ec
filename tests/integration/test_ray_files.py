"""The Ray engine goes file by file like the local one: a bad rank file fails only its
run, naming the file, and the other runs equal the local engine's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from overlapscope.analyzers import analyze

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

S = Path(__file__).resolve().parents[2] / "sample_traces"


def test_bad_rank_file_fails_its_run_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    bad_run = tmp_path / "half-bad"
    shutil.copytree(S / "handmade", bad_run)
    good = (S / "handmade" / "rank-0.json.gz").read_bytes()
    (bad_run / "rank-0.json.gz").write_bytes(good[: len(good) // 3])
    paths = [S / "handmade", bad_run, S / "h200" / "gpu_overlap_rank0.json.gz"]
    local = analyze(paths, workers=1, cache=False)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = analyze(paths, engine="ray", cache=False)
    finally:
        ray.shutdown()
    assert [e.path for e in remote.errors] == [str(bad_run / "rank-0.json.gz")]
    assert [e.reason for e in remote.errors] == [e.reason for e in local.errors]
    assert [r.path for r in remote.runs] == [str(paths[0]), str(paths[2])]
    for a, b in zip(local.reports, remote.reports, strict=True):
        assert a.facts == b.facts and a.notes == b.notes and sorted(a.tables) == sorted(b.tables)
        for name, df in a.tables.items():
            assert df.equals(b.tables[name], null_equal=True), name
