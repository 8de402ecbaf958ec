"""The Report cache: a run analyzed before reopens from disk, unless something changed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from overlapscope.analyzers import analyze, batch, report_cache
from overlapscope.analyzers.inputs import ReportOptions
from overlapscope.analyzers.report import Report
from overlapscope.app.cli import app

ROOT = Path(__file__).resolve().parents[2]
HANDMADE = ROOT / "sample_traces" / "handmade"
GPU = ROOT / "sample_traces" / "h200" / "gpu_overlap_rank0.json.gz"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(cache))
    monkeypatch.delenv("OVERLAPSCOPE_RULES", raising=False)
    return cache


def _entries(cache: Path) -> list[Path]:
    root = cache / "reports" / f"v{report_cache.REPORT_CACHE_VERSION}"
    return sorted(root.iterdir()) if root.exists() else []


def assert_same_report(a: Report, b: Report) -> None:
    assert a.source == b.source
    assert list(a.tables) == list(b.tables)
    for name, df in a.tables.items():
        assert df.schema == b.tables[name].schema, name
        assert df.equals(b.tables[name], null_equal=True), name
    assert a.not_applicable == b.not_applicable
    assert a.failures == b.failures
    assert a.facts == b.facts
    assert a.notes == b.notes


def _no_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_a: object, **_k: object) -> Report:
        raise AssertionError("analyzed again")

    monkeypatch.setattr(batch, "build_report", fail)
    monkeypatch.setattr(batch, "load_run", fail)


@pytest.mark.parametrize("path", [HANDMADE, GPU], ids=["run-dir", "file"])
def test_reopen_gives_the_same_report_without_analyzing(
    path: Path, _cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = analyze(path)[0]
    assert len(_entries(_cache)) == 1
    _no_analysis(monkeypatch)
    again = analyze(path)[0]
    assert_same_report(first, again)
    assert again.headline() == first.headline()


def test_no_cache_neither_reads_nor_writes(_cache: Path) -> None:
    analyze(GPU, cache=False)
    assert _entries(_cache) == []


def test_options_rules_and_content_are_part_of_the_key(
    tmp_path: Path, _cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(HANDMADE, run)
    base = report_cache.report_key(run, ReportOptions())
    assert base is not None
    assert report_cache.report_key(run, ReportOptions()) == base
    assert report_cache.report_key(run, ReportOptions(top=3)) != base
    assert report_cache.report_key(run, ReportOptions(window="^x$")) != base
    rules = tmp_path / "rules.toml"
    rules.write_text("")
    with_rules = report_cache.report_key(run, ReportOptions(rules_file=str(rules)))
    rules.write_text('[[rule]]\nmatch = "zzz"\nkind = "compute"\n')
    assert report_cache.report_key(run, ReportOptions(rules_file=str(rules))) != with_rules
    monkeypatch.setenv("OVERLAPSCOPE_RULES", str(rules))
    assert report_cache.report_key(run, ReportOptions()) != base
    monkeypatch.delenv("OVERLAPSCOPE_RULES")
    # Another trace content (same names and sizes are not enough to keep the key).
    rank0 = run / "rank-0.json.gz"
    data = rank0.read_bytes()
    rank0.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert report_cache.report_key(run, ReportOptions()) != base
    assert report_cache.report_key(tmp_path / "missing", ReportOptions()) is None


def test_changed_input_is_analyzed_again(tmp_path: Path, _cache: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(HANDMADE, run)
    analyze(run)
    (run / "rank-1.json.gz").unlink()
    second = analyze(run)[0]
    assert second.facts["ranks"] == 1
    assert len(_entries(_cache)) == 2


def test_entries_are_written_atomically_and_reports_with_failures_are_not(
    _cache: Path,
) -> None:
    rep = analyze(GPU)[0]
    root = _cache / "reports" / f"v{report_cache.REPORT_CACHE_VERSION}"
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]
    broken = Report(source="x", tables=dict(rep.tables), failures={"summary": "boom"})
    assert not report_cache.store_report("f" * 40, broken)
    odd = Report(source="x", tables={}, facts={"t": (1, 2)})  # a tuple would come back a list
    assert not report_cache.store_report("e" * 40, odd)
    assert not (root / ("f" * 40)).exists() and not (root / ("e" * 40)).exists()


def test_corrupt_entry_is_a_miss(_cache: Path) -> None:
    first = analyze(GPU)[0]
    (entry,) = _entries(_cache)
    for f in entry.glob("*.arrow"):
        f.write_bytes(b"not arrow")
    assert_same_report(first, analyze(GPU)[0])


def test_cli_reopen_prints_the_same_document(_cache: Path) -> None:
    runner = CliRunner()
    args = ["analyze", str(HANDMADE), "--format", "json", "--tables", "all"]
    first = runner.invoke(app, args)
    second = runner.invoke(app, args)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    assert json.loads(first.stdout) == json.loads(second.stdout)
    assert first.stdout == second.stdout
    assert len(_entries(_cache)) == 1
