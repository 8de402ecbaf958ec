"""Batched and parallel decoding give exactly the frames of a whole-file decode."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from kineto_builder import TraceBuilder

from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.kineto import chunked
from overlapscope.analyzers.kineto.decode import FileFrames, decode_file, decode_whole

ROOT = Path(__file__).resolve().parents[2]
TRACES = sorted(
    p
    for base in (ROOT / "tests" / "data", ROOT / "sample_traces")
    for p in base.rglob("*")
    if p.is_file() and p.name.endswith((".json", ".json.gz")) and p.name != "run.json"
)
SCALARS = ("rank", "world_size", "backend", "num_sms", "device_name", "n_events",
           "base_time_ns", "overlapscope", "skipped_events")


def _text_size(path: Path) -> int:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return len(gzip.decompress(raw))
        except (OSError, EOFError):
            return len(raw)
    return len(raw)


def _outcome(fn: Any, path: Path) -> tuple[str, Any]:
    try:
        return "ok", fn(path)
    except TraceError as exc:
        return "error", str(exc)


def assert_same(a: tuple[str, Any], b: tuple[str, Any], path: Path) -> None:
    assert a[0] == b[0], path
    if a[0] == "error":
        assert a[1] == b[1]
        return
    x, y = a[1], b[1]
    for name in SCALARS:
        assert getattr(x, name) == getattr(y, name), (path, name)
    for name in FileFrames.FRAME_NAMES:
        fx, fy = getattr(x, name), getattr(y, name)
        assert fx.schema == fy.schema, (path, name)
        assert fx.equals(fy, null_equal=True), (path, name)


@pytest.mark.parametrize("path", TRACES, ids=lambda p: str(p.relative_to(ROOT)))
def test_batched_decode_equals_whole_decode(path: Path) -> None:
    # About five batches per file, so that every trace is really cut.
    chunk = max(256, _text_size(path) // 5)
    whole = _outcome(decode_whole, path)
    assert_same(whole, _outcome(lambda p: decode_file(p, chunk_bytes=chunk), path), path)
    assert_same(whole, _outcome(decode_file, path), path)


def test_corpus_is_found() -> None:
    names = {p.name for p in TRACES}
    assert "epoch_ns.json" in names and "rank-0.json.gz" in names and len(TRACES) > 30


def test_sample_traces_really_take_the_batched_path() -> None:
    path = ROOT / "sample_traces" / "h200" / "gpu_overlap_rank0.json.gz"
    ff = chunked.decode_chunked(path, chunk_bytes=max(256, _text_size(path) // 7))
    assert ff.activities.height > 0
    assert_same(("ok", decode_whole(path)), ("ok", ff), path)


def _kineto_like(tmp_path: Path, name: str, *, indent: int | None, extra_tail: dict,
                 n: int = 60, epoch: bool = False) -> Path:
    tb = TraceBuilder(rank=0, world_size=1)
    t0 = 1_700_000_000_000_000 if epoch else 1_000
    for i in range(n):
        tb.kernel(f"void k{i % 7}(float*)", t0 + i * 2_000, t0 + i * 2_000 + 1_500)
    doc = tb.document()
    doc.update(extra_tail)  # keys written after traceEvents, as Kineto does with traceName
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=indent))
    return path


@pytest.mark.parametrize("indent", [None, 2])
def test_kineto_layouts_and_keys_after_the_events(tmp_path: Path, indent: int | None) -> None:
    tail = {"traceName": "x]}, {\"ph\": \"X\"}]", "more": [[1, 2], {"a": "]"}]}
    path = _kineto_like(tmp_path, "t.json", indent=indent, extra_tail=tail)
    whole = decode_whole(path)
    for chunk in (64, 200, 1000, 10**6):
        ff = chunked.decode_chunked(path, chunk_bytes=chunk)
        assert_same(("ok", whole), ("ok", ff), path)


def test_separator_inside_a_string_is_never_a_cut(tmp_path: Path) -> None:
    tb = TraceBuilder(rank=0, world_size=1)
    for i in range(40):
        tb.kernel("void gemm(float*)", 1_000 + i * 2_000, 2_000 + i * 2_000)
        tb.cpu_op(f"op}},{{\"ph\":\"X\"}}, {{ {i}", 1_000 + i * 2_000, 1_500 + i * 2_000)
    path = tmp_path / "s.json"
    path.write_text(json.dumps(tb.document()))
    whole = decode_whole(path)
    for chunk in (50, 97, 300):
        assert_same(("ok", whole), ("ok", decode_file(path, chunk_bytes=chunk)), path)


def test_epoch_times_in_some_batches_only_stay_exact(tmp_path: Path) -> None:
    tb = TraceBuilder(rank=0, world_size=1)
    tb.kernel("void small(float*)", 1_000, 2_000)
    doc = tb.document()
    big = dict(doc["traceEvents"][-1], ts=1795895704494889.2486, dur=1.0005, name="big")
    small = dict(doc["traceEvents"][-1], ts=1.2345, dur=0.0015, name="small")
    doc["traceEvents"] = [small] * 30 + [big] * 30
    path = tmp_path / "e.json"
    path.write_text(json.dumps(doc))
    whole = decode_whole(path)
    assert_same(("ok", whole), ("ok", decode_file(path, chunk_bytes=120)), path)


def test_gzip_and_bad_files_match(tmp_path: Path) -> None:
    path = _kineto_like(tmp_path, "t.json", indent=None, extra_tail={})
    gz = tmp_path / "t.json.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    cut = tmp_path / "cut.json"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    for p in (gz, cut):
        batched = _outcome(lambda q: decode_file(q, chunk_bytes=300), p)
        assert_same(_outcome(decode_whole, p), batched, p)


@pytest.mark.slow
@pytest.mark.parametrize("path", TRACES, ids=lambda p: str(p.relative_to(ROOT)))
def test_parallel_decode_equals_whole_decode(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "MIN_BYTES_PER_WORKER", 1)
    chunk = max(256, _text_size(path) // 9)
    assert_same(
        _outcome(decode_whole, path),
        _outcome(lambda p: decode_file(p, workers=2, chunk_bytes=chunk), path),
        path,
    )


@pytest.mark.slow
def test_parallel_ranges_cover_every_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "MIN_BYTES_PER_WORKER", 1)
    path = _kineto_like(tmp_path, "t.json", indent=2, extra_tail={"traceName": "t"}, n=400)
    whole = decode_whole(path)
    ff = chunked.decode_chunked(path, workers=3, chunk_bytes=2_000)
    assert_same(("ok", whole), ("ok", ff), path)


class _NoProcesses:
    """A pool that cannot start processes (as inside a daemon): every submit fails."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._max_workers = args[0] if args else 1

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no processes here")

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        pass


def test_parallel_decode_without_processes_decodes_every_range_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chunked, "MIN_BYTES_PER_WORKER", 1)
    monkeypatch.setattr(chunked, "ProcessPoolExecutor", _NoProcesses)
    path = _kineto_like(tmp_path, "t.json", indent=None, extra_tail={}, n=300)
    ff = chunked.decode_chunked(path, workers=3, chunk_bytes=1_000)
    assert ff.activities.height == 300
    assert_same(("ok", decode_whole(path)), ("ok", ff), path)


@pytest.mark.slow
def test_a_range_a_worker_cannot_vouch_for_falls_back_to_the_whole_decode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One event the fast schema cannot type ("ts" as an object) deep in the file: the
    # batch holding it fails, in whichever process claimed it, and the file is decoded
    # whole, which skips that one event.
    monkeypatch.setattr(chunked, "MIN_BYTES_PER_WORKER", 1)
    path = _kineto_like(tmp_path, "t.json", indent=None, extra_tail={}, n=300)
    doc = json.loads(path.read_text())
    doc["traceEvents"][250]["ts"] = {"odd": 1}
    path.write_text(json.dumps(doc))
    with pytest.raises(chunked.Fallback):
        chunked.decode_chunked(path, workers=2, chunk_bytes=1_000)
    ff = decode_file(path, workers=2, chunk_bytes=1_000)
    assert ff.activities.height == 299 and ff.skipped_events == 1
