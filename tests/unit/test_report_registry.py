"""The declared Report registry: tables, columns, metrics, not-applicable reasons, failures."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from kineto_builder import TraceBuilder
from typer.testing import CliRunner

from overlapscope.analyzers import METRICS, TABLES, ReportOptions, analyze, build_report
from overlapscope.analyzers import tables as table_builders
from overlapscope.analyzers.columns import COLUMN_MEANINGS, column_unit
from overlapscope.analyzers.load import load_run
from overlapscope.app.cli import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_traces"
RUNS = [
    SAMPLES / "handmade",
    SAMPLES / "cpu" / "dualpipe",
    SAMPLES / "cpu" / "ep-dispatch",
    SAMPLES / "h200" / "varsm_rank0.json.gz",
    SAMPLES / "h200" / "warp_events_M4_NS4_NR4.csv.gz",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def reports():
    return {p.name: build_report(load_run(p, cache=False)) for p in RUNS}


def test_every_table_is_accounted_for_in_every_report(reports) -> None:
    for rep in reports.values():
        for name in TABLES:
            states = [name in rep.tables, name in rep.not_applicable, name in rep.failures]
            assert sum(states) == 1, (rep.source, name)
        assert rep.failures == {}, rep.failures
        for reason in rep.not_applicable.values():
            assert len(reason) > 10


def test_built_tables_have_exactly_the_declared_columns(reports) -> None:
    seen: set[str] = set()
    for rep in reports.values():
        for name, df in rep.tables.items():
            spec = TABLES[name]
            assert set(df.columns) <= set(spec.columns), (name, set(df.columns) - set(spec.columns))
            assert list(df.columns) == [c for c in spec.columns if c in df.columns]
            seen.add(name)
    # The sample runs exercise every table family.
    assert {"summary", "pipeline", "traffic_matrix", "warp_roles", "sm_split"} <= seen


def test_declarations_are_consistent() -> None:
    for spec in TABLES.values():
        assert set(spec.display) <= set(spec.columns), spec.name
        assert set(spec.keys) <= set(spec.columns), spec.name
        for col in spec.columns:
            assert col in COLUMN_MEANINGS, f"{spec.name}.{col} has no meaning"
        assert spec.meaning and "§" not in spec.meaning
    for m in METRICS.values():
        assert m.table in TABLES and m.better in ("higher", "lower", "neutral")
    assert column_unit("exposed_comm_ns") == "ns" and column_unit("ib_fraction") == "fraction"


def test_not_applicable_reasons_name_the_missing_data(reports) -> None:
    hand = reports["handmade"]
    assert "pipeline" in hand.not_applicable["pipeline"]
    assert "traffic" in reports["varsm_rank0.json.gz"].not_applicable["traffic"]
    warps = reports["warp_events_M4_NS4_NR4.csv.gz"]
    assert "summary" in warps.not_applicable and "warp_roles" in warps.tables
    assert "no GPU kernels" in reports["dualpipe"].not_applicable["sm_split"]


def _two_gpu_trace(tmp_path: Path) -> Path:
    """GPU 0: comm [0, 10] µs on stream 27, compute [5, 20] µs on stream 7.
    GPU 1 (rank 1): comm [0, 4], compute [10, 12]: nothing hidden."""
    paths = []
    for rank, (comm, comp) in enumerate([((0, 10_000), (5_000, 20_000)),
                                         ((0, 4_000), (10_000, 12_000))]):
        b = TraceBuilder(rank=rank, world_size=2)
        b.kernel("ncclDevKernel_AllReduce", *comm, stream=27, launch_ns=0)
        b.kernel("sm90_gemm", *comp, stream=7, launch_ns=0)
        paths.append(b.write(tmp_path / "run" / f"rank-{rank}.json"))
    return tmp_path / "run"


def test_headline_metrics_worked_by_hand(tmp_path: Path) -> None:
    rep = build_report(load_run(_two_gpu_trace(tmp_path), cache=False))
    head = rep.headline()
    # Pooled: overlap 5 µs of comm 10 + 4 µs.
    assert head["overlap_ratio"] == pytest.approx(5 / 14)
    # Exposed per GPU: 5 µs and 4 µs -> mean 4.5 µs = 0.0045 ms.
    assert head["exposed_comm_ms"] == pytest.approx(0.0045)
    # Spans 20 µs and 12 µs: the longest is 0.020 ms; idle = 0 + (12 - 4 - 2) µs of 32.
    assert head["span_ms"] == pytest.approx(0.020)
    assert head["idle_fraction"] == pytest.approx(6 / 32)
    assert head["bubble_fraction"] is None and head["ib_bytes"] is None
    per_rank = rep.metrics("rank")
    assert per_rank["rank"].to_list() == [0, 1]
    assert per_rank["overlap_ratio"].to_list() == pytest.approx([0.5, 0.0])


def test_a_failing_builder_is_a_failure_and_the_cli_exits_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_inputs):
        raise RuntimeError("boom")

    monkeypatch.setitem(table_builders.BUILDERS, "streams", broken)
    run = _two_gpu_trace(tmp_path)
    rep = build_report(load_run(run, cache=False))
    assert rep.failures == {"streams": "RuntimeError: boom"} and not rep.complete
    assert "summary" in rep.tables
    res = CliRunner().invoke(app, ["analyze", str(run), "--no-cache"])
    assert res.exit_code == 3
    assert "streams failed to build" in res.output and "summary" in res.output
    res = CliRunner().invoke(app, ["analyze", str(run), "--no-cache", "--keep-going"])
    assert res.exit_code == 0


def test_window_errors_are_bad_input(tmp_path: Path) -> None:
    run = _two_gpu_trace(tmp_path)
    b = TraceBuilder()
    b.annotation("ProfilerStep#1", 0, 30_000)
    b.kernel("sm90_gemm", 1_000, 2_000, launch_ns=500)
    one = b.write(tmp_path / "one.json")
    for window, words in (("(", "not a valid regex"), ("^nothing$", "matches no annotation")):
        res = CliRunner().invoke(app, ["analyze", str(one), "--window", window, "--no-cache"])
        assert res.exit_code == 2, res.output
        assert words in res.output
    result = analyze([run, one], window="^ProfilerStep", cache=False)
    # The run without annotations is reported as bad input, the other analyzed.
    assert [e.path for e in result.errors] == [str(run)] and len(result) == 1


def test_batch_policy_progress_and_workers_agree(tmp_path: Path) -> None:
    run = _two_gpu_trace(tmp_path)
    events = []
    res = analyze([run, tmp_path / "missing.json"], cache=False, progress=events.append)
    assert len(res) == 1 and "no such file" in res.errors[0].reason
    assert [(e.stage, e.done, e.total) for e in events if e.stage == "analyze"] == [
        ("analyze", 1, 2), ("analyze", 2, 2)]
    with pytest.raises(Exception, match="no such file"):
        analyze([tmp_path / "missing.json", run], cache=False, on_error="raise")
    serial = analyze(SAMPLES / "cpu" / "dualpipe", cache=False, workers=1)[0]
    pooled = analyze(SAMPLES / "cpu" / "dualpipe", cache=False, workers=2)[0]
    assert serial.tables.keys() == pooled.tables.keys()
    for name, df in serial.tables.items():
        assert df.equals(pooled.tables[name]), name


def test_annotations_roll_up_by_pattern_unless_detail_is_asked() -> None:
    run = SAMPLES / "cpu" / "dualpipe"
    rolled = build_report(load_run(run), ReportOptions(), tables=["annotations"])
    detail = build_report(load_run(run), ReportOptions(annotation_detail=True),
                          tables=["annotations"])
    r, d = rolled.tables["annotations"], detail.tables["annotations"]
    assert r.height < d.height
    assert not r["name"].str.contains(r"mb=\d").any()
    # Rolling up keeps totals: comm per rank is the same either way.
    for col in ("comm_busy_ns", "instances"):
        a = r.group_by("rank").agg(pl.col(col).sum()).sort("rank")
        b = d.group_by("rank").agg(pl.col(col).sum()).sort("rank")
        assert a.equals(b), col
