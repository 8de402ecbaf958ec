"""Several runs go file by file (every rank file a task, then one analysis task per
run): outcomes equal the one-run-per-process path's, errors name the bad file, and at
most two runs are in progress at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bad_runs import half_bad_run

from overlapscope.analyzers import analyze, batch
from overlapscope.analyzers.compare import compare, load_runs
from overlapscope.analyzers.errors import TraceError

ROOT = Path(__file__).resolve().parents[2]
S = ROOT / "sample_traces"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _same_reports(a: list, b: list) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.source == y.source and x.facts == y.facts and x.notes == y.notes
        assert x.not_applicable == y.not_applicable and x.failures == y.failures
        assert sorted(x.tables) == sorted(y.tables)
        for name, df in x.tables.items():
            assert df.equals(y.tables[name], null_equal=True), name


@pytest.mark.slow
def test_file_by_file_equals_run_by_run(tmp_path: Path) -> None:
    bad_run, bad_file = half_bad_run(tmp_path)
    missing = tmp_path / "nope"
    paths = [S / "handmade", bad_run, S / "h200" / "gpu_overlap_rank0.json.gz", missing,
             S / "cpu" / "ep-dispatch", S / "h200" / "warp_events_M4_NS1_NR1.csv.gz"]
    events: list[batch.Progress] = []
    pooled = analyze(paths, workers=2, cache=False, progress=events.append)
    serial = analyze(paths, workers=1, cache=False)
    _same_reports(pooled.reports, serial.reports)
    assert [r.path for r in pooled.runs] == [str(p) for p in (paths[0], paths[2], *paths[4:])]
    assert [(e.path, e.reason) for e in pooled.errors] == [
        (e.path, e.reason) for e in serial.errors]
    assert [e.path for e in pooled.errors] == [str(bad_file), str(missing)]
    # One "analyze" event per input, in input order; one "decode" event per rank file
    # of the decoded runs: 2 (handmade) + 2 (bad run) + 1 (one file) + ep-dispatch's.
    analyzed = [e for e in events if e.stage == "analyze"]
    assert [(e.path, e.done, e.total) for e in analyzed] == [
        (str(p), i + 1, 6) for i, p in enumerate(paths)]
    n_ep = len(list((S / "cpu" / "ep-dispatch").glob("*.json*"))) - (
        (S / "cpu" / "ep-dispatch" / "run.json").exists())
    assert len([e for e in events if e.stage == "decode"]) == 2 + 2 + 1 + n_ep


@pytest.mark.slow
def test_compare_samples_and_raise(tmp_path: Path) -> None:
    pair = [S / "h200" / "gpu_overlap_rank0.json.gz", S / "h200" / "gpu_serial_rank0.json.gz"]
    runs_p, _ = load_runs([*pair, S / "handmade"], workers=2, cache=False)
    runs_s, _ = load_runs([*pair, S / "handmade"], workers=1, cache=False)
    assert [len(r.steps) for r in runs_p] == [len(r.steps) for r in runs_s]
    assert [len(r.steps) for r in runs_p[:2]] == [2, 2]  # each H200 trace holds 2 steps
    for rp, rs in zip(runs_p, runs_s, strict=True):
        _same_reports([rp.report, *(s[1] for s in rp.steps)],
                      [rs.report, *(s[1] for s in rs.steps)])
    frames = [compare([r.report for r in rr], steps=[r.steps for r in rr])
              for rr in (runs_p, runs_s)]
    assert frames[0].equals(frames[1], null_equal=True) and frames[0].height == 3
    bad_run, bad_file = half_bad_run(tmp_path)
    with pytest.raises(TraceError) as info:
        load_runs([pair[0], bad_run, S / "handmade"], workers=2, cache=False,
                  on_error="raise")
    assert info.value.path == str(bad_file)


@pytest.mark.slow
def test_report_cache_hits_decode_nothing() -> None:
    paths = [S / "handmade", S / "h200" / "gpu_serial_rank0.json.gz"]
    first = analyze(paths, workers=2)
    events: list[batch.Progress] = []
    again = analyze(paths, workers=2, progress=events.append)
    _same_reports(first.reports, again.reports)
    assert [e.stage for e in events] == ["analyze", "analyze"]


def test_at_most_two_runs_in_progress() -> None:
    """Fake jobs on threads: no file of run k is decoded before run k-2 came back."""
    log: list[tuple[str, int]] = []
    lock = threading.Lock()

    def decode(arg: tuple[str, bool]) -> str:
        with lock:
            log.append(("decode", int(arg[0].split("/")[0])))
        time.sleep(0.01)
        return arg[0]

    def run(arg: int, *decoded: str) -> tuple[int, tuple[str, ...]]:
        time.sleep(0.03)
        return arg, decoded

    files = {k: [(f"{k}/{j}", False) for j in range(3 + k % 2)] for k in range(6)}
    jobs = iter([batch.Job(run, k, decode=decode, decodes=files[k]) for k in range(6)])
    with ThreadPoolExecutor(4) as pool:
        out = []
        for k, decoded in batch._local_runs(jobs, pool, None):
            with lock:
                log.append(("back", k))
            out.append((k, decoded))
    assert out == [(k, tuple(f for f, _ in files[k])) for k in range(6)]
    for k in range(2, 6):
        first_decode = log.index(("decode", k))
        assert first_decode > log.index(("back", k - 2)), k
