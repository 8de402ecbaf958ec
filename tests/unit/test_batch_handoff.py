"""Decoded files handed to their run's analysis task on disk (analyzers/handoff.py):
read back exactly as decoded, from the spill directory or the parquet cache, and
map_runs leaves no handoff file behind however it ends."""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from bad_runs import half_bad_run

from overlapscope.analyzers import analyze, batch, handoff
from overlapscope.analyzers.errors import TraceError
from overlapscope.analyzers.inputs import ReportOptions
from overlapscope.analyzers.kineto.decode import FileFrames, decode_file

ROOT = Path(__file__).resolve().parents[2]
S = ROOT / "sample_traces"
H200 = S / "h200" / "gpu_overlap_rank0.json.gz"
DUALPIPE_3 = S / "cpu" / "dualpipe" / "rank-3.json.gz"
#: The first bytes of an Arrow IPC file (the "Feather v2" file format's magic).
ARROW_MAGIC = b"ARROW1"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OVERLAPSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def tmp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where tempfile makes directories (map_runs' handoff directory among them)."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _assert_same(a: FileFrames, b: FileFrames) -> None:
    """Every field equal: frames cell by cell (with their dtypes), scalars by ==."""
    for f in dataclasses.fields(FileFrames):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in FileFrames.FRAME_NAMES:
            assert x.schema == y.schema, f.name
            assert x.equals(y, null_equal=True), f.name
        else:
            assert type(x) is type(y) and x == y, f.name


def _raw_header(path: Path) -> dict[str, Any]:
    """The trace's JSON, read here with the standard library (not the decoder)."""
    doc = json.loads(gzip.decompress(path.read_bytes()))
    doc.pop("traceEvents")
    return doc


@pytest.mark.parametrize("trace", [H200, DUALPIPE_3], ids=["h200", "dualpipe-rank3"])
def test_spill_round_trip_is_exact(trace: Path, tmp_path: Path) -> None:
    ff = decode_file(trace)
    ref = handoff.spill(ff, tmp_path / "spill")
    assert isinstance(ref, handoff.FramesRef) and ref.fmt == "ipc"
    arrow_files = sorted((tmp_path / "spill").glob("*.arrow"))
    assert len(arrow_files) == len(FileFrames.FRAME_NAMES)
    assert all(f.read_bytes()[:6] == ARROW_MAGIC for f in arrow_files)
    back = handoff.resolve(ref)
    assert isinstance(back, FileFrames)
    _assert_same(back, ff)
    # The scalars are the file's own, as the standard library reads its header.
    head = _raw_header(trace)
    dist = head["distributedInfo"]
    assert back.path == str(trace)
    assert (back.rank, back.world_size, back.backend) == (
        dist["rank"], dist["world_size"], dist["backend"])
    assert back.pg_config == dist["pg_config"] and back.pg_config  # a non-empty list
    assert back.overlapscope == head.get("overlapscope", {})
    assert back.base_time_ns == head["baseTimeNanoseconds"]


def test_spill_keeps_unusual_scalars(tmp_path: Path) -> None:
    """Values a lossy encoding would change: None vs [], ints above 2**53, nesting,
    non-ASCII text, a count of skipped events."""
    ff = dataclasses.replace(
        decode_file(H200), rank=None, world_size=None, pg_config=None, skipped_events=7,
        base_time_ns=2**62 + 1, device_name="H200 \u00e9\u00e8",
        overlapscope={"topology": {"gpus_per_node": 8}, "comm_tid": "12", "xs": [1, 2.5, None]},
    )
    back = handoff.resolve(handoff.spill(ff, tmp_path / "spill"))
    assert isinstance(back, FileFrames)
    _assert_same(back, ff)
    assert back.pg_config is None and back.base_time_ns == 4611686018427387905


def test_cache_on_hands_over_the_cache_entry(tmp_path: Path, _cache: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "spill"
    ref = handoff.decode_to_ref((str(DUALPIPE_3), True, str(dest)))
    assert isinstance(ref, handoff.FramesRef) and ref.fmt == "parquet"
    assert Path(ref.directory).is_relative_to(_cache) and not dest.exists()
    _assert_same(handoff.resolve(ref), decode_file(DUALPIPE_3))

    def no_decode(*args: Any, **kwargs: Any) -> FileFrames:
        raise AssertionError("a cached file was decoded or read in the decode task")

    monkeypatch.setattr(handoff, "load_file", no_decode)  # a hit only names the entry
    assert handoff.decode_to_ref((str(DUALPIPE_3), True, str(dest))) == ref


def test_lost_reference_is_decoded_again(tmp_path: Path) -> None:
    ff = decode_file(H200)
    ref = handoff.spill(ff, tmp_path / "spill")
    assert isinstance(ref, handoff.FramesRef)
    shutil.rmtree(ref.directory)
    back = handoff.resolve(ref)
    assert isinstance(back, FileFrames)
    _assert_same(back, ff)


def test_bad_file_comes_back_as_its_error(tmp_path: Path) -> None:
    bad = tmp_path / "rank-0.json.gz"
    good = H200.read_bytes()
    bad.write_bytes(good[: len(good) // 2])
    out = handoff.decode_to_ref((str(bad), False, str(tmp_path / "spill")))
    assert isinstance(out, TraceError) and out.path == str(bad)
    assert not (tmp_path / "spill").exists()


def test_spill_needs_its_parent(tmp_path: Path) -> None:
    """A task that outlives its map_runs must not recreate the removed directory:
    the frames then come back themselves."""
    ff = decode_file(H200)
    assert handoff.spill(ff, tmp_path / "gone" / "spill") is ff
    assert not (tmp_path / "gone").exists()


# --- map_runs on the local pool (spawned workers) ---


def _file_dirs(root: Path) -> set[Path]:
    """Directories holding handoff files (one per decoded rank file) under ``root``."""
    return {f.parent for f in root.rglob("*") if f.is_file()}


@pytest.mark.slow
def test_map_runs_removes_each_runs_files_then_all(tmp_root: Path) -> None:
    # 8 rank files, then a one-file run, then 8 again.
    paths = [S / "cpu" / "dualpipe", S / "h200" / "gpu_serial_rank0.json.gz",
             S / "cpu" / "ep-dispatch"]
    seen: list[tuple[str, int, int]] = []

    def progress(p: batch.Progress) -> None:
        seen.append((p.stage, p.done, len(_file_dirs(tmp_root))))

    pooled = analyze(paths, workers=2, cache=False, progress=progress)
    serial = analyze(paths, workers=1, cache=False)
    assert not pooled.errors and len(pooled.reports) == 3
    for x, y in zip(pooled.reports, serial.reports, strict=True):
        assert x.facts == y.facts and sorted(x.tables) == sorted(y.tables)
        assert all(df.equals(y.tables[n], null_equal=True) for n, df in x.tables.items())
    decode_events = [n for stage, _, n in seen if stage == "decode"]
    assert decode_events[0] >= 8  # dualpipe's 8 files lay on disk once decoded
    analyzed = [n for stage, _, n in seen if stage == "analyze"]
    # Run 1 done: its 8 files are gone; at most run 2's one file remains.
    assert analyzed[0] <= 1
    assert analyzed[-1] == 0  # the last run's files went as soon as it was analyzed
    assert list(tmp_root.iterdir()) == []  # and the directory itself


@pytest.mark.slow
def test_bad_inputs_raise_and_interrupt_leave_nothing(tmp_root: Path, tmp_path: Path) -> None:
    bad_run, bad_file = half_bad_run(tmp_path)
    missing = tmp_path / "nope"
    opts = ReportOptions()
    paths = [S / "cpu" / "dualpipe", bad_run, missing, S / "handmade"]
    done, errors = batch.map_runs(paths, opts, workers=2, cache=False)
    assert len(done) == 2 and [e.path for e in errors] == [str(bad_file), str(missing)]
    assert list(tmp_root.iterdir()) == []

    with pytest.raises(TraceError) as info:
        batch.map_runs(paths, opts, workers=2, cache=False, on_error="raise")
    assert info.value.path == str(bad_file)
    assert list(tmp_root.iterdir()) == []

    def interrupt(p: batch.Progress) -> None:
        if p.stage == "decode":
            assert _file_dirs(tmp_root)  # there was something to clean up
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.map_runs(paths, opts, workers=2, cache=False, progress=interrupt)
    assert list(tmp_root.iterdir()) == []


@pytest.mark.slow
def test_cache_on_pool_equals_serial(tmp_root: Path) -> None:
    """Cache on: the analysis reads the cache entries (written by the first call,
    found without decoding by the second); frames and reports equal a serial,
    uncached analysis."""
    paths = [S / "handmade", S / "cpu" / "dualpipe"]
    serial = analyze(paths, workers=1, cache=False, keep_frames=True)
    for _ in range(2):  # parquet cache cold, then warm (keep_frames skips stored Reports)
        pooled = analyze(paths, workers=2, cache=True, keep_frames=True)
        for x, y in zip(pooled.runs, serial.runs, strict=True):
            assert x.report.facts == y.report.facts
            assert all(df.equals(y.report.tables[n], null_equal=True)
                       for n, df in x.report.tables.items())
            assert x.frames is not None and y.frames is not None
            assert x.frames.meta == y.frames.meta
            for f in dataclasses.fields(x.frames):
                if f.name != "meta":
                    a, b = getattr(x.frames, f.name), getattr(y.frames, f.name)
                    assert a.schema == b.schema and a.equals(b, null_equal=True), f.name
        assert list(tmp_root.iterdir()) == []


# --- whole runs per worker when they balance ---


def test_whole_runs_balance_by_size() -> None:
    # Worked by hand: largest first to the least loaded worker; whole runs win when
    # their busiest worker carries at most (total / workers) / 0.84.
    assert batch.whole_runs_balance([100, 100], 2)  # 100 <= 100 / 0.84
    assert batch.whole_runs_balance([100, 100, 100, 100], 2)  # 200 <= 238
    assert not batch.whole_runs_balance([100, 100, 100], 2)  # 200 > 178.6
    assert batch.whole_runs_balance([300, 100, 100, 100, 100, 100], 2)  # 400 <= 476
    assert not batch.whole_runs_balance([1000, 10], 2)  # 1000 > 601
    assert not batch.whole_runs_balance([100], 2)  # fewer runs than workers
    assert not batch.whole_runs_balance([100, 100], 1)


@pytest.mark.slow
def test_equal_runs_go_whole_to_workers_and_equal_serial(
    tmp_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = []
    for name in ("a", "b"):
        shutil.copytree(S / "cpu" / "dualpipe", tmp_path / name)
        runs.append(tmp_path / name)

    def no_file_tasks(*_a: Any, **_k: Any) -> None:
        raise AssertionError("runs were split into per-file tasks")

    with monkeypatch.context() as m:
        m.setattr(batch, "_jobs", no_file_tasks)  # the file-by-file engine plans with it
        pooled = analyze(runs, workers=2, cache=False)
    serial = analyze(runs, workers=1, cache=False)
    assert list(tmp_root.iterdir()) == []  # nothing was handed over
    for x, y in zip(pooled.reports, serial.reports, strict=True):
        assert x.facts == y.facts and sorted(x.tables) == sorted(y.tables)
        assert all(df.equals(y.tables[n], null_equal=True) for n, df in x.tables.items())


@pytest.mark.slow
def test_whole_runs_report_progress_file_by_file(tmp_path: Path) -> None:
    # Two equal runs of 8 rank files: with 2 workers each run goes whole to one worker;
    # the bar still moves once per file, numbered over all 16, as it does in one process.
    copy = tmp_path / "copy"
    shutil.copytree(S / "cpu" / "dualpipe", copy)
    paths = [S / "cpu" / "dualpipe", copy]
    assert batch.whole_runs_balance([batch._size(p) for p in paths], 2)
    for workers in (2, 1):
        seen: list[batch.Progress] = []
        result = analyze(paths, workers=workers, cache=False, progress=seen.append)
        assert not result.errors and len(result.reports) == 2
        decodes = [p for p in seen if p.stage == "decode"]
        assert [p.done for p in decodes] == list(range(1, 17)), workers
        assert {p.total for p in decodes} == {16}
        assert sorted(Path(p.path).name for p in decodes) == sorted(
            f.name for f in list((S / "cpu" / "dualpipe").glob("rank-*")) * 2)
        assert [p.done for p in seen if p.stage == "analyze"] == [1, 2]
