"""Bad inputs: every file of tests/data/bad is refused with a reason a user can act on.

The loader raises TraceError naming the file and the problem in words; the CLI
turns that into exit status 2 and one line per bad input, never a traceback,
and keeps analyzing the good inputs of the same batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.load import load_many, load_run
from overlapscope.app.cli import app

DATA = Path(__file__).resolve().parents[1] / "data"
BAD = DATA / "bad"
#: Good companion for mixed batches: GEMM [0, 10] us vs NCCL [5, 20] us -> 5 us overlap.
GOOD = DATA / "odd" / "string_pids.json"
GOOD_OVERLAP_NS = 5_000

#: file -> words (case-insensitive) that the reason must contain, all of them.
BAD_CASES: dict[str, tuple[str, ...]] = {
    "truncated.json.gz": ("truncated",),
    "truncated_text.json": ("not valid JSON", "truncated"),
    "invalid.json": ("not valid JSON",),
    "binary.json": ("not valid JSON",),
    "garbage.json.gz": ("not valid JSON",),
    "not_gzip.json.gz": ("gzip",),
    "empty.json": ("empty",),
    "empty_gzip.json.gz": ("empty",),
    "no_trace_events.json": ("traceEvents",),
    "foo.json": ("traceEvents",),
    "top_level_list.json": ("traceEvents", "list"),
    "top_level_string.json": ("traceEvents",),
    "trace_events_not_list.json": ("traceEvents", "list"),
    "trace_events_wrong_types.json": ("traceEvents",),
    "no_traces_dir": ("no trace files",),
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep any cache writes out of the user's home directory.
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))


def test_corpus_is_complete() -> None:
    on_disk = {p.name for p in BAD.iterdir()}
    assert on_disk == set(BAD_CASES), "add new bad files to BAD_CASES (and tests/data/README.md)"


@pytest.mark.parametrize("name", sorted(BAD_CASES))
@pytest.mark.parametrize("cache", [False, True])
def test_load_run_refuses_with_reason(name: str, cache: bool) -> None:
    path = BAD / name
    with pytest.raises(TraceError) as info:
        load_run(path, cache=cache)
    err = info.value
    assert Path(err.path).resolve() == path.resolve()
    reason = err.reason.lower()
    for word in BAD_CASES[name]:
        assert word.lower() in reason, f"{name}: {err.reason!r} lacks {word!r}"
    assert "\n" not in err.reason and "traceback" not in reason
    assert str(err).startswith(err.path)


def test_missing_path_is_named() -> None:
    path = BAD / "does_not_exist.json"
    with pytest.raises(TraceError) as info:
        load_run(path, cache=False)
    assert Path(info.value.path) == path
    assert "no such file" in info.value.reason.lower()


def test_load_many_keeps_going() -> None:
    paths = [BAD / "empty.json", GOOD, BAD / "invalid.json"]
    good, bad = load_many(paths, cache=False)
    assert len(good) == 1 and good[0].activities.height == 2
    assert [Path(e.path).name for e in bad] == ["empty.json", "invalid.json"]


def _lines_naming(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if name in line]


@pytest.mark.parametrize("name", ["truncated.json.gz", "foo.json", "no_traces_dir"])
def test_cli_bad_input_exits_2_with_one_line(name: str) -> None:
    result = CliRunner().invoke(app, ["analyze", str(BAD / name), "--no-cache"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    )
    lines = _lines_naming(result.output, name)
    assert len(lines) == 1, result.output
    assert BAD_CASES[name][0].lower() in lines[0].lower()


def _find_values(obj: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a decoded JSON document."""
    found: list[Any] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                found.append(v)
            found.extend(_find_values(v, key))
    elif isinstance(obj, list):
        for v in obj:
            found.extend(_find_values(v, key))
    return found


def test_cli_mixed_batch_reports_good_and_lists_bad() -> None:
    bad = BAD / "invalid.json"
    result = CliRunner().invoke(
        app, ["analyze", str(GOOD), str(bad), "--format", "json", "--no-cache"]
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    doc = json.loads(result.stdout)
    assert GOOD_OVERLAP_NS in _find_values(doc, "overlap_ns")
    assert GOOD.name in result.stdout
    assert bad.name in result.output  # listed, in the JSON document or on stderr


def test_cli_subprocess_has_no_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "OVERLAPSCOPE_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "overlapscope.app.cli", "analyze", str(BAD / "binary.json")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(_lines_naming(proc.stderr + proc.stdout, "binary.json")) == 1
