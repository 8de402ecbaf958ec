"""Duration events ("B"/"E" pairs, written by Chrome's tracing and other tools instead
of Kineto's complete "X" events) are read as the intervals they mark."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest
from test_parallel_decode import assert_same

from overlapscope.analyzers.kineto.decode import FileFrames, decode_file, decode_whole
from overlapscope.analyzers.load import load_run
from overlapscope.analyzers.options import ReportOptions
from overlapscope.analyzers.report import build_report

ROOT = Path(__file__).resolve().parents[2]
HANDMADE = ROOT / "sample_traces" / "handmade" / "rank-0.json.gz"


def _write(path: Path, trace: dict | list) -> Path:
    path.write_text(json.dumps(trace))
    return path


def _as_begin_end(trace: dict) -> dict:
    """The same trace with every "X" written as a "B" and an "E", in time order as a
    tracer writes them: at one instant ends before begins, an inner end before its
    outer one, an outer begin before its inner one (a second way to write the same
    intervals; the other events keep their places, first). A zero-length "X" stays as
    it is: as a pair, its end and its begin at one instant have no unambiguous order."""
    xs = [e for e in trace["traceEvents"] if e.get("ph") == "X" and e["dur"] > 0]
    marks = []
    for e in xs:
        b = {k: v for k, v in e.items() if k != "dur"}
        b["ph"] = "B"
        end = e["ts"] + e["dur"]
        marks.append(((e["ts"], 1, -end), b))
        marks.append(((end, 0, -e["ts"]), {"ph": "E", "pid": e["pid"], "tid": e["tid"],
                                           "ts": end}))
    marks.sort(key=lambda m: m[0])
    rest = [e for e in trace["traceEvents"] if e.get("ph") != "X" or not e["dur"] > 0]
    return {**trace, "traceEvents": rest + [m[1] for m in marks]}


def _rows(df: pl.DataFrame) -> pl.DataFrame:
    """Rows in a fixed order: the B/E file lists intervals by start, not as written."""
    keys = [c for c in ("ts_ns", "name", "tid", "stream", "dur_ns") if c in df.columns]
    return df.sort(keys, nulls_last=True)


def test_begin_end_pairs_equal_the_complete_events(tmp_path: Path) -> None:
    trace = json.loads(gzip.decompress(HANDMADE.read_bytes()))
    x = _write(tmp_path / "x.json", trace)
    be_trace = _as_begin_end(trace)
    be = _write(tmp_path / "be.json", be_trace)
    a, b = decode_file(x), decode_file(be)
    assert a.activities.height > 0 and a.cpu_ops.height > 0 and b.skipped_events == 0
    assert sum(e.get("ph") == "B" for e in be_trace["traceEvents"]) >= 25  # of 35 "X"
    assert b.n_events == a.n_events + sum(e.get("ph") == "B" for e in be_trace["traceEvents"])
    for name in FileFrames.FRAME_NAMES:
        fa, fb = getattr(a, name), getattr(b, name)
        assert fa.schema == fb.schema, name
        assert _rows(fa).equals(_rows(fb), null_equal=True), name
    # batches cannot pair across a cut: the batched path hands such a file to the whole
    # decode, with the same result
    assert_same(("ok", decode_whole(be)), ("ok", decode_file(be, chunk_bytes=256)), be)


def test_nesting_threads_and_unmatched_ends(tmp_path: Path) -> None:
    # Worked by hand. Thread 1: outer 10-50 us holds inner 20-30 us, written out of time
    # order; thread 2: op 15-25 us. A stray "E" (thread 3) and a "B" never closed
    # (thread 2, at 40 us) are dropped and counted.
    events = [
        {"ph": "E", "pid": 1, "tid": 1, "ts": 50},
        {"ph": "B", "cat": "cpu_op", "name": "outer", "pid": 1, "tid": 1, "ts": 10,
         "args": {"External id": 7}},
        {"ph": "B", "cat": "cpu_op", "name": "op", "pid": 1, "tid": 2, "ts": 15},
        {"ph": "E", "pid": 1, "tid": 1, "ts": 30},
        {"ph": "B", "cat": "cpu_op", "name": "inner", "pid": 1, "tid": 1, "ts": 20},
        {"ph": "E", "pid": 1, "tid": 2, "ts": 25},
        {"ph": "E", "pid": 1, "tid": 3, "ts": 26},
        {"ph": "B", "cat": "cpu_op", "name": "never ends", "pid": 1, "tid": 2, "ts": 40},
    ]
    ff = decode_file(_write(tmp_path / "t.json", {"traceEvents": events}))
    ops = ff.cpu_ops.select("name", "tid", "ts_ns", "dur_ns", "external_id")
    assert ops.to_dicts() == [  # in the file order of their begins
        {"name": "outer", "tid": "1", "ts_ns": 10_000, "dur_ns": 40_000, "external_id": 7},
        {"name": "op", "tid": "2", "ts_ns": 15_000, "dur_ns": 10_000, "external_id": None},
        {"name": "inner", "tid": "1", "ts_ns": 20_000, "dur_ns": 10_000, "external_id": None},
    ]
    assert ff.skipped_events == 2


def test_overlap_of_kernels_written_as_begin_end(tmp_path: Path) -> None:
    # comm kernel 100-150 us, compute kernel 120-220 us on one GPU: 30 of the 50 us of
    # comm hidden, 20 us exposed, window 100-220 us (the same as written with "X").
    def pair(name: str, stream: int, t0: float, t1: float) -> list[dict]:
        return [{"ph": "B", "cat": "kernel", "name": name, "pid": 0, "tid": stream, "ts": t0,
                 "args": {"device": 0, "stream": stream}},
                {"ph": "E", "pid": 0, "tid": stream, "ts": t1}]

    events = (pair("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 7, 100.0, 150.0)
              + pair("ampere_sgemm_128x64_nn", 8, 120.0, 220.0))
    path = _write(tmp_path / "k.json", events)  # a bare array, as Chrome writes it
    m = build_report(load_run(path, cache=False), ReportOptions()).headline()
    assert m["overlap_ratio"] == pytest.approx(0.6)
    assert m["exposed_comm_ms"] == pytest.approx(0.020)
    assert m["span_ms"] == pytest.approx(0.120)
    acts = load_run(path, cache=False).activities
    assert acts.select(pl.col("dur_ns").sum()).item() == 150_000


def test_memory_dump_events_stay_on_the_fast_path(tmp_path: Path) -> None:
    # "V"/"v" (memory dumps, e.g. in MosaicML Composer's traces) carry nothing the
    # analyzers read: the typed batched decoder skips them instead of handing the
    # whole file to the slow generic path, with the same frames.
    from overlapscope.analyzers.kineto import chunked

    trace = json.loads(gzip.decompress(HANDMADE.read_bytes()))
    dumps = [{"ph": ph, "name": "periodic_interval", "pid": 1, "tid": 1, "ts": 5038693760001,
              "args": {"dumps": {"allocators": {}}}} for ph in ("V", "v")]
    plain = _write(tmp_path / "plain.json", trace)
    with_dumps = _write(tmp_path / "dumps.json",
                        {**trace, "traceEvents": dumps + trace["traceEvents"]})
    a = decode_file(plain)
    b = chunked.decode_chunked(with_dumps)  # raises Fallback if the fast decoder refused
    assert b.n_events == a.n_events + 2
    b.n_events = a.n_events
    assert_same(("ok", a), ("ok", b), with_dumps)
