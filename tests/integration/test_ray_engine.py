"""The Ray engine gives exactly the local engine's results (a local Ray instance)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from overlapscope.analyzers import analyze
from overlapscope.analyzers.compare import compare, load_runs

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = [
    ROOT / "sample_traces" / "handmade",
    ROOT / "sample_traces" / "h200" / "gpu_overlap_rank0.json.gz",
    ROOT / "sample_traces" / "h200" / "gpu_serial_rank0.json.gz",
    ROOT / "sample_traces" / "cpu" / "ep-dispatch",
]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))


def test_analyze_ray_equals_local(local_ray: None, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    paths = [*SAMPLES, bad]
    local = analyze(paths, workers=1, cache=False)  # Ray workers do not see the test cache dir
    remote = analyze(paths, engine="ray", workers=2, cache=False)
    assert [e.path for e in remote.errors] == [e.path for e in local.errors] == [str(bad)]
    assert [r.path for r in remote.runs] == [r.path for r in local.runs]
    for a, b in zip(local.reports, remote.reports, strict=True):
        assert a.facts == b.facts and a.notes == b.notes
        assert a.not_applicable == b.not_applicable and a.failures == b.failures
        assert sorted(a.tables) == sorted(b.tables)
        for name, df in a.tables.items():
            assert df.equals(b.tables[name]), name


def test_compare_ray_equals_local(local_ray: None) -> None:
    runs_l, _ = load_runs(SAMPLES[1:3], workers=1, cache=False)
    runs_r, _ = load_runs(SAMPLES[1:3], engine="ray", workers=2, cache=False)
    assert [len(r.steps) for r in runs_r] == [len(r.steps) for r in runs_l] == [2, 2]
    frames = [compare([r.report for r in runs], steps=[r.steps for r in runs])
              for runs in (runs_l, runs_r)]
    assert frames[0].equals(frames[1])
    assert isinstance(frames[0], pl.DataFrame) and frames[0].height == 2
