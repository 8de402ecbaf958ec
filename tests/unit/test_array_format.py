"""Traces in the Trace Event Format's JSON Array Format (a bare list of events, the
closing bracket optional) decode exactly as the same events inside ``traceEvents``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from test_parallel_decode import assert_same

from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.kineto import chunked
from overlapscope.analyzers.kineto.decode import decode_file
from overlapscope.analyzers.load import load_run

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "sample_traces" / "h200" / "gpu_overlap_rank0.json.gz",
           ROOT / "sample_traces" / "handmade" / "rank-1.json.gz"]


def _events(path: Path) -> list:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return json.loads(raw)["traceEvents"]


def _pair(tmp_path: Path, events: list, array_text: str) -> tuple[Path, Path]:
    obj = tmp_path / "object.json"
    obj.write_text(json.dumps({"traceEvents": events}))
    arr = tmp_path / "array.json"
    arr.write_text(array_text)
    return obj, arr


def _one_per_line(events: list) -> str:
    """How Chrome and PyTorch's legacy profiler write it: one event per line."""
    return "[\n" + ",\n".join(json.dumps(e) for e in events)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
@pytest.mark.parametrize("closed", [True, False], ids=["closed", "open-ended"])
def test_array_equals_object(tmp_path: Path, source: Path, closed: bool) -> None:
    events = _events(source)
    text = _one_per_line(events) + ("\n]\n" if closed else ",\n")
    obj, arr = _pair(tmp_path, events, text)
    a, b = decode_file(obj), decode_file(arr)
    assert a.activities.height + a.cpu_ops.height > 0
    assert_same(("ok", a), ("ok", b), arr)
    # batched, in pieces of ~1/5 of the text (memory stays bounded on huge arrays)
    cut = chunked.decode_chunked(arr, chunk_bytes=max(256, len(text) // 5))
    assert_same(("ok", a), ("ok", cut), arr)
    assert_same(("ok", a), ("ok", decode_file(arr, workers=2, chunk_bytes=256)), arr)


def test_misfit_event_takes_the_generic_path_in_both(tmp_path: Path) -> None:
    events = _events(SOURCES[1])
    events.insert(3, 7)  # not an event object: skipped and counted
    events.insert(5, {"ph": "X", "name": "odd", "pid": 0, "tid": 1, "ts": "not a time"})
    obj, arr = _pair(tmp_path, events, json.dumps(events))
    a, b = decode_file(obj), decode_file(arr)
    assert a.skipped_events >= 1
    assert_same(("ok", a), ("ok", b), arr)


def test_run_metrics_of_an_array_trace(tmp_path: Path) -> None:
    # Worked by hand: comm kernel 100-150 us, compute kernel 120-220 us on one GPU:
    # 30 us of the 50 us of comm is hidden, 20 us exposed, window 100-220 us.
    from overlapscope.analyzers.options import ReportOptions
    from overlapscope.analyzers.report import build_report

    events = [
        {"ph": "X", "cat": "kernel", "name": "ncclDevKernel_AllReduce_Sum_f32_RING_LL",
         "pid": 0, "tid": 7, "ts": 100.0, "dur": 50.0, "args": {"device": 0, "stream": 7}},
        {"ph": "X", "cat": "kernel", "name": "ampere_sgemm_128x64_nn",
         "pid": 0, "tid": 8, "ts": 120.0, "dur": 100.0, "args": {"device": 0, "stream": 8}},
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(events)[:-1])  # no closing bracket
    m = build_report(load_run(path, cache=False), ReportOptions()).headline()
    assert m["overlap_ratio"] == pytest.approx(0.6)
    assert m["exposed_comm_ms"] == pytest.approx(0.020)
    assert m["span_ms"] == pytest.approx(0.120)


@pytest.mark.parametrize(("text", "problem"), [
    ("[]", "empty"), ("[\n", "empty"), ('[{"ph": "X", "na', "not valid JSON"),
])
def test_empty_or_broken_arrays_are_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(TraceError, match=problem) as info:
        decode_file(path)
    assert str(path) in str(info.value)
