"""Run assembly: ranks, one time origin, run.json order, the parquet cache."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from kineto_builder import TraceBuilder

from overlapscope.analyzers.cache import CACHE_SCHEMA_VERSION
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.load import load_run


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(cache))
    return cache


def _rank_trace(path: Path, *, rank: int | None, base_ns: int, kernel_at_ns: int) -> Path:
    tb = TraceBuilder(rank=rank, world_size=2)
    tb.kernel("void gemm(float*)", kernel_at_ns, kernel_at_ns + 1_000)
    doc = tb.document()
    doc["baseTimeNanoseconds"] = base_ns
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_ranks_share_one_origin_through_base_time(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # Rank 1's clock base is 5 us later; its kernel at local 2 us is absolute 7 us.
    _rank_trace(run / "a.json", rank=0, base_ns=1_000_000_000, kernel_at_ns=3_000)
    _rank_trace(run / "b.json", rank=1, base_ns=1_000_005_000, kernel_at_ns=2_000)
    frames = load_run(run, cache=False)
    got = dict(frames.activities.select("rank", "ts_ns").iter_rows())
    assert got == {0: 0, 1: 4_000}
    assert frames.meta["origin_ns"] == 1_000_003_000
    assert frames.ranks["rank"].to_list() == [0, 1]


def test_rank_from_file_name_when_no_distributed_info(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _rank_trace(run / "job_rank3.pt.trace.json", rank=None, base_ns=0, kernel_at_ns=0)
    _rank_trace(run / "job_rank1.pt.trace.json", rank=None, base_ns=0, kernel_at_ns=0)
    frames = load_run(run, cache=False)
    assert sorted(frames.ranks["rank"].to_list()) == [1, 3]
    paths = dict(frames.ranks.select("rank", "path").iter_rows())
    assert paths[3].endswith("job_rank3.pt.trace.json")


def test_duplicate_ranks_fall_back_to_file_order(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # Two single-GPU jobs both claiming rank 0 (world size 1): keep both, ranks by order.
    _rank_trace(run / "x.json", rank=0, base_ns=0, kernel_at_ns=0)
    _rank_trace(run / "y.json", rank=0, base_ns=0, kernel_at_ns=0)
    frames = load_run(run, cache=False)
    assert frames.ranks["rank"].to_list() == [0, 1]


def test_manifest_lists_rank_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _rank_trace(run / "rank-0.json", rank=0, base_ns=0, kernel_at_ns=0)
    _rank_trace(run / "stray.json", rank=5, base_ns=0, kernel_at_ns=0)
    (run / "run.json").write_text(json.dumps({"rank_files": ["rank-0.json"]}))
    frames = load_run(run, cache=False)
    assert frames.ranks["rank"].to_list() == [0]
    (run / "run.json").write_text(json.dumps({"rank_files": ["rank-0.json", "rank-1.json"]}))
    with pytest.raises(TraceError, match="rank-1.json"):
        load_run(run, cache=False)


def test_cache_roundtrip_is_identical_and_atomic(tmp_path: Path, _cache_dir: Path) -> None:
    trace = _rank_trace(tmp_path / "t.json", rank=0, base_ns=0, kernel_at_ns=1_500)
    first = load_run(trace)
    entries = list((_cache_dir / f"v{CACHE_SCHEMA_VERSION}").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".tmp")
    second = load_run(trace)
    for name in ("activities", "cpu_ops", "annotations", "comm_meta", "warp_events"):
        assert getattr(first, name).equals(getattr(second, name)), name
    # Same content under another name hits the same entry; changed content does not.
    copy = tmp_path / "copy.json"
    copy.write_bytes(trace.read_bytes())
    load_run(copy)
    assert len(list((_cache_dir / f"v{CACHE_SCHEMA_VERSION}").iterdir())) == 1
    _rank_trace(copy, rank=0, base_ns=0, kernel_at_ns=9_000)
    assert load_run(copy).activities["ts_ns"].to_list() == [0]
    assert len(list((_cache_dir / f"v{CACHE_SCHEMA_VERSION}").iterdir())) == 2


def test_fixture_trace_counts(tmp_path: Path) -> None:
    """Counted independently with json + gzip from the raw file."""
    import gzip

    src = Path(__file__).resolve().parents[2] / "sample_traces" / "h200"
    trace = next(iter(sorted(src.glob("gpu_overlap_rank0.json.gz"))), None)
    if trace is None:
        pytest.fail("sample_traces/h200/gpu_overlap_rank0.json.gz is missing")
    from decimal import Decimal

    raw = json.loads(gzip.decompress(trace.read_bytes()), parse_float=Decimal)
    ev = raw["traceEvents"]
    gpu = [e for e in ev if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    ann = [e for e in ev if e.get("cat") in ("user_annotation", "gpu_user_annotation")]
    rpc = [e for e in ev if e.get("name") == "record_param_comms"]
    frames = load_run(trace, cache=False)
    assert frames.activities.height == len(gpu)
    assert frames.annotations.height == len(ann)
    assert frames.comm_meta.height == len(rpc)
    total_bytes = sum(e["args"].get("bytes", 0) for e in gpu)
    assert frames.activities["bytes"].fill_null(0).sum() == total_bytes
    # First kernel start relative to the first annotation, exact ns from the decimal text.
    a0 = min(e["ts"] for e in ann)
    first_gpu_ns = int((min(e["ts"] for e in gpu) - a0) * 1000)
    assert frames.activities["ts_ns"].min() - frames.annotations["ts_ns"].min() == first_gpu_ns
    assert frames.activities.select(pl.col("stream").unique().sort()).to_series().to_list() == [
        7, 13, 17,
    ]
