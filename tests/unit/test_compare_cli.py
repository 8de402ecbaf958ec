"""`overlapscope compare` end to end: formats, exit codes, junit, failure policy, width."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_compare import make_run
from typer.testing import CliRunner

from overlapscope.app.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COLUMNS", "80")


@pytest.fixture()
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return make_run(tmp_path / "base", [20] * 6), make_run(tmp_path / "slow", [30] * 6)


def _run(*args: str):
    return runner.invoke(app, ["compare", *args, "--workers", "1"])


def test_table_fits_80_columns_and_says_rank_traces(pair: tuple[Path, Path]) -> None:
    res = _run(*map(str, pair))
    assert res.exit_code == 0, res.output
    assert "base: 1 rank traces, 6 steps as samples  (baseline)" in res.stdout
    assert "exposed_comm_ms" in res.stdout and "+100.0%" in res.stdout
    for by in ("run", "rank", "phase", "kernel"):
        out = _run(*map(str, pair), "--by", by).stdout
        tables = [ln for ln in out.splitlines() if "───" in ln]  # header rules of tables
        assert tables and max(len(ln) for ln in out.splitlines()) <= 80, by


def test_gates_exit_1_with_failing_rows(pair: tuple[Path, Path]) -> None:
    res = _run(*map(str, pair), "--fail-if", "exposed_comm_ms > +5%",
               "--fail-if", "overlap_ratio < 0.1")
    assert res.exit_code == 1, res.output
    assert "FAIL  exposed_comm_ms > +5%" in res.stdout
    assert "slow: 0.06 -> 0.12 (+100.0%)" in res.stdout
    assert "pass  overlap_ratio < 0.1" in res.stdout
    ok = _run(*map(str, pair), "--fail-if", "exposed_comm_ms > +150%")
    assert ok.exit_code == 0, ok.output


def test_bad_gate_exit_2_naming_it(pair: tuple[Path, Path]) -> None:
    res = _run(*map(str, pair), "--fail-if", "hidden_pct < 0.9")
    assert res.exit_code == 2
    assert "unknown metric 'hidden_pct'" in res.output and "overlap_ratio" in res.output
    res = _run(*map(str, pair), "--fail-if", "overlap_ratio <")
    assert res.exit_code == 2 and "missing value" in res.output


def test_junit_one_testcase_per_gate(pair: tuple[Path, Path]) -> None:
    res = _run(*map(str, pair), "--format", "junit", "--fail-if", "exposed_comm_ms > +5%",
               "--fail-if", "overlap_ratio < 0.1", "--fail-if", "bubble_fraction > +1pp")
    assert res.exit_code == 1
    suite = ET.fromstring(res.stdout.split("?>", 1)[1]).find("testsuite")
    assert suite is not None
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [
        "exposed_comm_ms > +5%", "overlap_ratio < 0.1", "bubble_fraction > +1pp"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("3", "1", "1")
    assert cases[0].find("failure") is not None and cases[2].find("skipped") is not None


def test_markdown_json_csv(pair: tuple[Path, Path]) -> None:
    md = _run(*map(str, pair), "--format", "markdown", "--fail-if", "exposed_comm_ms > +5%")
    assert md.exit_code == 1
    assert "❌ 1 gate(s) failed" in md.stdout and "| slow | 1 | 6 |" in md.stdout
    js = _run(*map(str, pair), "--format", "json", "--by", "phase")
    doc = json.loads(js.stdout)
    assert [r["ranks"] for r in doc["runs"]] == [1, 1]
    row = next(r for r in doc["rows"] if r["run"] == "slow" and r["phase"] == "dispatch(F)")
    assert row["exposed_comm_ms_rel"] == pytest.approx(1.0)
    assert row["exposed_comm_ms_p"] < 0.05
    csv = _run(*map(str, pair), "--format", "csv")
    assert csv.stdout.splitlines()[0].startswith("run,is_baseline,ranks,steps,overlap_ratio")


def test_bad_input_among_many_and_strict(pair: tuple[Path, Path], tmp_path: Path) -> None:
    bad = tmp_path / "broken.json.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    res = _run(str(pair[0]), str(bad), str(pair[1]))
    assert res.exit_code == 2
    assert str(bad) in res.output and "slow" in res.stdout
    res = _run(str(pair[0]), str(bad), str(pair[1]), "--fail-if", "exposed_comm_ms > +5%")
    assert res.exit_code == 1  # a failed gate wins over a bad input
    res = _run(str(pair[0]), str(bad), str(pair[1]), "--strict")
    assert res.exit_code == 2 and "--strict" in res.output and "slow" not in res.stdout


def test_baseline_choice(pair: tuple[Path, Path]) -> None:
    res = _run(*map(str, pair), "--baseline", "slow", "--format", "json")
    doc = json.loads(res.stdout)
    assert doc["baseline"] == "slow"
    base = next(r for r in doc["rows"] if r["run"] == "base")
    assert base["exposed_comm_ms_rel"] == pytest.approx(-0.5)
    res = _run(*map(str, pair), "--baseline", "nope")
    assert res.exit_code == 2 and "not one of the analyzed runs" in res.output
