"""Issue #7 item 7: bad data gets a clear message, never a traceback or a silent loss.

Analyzer side of the checks (the CLI maps RuleError/TraceError/WindowError to exit 2).
Traces are written to tmp_path so tests/data/bad stays the loader's fixed corpus.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import polars as pl
import pytest
from kineto_builder import TraceBuilder

from overlapscope.analyzers.classify import RuleError, classify_activities, load_rules
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.overlap import overlap_summary

GEMM = "void cutlass_gemm_kernel<float>(float*)"
NCCL = "ncclDevKernel_AllReduce_Sum_f32_RING_LL(x)"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OVERLAPSCOPE_RULES", raising=False)


def _kernel(name: str, ts: float, dur: float | None, stream: int) -> dict:
    ev = {"ph": "X", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": ts,
          "args": {"device": 0, "stream": stream, "correlation": int(ts) + stream}}
    if dur is not None:
        ev["dur"] = dur
    return ev


def _write(path: Path, events: list[dict]) -> Path:
    path.write_text(json.dumps({"traceEvents": events}))
    return path


@pytest.mark.parametrize(
    ("rule", "field"),
    [('func = "([a-z"', "func"), ('name = "a{2,1}"', "name"), ('qualname = "(?<x"', "qualname")],
)
def test_invalid_rule_regex_names_file_and_rule(tmp_path: Path, rule: str, field: str) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(f'[[rule]]\nid = "broken-one"\n{rule}\nkind = "comm"\n')
    with pytest.raises(RuleError) as info:
        load_rules(str(path))
    msg = str(info.value)
    assert "mine.toml" in msg and "broken-one" in msg and field in msg and "regex" in msg
    assert "\n" not in msg


def test_removed_and_unknown_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.toml"
    path.write_text("[settings]\ncomm_stream_share = 0.5\n")
    with pytest.raises(RuleError, match="old.toml.*comm_stream_share.*removed"):
        load_rules(str(path))
    path.write_text("[settings]\ncomm_by_lunch = true\n")
    with pytest.raises(RuleError, match="unknown setting 'comm_by_lunch'"):
        load_rules(str(path))


def test_rules_are_reread_when_the_file_or_env_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    df = pl.DataFrame({"name": ["my_exchange_kernel"], "cat": ["kernel"]})
    path = tmp_path / "mine.toml"
    path.write_text('[[rule]]\nid = "mine"\nname = "my_exchange"\nkind = "comm"\n')
    assert classify_activities(df, load_rules(str(path)))["kind"].item() == "comm"
    path.write_text('[[rule]]\nid = "mine"\nname = "my_exchange"\nkind = "memory"\n')
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert classify_activities(df, load_rules(str(path)))["kind"].item() == "memory"
    other = tmp_path / "other.toml"
    other.write_text('[[rule]]\nid = "other"\nname = "my_exchange"\nkind = "comm"\n')
    monkeypatch.setenv("OVERLAPSCOPE_RULES", str(path))
    assert classify_activities(df, load_rules())["kind"].item() == "memory"
    monkeypatch.setenv("OVERLAPSCOPE_RULES", str(other))
    assert classify_activities(df, load_rules())["kind"].item() == "comm"


def test_absurd_and_negative_durations_are_skipped_and_counted(tmp_path: Path) -> None:
    """GEMM [0, 10] us, NCCL [5, 20]; a kernel of dur 1e30, one of dur -5 and one at
    ts 1e30 are skipped (3 counted). Left: U(P) 10, U(C) 15, O 5, span 20."""
    path = _write(tmp_path / "t.json", [
        _kernel(GEMM, 1000.0, 10.0, 7), _kernel(NCCL, 1005.0, 15.0, 13),
        _kernel(GEMM, 1002.0, 1e30, 7), _kernel(GEMM, 1003.0, -5.0, 7),
        _kernel(GEMM, 1e30, 1.0, 7),
    ])
    f = load_run(path, cache=False)
    assert f.meta["skipped_events"] == 3
    assert f.activities.height == 2
    row = overlap_summary(f).row(0, named=True)
    assert (row["compute_busy_ns"], row["comm_busy_ns"], row["overlap_ns"], row["span_ns"]) == (
        10_000, 15_000, 5_000, 20_000)


def test_kernels_without_dur_are_counted(tmp_path: Path) -> None:
    """Two kernels lack "dur": kept as zero-length, counted, and said in a warning."""
    path = _write(tmp_path / "t.json", [
        _kernel(GEMM, 1000.0, 10.0, 7), _kernel(NCCL, 1002.0, None, 13),
        _kernel(NCCL, 1004.0, None, 13),
    ])
    for cache in (False, True, True):  # the count survives the parquet cache
        f = load_run(path, cache=cache)
        assert f.meta["events_without_dur"] == 2
        assert f.activities["dur_ns"].null_count() == 0
        assert sorted(f.activities["dur_ns"].to_list()) == [0, 0, 10_000]
        assert any("2 GPU activities without a duration" in w for w in f.meta["warnings"])


@pytest.mark.parametrize("name", ["empty_events.json", "empty_events.json.gz"])
def test_empty_trace_events_is_bad_input(tmp_path: Path, name: str) -> None:
    text = json.dumps({"schemaVersion": 1, "traceEvents": []}).encode()
    path = tmp_path / name
    path.write_bytes(gzip.compress(text) if name.endswith(".gz") else text)
    with pytest.raises(TraceError) as info:
        load_run(path, cache=False)
    assert "empty" in info.value.reason and "traceEvents" in info.value.reason


def test_run_missing_rank_files_warns_naming_them(tmp_path: Path) -> None:
    run = tmp_path / "run"
    for rank in (0, 2):
        tb = TraceBuilder(rank=rank, world_size=4)
        tb.kernel(GEMM, 0, 1_000)
        tb.write(run / f"rank-{rank}.json")
    (run / "run.json").write_text(json.dumps({"world_size": 4}))
    f = load_run(run, cache=False)
    assert f.ranks["rank"].to_list() == [0, 2]
    (warning,) = f.meta["warnings"]
    assert "declares 4 ranks" in warning and "ranks 1, 3" in warning
    # A complete run warns about nothing.
    (run / "rank-2.json").unlink()
    (run / "run.json").write_text(json.dumps({"world_size": 1}))
    assert load_run(run, cache=False).meta["warnings"] == []
